"""`klptrace lab`: the kernel lab for people (tests use tracer.lab directly).

Failures are one line on stderr, exit code LAB_FAILED (8), naming what
failed: apt, build, boot timeout, step timeout, guest; bad input is
BAD_INPUT (2), a machine without root is NOT_ROOT (3)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import exitcodes
from .errors import LabError
from .scenarios import NAMES

_KERNEL_HELP = ("Kernel: 'stable' (default: Debian stable's linux-image-amd64), '6.12' "
                "(bookworm-backports), or an installed release. Env: KLPT_KERNEL.")


def _fail(e: LabError) -> None:
    click.echo(f"klptrace: {e.one_line()}", err=True)
    code = {"bad input": exitcodes.BAD_INPUT}.get(e.kind, exitcodes.LAB_FAILED)
    if e.kind == "no means" and "root" in e.message:
        code = exitcodes.NOT_ROOT
    if e.detail:
        click.echo(e.detail.rstrip()[-3000:], err=True)
    sys.exit(code)


@click.group()
def lab() -> None:
    """Real livepatches in a TCG guest: the callback scenarios and a shell."""


@lab.command()
@click.option("--kernel", "kernel", envvar="KLPT_KERNEL", default=None, help=_KERNEL_HELP)
@click.option("--only", default=None, metavar="NAME[,NAME...]",
              help="Run only these scenarios: " + ", ".join(NAMES))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for per-scenario kernel logs, step logs, traces.")
@click.option("--tracer-cmd", envvar="KLPT_TRACER_CMD", default=None,
              help="Command run in the guest around each scenario; the lab appends "
                   "--trace OUT/NAME.jsonl --ready-file PATH. Env: KLPT_TRACER_CMD.")
@click.option("--preload/--no-preload", default=False,
              help="Pass the lab's livepatch .ko files to the tracer as --preload.")
def scenarios(kernel: str | None, only: str | None, out_dir: str, tracer_cmd: str | None,
              preload: bool) -> None:
    """Run the scenarios in one guest boot; leave NAME.dmesg (and NAME.jsonl) in OUT."""
    from .runner import run_scenarios
    try:
        run = run_scenarios(kernel=kernel, only=only, out_dir=Path(out_dir),
                            tracer_cmd=tracer_cmd, preload=preload)
    except LabError as e:
        _fail(e)
        return
    except OSError as e:      # e.g. an unwritable --out; still one line, no traceback
        _fail(LabError("guest", f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")))
        return
    for r in run.results:
        if not r.ok:
            click.echo(r.report(), err=True)
    click.echo(run.summary())
    if not run.ok:
        bad = [r.name for r in run.results if not r.ok]
        click.echo(f"klptrace: lab failed (scenario): {', '.join(bad)}", err=True)
        sys.exit(exitcodes.LAB_FAILED)


@lab.command()
@click.option("--kernel", "kernel", envvar="KLPT_KERNEL", default=None, help=_KERNEL_HELP)
def shell(kernel: str | None) -> None:
    """A shell in the guest, with the test modules and step helpers at hand."""
    from . import kmod, packages, vm
    from .cachedir import GUEST_SCRIPTS_DIR
    try:
        packages.require_root()
        packages.ensure_host_packages()
        k = packages.resolve_kernel(kernel)
        built = kmod.build_modules(k)
        # The guest hides /var/cache (tmpfs); stage under /tmp, shared read-write.
        stage = Path("/tmp/klptrace-lab-shell")
        kmod.stage_modules(built, stage)
        helpers = stage / "guest_helpers.sh"
        helpers.write_text(f"KLPT_KMOD={stage}\n" + (GUEST_SCRIPTS_DIR / "guest_helpers.sh").read_text())
        click.echo(f"lab: booting {k.release}; in the guest: `. {helpers}` then e.g. "
                   f"`load_lp klpt_lp`, `disable_lp klpt_lp`; modules in {stage}; exit with Ctrl-D")
        sys.exit(vm.shell(k, rwdirs=(stage,), cwd=stage))
    except LabError as e:
        _fail(e)
