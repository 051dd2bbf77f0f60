"""``klptrace run`` and ``klptrace probes``. Checks the preconditions in the
order a user can fix them, each failure one line with its own exit code
(tracer/exitcodes.py); bcc and the loader are imported inside the commands."""

from __future__ import annotations

import fcntl
import os
import sys

import click

from klptrace.exporters.options import exporter_options

from klptrace.tracer import exitcodes as xc
from klptrace.tracer.daemon import statusfile



def _fail(code: int, msg: str):
    click.echo(f"klptrace: {msg}", err=True)
    sys.exit(code)


def _preflight() -> None:
    if os.geteuid() != 0:
        _fail(xc.NOT_ROOT, "must run as root (BPF and kprobes need CAP_SYS_ADMIN); run with sudo")
    if not os.path.isdir("/sys/kernel/livepatch"):
        _fail(xc.NO_LIVEPATCH, f"kernel {os.uname().release} has no livepatch "
              "(/sys/kernel/livepatch missing: CONFIG_LIVEPATCH not set); nothing to trace")
    try:
        import bcc  # noqa: F401
    except ImportError:
        _fail(xc.NO_BCC, "bcc is not importable; install Debian's python3-bpfcc and run from "
              "a venv made with --system-site-packages (make setup)")
    rel = os.uname().release
    if not os.path.isdir(f"/lib/modules/{rel}/build") and not os.path.exists("/sys/kernel/kheaders.tar.xz"):
        _fail(xc.NO_HEADERS, f"no kernel headers for {rel} (/lib/modules/{rel}/build missing); "
              f"apt-get install linux-headers-{rel}")
    from klptrace.tracer.observe.kfacts import tracefs_dir
    if tracefs_dir() is None:
        os.system("mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null")


def _lock():
    try:
        fd = os.open(statusfile.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _fail(xc.ALREADY_RUNNING, f"another klptrace daemon is running (lock {statusfile.LOCK} is held); "
              "stop it first")
    except OSError as e:
        _fail(xc.NOT_ROOT, f"cannot open lock {statusfile.LOCK}: {e.strerror}")
    return fd


def _power_of_two(_ctx, _param, value: int) -> int:
    if value < 1 or value > 65536 or value & (value - 1):
        raise click.BadParameter(f"{value} is not a power of two between 1 and 65536 "
                                 "(the kernel's BPF ring buffer needs one)")
    return value


@click.command()
@click.option("--trace", "trace", type=click.Path(dir_okay=False), default=None,
              help="Trace file to write (JSON Lines); default stdout.")
@click.option("--preload", multiple=True, type=click.Path(exists=True),
              help="Livepatch .ko (or a directory of them) to probe directly from its first "
                   "callback on; repeatable.")
@click.option("--ready-file", type=click.Path(dir_okay=False), default=None,
              help="Create this file once every probe is attached (removed at exit).")
@click.option("--ring-pages", type=int, default=64, show_default=True, callback=_power_of_two,
              help="BPF ring buffer size in pages (a power of two; an event is ~1 KiB). "
                   "Every record a full buffer drops is counted and written as a `loss` record.")
@click.option("--discover/--no-discover", default=True, show_default=True,
              help="Preload the livepatch modules found where kpatch and the distributions "
                   "install them (/var/lib/kpatch/RELEASE, /usr/lib/kpatch/RELEASE, "
                   "/lib/modules/RELEASE/livepatch, ...) and watch those directories for new "
                   "ones.")
@click.option("--skip-point", "skip_points", multiple=True, metavar="POINT",
              help="Do not attach this observation point (see `klptrace probes`), e.g. one "
                   "that misbehaves on this kernel; what it would have seen is a gap. "
                   "Repeatable.")
@click.option("-v", "--verbose", is_flag=True, help="Log the plan and every record.")
@exporter_options
def run(trace, preload, ready_file, ring_pages, discover, skip_points, verbose, listen,
        no_metrics, tls_cert, tls_key, metrics_max_patches, trace_max_bytes, trace_keep):
    """Trace livepatch callbacks on this kernel until SIGINT/SIGTERM; serve
    Prometheus metrics; SIGHUP reopens the trace (logrotate)."""
    from klptrace.exporters.server import ExporterError, check_tls, parse_listen
    try:   # bad options fail before anything else, with exit 2
        where = None if no_metrics else parse_listen(listen)
        check_tls(tls_cert, tls_key)
    except ExporterError as e:
        _fail(xc.BAD_INPUT, str(e))
    from klptrace.tracer.observe.probeplan import POINTS
    bad = sorted(set(skip_points) - {p.name for p in POINTS})
    if bad:
        _fail(xc.BAD_INPUT, f"--skip-point {', '.join(bad)}: no such point "
              f"(known: {', '.join(p.name for p in POINTS)})")
    _preflight()
    # checked before the minute-long BPF compile, not after it
    for what, path in (("--trace", trace), ("--ready-file", ready_file)):
        if path and path != "-" and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            _fail(xc.BAD_INPUT, f"{what} {path}: directory {os.path.dirname(os.path.abspath(path))} "
                  "does not exist")
    lock = _lock()
    from klptrace.tracer.daemon.daemon import Daemon, RunOptions
    from klptrace.tracer.observe.discover import default_dirs
    opts = RunOptions(trace, list(preload), ready_file, verbose=verbose, listen=where,
                      tls_cert=tls_cert, tls_key=tls_key,
                      metrics_max_patches=metrics_max_patches,
                      trace_max_bytes=trace_max_bytes, trace_keep=trace_keep,
                      ring_pages=ring_pages, skip_points=frozenset(skip_points),
                      discover_dirs=default_dirs() if discover else None)
    try:
        code = Daemon(opts).run()
    except ExporterError as e:      # port in use etc.: before the OSError below
        _fail(xc.BAD_INPUT, str(e))
    except OSError as e:
        _fail(xc.BAD_INPUT, f"{e.filename or 'trace'}: {e.strerror}")
    finally:
        os.close(lock)
    sys.exit(code)


def format_inspect(path: str) -> tuple[str, bool]:
    """The callbacks of one livepatch .ko, per object, and how they were found."""
    from klptrace.tracer.observe.modsyms import ElfError, read_callbacks
    try:
        name, cbs = read_callbacks(path)
    except OSError as e:
        return f"{path}: {e.strerror}", False
    except ElfError as e:
        return str(e), False
    lines = [f"{path}: livepatch {name}: {len(cbs)} callback(s)"]
    objs: dict[str, list] = {}
    for c in cbs:
        objs.setdefault(c.object, []).append(c)
    for obj, cs in objs.items():
        lines.append(f"  object {obj}")
        for c in cs:
            probe = f"probe {name}:{c.spec}" if c.spec else "no unique symbol: probed by address once loaded"
            lines.append(f"    {c.callback:<13} {c.symbol:<32} found in: {c.how:<10} {probe}")
    if not cbs:
        lines.append("  no callbacks (none registered, or a layout klptrace does not know)")
    return "\n".join(lines), True


@click.command()
@click.argument("modules", nargs=-1, required=True, metavar="KO...",
                type=click.Path(dir_okay=False))
def inspect(modules):
    """List the callbacks of livepatch .ko files, per object, and how they were
    found (klp_object initialiser, kpatch-build section, klp-build record): what
    `klptrace run --preload` probes. Needs no root and no running kernel."""
    ok = True
    for m in modules:
        text, good = format_inspect(m)
        click.echo(text)
        ok &= good
    sys.exit(xc.OK if ok else xc.BAD_INPUT)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--preload", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Also list the callbacks this livepatch .ko would be probed at "
                   "(as `klptrace inspect`); repeatable.")
def probes(as_json, preload):
    """Show how each observation point attaches on this kernel, and what that
    means for the evidence of each callback kind."""
    for m in preload:
        click.echo(format_inspect(m)[0] + "\n")
    _preflight()
    from klptrace.tracer.observe.loader import Loader
    from klptrace.tracer.observe.probeplan import make_plan, format_plan
    try:
        loader = Loader(lambda r: None)
    except Exception as e:
        msg = str(e).strip().splitlines()
        _fail(xc.ATTACH_FAILED, f"BPF load failed: {msg[-1] if msg else type(e).__name__}")
    try:
        plan = make_plan(loader.attach, kfunc=loader.kfunc_support(), exit_probes=loader)
    finally:
        loader.close()
    if as_json:
        import json
        click.echo(json.dumps(plan.to_json(), indent=2))
    else:
        click.echo(format_plan(plan))
    if plan.missing_required():
        sys.exit(xc.ATTACH_FAILED if len(plan.missing_required()) == len(
            [r for r in plan.results if r.point.required]) else 0)
