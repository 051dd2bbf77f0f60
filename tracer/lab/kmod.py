"""Builds the lab's test modules (tests/kmod) out of tree for one kernel.

Each kernel gets its own copy of the sources under the cache dir, so builds
for 6.1 and 6.12 never mix and the repository stays free of build output; a
stamp (hash of the sources) skips the build when nothing changed."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from .cachedir import KMOD_SOURCE_DIR, cache_dir
from .errors import LabError
from .kernel import Kernel
from .rootfs import chroot_argv

# keep in step with tests/kmod/Makefile (tests/unit/test_lab_modules.py)
LIVEPATCHES = ("klpt_lp", "klpt_lp2", "klpt_up1", "klpt_up2", "klpt_cum1", "klpt_cum2",
               "klpt_cum3", "klpt_many", "klpt_kp", "klpt_kb", "klpt_sys")
TARGETS = ("klpt_mod", "klpt_busy", "klpt_t01", "klpt_t02", "klpt_t03", "klpt_t09",
           "klpt_t10", "klpt_t11")
MODULES = LIVEPATCHES + TARGETS
# user-space programs of the scenarios, built static with the host's gcc
# beside the modules (one binary runs over any guest root)
PROGRAMS = ("klpt_getpid",)
BUILD_TIMEOUT = 300
ROOT_KMOD_DIR = "/var/lib/klptrace-lab/kmod"   # in a guest root (its /var/cache is hidden)


def _sources() -> list[Path]:
    return sorted(p for p in KMOD_SOURCE_DIR.iterdir()
                  if p.suffix in (".c", ".h", ".lds") or p.name == "Makefile")


def _digest(kernel: Kernel) -> str:
    h = hashlib.sha256(kernel.release.encode())
    for p in _sources():
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def build_modules(kernel: Kernel, progress: Callable[[str], None] = print) -> Path:
    """Directory holding klpt_*.ko built against kernel's headers."""
    headers = kernel.build_dir if kernel.root is None else kernel.headers_dir
    if not headers.exists():
        raise LabError("build", f"no headers for {kernel.release} at {headers}")
    # A kernel with a guest root (rootfs.py) is built chrooted into it, with
    # its suite's gcc, so its sources and build live inside the root.
    out = (cache_dir() / "kmod" / kernel.release if kernel.root is None
           else kernel.host_path(ROOT_KMOD_DIR) / kernel.release)
    stamp = out / ".klpt-sources"
    digest = _digest(kernel)
    if (stamp.exists() and stamp.read_text() == digest
            and all((out / f"{m}.ko").exists() for m in MODULES)
            and all((out / p).exists() for p in PROGRAMS)):
        return out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for p in _sources():
        shutil.copy2(p, out / p.name)
    progress(f"lab: building {', '.join(MODULES)} for {kernel.release}")
    cmd = ["make", "-C", str(kernel.build_dir), f"M={out}", "modules"]
    if kernel.root is not None:
        cmd = chroot_argv(kernel.root, ["make", "-C", str(kernel.build_dir),
                                        f"M={ROOT_KMOD_DIR}/{kernel.release}", "modules"])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise LabError("build", f"module build for {kernel.release} took over {BUILD_TIMEOUT}s") from None
    if r.returncode != 0:
        errs = [l for l in r.stderr.splitlines() if "error" in l.lower()] or r.stderr.splitlines()
        raise LabError("build", f"modules for {kernel.release}: {errs[0] if errs else 'make failed'}",
                       detail=r.stdout + r.stderr)
    missing = [m for m in MODULES if not (out / f"{m}.ko").exists()]
    if missing:
        raise LabError("build", f"make succeeded but {', '.join(missing)}.ko missing")
    for prog in PROGRAMS:
        r = subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", str(out / prog),
                            str(out / f"{prog}.c")], capture_output=True, text=True)
        if r.returncode != 0:
            raise LabError("build", f"{prog}: {(r.stderr.strip().splitlines() or ['gcc failed'])[0]}",
                           detail=r.stderr)
    stamp.write_text(digest)
    return out


def stage_modules(built: Path, dest: Path) -> Path:
    """Copy the .ko files where the guest can read them: the guest mounts a
    tmpfs over /var/cache, hiding the cache dir, so the run dir carries them."""
    dest.mkdir(parents=True, exist_ok=True)
    for m in MODULES:
        shutil.copy2(built / f"{m}.ko", dest / f"{m}.ko")
    for p in PROGRAMS:
        shutil.copy2(built / p, dest / p)
    return dest
