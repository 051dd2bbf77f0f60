"""The metric families klptrace exports.

Two kinds, as the Prometheus "Writing exporters" guide separates them:

* State owned elsewhere, read at scrape time by custom collectors:
  ``StatsCollector`` (here) over the rule engine's Stats (callbacks,
  violations, transitions, lost records); the daemon's own collectors in
  exporters/collectors.py (the kernel's /sys/kernel/livepatch, the probe
  plan, the daemon's health, stalls, build and kernel info).
* Events the exporter sees itself, instrumented directly: the transition
  duration histogram (fed by the daemon's MetricsSink) and the
  exporter's own scrape counter.

``StatsCollector`` serves both the live daemon and ``klptrace validate
--textfile``, so the two agree on the same trace by construction.
docs/metrics.md is generated from a registry built here
(``python -m exporters.metricsdoc``); a test fails when it drifts.

Label cardinality: the only unbounded label is ``patch``, bounded by
exporters/labels.py ``PatchLabels``; every other label's values are a fixed
vocabulary (an enum of the module that produces it) declared in full.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Histogram

try:
    from prometheus_client import disable_created_metrics
except ImportError:     # prometheus_client 0.16 (Debian 12): the same switch, by hand
    def disable_created_metrics() -> None:
        import prometheus_client.metrics as _pm
        _pm._use_created = False
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from klptrace.exporters.collectors import (HealthCollector, InfoCollector, LivepatchCollector,
                                          ProbeCollector, SelfMetrics, StallCollector)
from klptrace.exporters.labels import DEFAULT_MAX_PATCHES, PREFIX, PatchLabels, _fold
from klptrace.tracer.model import events as ev
from klptrace.tracer.model import rules as rules_mod
from klptrace.tracer.judge.engine import OUTCOMES, RESULTS, Stats

# Livepatch transitions wait for every task to reach a safe point, retried each
# second by the kernel: most finish in well under a minute, a stalled one can
# take hours. Seconds, base unit.
TRANSITION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class StatsCollector:
    """The engine's counters, read at collect time."""

    def __init__(self, stats_source: Callable[[], Stats | None],
                 patch_labels: PatchLabels | None = None):
        # stats_source: a callable returning the current Stats (the engine may
        # not exist yet in the daemon, or be replaced per file in validate);
        # None reads as empty.
        self._stats = stats_source
        self._label = patch_labels or PatchLabels()

    def describe(self):
        return []   # unchecked collector: the samples depend on what was seen

    def collect(self):
        s = self._stats() or Stats()
        # Copies first: the engine mutates these dicts in the main thread while
        # a scrape runs in a server thread; dict() of a dict is one C call under
        # the GIL, iterating the live dict is not safe.
        callbacks, violations, transitions = (dict(s.callbacks), dict(s.violations),
                                              dict(s.transitions))
        self._label.admit([k[0] for k in callbacks] + [k[1] for k in violations]
                          + [k[0] for k in transitions])

        cb = CounterMetricFamily(
            PREFIX + "callbacks",
            "Livepatch callbacks observed, by patch, object, callback "
            f"({'|'.join(ev.CALLBACKS)}), result ({'|'.join(RESULTS)}) and evidence "
            f"({'|'.join(ev.EVIDENCE)}).",
            labels=["patch", "object", "callback", "result", "evidence"])
        for key, n in sorted(_fold(callbacks, self._label, 0).items()):
            cb.add_metric(list(key), n)
        yield cb

        vi = CounterMetricFamily(PREFIX + "violations",
                                 "Callback rule violations, by rule ID (docs/rules.md) and "
                                 "patch (empty when the finding names none).",
                                 labels=["rule", "patch"])
        folded = _fold(violations, self._label, 1)
        seen_rules = {r for r, _ in folded}
        for rid in rules_mod.RULES:        # a rule not broken yet still has a series
            if rid not in seen_rules:
                folded[(rid, "")] = 0
        for key, n in sorted(folded.items()):
            vi.add_metric(list(key), n)
        yield vi

        tr = CounterMetricFamily(PREFIX + "transitions",
                                 "Livepatch transitions finished, by patch, target "
                                 f"({'|'.join(ev.TARGETS)}) and outcome ({'|'.join(OUTCOMES)}).",
                                 labels=["patch", "target", "outcome"])
        folded = _fold(transitions, self._label, 0)
        for patch in {k[0] for k in folded}:     # a patch seen: all its children
            for target in ev.TARGETS:
                for outcome in OUTCOMES:
                    folded.setdefault((patch, target, outcome), 0)
        for key, n in sorted(folded.items()):
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


class DaemonMetrics:
    """Everything the live daemon exports, in one registry.

    The daemon wires it like this (see docs/operations.md)::

        metrics = DaemonMetrics(lambda: engine.stats if engine else None,
                                livepatch_state=sysfs.patches,
                                probes=lambda: plan_probes(plan) if plan else [],
                                kernel_release=os.uname().release)
        server = exporters.server.start(metrics, listen)

    and the daemon's pipeline feeds the transition durations
    (tracer/daemon/sinks.py MetricsSink: ``observe_transition``).
    """

    def __init__(self, stats_source: Callable[[], Stats | None], *,
                 livepatch_state: Callable[[], list] = lambda: [],
                 probes: Callable[[], list] = lambda: [],
                 health: Callable[[], dict] | None = None,
                 stalls: Callable[[], object] | None = None,
                 kernel_release: str | None = None,
                 max_patches: int = DEFAULT_MAX_PATCHES,
                 process_metrics: bool = True):
        # `_created` series double every counter and histogram child in the text
        # format and nothing here uses them (process-wide switch; the daemon is
        # the only exporter in its process)
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=False)
        self.patch_labels = PatchLabels(max_patches)
        # registration order is exposition order; Stats first so that patch
        # names are admitted in the trace's terms before the kernel's
        self.registry.register(StatsCollector(stats_source, self.patch_labels))
        self.self_metrics = SelfMetrics(self.registry, self.patch_labels)
        self.registry.register(LivepatchCollector(livepatch_state, self.patch_labels,
                                                  self.self_metrics))
        self.registry.register(ProbeCollector(probes, self.self_metrics))
        if health is not None:
            self.registry.register(HealthCollector(health))
        if stalls is not None:
            self.registry.register(StallCollector(stalls, self.patch_labels))
        self.registry.register(InfoCollector(kernel_release))
        # Histogram by target and outcome, not by patch: buckets times patches
        # would be the largest family by far; per-patch counts are in
        # klptrace_transitions_total.
        self.transition_duration = Histogram(
            PREFIX + "transition_duration_seconds",
            "Time from a transition's start to its completion (or cancel), by target "
            "and outcome; observed live by the daemon.",
            ["target", "outcome"], buckets=TRANSITION_BUCKETS, registry=self.registry)
        for target in ev.TARGETS:
            for outcome in OUTCOMES:
                self.transition_duration.labels(target, outcome)
        if process_metrics:
            # prometheus_client's defaults, in our registry (not the global one)
            from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def observe_transition(self, patch: str, target: str, outcome: str,
                           duration_ns: int) -> None:
        """One finished transition (tracer/daemon/sinks.py MetricsSink)."""
        if target not in ev.TARGETS or outcome not in OUTCOMES:
            return      # bounded labels: never invent a child
        self.transition_duration.labels(target, outcome).observe(max(duration_ns, 0) / 1e9)

    def count_scrape(self) -> None:
        self.self_metrics.scrapes.inc()


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
