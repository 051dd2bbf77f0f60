"""What `klptrace validate` says about stalled transitions: information from
a trace's `stall` records (docs/trace-format.md), never a finding: a stall is
the kernel's consistency model doing its job, not a callback rule broken.

One ``Stall`` per transition direction that reported blockers (from its first
`stall` record to its `cleared`, or the end of the trace): how long, the
blocking tasks with reason and function, how it ended (`cause`), the
signals. Bounded by the records themselves (a writer writes at most a few
hundred per direction, tracer/observe/stalls.py), and kept per direction, so the
memory is that of one direction's records.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BLOCKERS_SHOWN = 5          # per stall in the text report (all of them in JSON)


@dataclass
class Blocker:
    pid: int
    comm: str
    kthread: bool
    reason: str
    function: str | None
    since_ns: int
    until_ns: int | None = None         # its `switched`, or the stall's end


@dataclass
class Stall:
    patch: str
    target: str
    began_ns: int                       # the earliest blocker's since (or the record's)
    ended_ns: int | None = None         # the `cleared` record; None: open at the end of the trace
    cause: str | None = None            # what ended it: complete, reverse, cancel, ...
    signals: int = 0
    forced: bool = False
    unlisted: int = 0                   # blockers the writer counted without listing
    blockers: dict = field(default_factory=dict)    # pid -> Blocker

    def duration_ns(self, last_ns: int) -> int:
        return (self.ended_ns if self.ended_ns is not None else last_ns) - self.began_ns

    def to_json(self, last_ns: int) -> dict:
        return {"patch": self.patch, "target": self.target, "began_ns": self.began_ns,
                "ended_ns": self.ended_ns, "duration_s": round(self.duration_ns(last_ns) / 1e9, 3),
                "cause": self.cause, "signals": self.signals, "forced": self.forced,
                "unlisted_blockers": self.unlisted,
                "blockers": [{"pid": b.pid, "comm": b.comm, "kthread": b.kthread,
                              "reason": b.reason, "function": b.function,
                              "since_ns": b.since_ns, "until_ns": b.until_ns}
                             for b in self.blockers.values()]}


class StallSummary:
    """Fed every `stall` record of one trace, in order."""

    def __init__(self):
        self.stalls: list[Stall] = []
        self._open: dict[str, Stall] = {}       # patch -> its open stall
        self.last_ns = 0

    def add(self, rec: dict) -> None:
        ts, patch, e = rec["ts_ns"], rec["patch"], rec["event"]
        self.last_ns = max(self.last_ns, ts)
        s = self._open.get(patch)
        if s is None or s.target != rec["target"]:
            s = self._open[patch] = Stall(patch, rec["target"], rec["since_ns"])
            self.stalls.append(s)
        if e == "blocked":
            b = s.blockers.get(rec["pid"])
            if b is None:
                s.blockers[rec["pid"]] = Blocker(rec["pid"], rec["comm"], bool(rec.get("kthread")),
                                                 rec["reason"], rec.get("function"),
                                                 rec["since_ns"])
                s.began_ns = min(s.began_ns, rec["since_ns"])
            else:
                b.reason, b.function = rec["reason"], rec.get("function") or b.function
        elif e == "switched":
            b = s.blockers.get(rec["pid"])
            if b is not None:
                b.until_ns = ts
        elif e == "overflow":
            s.unlisted = max(s.unlisted, rec.get("tasks", 0))
        elif e == "signalled":
            s.signals = max(s.signals, rec.get("signals", 1))
        elif e == "cleared":
            s.ended_ns, s.cause = ts, rec.get("cause")
            s.signals = max(s.signals, rec.get("signals", 0))
            s.forced = bool(rec.get("forced"))
            for b in s.blockers.values():
                if b.until_ns is None:
                    b.until_ns = ts
            del self._open[patch]

    def finish(self) -> list[dict]:
        """Every stall as a JSON object (the `stalls` of `validate --format json`)."""
        return [s.to_json(self.last_ns) for s in self.stalls]


def format_text(stalls: list[dict]) -> list[str]:
    """INFO lines for ``finish()``'s stalls (indented: `validate -q` leaves them out)."""
    out = []
    for s in stalls:
        end = f"ended by {s['cause']}" if s["ended_ns"] is not None else \
            "still open at the end of the trace"
        extra = (f", signalled {s['signals']} time(s)" if s["signals"] else "") + \
            (", forced" if s["forced"] else "")
        n = len(s["blockers"]) + s["unlisted_blockers"]
        out.append(f"  INFO stall: transition of {s['patch']} to {s['target']} blocked for "
                   f"{s['duration_s']:.1f}s by {n} task(s), {end}{extra}")
        last = s["began_ns"] + int(s["duration_s"] * 1e9)
        for b in s["blockers"][:BLOCKERS_SHOWN]:
            until = b["until_ns"] if b["until_ns"] is not None else last
            kind = "kthread" if b["kthread"] else "task"
            fn = f" in {b['function']}" if b["function"] else ""
            out.append(f"    {kind} {b['comm']} (pid {b['pid']}) {b['reason']}{fn} for "
                       f"{(until - b['since_ns']) / 1e9:.1f}s")
        more = n - min(len(s["blockers"]), BLOCKERS_SHOWN)
        if more > 0:
            out.append(f"    ... and {more} more")
    return out
