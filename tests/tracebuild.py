"""Building and mutating traces in memory for the engine's unit tests.

Honouring traces come from tests/kmodel.py (a model of the kernel's
behaviour); breaking ones are those traces with one record dropped, copied,
moved or added. Nothing here pretends to be a kernel."""

from __future__ import annotations

import json

from tracer.engine import Engine
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


def write_jsonl(path, header, records) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(header) + "\n")
        for r in renumber(records):
            f.write(json.dumps(r) + "\n")


__all__ = ["ALL", "KernelModel", "PatchDef"]
