"""Which QEMU the lab boots its guests with.

The lab prefers bookworm-backports' QEMU (10.x) to the host's Debian 12 QEMU
(7.2): under 7.2's TCG a two-vCPU guest of a 6.16+ kernel oopsed on an int3
that the kernel's own text poking had already removed, with kprobes armed by
hand around livepatch transitions and no klptrace (docs/lab.md, "The int3
oops and the emulator"); under 10.x it did not. The backports packages are
downloaded through a private apt configuration (packages.AptConfig, as for
kernels) and unpacked with dpkg-deb under the lab cache, not installed: the
host's own qemu-system-x86 stays as it is, and both can be compared
(KLPT_LAB_QEMU=host). Every library the backports binary links to is one the
host's QEMU already pulled in (bookworm's); `find` checks that the binary
runs before it is used.

When the backports QEMU cannot be had (no network, the archive moved on), the
lab says so in one line and boots with the host's QEMU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .cachedir import cache_dir
from .errors import LabError
from .packages import BOOKWORM, AptConfig, _run_apt

BACKPORTS = "bookworm-backports"
# the packages that make a runnable qemu-system-x86_64 with its firmware;
# seabios: backports' QEMU 10 wants its newer BIOS (1.16.3)
PACKAGES = ("qemu-system-x86", "qemu-system-common", "qemu-system-data", "seabios")
# the series the lab wants; a newer backport is taken as it comes
WANT_MAJOR = 10


@dataclass(frozen=True)
class Qemu:
    binary: str
    version: str                       # what `qemu-system-x86_64 --version` says
    origin: str                        # "bookworm-backports" or "host"
    data_dirs: tuple[str, ...] = ()    # -L: firmware (bios, option roms)
    module_dir: str | None = None      # QEMU_MODULE_DIR: its own modules, not the host's
    note: str = ""                     # why this one (a fallback says why)

    def vng_args(self) -> list[str]:
        args = ["--qemu", self.binary]
        if self.data_dirs:
            args.append("--qemu-opts=" + " ".join(f"-L {d}" for d in self.data_dirs))
        return args

    def vng_env(self) -> dict[str, str]:
        return {"QEMU_MODULE_DIR": self.module_dir} if self.module_dir else {}

    @property
    def major(self) -> int:
        try:
            return int(self.version.split(".")[0])
        except ValueError:
            return 0


def _version(binary: str, env: dict[str, str] | None = None) -> str | None:
    try:
        r = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30,
                           env={**os.environ, **(env or {})})
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0 or not r.stdout.startswith("QEMU emulator version "):
        return None
    return r.stdout.split()[3]


def host_qemu(note: str = "") -> Qemu | None:
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        return None
    v = _version(binary)
    return Qemu(binary, v or "unknown", "host", note=note) if v else None


def _unpacked(root: Path) -> Qemu | None:
    binary = root / "usr/bin/qemu-system-x86_64"
    mods = root / "usr/lib/x86_64-linux-gnu/qemu"
    env = {"QEMU_MODULE_DIR": str(mods)}
    v = _version(str(binary), env) if binary.exists() else None
    if v is None:
        return None
    return Qemu(str(binary), v, BACKPORTS,
                data_dirs=(str(root / "usr/share/qemu"), str(root / "usr/share/seabios")),
                module_dir=str(mods))


def _fetch_backports(progress: Callable[[str], None]) -> Qemu:
    """Download and unpack the backports QEMU under cache/qemu/VERSION."""

    apt = AptConfig.private(BACKPORTS, (*BOOKWORM, BACKPORTS))
    if not apt.lists_fresh():
        apt.update()
    version = apt.archive_version("qemu-system-x86", (BACKPORTS,))
    if version is None:
        apt.update()
        version = apt.archive_version("qemu-system-x86", (BACKPORTS,))
    if version is None:
        raise LabError("apt", f"{BACKPORTS} offers no qemu-system-x86")
    upstream = version.split(":", 1)[-1].split("+", 1)[0]
    if int(upstream.split(".")[0]) < WANT_MAJOR:
        raise LabError("apt", f"{BACKPORTS}'s qemu-system-x86 is {version}, older than "
                              f"{WANT_MAJOR}")
    root = cache_dir() / "qemu" / version.replace(":", "_")
    q = _unpacked(root)
    if q is not None:
        return q
    progress(f"lab: fetching QEMU {version} from {BACKPORTS} (unpacked under {root}; "
             "the host's qemu-system-x86 is left as it is)")
    debs = root.with_name(root.name + ".debs")
    shutil.rmtree(debs, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    debs.mkdir(parents=True)
    _run_apt(["apt-get", *apt.options, "-q", "download",
              *(f"{p}/{BACKPORTS}" for p in PACKAGES)], f"apt-get download ({BACKPORTS})",
             cwd=debs)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for deb in sorted(debs.glob("*.deb")):
        r = subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], capture_output=True, text=True)
        if r.returncode != 0:
            raise LabError("apt", f"dpkg-deb -x {deb.name} failed: {r.stderr.strip()}")
    (tmp / "usr/lib/x86_64-linux-gnu/qemu").mkdir(parents=True, exist_ok=True)
    tmp.rename(root)
    shutil.rmtree(debs, ignore_errors=True)
    q = _unpacked(root)
    if q is None:
        r = subprocess.run(["ldd", str(root / "usr/bin/qemu-system-x86_64")],
                           capture_output=True, text=True)
        missing = [l.split()[0] for l in r.stdout.splitlines() if "not found" in l]
        raise LabError("apt", f"the unpacked QEMU {version} does not run"
                              + (f" (missing libraries: {', '.join(missing)})" if missing else ""))
    return q


_CHOSEN: dict[str, Qemu] = {}


def find(progress: Callable[[str], None] = print) -> Qemu:
    """The QEMU the lab boots with. KLPT_LAB_QEMU: "backports" (default) or
    "host" (the host's own, e.g. to compare with 7.2), or a path to a binary."""
    want = os.environ.get("KLPT_LAB_QEMU", "backports")
    if want in _CHOSEN:
        return _CHOSEN[want]
    if want == "host":
        q = host_qemu("KLPT_LAB_QEMU=host")
    elif want == "backports":
        try:
            q = _fetch_backports(progress)
        except (LabError, OSError, ValueError) as e:
            why = e.one_line() if isinstance(e, LabError) else str(e)
            q = host_qemu(f"{BACKPORTS}'s QEMU could not be had ({why})")
            if q is not None:
                progress(f"lab: {q.note}; booting with the host's QEMU {q.version}, under "
                         "which two-vCPU guests of 6.16+ kernels were seen to oops (docs/lab.md)")
    else:
        v = _version(want)
        q = Qemu(want, v, "KLPT_LAB_QEMU") if v else None
    if q is None:
        raise LabError("no means", "no usable qemu-system-x86_64 (Debian package "
                                   "qemu-system-x86, or KLPT_LAB_QEMU)")
    _CHOSEN[want] = q
    return q
