"""`klptrace lab`: the kernel lab for people (tests use tracer.lab directly).

Failures are one line on stderr, exit code LAB_FAILED (8), naming what
failed: apt, build, boot timeout, step timeout, guest; bad input is
BAD_INPUT (2), a machine without root is NOT_ROOT (3)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from klptrace.tracer import exitcodes
from .errors import LabError
from .scenarios import NAMES

_KERNEL_HELP = ("Kernel: 'stable' (default: Debian stable's linux-image-amd64), '6.12' "
                "(bookworm-backports), '5.10' (bullseye), 'sid' (Debian sid's current "
                "kernel, booted over a sid root the lab makes with debootstrap), or an "
                "installed release. Env: KLPT_KERNEL.")


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
        if k.root is not None:
            click.echo(f"lab: the guest runs over the {k.suite} root {k.root}; the tracer "
                       f"there is `klptrace` (the repository's code, the root's python3 and bcc)")
        sys.exit(vm.shell(k, rwdirs=(stage,), cwd=stage))
    except LabError as e:
        _fail(e)


def _describe(rec: dict) -> str:
    """One line per record for the demo's event stream."""
    t = rec["type"]
    if t == "callback":
        ret = f" ret={rec['ret']}" if "ret" in rec else ""
        return (f"callback   {rec['patch']}/{rec['object']} {rec['callback']}{ret} "
                f"[{rec.get('evidence', '?')}]")
    if t == "transition":
        return f"transition {rec['patch']} {rec['event']} -> {rec['target']}"
    if t == "patch":
        extra = " (replace)" if rec.get("replace") else ""
        objs = ", ".join(o["name"] for o in rec.get("objects", []))
        return f"patch      {rec['patch']} {rec['event']}{extra}{' [' + objs + ']' if objs else ''}"
    if t == "module":
        return f"module     {rec['module']} {rec['event']}"
    if t == "loss":
        return f"LOSS       {rec['count']} records lost"
    if t == "stall":
        return _describe_stall(rec)
    return f"{t} {rec}"


def _describe_stall(rec: dict) -> str:
    """A stall record: who blocks the transition, why, on which function."""
    head = f"stall      {rec['patch']} -> {rec['target']} {rec['event']}:"
    if "pid" in rec:
        kind = "kthread " if rec.get("kthread") else ""
        fn = f" in {rec['function']}" if rec.get("function") else ""
        return f"{head} {kind}{rec['comm']} (pid {rec['pid']}) {rec['reason']}{fn}"
    if rec["event"] == "cleared":
        return f"{head} the transition ended ({rec.get('cause')}) after " \
               f"{rec.get('sweeps', 0)} sweep(s), with {rec.get('tasks', 0)} task(s) blocking"
    return f"{head} {rec.get('tasks', 0)} task(s)"


@lab.command()
@click.option("--kernel", "kernel", envvar="KLPT_KERNEL", default=None, help=_KERNEL_HELP)
@click.option("--only", default=None, metavar="NAME[,NAME...]",
              help="Run only these scenarios: " + ", ".join(NAMES))
@click.option("--out", "out_dir", default="lab-out/demo", show_default=True,
              type=click.Path(file_okay=False), help="Where traces and kernel logs are left.")
@click.option("--preload/--no-preload", default=False,
              help="Tell the daemon about the lab's livepatches (every callback `direct`).")
def demo(kernel: str | None, only: str | None, out_dir: str, preload: bool) -> None:
    """The main job, end to end: boot the lab VM, run `klptrace run` there while
    the callback scenarios run, show each scenario's event stream and verdict."""
    import json
    import os

    from klptrace.tracer.judge import stallsummary
    from klptrace.tracer.judge.report import format_finding
    from klptrace.tracer.commands.validate import validate_file
    from .runner import run_scenarios

    klptrace = os.path.join(os.path.dirname(sys.executable), "klptrace")
    try:
        run = run_scenarios(kernel=kernel, only=only, out_dir=Path(out_dir),
                            tracer_cmd=f"{klptrace} run", preload=preload)
    except LabError as e:
        _fail(e)
        return
    violations = 0
    for r in run.results:
        click.echo(f"\n=== {r.name}: {r.scenario.about}")
        if not r.trace_path.exists():
            click.echo("  (no trace: the tracer did not run)")
            continue
        with open(r.trace_path) as f:
            next(f, None)
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    click.echo(f"  {rec['seq']:>4} {_describe(rec)}")
        res = validate_file(str(r.trace_path))
        n = res.count("violation")
        violations += n
        gt = "matches" if r.matches else "DIFFERS from"
        click.echo(f"  verdict: {n} violation(s), {res.count('unknown')} unknown; "
                   f"kernel-log ground truth {gt} the expected sequence")
        for f in res.findings:
            click.echo(format_finding(f))
        for line in stallsummary.format_text(res.stalls):
            click.echo(line)
    click.echo("\n" + run.summary())
    click.echo(f"traces, kernel logs and the daemon's scraped metrics are in {out_dir}/")
    if not run.ok or violations:
        sys.exit(exitcodes.LAB_FAILED if not run.ok else exitcodes.VIOLATIONS)
