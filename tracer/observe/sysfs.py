"""The kernel's livepatch sysfs (/sys/kernel/livepatch) and /proc/modules,
read: the one reader of them.

* ``state()``: what livepatch looks like when the daemon starts, for the
  trace header's ``state`` (cycles that began before the trace are then
  judged ``unknown`` by the engine, never violated); also each rotated trace
  file's header, and the metrics' view of the loaded patches;
* ``open_transition()``, ``patch_functions()``: the transition in progress
  and the functions a patch replaces, for the stall view's /proc fallback
  and `klptrace status`.

sysfs shows each patch's objects (one directory per klp_object) but not which
callbacks they register, so ``callbacks`` is left out (= not known)."""

from __future__ import annotations

import os

LIVEPATCH = "/sys/kernel/livepatch"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def patches(root: str = LIVEPATCH) -> list[dict]:
    out = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return out
    for name in names:
        d = os.path.join(root, name)
        if not os.path.isdir(d):
            continue
        objs = [{"name": o} for o in sorted(os.listdir(d))
                if os.path.isdir(os.path.join(d, o))]
        out.append({"name": name, "enabled": _read(os.path.join(d, "enabled")) == "1",
                    "transition": _read(os.path.join(d, "transition")) == "1",
                    "replace": _read(os.path.join(d, "replace")) == "1",
                    "objects": objs})
    return out


def open_transition(root: str = LIVEPATCH) -> tuple[str, str] | None:
    """(patch, target) of the patch in transition, or None. During a
    transition `enabled` is the target (enable sets it before the first
    sweep, disable clears it, a reverse flips it)."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return None
    for name in names:
        if _read(os.path.join(root, name, "transition")) == "1":
            enabled = _read(os.path.join(root, name, "enabled")) == "1"
            return name, "patched" if enabled else "unpatched"
    return None


def patch_functions(patch: str, root: str = LIVEPATCH) -> set[str]:
    """The (old) names of the functions the patch replaces: its sysfs
    directories <object>/<function>,<sympos>."""
    out: set[str] = set()
    d = os.path.join(root, patch)
    try:
        objs = os.listdir(d)
    except OSError:
        return out
    for o in objs:
        od = os.path.join(d, o)
        if not os.path.isdir(od):
            continue
        for f in os.listdir(od):
            if "," in f and os.path.isdir(os.path.join(od, f)):
                out.add(f.rsplit(",", 1)[0])
    return out


def modules(path: str = "/proc/modules") -> list[str]:
    try:
        with open(path) as f:
            return [line.split()[0] for line in f if line.strip()]
    except OSError:
        return []


def state() -> dict:
    return {"patches": patches(), "modules": modules()}
