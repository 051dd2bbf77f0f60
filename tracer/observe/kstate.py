"""What livepatch looks like when the daemon starts, for the trace header's
``state``: /sys/kernel/livepatch/* and the loaded modules. Cycles that began
before the trace are then judged ``unknown`` by the engine, never violated.

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


def modules(path: str = "/proc/modules") -> list[str]:
    try:
        with open(path) as f:
            return [line.split()[0] for line in f if line.strip()]
    except OSError:
        return []


def state() -> dict:
    return {"patches": patches(), "modules": modules()}
