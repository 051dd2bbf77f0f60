"""A guest userland for a kernel the host cannot serve (--kernel sid).

sid's kernel headers need sid's gcc (gcc-16-for-host) and sid's glibc, which a
bookworm host cannot install, and bookworm's bcc (0.26, LLVM 14) is too old
for sid's headers. So for such a kernel the lab brings that suite's own
userland: a debootstrap'ed root under the cache dir
(KLPT_LAB_CACHE/roots/SUITE) with the suite's kernel (image, modules, headers),
its gcc/make/kmod (the test modules are built chrooted into it), and its
python3 with python3-bpfcc, python3-click and python3-prometheus-client. The
guest boots over that root (vng --root), with the repository and the run
directory shared at their host paths; the tracer in it is the repository's
code run by the root's python3 (ROOT/usr/local/bin/klptrace, written here).

Idempotent: a stamp (ROOT/.klpt-root: suite, release, packages) makes a
second run reuse the root; a new release of the suite's kernel is installed
into the existing root; a root without a stamp (an interrupted run) is made
anew. Each failure is one LabError of kind "rootfs" naming the step.
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .cachedir import REPO_ROOT, cache_dir
from .errors import LabError
from .kernel import vmlinuz_in

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MIRROR = "http://deb.debian.org/debian"
STAMP = ".klpt-root"
BOOTSTRAPPED = ".klpt-debootstrap-done"   # debootstrap finished; apt may still be due
STAMP_FORMAT = 1
DEBOOTSTRAP_TIMEOUT = 3600
APT_TIMEOUT = 3600
# What the lab's guest needs besides the kernel packages: module builds
# (make, kmod; gcc comes with the headers), the tracer (python3 + Debian's
# bcc, click, prometheus client), the guest driver (bash, util-linux's dmesg
# and mountpoint, procps), and virtme-ng's init: udev (without it there is no
# /dev/virtio-ports/, so the guest command's output falls back to the console,
# which vng does not show) and iproute2 (`ip link set lo up`: the tracer's
# metrics endpoint is scraped on 127.0.0.1).
ROOT_PACKAGES = ("make", "kmod", "python3", "python3-bpfcc", "python3-click",
                 "python3-prometheus-client", "util-linux", "procps", "udev", "iproute2")
# Where the root's tracer command is; the guest binds it over the host venv's
# klptrace (vm.py), so a command naming that path runs this one.
TRACER_WRAPPER = "/usr/local/bin/klptrace"

Progress = Callable[[str], None]


def root_dir(suite: str) -> Path:
    return cache_dir() / "roots" / suite


def _fail(step: str, suite: str, r: subprocess.CompletedProcess | None, log: Path | None,
          why: str = "") -> LabError:
    if r is not None:
        lines = [l for l in (r.stdout or "").strip().splitlines() if l.strip()]
        why = why or (lines[-1] if lines else f"exit {r.returncode}")
    where = f" (log: {log})" if log else ""
    return LabError("rootfs", f"{step} for the {suite} root failed: {why}{where}",
                    detail=(r.stdout or "")[-3000:] if r is not None else "")


def _run(argv: list[str], step: str, suite: str, log: Path, timeout: float,
         env: dict[str, str] | None = None) -> None:
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(argv)}\n")
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           errors="replace", timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise _fail(step, suite, None, log, f"no result after {timeout:.0f}s") from None
    with open(log, "a") as f:
        f.write(r.stdout)
    if r.returncode != 0:
        raise _fail(step, suite, r, log)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        points = [l.split()[1].replace("\\040", " ") for l in f]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def chroot_argv(root: Path, argv: list[str]) -> list[str]:
    """argv run chrooted into root with /proc mounted there (objtool and some
    maintainer scripts read it), in a mount namespace of its own: the mount
    ends with the command, even when it is killed."""
    return ["unshare", "--mount", "--propagation", "private", "chroot", str(root),
            "/bin/sh", "-c", 'mount -t proc proc /proc && exec "$@"', "sh", *argv]


def _remove(root: Path) -> None:
    for m in _mounts_under(root):          # left by an interrupted run
        subprocess.run(["umount", "-l", m])
    if _mounts_under(root):
        raise LabError("rootfs", f"{root} still has mounts under it; not removing it")
    shutil.rmtree(root)


@contextmanager
def _locked(suite: str) -> Iterator[None]:
    """One process at a time makes or changes a suite's root."""
    lock = cache_dir() / "roots" / f"{suite}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _chroot_apt(root: Path, args: list[str], step: str, suite: str, log: Path) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
           "LC_ALL": "C", "HOME": "/root"}
    _run(chroot_argv(root, ["apt-get", "-q", "-y", "-o", "DPkg::Lock::Timeout=600", *args]),
         step, suite, log, APT_TIMEOUT, env)


HOST_APT_OPTIONS = re.compile(r'^Acquire::(Check-Valid-Until|Check-Date|Retries|https?::Proxy) ')


def _host_apt_options(root: Path) -> None:
    """The root's apt fetches the way the host's does: the host's Acquire
    settings (proxy, and on these machines Check-Valid-Until "false": the
    archive they reach serves Release files past their Valid-Until)."""
    r = subprocess.run(["apt-config", "dump"], capture_output=True, text=True)
    lines = [l for l in r.stdout.splitlines() if HOST_APT_OPTIONS.match(l)]
    conf = root / "etc/apt/apt.conf.d/90klptrace-host"
    text = "// written by tracer/lab/rootfs.py from the host's apt-config dump\n" + \
        "".join(l + "\n" for l in lines)
    if not conf.exists() or conf.read_text() != text:
        conf.write_text(text)


def _write_wrapper(root: Path) -> None:
    """The tracer of this root: the repository (shared at its host path) run by
    the root's python3, which sees the root's Debian packages (bcc etc.)."""
    # Bound over REPO/.venv/bin/klptrace in the guest, $0 names the repository
    # (two clones may share one cache dir); run directly, the last one written.
    text = ("#!/bin/sh\n"
            "# written by tracer/lab/rootfs.py: the repository's klptrace, this root's python3\n"
            'case "$0" in\n'
            '*/.venv/bin/klptrace) repo=${0%/.venv/bin/klptrace} ;;\n'
            f'*) repo=${{KLPT_REPO:-{REPO_ROOT}}} ;;\n'
            "esac\n"
            "export PYTHONDONTWRITEBYTECODE=1 KLPT_REPO=\"$repo\"\n"
            # the repository's folders are the `klptrace` package's parts
            # (pyproject.toml): a namespace whose path is the repository
            "exec /usr/bin/python3 -c 'import os, sys, types; sys.argv[0] = \"klptrace\"; "
            "k = types.ModuleType(\"klptrace\"); k.__path__ = [os.environ[\"KLPT_REPO\"]]; "
            "sys.modules[\"klptrace\"] = k; "
            "from klptrace.tracer.commands.cli import main; sys.exit(main())' \"$@\"\n")
    w = root / TRACER_WRAPPER.lstrip("/")
    if not w.exists() or w.read_text() != text:
        w.parent.mkdir(parents=True, exist_ok=True)
        w.write_text(text)
        w.chmod(0o755)


def _read_stamp(root: Path) -> dict | None:
    try:
        return json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return None


def ensure_root(suite: str, release: str, kernel_packages: list[str],
                progress: Progress = print) -> Path:
    """ROOT with suite's userland and the kernel `release` (its kernel_packages)
    installed; made with debootstrap the first time, reused after."""
    root = root_dir(suite)
    want = {"format": STAMP_FORMAT, "suite": suite, "release": release,
            "packages": sorted({*ROOT_PACKAGES, *kernel_packages})}
    have = _read_stamp(root)
    if have == want and vmlinuz_in(root, release).exists():
        _write_wrapper(root)
        return root
    if shutil.which("debootstrap") is None:
        raise LabError("no means", "debootstrap is missing (Debian package debootstrap; "
                                   "`make setup` installs it)")
    with _locked(suite):
        have = _read_stamp(root)           # another process may have done it meanwhile
        if have == want and vmlinuz_in(root, release).exists():
            _write_wrapper(root)
            return root
        log = root.parent / f"{suite}.log"
        t0 = time.monotonic()
        fresh = have is None or have.get("format") != STAMP_FORMAT or have.get("suite") != suite
        if fresh and not (root / BOOTSTRAPPED).exists():
            if root.exists():
                progress(f"lab: {root} has no stamp (an interrupted debootstrap?): making it anew")
                _remove(root)
            log.write_text("")
            progress(f"lab: debootstrap {suite} into {root} (once; minutes; log {log})")
            _run(["debootstrap", "--variant=minbase", f"--keyring={KEYRING}", suite,
                  str(root), MIRROR], "debootstrap", suite, log, DEBOOTSTRAP_TIMEOUT)
            (root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
            (root / "usr/sbin/policy-rc.d").chmod(0o755)
            (root / BOOTSTRAPPED).write_text("")
        elif not fresh:
            progress(f"lab: the {suite} root has {have.get('release')} and {len(have.get('packages', []))} packages: installing what {release} and the lab need now")
        _host_apt_options(root)
        # debootstrap leaves apt's lists empty; a reused root's are old.
        _chroot_apt(root, ["update"], "apt-get update", suite, log)
        progress(f"lab: installing {', '.join(want['packages'])} into the {suite} root")
        _chroot_apt(root, ["--no-install-recommends", "install", *want["packages"]],
                    "apt-get install", suite, log)
        _chroot_apt(root, ["clean"], "apt-get clean", suite, log)
        if not vmlinuz_in(root, release).exists():
            raise LabError("rootfs", f"{', '.join(kernel_packages)} installed into the {suite} "
                                     f"root but no vmlinuz for {release} in it")
        (root / STAMP).write_text(json.dumps(want, indent=1) + "\n")
        progress(f"lab: the {suite} root is ready ({time.monotonic() - t0:.0f}s)")
    _write_wrapper(root)
    return root


def guest_mountpoint(root: Path, guest_path: Path) -> None:
    """A directory shared into a guest booted over root needs its mount point
    there (the root is read-only to the guest)."""
    (root / str(guest_path).lstrip("/")).mkdir(parents=True, exist_ok=True)

