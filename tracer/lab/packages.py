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
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .cachedir import cache_dir
from .errors import LabError
from .kernel import Kernel
from .rootfs import ensure_root

HOST_PACKAGES = ("qemu-system-x86", "busybox-static", "python3-bpfcc", "kmod", "make", "gcc", "libc6-dev",
                 "debootstrap")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"

# --kernel values besides the default (Debian stable's own kernel).
@dataclass(frozen=True)
class Line:
    """A kernel line: the suite whose linux-image-amd64 gives the kernel, the
    suites a private apt configuration lists for it, and whether the host can
    serve it (install it on the host and use the host's gcc/bcc) or the lab
    brings a guest userland of the suite (rootfs.py)."""
    spec: str                  # the --kernel value
    suite: str                 # where linux-image-amd64 is looked up
    suites: tuple[str, ...]    # the suites madison may answer from (newest wins)
    sources: tuple[str, ...]   # the private sources.list's suites
    series: str | None         # the release must start with "SERIES." (None: any)
    guest_root: bool           # True: a debootstrap'ed root of the suite boots

BOOKWORM = ("bookworm", "bookworm-updates", "bookworm-security")
LINES = {
    "6.12": Line("6.12", "bookworm-backports", ("bookworm-backports",),
                 (*BOOKWORM, "bookworm-backports"), "6.12", False),
    # bullseye's kernel on the host: its headers pull bullseye's gcc-10
    # (linux-compiler-gcc-10-x86), 13 new packages, nothing of the host's
    # upgraded; bookworm's bcc compiles against its headers in the guest.
    "5.10": Line("5.10", "bullseye", ("bullseye-security", "bullseye-updates", "bullseye"),
                 (*BOOKWORM, "bullseye", "bullseye-updates", "bullseye-security"), "5.10", False),
    # sid's headers need sid's gcc (gcc-16-for-host) and glibc: not installable
    # on a bookworm host. The lab boots a sid root with sid's bcc instead.
    "sid": Line("sid", "sid", ("sid", "unstable"), ("sid",), None, True),
}
SERIES_SUITES = {k: l.suite for k, l in LINES.items()}   # kept for callers of old
# Where Debian stable's (bookworm's) own kernel metapackage comes from.
STABLE_SUITES = ("bookworm-security", "bookworm-updates", "bookworm")
METAPACKAGES = ("linux-image-amd64", "linux-headers-amd64")
PRIVATE_LISTS_MAX_AGE = 24 * 3600   # refresh the private apt lists daily
APT_TIMEOUT = 1800


def _installed(pkg: str) -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg],
                       capture_output=True, text=True)
    return r.returncode == 0 and "install ok installed" in r.stdout


def _apt_env() -> dict[str, str]:
    return {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def _run_apt(args: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        r = subprocess.run(args, capture_output=True, text=True, env=_apt_env(),
                           timeout=APT_TIMEOUT, cwd=cwd)
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
    def private(cls, suite: str, suites: tuple[str, ...] | None = None) -> "AptConfig":
        """suites: those listed in the sources (default: bookworm's and suite)."""
        root = cache_dir() / "apt" / suite
        lists, cache = root / "lists", root / "cache"
        (lists / "partial").mkdir(parents=True, exist_ok=True)
        (cache / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        sources = root / "sources.list"
        opt = f"[signed-by={KEYRING}]"
        if suites is None:
            suites = (*BOOKWORM, suite) if suite != "bookworm" else BOOKWORM
        text = "".join(f"deb {opt} {SECURITY_MIRROR if s.endswith('-security') else MIRROR} {s} main\n"
                       for s in suites)
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

    def depends(self, package: str, version: str | None = None) -> list[str]:
        """The packages a package (version) depends on (first alternatives)."""
        spec = f"{package}={version}" if version else package
        r = subprocess.run(["apt-cache", *self.options, "depends", "--important", spec],
                           capture_output=True, text=True)
        return [line.split(":", 1)[1].strip().strip("<>") for line in
                (l.strip() for l in r.stdout.splitlines()) if line.startswith("Depends:")]

    def depends_of(self, package: str, version: str, prefix: str = "") -> str | None:
        """The package (starting with prefix) a Debian metapackage depends on:
        sid's linux-image-amd64 depends on linux-base-amd64 first."""
        for dep in self.depends(package, version):
            if dep.startswith(prefix):
                return dep
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
        dep = apt.depends_of("linux-image-amd64", version, "linux-image-") if version else None
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
    A line in LINES ("6.12", "5.10", "sid"): that suite's linux-image-amd64,
    installed on the host, or (sid) into a guest root of the suite (rootfs.py).
    An exact release with /boot/vmlinuz-RELEASE and headers: used as is.
    """
    spec = (spec or "").strip()
    if spec in ("", "stable", "default", "bookworm"):
        apt = AptConfig()
        release = _resolve(apt, STABLE_SUITES)
        _install_kernel(apt, release, progress)
        return Kernel(release, "bookworm")
    if spec in LINES:
        line = LINES[spec]
        apt = AptConfig.private(line.suite, line.sources)
        if not apt.lists_fresh():
            progress(f"lab: apt-get update ({line.suite}, private lists under {apt.lists.parent})")
            apt.update()
        release = _resolve(apt, line.suites)
        if line.series and not release.startswith(line.series + "."):
            raise LabError("apt", f"{line.suite}'s linux-image-amd64 is {release}, "
                                  f"not a {line.series} kernel")
        if line.guest_root:
            root = ensure_root(line.suite, release, kernel_packages(apt, release), progress)
            return Kernel(release, line.suite, root)
        _install_kernel(apt, release, progress)
        return Kernel(release, line.suite)
    k = Kernel(spec, "local")
    if k.vmlinuz.exists() and k.build_dir.exists():
        return k
    known = ", ".join(["stable", *LINES])
    raise LabError("bad input", f"unknown kernel {spec!r} (use one of: {known}, "
                                f"or an installed release with headers)")


def kernel_packages(apt: AptConfig, release: str) -> list[str]:
    """The packages that give release's image, modules and headers. Where the
    image is split (sid: linux-image-R depends on linux-binary-R and
    linux-modules-R), those two instead of linux-image-R: its other
    dependency, an initramfs generator, is not needed (virtme-ng makes its own)."""
    deps = apt.depends(f"linux-image-{release}")
    split = [d for d in deps if d in (f"linux-binary-{release}", f"linux-modules-{release}")]
    image = split if len(split) == 2 else [f"linux-image-{release}"]
    return [*image, f"linux-headers-{release}"]

