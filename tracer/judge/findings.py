"""Findings and the counters the exporters read: what the engine reports.

Three verdicts: ``violation`` (the trace shows what the specification
forbids), ``unknown`` (the engine cannot judge: lost records, a cycle that
began before the trace, a module whose load state is not known; never a
violation) and ``warning``. Whether a broken rule is a violation or unknown
is decided here only, from what the rule needs (tracer/model/rules.py ``needs``) and
what the engine does not know.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from klptrace.tracer.judge.state import LOST
from klptrace.tracer.model.rules import HISTORY, RULES

VIOLATION, UNKNOWN, WARNING = "violation", "unknown", "warning"

# Transition outcomes, as exported.
OUTCOMES = ("completed", "reversed", "cancelled", "forced")

# Callback results, as exported: pre_patch returns a code, the others are void.
RESULTS = ("ok", "error", "unknown", "void")

# rule -> judging it needs the patch's history in this cycle
_NEEDS_HISTORY = {r.id: HISTORY in r.needs for r in RULES.values()}


@dataclass
class Finding:
    kind: str                     # violation | unknown | warning
    message: str
    rule: str | None = None
    patch: str | None = None
    object: str | None = None
    records: list[tuple[int, int]] = field(default_factory=list)  # (seq, ts_ns)

    def to_json(self) -> dict:
        d = {"kind": self.kind, "rule": self.rule, "patch": self.patch,
             "object": self.object, "message": self.message,
             "records": [{"seq": s, "ts_ns": t} for s, t in self.records]}
        if self.rule:
            d["spec"] = RULES[self.rule].quote
        return d


@dataclass
class Stats:
    """Counters both exporters read: the live daemon at scrape time and
    ``validate --textfile`` at the end, so they agree on the same trace."""
    records: int = 0
    callbacks: dict = field(default_factory=dict)     # (patch,obj,cb,result,evidence) -> n
    violations: dict = field(default_factory=dict)    # (rule, patch) -> n
    transitions: dict = field(default_factory=dict)   # (patch, target, outcome) -> n
    lost_records: int = 0
    unknown: int = 0
    warnings: int = 0

    def bump(self, table: dict, key: tuple, n: int = 1) -> None:
        table[key] = table.get(key, 0) + n

    def merge(self, other: "Stats") -> None:
        """Add another trace's counts (validate over several files)."""
        self.records += other.records
        self.lost_records += other.lost_records
        self.unknown += other.unknown
        self.warnings += other.warnings
        for mine, theirs in ((self.callbacks, other.callbacks),
                             (self.violations, other.violations),
                             (self.transitions, other.transitions)):
            for k, n in theirs.items():
                self.bump(mine, k, n)


class Verdicts:
    """Turning a broken rule into a finding, and counting it: the one place
    that decides violation or unknown. Every judge reports through it."""

    def __init__(self, stats: Stats):
        self.stats = stats
        self._unknown_said: set = set()     # (patch, object, what) already said unknown

    def judge(self, out: list, ps, rule: str, message: str, obj: str | None,
              refs: list) -> None:
        """A broken rule is a violation unless what it needs is not known:
        lost records put every rule of the patch in doubt; a cycle that began
        before the trace, or a step taken while the object's module state was
        unknown, only the rules that need the patch's history. Then it is
        ``unknown``, once per (patch, object, rule)."""
        why = None
        if ps is not None:
            doubt = ps.doubt
            if doubt is not None and (doubt is LOST or _NEEDS_HISTORY[rule]):
                why = doubt
            elif obj is not None and _NEEDS_HISTORY[rule]:
                o = ps.objects.get(obj)
                if o is not None and o.unsure:
                    why = f"module '{obj}' state unknown"
        if why is not None:
            self.unknown_once(out, ps.name, obj, rule, f"not judged ({why}): {message}", refs)
            return
        pname = ps.name if ps is not None else None
        self.stats.bump(self.stats.violations, (rule, pname or ""))
        out.append(Finding(VIOLATION, message, rule, pname, obj, refs))

    def reporter(self, out: list):
        """``report(patch, rule, message, object, refs)`` into ``out``."""
        return lambda *finding: self.judge(out, *finding)

    def unknown_once(self, out: list, pname, obj, what, message: str, refs) -> None:
        key = (pname, obj, what)
        if key in self._unknown_said:
            return
        self._unknown_said.add(key)
        self.stats.unknown += 1
        rule = what if what in RULES else None
        out.append(Finding(UNKNOWN, message, rule, pname, obj, list(refs)))

    def unknown(self, out: list, message: str, patch=None, refs=()) -> None:
        self.stats.unknown += 1
        out.append(Finding(UNKNOWN, message, None, patch, None, list(refs)))

    def warn(self, out: list, message: str, patch=None, obj=None, refs=()) -> None:
        self.stats.warnings += 1
        out.append(Finding(WARNING, message, None, patch, obj, list(refs)))
