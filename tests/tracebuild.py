"""Building and mutating traces in memory for the engine's unit tests.

Honouring traces come from tests/kmodel.py (a model of the kernel's
behaviour); breaking ones are those traces with one record dropped, copied,
moved or added. Nothing here pretends to be a kernel."""

from __future__ import annotations

import json

from klptrace.tracer.judge.engine import Engine
from kmodel import ALL, KernelModel, PatchDef


def lp(**kw) -> PatchDef:
    """The lab's klpt_lp: three objects, all four callbacks each."""
    return PatchDef("klpt_lp", [("vmlinux", ALL), ("klpt_mod", ALL), ("klpt_busy", ALL)], **kw)


def renumber(records: list[dict]) -> list[dict]:
    out = []
    for i, r in enumerate(records, 1):
        r = dict(r)
        r["seq"], r["ts_ns"] = i, 1000 * i
        out.append(r)
    return out


def judge(header: dict, records: list[dict]):
    e = Engine(header)
    found = []
    for r in renumber(records):
        found += e.feed(r)
    found += e.finish()
    return found


def violations(header, records) -> set[str]:
    return {f.rule for f in judge(header, records) if f.kind == "violation"}


def verdict(header, records) -> list[tuple[str, str | None]]:
    """What the engine concluded, without the messages: the sorted (kind,
    rule) of every violation and unknown (warnings are about the trace's
    ends, not its content)."""
    return sorted((f.kind, f.rule or "") for f in judge(header, records)
                  if f.kind != "warning")


def is_cb(r, patch=None, obj=None, cb=None) -> bool:
    return (r["type"] == "callback" and (patch is None or r["patch"] == patch)
            and (obj is None or r["object"] == obj) and (cb is None or r["callback"] == cb))


def is_tr(r, event, target=None) -> bool:
    return r["type"] == "transition" and r["event"] == event and \
        (target is None or r["target"] == target)


def index(records, pred, nth=0) -> int:
    hits = [i for i, r in enumerate(records) if pred(r)]
    return hits[nth]


def drop(records, pred) -> list[dict]:
    i = index(records, pred)
    return records[:i] + records[i + 1:]


def duplicate(records, pred) -> list[dict]:
    i = index(records, pred)
    return records[:i + 1] + [records[i]] + records[i + 1:]


def insert_after(records, pred, new: dict) -> list[dict]:
    i = index(records, pred)
    return records[:i + 1] + [dict(new, seq=0, ts_ns=0)] + records[i + 1:]


def move_after(records, what, where) -> list[dict]:
    i = index(records, what)
    r = records[i]
    rest = records[:i] + records[i + 1:]
    j = index(rest, where)
    return rest[:j + 1] + [r] + rest[j + 1:]


def move_before(records, what, where) -> list[dict]:
    i = index(records, what)
    r = records[i]
    rest = records[:i] + records[i + 1:]
    j = index(rest, where)
    return rest[:j] + [r] + rest[j:]


def cb(patch, obj, name, ret=None) -> dict:
    d = {"type": "callback", "seq": 0, "ts_ns": 0, "patch": patch, "object": obj,
         "callback": name, "evidence": "direct"}
    if ret is not None:
        d["ret"] = ret
    return d


# --- where a free record may stand (docs/trace-format.md) ---------------------

def _names(r, patch: str) -> bool:
    return r.get("patch") == patch


def _pinned(r) -> bool:
    """Records the kernel's order pins that need klp_mutex: they close a step."""
    return r["type"] == "transition" or (r["type"] == "module"
                                         and r["event"] in ("coming", "going"))


def _last(rest, i, pred) -> int:
    return next((j for j in range(i - 1, -1, -1) if pred(rest[j])), -1)


def _first(rest, i, pred) -> int:
    return next((j for j in range(i, len(rest)) if pred(rest[j])), len(rest))


def free_range(records, i) -> tuple[int, int] | None:
    """Where record i may stand instead, as (lo, hi): any insertion point p
    with lo < p <= hi in the list without it (p = lo + 1 is right after the
    record it must follow). None for a pinned record. This is the section
    "Where each record may stand" of docs/trace-format.md, in code."""
    r = records[i]
    rest = records[:i] + records[i + 1:]
    t, e = r["type"], r.get("event")
    if t == "patch":
        p = r["patch"]
        if e == "enable":           # after its previous cycle, before anything of this one
            return _last(rest, i, lambda x: _names(x, p)), _first(rest, i, lambda x: _names(x, p))
        if e == "enable_failed":    # after the failing step, before the next cycle
            lo = _last(rest, i, lambda x: _names(x, p) and (
                (x["type"] == "callback" and x.get("ret", 0) != 0)
                or (x["type"] == "patch" and x["event"] == "enable")))
            return lo, _first(rest, i, lambda x: _names(x, p) and (
                x["type"] == "patch" and x["event"] in ("enable", "removed")
                or x["type"] == "transition" and x["event"] == "init"))
        if e == "disable":          # after the patch's last transition, before the one it asks for
            return (_last(rest, i, lambda x: _names(x, p) and (
                x["type"] == "transition" or x["type"] == "patch" and x["event"] == "enable")),
                _first(rest, i, lambda x: _names(x, p) and x["type"] == "transition"))
        if e == "replaced":         # inside the replacing patch's completion
            lo = _last(rest, i, lambda x: x["type"] == "transition" and x["event"] == "complete")
            return lo, _first(rest, i, lambda x: _pinned(x) or _names(x, p))
        if e == "removed":          # after the cycle ended
            return _last(rest, i, lambda x: _names(x, p)), _first(rest, i, lambda x: _names(x, p))
        return None
    if t == "module" and e in ("live", "refused"):
        m = r["module"]
        coming = _last(rest, i, lambda x: x["type"] == "module" and x["module"] == m
                       and x["event"] == "coming")
        if coming < 0:
            return None
        end = _first(rest, coming + 1, _pinned)     # the section's end
        if e == "live":             # after the section's last callback
            lo = max([coming] + [j for j in range(coming + 1, min(end, i))
                                 if rest[j]["type"] == "callback" and rest[j]["object"] == m])
        else:                       # after the failing pre_patch (or the section's start)
            lo = max([coming] + [j for j in range(coming + 1, min(end, i))
                                 if rest[j]["type"] == "callback" and rest[j]["object"] == m
                                 and rest[j].get("ret", 0) != 0])
        return lo, _first(rest, i, lambda x: x["type"] == "module" and x["module"] == m)
    return None


def move(records, i, p) -> list[dict]:
    """Record i moved to insertion point p of the list without it."""
    rest = records[:i] + records[i + 1:]
    return rest[:p] + [records[i]] + rest[p:]


def placements(records, i) -> list[list[dict]]:
    """Every legal placement of free record i (docs/trace-format.md)."""
    rng = free_range(records, i)
    if rng is None:
        return []
    lo, hi = rng
    return [move(records, i, p) for p in range(lo + 1, hi + 1)]


def same_completion_completes(records) -> list[int]:
    """The `complete` records that klp_cancel_transition's own
    klp_complete_transition wrote: a writer may leave them out."""
    out = []
    for j, r in enumerate(records):
        if r["type"] == "transition" and r["event"] == "complete" and j > 0:
            prev = records[j - 1]
            if prev["type"] == "transition" and prev["event"] == "cancel" \
                    and prev["patch"] == r["patch"]:
                out.append(j)
    return out


def replace_free(records, choose, moves: int = 4) -> list[dict]:
    """The same run as another writer could have written it: up to
    ``moves`` free records moved to other legal places, and the `complete`s
    of cancels perhaps left out. ``choose(n)`` picks one of 0..n-1."""
    rs = list(records)
    for _ in range(moves):
        free = [i for i in range(len(rs)) if free_range(rs, i) is not None]
        if not free:
            break
        i = free[choose(len(free))]
        lo, hi = free_range(rs, i)
        rs = move(rs, i, lo + 1 + choose(hi - lo))
    for j in reversed(same_completion_completes(rs)):
        if choose(2):
            rs = rs[:j] + rs[j + 1:]
    return rs


def write_jsonl(path, header, records) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(header) + "\n")
        for r in renumber(records):
            f.write(json.dumps(r) + "\n")


__all__ = ["ALL", "KernelModel", "PatchDef"]
