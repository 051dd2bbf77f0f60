"""Patch label values: the one unbounded label, bounded.

Livepatch module names change with every cumulative patch a host receives,
and the daemon runs for months. ``PatchLabels`` gives the first
``max_patches`` distinct names their own value and folds every later one
into ``_overflow``; every collector shares one, so a patch has one value.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterable

PREFIX = "klptrace_"

# Distinct patch label values before folding into OVERFLOW. A host carries a
# handful of livepatches at a time; 32 leaves room for months of cumulative
# replacements while bounding the worst case to about a thousand series.
DEFAULT_MAX_PATCHES = 32
OVERFLOW = "_overflow"


class PatchLabels:
    """Maps patch names to label values, at most ``max_patches`` distinct ones.

    A name keeps its value for the life of the process (a series never
    changes name mid-flight); names admitted after the cap is reached become
    ``_overflow``. Shared by every collector so one patch has one value.
    """

    def __init__(self, max_patches: int = DEFAULT_MAX_PATCHES):
        if max_patches < 1:
            raise ValueError("max_patches must be at least 1")
        self.max_patches = max_patches
        self._named: set[str] = set()
        self._overflowed: set[str] = set()
        self._lock = threading.Lock()   # scrapes run in server threads

    def __call__(self, patch: str) -> str:
        if not patch:          # findings without a patch keep the empty value
            return patch
        with self._lock:
            if patch in self._named:
                return patch
            if patch not in self._overflowed and len(self._named) < self.max_patches:
                self._named.add(patch)
                return patch
            self._overflowed.add(patch)
            return OVERFLOW

    def admit(self, patches: Iterable[str]) -> None:
        """Admit names in a deterministic (sorted) order before labelling, so
        the same trace gives the same labels however it is scraped."""
        for p in sorted(set(patches)):
            self(p)

    @property
    def overflowed(self) -> int:
        return len(self._overflowed)


def _fold(table: dict, label_patch: Callable[[str], str], patch_index: int) -> dict:
    """Sum a Stats table after relabelling its patch field (overflow merges keys)."""
    out: dict = {}
    for key, n in table.items():
        k = list(key)
        k[patch_index] = label_patch(k[patch_index])
        k = tuple(k)
        out[k] = out.get(k, 0) + n
    return out
