"""Reading the lab's trace files in the kernel tests: the records after the
header, and each callback record as the key the kernel-log ground truth uses
(tracer/lab/groundtruth.py: patch, object, callback, pre_patch's ret)."""

from __future__ import annotations

import json
from pathlib import Path


def header(path: Path) -> dict:
    with open(path) as f:
        return json.loads(f.readline())


def records(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    return [json.loads(l) for l in lines[1:] if l.strip()]


def callback_keys(recs: list[dict]) -> list[tuple]:
    return [(r["patch"], r["object"], r["callback"],
             r.get("ret") if r["callback"] == "pre_patch" else None)
            for r in recs if r["type"] == "callback"]
