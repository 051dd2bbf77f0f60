"""Debian packages the lab needs, installed idempotently with apt.

Host tools (qemu, busybox-static, bcc) come from the machine's own apt sources.
Guest kernels are resolved at run time from Debian's metapackages
(linux-image-amd64 / linux-headers-amd64 depend on the current ABI's
linux-image-RELEASE), never a hard-coded ABI number. A kernel from another
suite (6.12 from bookworm-backports) is resolved and installed through a
private apt configuration under the cache dir; /etc/apt is never touched.

Kernels are installed on the host (not unpacked into the cache) because the
guest boots over the host's root filesystem: the image's modules
(/lib/modules/RELEASE, e.g. 9p and virtio for the root fs) and the headers
that bcc compiles against inside the guest (/lib/modules/RELEASE/build) are
then exactly where the guest kernel and bcc look for them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .cachedir import cache_dir
from .errors import LabError

HOST_PACKAGES = ("qemu-system-x86", "busybox-static", "python3-bpfcc", "kmod", "make", "gcc")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"

# --kernel values besides the default (Debian stable's own kernel): the suite
# whose linux-image-amd64 provides that series. The private sources also list
# bookworm itself, for the kernel packages' ordinary dependencies.
SERIES_SUITES = {"6.12": "bookworm-backports"}
# Where Debian stable's (bookworm's) own kernel metapackage comes from.
STABLE_SUITES = ("bookworm-security", "bookworm-updates", "bookworm")
METAPACKAGES = ("linux-image-amd64", "linux-headers-amd64")
PRIVATE_LISTS_MAX_AGE = 24 * 3600   # refresh the private apt lists daily
APT_TIMEOUT = 1800


@dataclass(frozen=True)
class Kernel:
    release: str       # `uname -r` of the guest, e.g. 6.1.0-56-amd64
    suite: str         # where it came from (bookworm, bookworm-backports, local)

    @property
    def vmlinuz(self) -> Path:
        return Path("/boot") / f"vmlinuz-{self.release}"

    @property
    def build_dir(self) -> Path:
        """The kernel's headers, as kbuild and bcc find them."""
        return Path("/lib/modules") / self.release / "build"

    @property
    def series(self) -> str:
        return ".".join(self.release.split(".")[:2])


def _installed(pkg: str) -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg],
                       capture_output=True, text=True)
    return r.returncode == 0 and "install ok installed" in r.stdout


def _apt_env() -> dict[str, str]:
    return {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def _run_apt(args: list[str], what: str) -> str:
    try:
        r = subprocess.run(args, capture_output=True, text=True, env=_apt_env(),
                           timeout=APT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise LabError("apt", f"{what}: no result after {APT_TIMEOUT}s") from None
    if r.returncode != 0:
        err = [l for l in (r.stderr or r.stdout).strip().splitlines() if l.strip()]
        raise LabError("apt", f"{what} failed: {err[-1] if err else 'exit %d' % r.returncode}",
                       detail=r.stdout + r.stderr)
    return r.stdout


class AptConfig:
    """Options that point apt-get/apt-cache at a set of sources. The default
    instance is the machine's own configuration; private() one is a sources
    file plus lists and caches under the lab cache dir."""

    def __init__(self, options: list[str] | None = None, lists: Path | None = None,
                 name: str = "host"):
        self.options = options or []
        self.lists = lists
        self.name = name

    @classmethod
    def private(cls, suite: str) -> "AptConfig":
        root = cache_dir() / "apt" / suite
        lists, cache = root / "lists", root / "cache"
        (lists / "partial").mkdir(parents=True, exist_ok=True)
        (cache / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        sources = root / "sources.list"
        opt = f"[signed-by={KEYRING}]"
        text = "".join([
            f"deb {opt} {MIRROR} bookworm main\n",
            f"deb {opt} {MIRROR} bookworm-updates main\n",
            f"deb {opt} {SECURITY_MIRROR} bookworm-security main\n",
            f"deb {opt} {MIRROR} {suite} main\n" if suite != "bookworm" else "",
        ])
        if not sources.exists() or sources.read_text() != text:
            sources.write_text(text)
            for f in lists.glob("*_Packages*"):   # sources changed: lists stale
                f.unlink()
        # No -t SUITE: with it, apt-get install also "upgrades" the host's own
        # linux-image-amd64 & co. to the suite's versions (seen on this machine).
        options = ["-o", f"Dir::Etc::sourcelist={sources}", "-o", "Dir::Etc::sourceparts=-",
                   "-o", f"Dir::State::Lists={lists}", "-o", f"Dir::Cache={cache}"]
        return cls(options, lists, name=suite)

    def lists_fresh(self) -> bool:
        if self.lists is None:
            return True
        files = list(self.lists.glob("*_Packages*"))
        return bool(files) and min(time.time() - f.stat().st_mtime for f in files) < PRIVATE_LISTS_MAX_AGE

    def update(self) -> None:
        _run_apt(["apt-get", *self.options, "-q", "update"], f"apt-get update ({self.name})")

    def archive_version(self, package: str, suites: tuple[str, ...]) -> str | None:
        """The newest version of package that the archive offers in one of
        suites (never merely the installed one, which may come from elsewhere)."""
        r = subprocess.run(["apt-cache", *self.options, "madison", package],
                           capture_output=True, text=True)
        for line in r.stdout.splitlines():      # newest first
            parts = [f.strip() for f in line.split("|")]
            if len(parts) == 3 and parts[0] == package:
                where = parts[2].split()
                if len(where) >= 2 and where[1].split("/")[0] in suites:
                    return parts[1]
        return None

    def depends_of(self, package: str, version: str) -> str | None:
        """The package a Debian metapackage version depends on."""
        r = subprocess.run(["apt-cache", *self.options, "depends", "--important",
                            f"{package}={version}"], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            line = line.strip()
            if line.startswith("Depends:"):
                return line.split(":", 1)[1].strip().strip("<>")
        return None

    def install(self, packages: list[str]) -> None:
        _run_apt(["apt-get", *self.options, "-q", "-y", "--no-install-recommends",
                  "-o", "DPkg::Lock::Timeout=600", "install", *packages],
                 f"apt-get install {' '.join(packages)} ({self.name})")


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("no means", "the lab needs root (apt, qemu, module builds)")


def ensure_host_packages() -> None:
    """qemu, busybox-static etc. from the machine's own sources."""
    missing = [p for p in HOST_PACKAGES if not _installed(p)]
    if not missing:
        return
    require_root()
    apt = AptConfig()
    try:
        apt.install(missing)
    except LabError:
        apt.update()
        apt.install(missing)


def _resolve(apt: AptConfig, suites: tuple[str, ...]) -> str:
    """The kernel release (ABI) linux-image-amd64 of suites points at today."""
    for attempt in (1, 2):
        version = apt.archive_version("linux-image-amd64", suites)
        dep = apt.depends_of("linux-image-amd64", version) if version else None
        if dep and dep.startswith("linux-image-"):
            return dep[len("linux-image-"):]
        if attempt == 1:
            apt.update()
    raise LabError("apt", f"cannot resolve linux-image-amd64 in {'/'.join(suites)} ({apt.name})")


def _installed_version(pkg: str) -> str:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""


def _install_kernel(apt: AptConfig, release: str, progress: Callable[[str], None]) -> None:
    pkgs = [f"linux-image-{release}", f"linux-headers-{release}"]
    if all(_installed(p) for p in pkgs) and Path(f"/boot/vmlinuz-{release}").exists():
        return
    require_root()
    progress(f"lab: installing {' '.join(pkgs)} ({apt.name})")
    before = {m: _installed_version(m) for m in METAPACKAGES}
    try:
        apt.install(pkgs)
    except LabError:      # stale lists (an old ABI left the archive): refresh once
        apt.update()
        apt.install(pkgs)
    changed = [f"{m} {before[m]} -> {_installed_version(m)}" for m in METAPACKAGES
               if before[m] and _installed_version(m) != before[m]]
    if changed:
        raise LabError("apt", f"installing {pkgs[0]} changed the host's {', '.join(changed)}")


def resolve_kernel(spec: str | None = None, progress: Callable[[str], None] = print) -> Kernel:
    """The kernel for --kernel SPEC / $KLPT_KERNEL, installed (image + headers).

    None, "", "stable", "default": Debian stable's linux-image-amd64.
    A series in SERIES_SUITES ("6.12"): that suite's linux-image-amd64.
    An exact release with /boot/vmlinuz-RELEASE and headers: used as is.
    """
    spec = (spec or "").strip()
    if spec in ("", "stable", "default", "bookworm"):
        apt = AptConfig()
        release = _resolve(apt, STABLE_SUITES)
        _install_kernel(apt, release, progress)
        return Kernel(release, "bookworm")
    if spec in SERIES_SUITES:
        suite = SERIES_SUITES[spec]
        apt = AptConfig.private(suite)
        if not apt.lists_fresh():
            progress(f"lab: apt-get update ({suite}, private lists under {apt.lists.parent})")
            apt.update()
        release = _resolve(apt, (suite,))
        if not release.startswith(spec + "."):
            raise LabError("apt", f"{suite}'s linux-image-amd64 is {release}, not a {spec} kernel")
        _install_kernel(apt, release, progress)
        return Kernel(release, suite)
    k = Kernel(spec, "local")
    if k.vmlinuz.exists() and k.build_dir.exists():
        return k
    known = ", ".join(["stable", *SERIES_SUITES])
    raise LabError("bad input", f"unknown kernel {spec!r} (use one of: {known}, "
                                f"or an installed release with headers)")


def find_qemu() -> str | None:
    return shutil.which("qemu-system-x86_64")
