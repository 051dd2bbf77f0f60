"""The `klptrace` command line: one click group, each subcommand in the module
that owns its job (validate here; run/probes in tracer.runcmd; lab in
tracer.lab.cli). Heavy imports (bcc) happen inside the commands, never here."""

from __future__ import annotations

import click

from . import __version__
from .validate_cmd import validate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="klptrace")
def cli() -> None:
    """Observe and validate Linux livepatch (un)patch callbacks."""


cli.add_command(validate)


def _add_optional(modname: str, names: tuple[str, ...]) -> None:
    import importlib
    try:
        mod = importlib.import_module(modname, __package__)
    except ImportError as e:  # a module of a later issue not written yet
        if e.name and e.name.endswith(modname.lstrip(".")):
            return
        raise
    for n in names:
        cli.add_command(getattr(mod, n))


_add_optional(".runcmd", ("run", "probes"))
_add_optional(".lab.cli", ("lab",))


def main() -> None:
    cli(prog_name="klptrace")
