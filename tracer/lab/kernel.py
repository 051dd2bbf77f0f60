"""A lab kernel: its release, where it came from, the guest root it boots
over (if any), and where its files are."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Kernel:
    release: str       # `uname -r` of the guest, e.g. 6.1.0-56-amd64
    suite: str         # where it came from (bookworm, bookworm-backports, local)
    root: Path | None = None   # a guest userland (rootfs.py) it boots over; None: the host's

    def host_path(self, guest_path: str | Path) -> Path:
        """Where a path of the guest's filesystem is on the host."""
        p = Path(guest_path)
        return self.root / p.relative_to("/") if self.root is not None else p

    @property
    def vmlinuz(self) -> Path:
        """/boot/vmlinuz-RELEASE; sid's split image (linux-binary-RELEASE) has
        it only at /usr/lib/modules/RELEASE/vmlinuz (linux-image's scripts
        would copy it to /boot)."""
        return vmlinuz_in(self.root or Path("/"), self.release)

    @property
    def build_dir(self) -> Path:
        """The kernel's headers, as kbuild and bcc find them (a guest path:
        for a guest root, kbuild runs chrooted into it)."""
        return Path("/lib/modules") / self.release / "build"

    @property
    def headers_dir(self) -> Path:
        """The headers on the host (Debian's build symlink is absolute)."""
        return self.host_path(f"/usr/src/linux-headers-{self.release}")

    @property
    def series(self) -> str:
        return ".".join(self.release.split(".")[:2])


def vmlinuz_in(root: Path, release: str) -> Path:
    boot = root / "boot" / f"vmlinuz-{release}"
    usr = root / "usr/lib/modules" / release / "vmlinuz"
    return usr if not boot.exists() and usr.exists() else boot
