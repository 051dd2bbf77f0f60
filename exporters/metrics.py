"""The metric families klptrace exports, built from the engine's Stats.

One collector serves both the live daemon (read at scrape time) and
`klptrace validate --textfile` (read once at the end), so the two agree on
the same trace by construction. docs/metrics.md is generated from here.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from tracer import rules as rules_mod
from tracer import events as ev
from tracer.engine import OUTCOMES, Stats

PREFIX = "klptrace_"


class StatsCollector:
    """A custom collector over an engine's Stats (state read at collect time)."""

    def __init__(self, stats_source):
        # stats_source: a callable returning the current Stats (the engine
        # may be replaced, e.g. per file in validate)
        self._stats = stats_source

    def describe(self):
        return []   # unchecked collector: families depend on what was seen

    def collect(self):
        s: Stats = self._stats()
        cb = CounterMetricFamily(PREFIX + "callbacks",
                                 "Livepatch callbacks observed, by patch, object, callback, "
                                 "result (ok|error|unknown|void) and evidence "
                                 "(direct|core|inferred).",
                                 labels=["patch", "object", "callback", "result", "evidence"])
        for key, n in sorted(s.callbacks.items()):
            cb.add_metric(list(key), n)
        yield cb
        vi = CounterMetricFamily(PREFIX + "violations",
                                 "Callback rule violations, by rule ID and patch.",
                                 labels=["rule", "patch"])
        seen_rules = {r for r, _ in s.violations}
        for key, n in sorted(s.violations.items()):
            vi.add_metric(list(key), n)
        for rid in rules_mod.RULES:           # children known up front start at 0
            if rid not in seen_rules:
                vi.add_metric([rid, ""], 0)
        yield vi
        tr = CounterMetricFamily(PREFIX + "transitions",
                                 "Livepatch transitions finished, by patch, target "
                                 f"({'|'.join(ev.TARGETS)}) and outcome ({'|'.join(OUTCOMES)}).",
                                 labels=["patch", "target", "outcome"])
        for key, n in sorted(s.transitions.items()):
            tr.add_metric(list(key), n)
        yield tr
        yield CounterMetricFamily(PREFIX + "lost_records",
                                  "Trace records lost before they reached klptrace "
                                  "(ring buffer full); a gap, judged unknown.",
                                  value=s.lost_records)
        yield CounterMetricFamily(PREFIX + "records", "Trace records processed.",
                                  value=s.records)
        yield CounterMetricFamily(PREFIX + "unknown_findings",
                                  "Findings the engine could not judge (lost records, cycles "
                                  "that began before the trace).", value=s.unknown)
        yield CounterMetricFamily(PREFIX + "warnings", "Warnings raised by the rule engine.",
                                  value=s.warnings)


def verdict_gauges(violations: int, unknown: int, warnings: int, usable: bool,
                   timestamp: float):
    """`validate --textfile` extras: the verdict of the last validation run."""
    g = GaugeMetricFamily(PREFIX + "validate_verdict",
                          "Verdict of the last `klptrace validate`: 1 for the state it had.",
                          labels=["verdict"])
    verdict = ("unusable" if not usable else "violations" if violations
               else "clean")
    for v in ("clean", "violations", "unusable"):
        g.add_metric([v], 1.0 if v == verdict else 0.0)
    yield g
    yield GaugeMetricFamily(PREFIX + "validate_last_run_timestamp_seconds",
                            "When the last `klptrace validate` finished (Unix time).",
                            value=timestamp)
