"""Where the lab keeps kernel-side state between runs: private apt lists and
downloads, per-kernel module builds. Outside the repository so repeated runs
are fast and the tree stays clean. KLPT_LAB_CACHE overrides the location."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
KMOD_SOURCE_DIR = REPO_ROOT / "tests" / "kmod"
GUEST_SCRIPTS_DIR = Path(__file__).resolve().parent   # guest_driver.sh, guest_helpers.sh


def cache_dir() -> Path:
    d = Path(os.environ.get("KLPT_LAB_CACHE", "/var/cache/klptrace-lab"))
    d.mkdir(parents=True, exist_ok=True)
    return d
