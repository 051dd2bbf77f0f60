"""The `klptrace` command line: one click group, each subcommand in the module
that owns its job (validate in tracer.validate_cmd, run/probes in
tracer.runcmd, status in tracer.status_cmd, lab in tracer.lab.cli). Heavy imports (bcc) happen inside the
commands, never here."""

from __future__ import annotations

import click

from . import __version__
from .lab.cli import lab
from .runcmd import inspect, probes, run
from .status_cmd import status
from .validate_cmd import validate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="klptrace")
def cli() -> None:
    """Observe and validate Linux livepatch (un)patch callbacks."""


for _cmd in (validate, run, probes, inspect, status, lab):
    cli.add_command(_cmd)


def main() -> None:
    cli(prog_name="klptrace")
