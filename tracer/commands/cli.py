"""The `klptrace` command line: one click group, each subcommand in the module
that owns its job (validate in tracer.validate_cmd, run/probes in
tracer.runcmd, status in tracer.status_cmd, lab in tracer.lab.cli). Heavy imports (bcc) happen inside the
commands, never here."""

from __future__ import annotations

import click

from klptrace.tracer import __version__
from klptrace.tracer.lab.cli import lab
from klptrace.tracer.commands.run import inspect, probes, run
from klptrace.tracer.commands.status import status
from klptrace.tracer.commands.validate import validate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="klptrace")
def cli() -> None:
    """Observe and validate Linux livepatch (un)patch callbacks."""


for _cmd in (validate, run, probes, inspect, status, lab):
    cli.add_command(_cmd)


def main() -> None:
    cli(prog_name="klptrace")
