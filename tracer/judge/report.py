"""Turning a validation result into text for people or JSON for machines."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from klptrace.tracer.judge import stallsummary
from klptrace.tracer.judge.engine import UNKNOWN, VIOLATION, WARNING, Finding, Stats
from klptrace.tracer.model.rules import RULES


@dataclass
class FileResult:
    path: str
    findings: list[Finding] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    input_warnings: list[str] = field(default_factory=list)  # reader: truncation, skips
    error: str | None = None          # unusable input: the one line to print
    stalls: list[dict] = field(default_factory=list)    # information, never findings (stallsummary)

    def count(self, kind: str) -> int:
        return sum(1 for f in self.findings if f.kind == kind)

    @property
    def warnings(self) -> int:
        return self.count(WARNING) + len(self.input_warnings)


def _refs(f: Finding) -> str:
    return ", ".join(f"seq {s} (ts {t})" for s, t in f.records) or "end of trace"


def format_finding(f: Finding) -> str:
    where = "/".join(x for x in (f.patch, f.object) if x)
    head = {VIOLATION: "VIOLATION", UNKNOWN: "UNKNOWN", WARNING: "WARNING"}[f.kind]
    lines = [f"  {head}{' ' + f.rule if f.rule else ''}{' ' + where if where else ''}: "
             f"{f.message}"]
    if f.records:
        lines.append(f"    records: {_refs(f)}")
    if f.kind == VIOLATION and f.rule:
        r = RULES[f.rule]
        lines.append(f"    rule: {r.statement}")
        lines.append(f'    spec: "{r.quote}"')
    return "\n".join(lines)


def format_text(results: list[FileResult]) -> str:
    out = []
    for r in results:
        if r.error is not None and not r.stats.records:
            out.append(f"{r.path}: unusable: {r.error}")
            continue
        out.append(f"{r.path}: {r.stats.records} records, {r.count(VIOLATION)} violation(s), "
                   f"{r.count(UNKNOWN)} unknown, {r.warnings} warning(s)"
                   + (" [input unusable after this point]" if r.error else ""))
        for w in r.input_warnings:
            out.append(f"  WARNING {w}")
        out.extend(format_finding(f) for f in r.findings)
        out.extend(stallsummary.format_text(r.stalls))
    return "\n".join(out)


def format_json(results: list[FileResult]) -> str:
    doc = {"files": [], "violations": 0, "unknown": 0, "warnings": 0}
    for r in results:
        doc["files"].append({
            "path": r.path, "records": r.stats.records, "error": r.error,
            "violations": r.count(VIOLATION), "unknown": r.count(UNKNOWN),
            "warnings": r.warnings, "input_warnings": r.input_warnings,
            "findings": [f.to_json() for f in r.findings], "stalls": r.stalls})
        doc["violations"] += r.count(VIOLATION)
        doc["unknown"] += r.count(UNKNOWN)
        doc["warnings"] += r.warnings
    return json.dumps(doc, indent=2)
