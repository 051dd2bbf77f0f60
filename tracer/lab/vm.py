"""Boots a kernel under TCG with virtme-ng over the host's root filesystem
and runs a command in it, streaming the console to a callback and enforcing
time limits through a watchdog. Also: an interactive shell, and a small
run-these-commands helper.

Why TCG (--disable-kvm): nested KVM does not work on this project's machines
(/dev/kvm exists, qemu aborts or hangs); a Debian kernel still boots in ~20 s.
The guest sees the host's root fs read-only (9p); directories given as rwdirs
are writable and shared, which is how results come back to the host.
"""

from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from . import qemu, rootfs
from .cachedir import REPO_ROOT
from .errors import LabError
from .kernel import Kernel

MEMORY = "2G"
CPUS = 2
CONSOLE_TAIL = 60       # console lines a guest that died leaves in its LabError
# virtme-ng boots with `quiet loglevel=...` that hides an oops (printed at the
# default message level, 4) and most of a panic; every lab boot asks for the
# console to show levels 0-4 (emergencies to warnings), so that a guest that
# dies leaves its kernel's last words in console.log. Notices and below stay
# off the (emulated, slow) serial console.
CONSOLE_LOGLEVEL = "loglevel=5"


def _venv_bin() -> Path:
    return Path(sys.executable).parent


def vng_path() -> Path:
    vng = _venv_bin() / "vng"
    if not vng.exists():
        raise LabError("no means", f"virtme-ng not installed ({vng} missing): run `make setup`")
    return vng


def _vng_env() -> dict[str, str]:
    # vng runs virtme-run, which lives beside it in the venv's bin/.
    return {**os.environ, **qemu.find().vng_env(),
            "PATH": f"{_venv_bin()}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


def root_shares(kernel: Kernel, rwdirs: tuple[Path, ...]) -> list[Path]:
    """For a guest root: the host directories shared read-write at their own
    paths. The repository (the tracer's code, and where lab-out/ is) and /tmp
    (run dirs and staged modules of the tests) always; each of rwdirs unless
    it is inside one of those. Parents first: virtme mounts in this order."""
    shares: list[Path] = []
    for d in sorted({REPO_ROOT, Path("/tmp"), *(Path(p).resolve() for p in rwdirs)},
                    key=lambda p: len(p.parts)):
        if not any(d == s or s in d.parents for s in shares):
            shares.append(d)
    return shares


def vng_argv(kernel: Kernel, *, exec_cmd: str | None = None, rwdirs: tuple[Path, ...] = (),
             cwd: Path | None = None, append: tuple[str, ...] = (),
             cpus: int = CPUS) -> list[str]:
    q = qemu.find()
    if not kernel.vmlinuz.exists():
        raise LabError("boot", f"{kernel.vmlinuz} missing")
    argv = [str(vng_path()), "--run", str(kernel.vmlinuz), "--disable-kvm",
            "--memory", MEMORY, "--cpus", str(cpus), *q.vng_args()]
    if kernel.root is None:
        for d in rwdirs:
            argv += ["--rwdir", str(d)]
    else:
        # Over the suite's root (rootfs.py), read-only; shares at their host
        # paths (GUEST=HOST: virtme takes a bare path as relative to the root).
        argv += ["--root", str(kernel.root)]
        for d in root_shares(kernel, rwdirs):
            rootfs.guest_mountpoint(kernel.root, d)
            argv += ["--rwdir", f"{d}={d}"]
        exec_cmd = None if exec_cmd is None else f"{root_prelude()} {exec_cmd}"
        cwd = None     # a host cwd means nothing in the root
    if cwd is not None:
        argv += ["--cwd", str(cwd)]
    if os.environ.get("KLPT_LAB_VERBOSE"):
        argv += ["--verbose"]      # the guest kernel's whole console (console.log)
    else:
        argv += ["--append", CONSOLE_LOGLEVEL]
    for a in append:
        argv += ["--append", a]
    if exec_cmd is not None:
        argv += ["--exec", exec_cmd]
    return argv


def root_prelude() -> str:
    """Shell run before the command in a guest root: commands naming the host
    venv's klptrace (the tests, `lab demo`) run the root's tracer instead (the
    repository's code with the root's python3 and bcc): a bind mount inside the
    guest only, the host's file is untouched. Ends with `;`."""
    venv_klptrace = shlex.quote(str(REPO_ROOT / ".venv" / "bin" / "klptrace"))
    return (f"export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; "
            f"[ -e {venv_klptrace} ] && mount --bind {rootfs.TRACER_WRAPPER} {venv_klptrace}; ")


class Watchdog(Protocol):
    """Told every console line; asked regularly whether a time limit passed."""

    def on_line(self, line: str) -> None: ...
    def expired(self) -> LabError | None: ...


class _Terminated(BaseException):
    pass


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated(signum)


def run_guest(kernel: Kernel, exec_cmd: str, *, rwdirs: tuple[Path, ...],
              console_log: Path, watchdog: Watchdog, cpus: int = CPUS) -> int:
    """Boot, run exec_cmd, return vng's exit code once the guest powered off.
    Raises the watchdog's LabError (after killing qemu) when a limit passes."""
    # qemu runs in its own session (so we can kill all of vng's processes at
    # once); a SIGTERM/SIGHUP to us must therefore take it down explicitly,
    # or it would run on orphaned.
    saved = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            saved[sig] = signal.signal(sig, _raise_terminated)
    try:
        return _run_guest(kernel, exec_cmd, rwdirs=rwdirs, console_log=console_log,
                          watchdog=watchdog, cpus=cpus)
    except _Terminated as t:
        raise LabError("guest", f"interrupted by signal {t.args[0]}; VM stopped") from None
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _run_guest(kernel: Kernel, exec_cmd: str, *, rwdirs: tuple[Path, ...],
               console_log: Path, watchdog: Watchdog, cpus: int) -> int:
    argv = vng_argv(kernel, exec_cmd=exec_cmd, rwdirs=rwdirs, cpus=cpus)
    lines: queue.Queue[str | None] = queue.Queue()
    with open(console_log, "w") as log:
        log.write("$ " + shlex.join(argv) + "\n")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace",
                                env=_vng_env(), start_new_session=True)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        try:
            while True:
                try:
                    line = lines.get(timeout=1.0)
                except queue.Empty:
                    line = ""
                if line is None:
                    break
                if line:
                    log.write(line)
                    log.flush()
                    watchdog.on_line(line.rstrip("\n"))
                err = watchdog.expired()
                if err is not None:
                    _kill(proc)
                    raise err
            return proc.wait()
        except BaseException:
            _kill(proc)
            raise


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    # vng, virtme-run and qemu share the session we started; end all of them.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


class DeadlineWatchdog:
    """One overall limit, for run_commands()."""

    def __init__(self, seconds: float, what: str):
        self.deadline = time.monotonic() + seconds
        self.what = what

    def on_line(self, line: str) -> None:
        pass

    def expired(self) -> LabError | None:
        if time.monotonic() > self.deadline:
            return LabError("step timeout", self.what)
        return None


@dataclass
class CommandResult:
    command: str
    rc: int
    output: str


def run_commands(kernel: Kernel, commands: list[str], *, timeout: float = 600,
                 on_line: Callable[[str], None] | None = None,
                 cpus: int = CPUS, keep_dir: Path | None = None
                 ) -> tuple[list[CommandResult], str]:
    """Boot once (with `cpus` vCPUs), run each shell command in turn; return
    their results and the guest's kernel log. With `keep_dir`, the commands'
    outputs are written there as they run (N.out, N.rc) and stay, also when a
    time limit ends the run: a failing test leaves what the guest printed."""
    if keep_dir is not None:
        keep_dir.mkdir(parents=True, exist_ok=True)
        for f in keep_dir.glob("*.out"):
            f.unlink()
        return _run_commands(kernel, commands, Path(keep_dir), timeout, on_line, cpus)
    with tempfile.TemporaryDirectory(prefix="klpt-lab-cmd-", dir="/tmp") as d:
        return _run_commands(kernel, commands, Path(d), timeout, on_line, cpus)


def console_tail(console_log: Path, lines: int = CONSOLE_TAIL) -> str:
    """The end of a guest's console: what its kernel said last (an oops, a
    panic: every lab boot shows them, CONSOLE_LOGLEVEL)."""
    try:
        text = console_log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _run_commands(kernel: Kernel, commands: list[str], run: Path, timeout: float,
                  on_line, cpus: int) -> tuple[list[CommandResult], str]:
    script = ["#!/bin/bash"]
    for i, c in enumerate(commands):
        script.append(f"( {c} ) > {run}/{i}.out 2>&1; echo $? > {run}/{i}.rc")
    script.append(f"dmesg > {run}/dmesg")
    (run / "run.sh").write_text("\n".join(script) + "\n")
    for i in range(len(commands)):
        (run / f"{i}.rc").unlink(missing_ok=True)
    wd = DeadlineWatchdog(timeout, f"guest commands not done after {timeout:.0f}s")
    if on_line is not None:
        wd.on_line = on_line  # type: ignore[method-assign]
    run_guest(kernel, f"bash {run}/run.sh", rwdirs=(run,), console_log=run / "console.log",
              watchdog=wd, cpus=cpus)
    if not (run / "dmesg").exists():
        done = sum((run / f"{i}.rc").exists() for i in range(len(commands)))
        raise LabError("guest", f"the guest stopped after {done} of {len(commands)} commands "
                                f"(console: {run / 'console.log'}; its end follows)",
                       detail=console_tail(run / "console.log"))
    results = []
    for i, c in enumerate(commands):
        rc_file = run / f"{i}.rc"
        rc = int(rc_file.read_text()) if rc_file.exists() else -1
        out = (run / f"{i}.out").read_text(errors="replace") if (run / f"{i}.out").exists() else ""
        results.append(CommandResult(c, rc, out))
    dmesg = (run / "dmesg").read_text(errors="replace") if (run / "dmesg").exists() else ""
    return results, dmesg


def shell(kernel: Kernel, *, rwdirs: tuple[Path, ...] = (), cwd: Path | None = None) -> int:
    """An interactive shell in the guest on this terminal."""
    argv = vng_argv(kernel, rwdirs=rwdirs, cwd=cwd)
    return subprocess.call(argv, env=_vng_env())
