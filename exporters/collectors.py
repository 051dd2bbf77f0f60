"""The daemon's own collectors, read at scrape time: the kernel's
/sys/kernel/livepatch (``LivepatchCollector``), the probe plan's attach
results (``ProbeCollector``), the daemon's health (``HealthCollector``), the
open transition's blockers (``StallCollector``), build and kernel info
(``InfoCollector``), and the exporter's own counters (``SelfMetrics``).
exporters/metrics.py assembles them with the engine's counters.
"""

from __future__ import annotations

import platform
from typing import Callable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from klptrace.exporters.labels import OVERFLOW, PREFIX, PatchLabels
from klptrace.tracer import __version__
from klptrace.tracer.daemon.health import Health
from klptrace.tracer.daemon.pipeline import Stage
from klptrace.tracer.daemon.runloop import Wake
from klptrace.tracer.observe.directprobes import DirectError
from klptrace.tracer.observe.holds import HoldReason
from klptrace.tracer.observe.infer import Gap


class SelfMetrics:
    """The exporter's own health: scrapes served, collector failures, patch
    names folded into ``_overflow``. Counters are instrumented directly."""

    def __init__(self, registry: CollectorRegistry, patch_labels: PatchLabels):
        self.scrapes = Counter(PREFIX + "exporter_scrapes",
                               "Scrapes of /metrics served by this process.",
                               registry=registry)
        self.collect_errors = Counter(PREFIX + "exporter_collect_errors",
                                      "Scrape-time reads that failed, by collector "
                                      "(livepatch|probes); their families are left out.",
                                      ["collector"], registry=registry)
        for c in ("livepatch", "probes"):
            self.collect_errors.labels(c)
        labels = patch_labels

        class _Overflow:
            def describe(self):
                return []

            def collect(self):
                yield GaugeMetricFamily(PREFIX + "exporter_overflowed_patches",
                                        "Distinct patch names exported as "
                                        f"patch=\"{OVERFLOW}\" because the cap "
                                        f"(max_patches={labels.max_patches}) was reached.",
                                        value=labels.overflowed)
        registry.register(_Overflow())


class LivepatchCollector:
    """Patches enabled and in transition, read from the kernel at scrape time.

    ``state_source`` returns tracer/observe/sysfs.py patches()'s shape:
    ``[{"name", "enabled": bool, "transition": bool, ...}]``. Folded patches
    add up under ``_overflow``.
    """

    def __init__(self, state_source: Callable[[], list], patch_labels: PatchLabels,
                 self_metrics: SelfMetrics | None = None):
        self._state = state_source
        self._label = patch_labels
        self._errors = self_metrics.collect_errors.labels("livepatch") if self_metrics else None

    def describe(self):
        return []

    def collect(self):
        try:
            patches = list(self._state() or [])
        except Exception:       # a scrape must not fail because sysfs did
            if self._errors is not None:
                self._errors.inc()
            return
        self._label.admit(p["name"] for p in patches)
        enabled: dict[str, int] = {}
        transition: dict[str, int] = {}
        for p in patches:
            name = self._label(p["name"])
            enabled[name] = enabled.get(name, 0) + int(bool(p.get("enabled")))
            transition[name] = transition.get(name, 0) + int(bool(p.get("transition")))
        en = GaugeMetricFamily(PREFIX + "livepatch_enabled",
                               "1 if the livepatch is enabled "
                               "(/sys/kernel/livepatch/PATCH/enabled), read at scrape time.",
                               labels=["patch"])
        tr = GaugeMetricFamily(PREFIX + "livepatch_in_transition",
                               "1 if the livepatch is in transition "
                               "(/sys/kernel/livepatch/PATCH/transition), read at scrape time.",
                               labels=["patch"])
        for name in sorted(enabled):
            en.add_metric([name], enabled[name])
            tr.add_metric([name], transition[name])
        yield en
        yield tr
        yield GaugeMetricFamily(PREFIX + "livepatches",
                                "Livepatches loaded (directories under /sys/kernel/livepatch).",
                                value=len(patches))


class ProbeCollector:
    """Probes attached, from a callable returning ``[(point, kind, attached)]``
    or ``[(point, kind, attached, required)]``: ``point`` an observation point
    of tracer/observe/probeplan.py (bounded), ``kind`` how it is (or would be) attached:
    kprobe, kretprobe, fentry, tracefs; ``required`` whether the plan needs
    it (optional points, such as the core-* helpers inlined on Debian's
    kernels, are not attached by design and must not page anyone)."""

    def __init__(self, probes_source: Callable[[], list], self_metrics: SelfMetrics | None = None):
        self._probes = probes_source
        self._errors = self_metrics.collect_errors.labels("probes") if self_metrics else None

    def describe(self):
        return []

    def collect(self):
        try:
            probes = list(self._probes() or [])
        except Exception:
            if self._errors is not None:
                self._errors.inc()
            return
        g = GaugeMetricFamily(PREFIX + "probe_attached",
                              "1 if the probe for this observation point is attached, 0 if "
                              "not (see `klptrace probes`), by point, kind and whether the plan "
                              "requires it (required=\"false\": optional by design).",
                              labels=["point", "kind", "required"])
        for p in sorted(probes):
            point, kind, attached = p[:3]
            required = p[3] if len(p) > 3 else True
            g.add_metric([str(point), str(kind), "true" if required else "false"],
                         1.0 if attached else 0.0)
        yield g


# Bounded label values of the health families: each is the enum of the
# module that produces it, and a family lists every member from the start.
def _values(enum_cls) -> tuple[str, ...]:
    return tuple(m.value for m in enum_cls)


HANDLER_STAGES = _values(Stage)             # tracer/daemon/pipeline.py: where an error was caught
GAP_REASONS = _values(Gap)                  # tracer/observe/infer.py: parts not observed
HOLDS = _values(HoldReason)                 # tracer/observe/holds.py: holds that expired
DIRECT_PROBE_ERRORS = _values(DirectError)  # tracer/observe/directprobes.py
WAKE_REASONS = _values(Wake)                # tracer/daemon/runloop.py: why the daemon's wait ended


class HealthCollector:
    """The daemon's own health, read at scrape time from ``health()``
    (tracer.daemon.Daemon.health): errors caught on the event path, gaps in
    observation, holds that expired, records the trace is missing, direct
    probes, and the BPF programs' hit counters (tetragon-style: missed work
    and handler errors are metrics, error kinds are enums)."""

    def __init__(self, health: Callable[[], "Health"]):
        self._health = health

    def describe(self):
        return []

    @staticmethod
    def _counter(name, doc, label, values, table):
        c = CounterMetricFamily(PREFIX + name, doc, labels=[label])
        for v in values:
            c.add_metric([v], table.get(v, 0))
        for v, n in sorted(table.items()):
            if v not in values:
                c.add_metric([v], n)
        return c

    def collect(self):
        from klptrace.tracer.observe import rawevents as rw
        h = self._health() or Health()
        yield self._counter("handler_errors", "Exceptions caught on the daemon's event path, "
                            f"by stage ({'|'.join(HANDLER_STAGES)}); each one is a gap (a "
                            "loss record) in the trace.", "stage", HANDLER_STAGES,
                            h.handler_errors)
        yield self._counter("observation_gaps", "Places where part of a livepatch operation "
                            "was not observed (written as loss records, judged unknown), by "
                            "reason.", "reason", GAP_REASONS, h.gaps)
        yield self._counter("holds_expired", "Records held for a later event that never came "
                            "in time (written as far as known, with a loss record), by hold.",
                            "hold", HOLDS, h.holds_expired)
        yield CounterMetricFamily(PREFIX + "trace_records_unwritten",
                                  "Records the trace file is missing because writing it failed "
                                  "(a full disk); the engine judged them all the same.",
                                  value=h.unwritten)
        yield CounterMetricFamily(PREFIX + "direct_hits_unattributed",
                                  "Direct probe hits that named no livepatch (a probe that fired "
                                  "outside a callback call); ignored.",
                                  value=h.unattributed)
        yield self._counter("direct_probe_errors", "Direct probes on callback functions that "
                            "could not be defined, attached or removed, by kind "
                            f"({'|'.join(DIRECT_PROBE_ERRORS)}); those callbacks stay inferred.",
                            "kind", DIRECT_PROBE_ERRORS, h.direct_errors)
        yield GaugeMetricFamily(PREFIX + "direct_probes",
                                "Direct probes on livepatch callback functions attached now.",
                                value=h.direct_attached)
        yield self._counter("probe_hits", "Times each BPF program ran (the probes cost nothing "
                            "outside livepatch operations and module loads).", "program",
                            rw.HIT_PROGRAMS, h.probe_hits)
        yield self._counter("daemon_wakeups", "Times the daemon's wait ended, by reason "
                            f"({'|'.join(WAKE_REASONS)}: the BPF side at an operation's end or a "
                            "quarter-full ring, a new livepatch module, a signal, the clock); "
                            "an idle host adds only timer wake-ups, one per 5 s.", "reason",
                            WAKE_REASONS, h.wakeups)


# Distinct function label values per scrape of the blocking-function gauge; the
# rest add up under OVERFLOW. A stall is usually one function or a few (the
# patch's own, on the blockers' stacks); 16 bounds the family at 17 series.
MAX_STALL_FUNCTIONS = 16


class StallCollector:
    """The open transition and its blockers (tracer/observe/stallstate.py StallState, read
    at scrape time): blocked tasks by reason, by function, the transition's
    age, its sweeps and signals. With no transition open the reason
    children are exported at 0 with an empty patch, so a query (an alert's
    annotation, a dashboard panel) sees 0, not nothing."""

    def __init__(self, state_source: Callable[[], object], patch_labels: PatchLabels,
                 clock: Callable[[], int] | None = None):
        import time
        self._state = state_source
        self._label = patch_labels
        self._clock = clock or time.monotonic_ns

    def describe(self):
        return []

    def collect(self):
        from klptrace.tracer.observe.stallstate import REASONS, StallState
        st = self._state() or StallState()
        patch = self._label(st.patch) if st.patch else ""
        by_reason = dict.fromkeys(REASONS, 0)
        by_function: dict[str, int] = {}
        for t in st.blockers:
            by_reason[t.reason] = by_reason.get(t.reason, 0) + 1
            if t.function:
                by_function[t.function] = by_function.get(t.function, 0) + 1
        g = GaugeMetricFamily(PREFIX + "transition_blocked_tasks",
                              "Tasks keeping the open livepatch transition from completing, by "
                              f"reason ({'|'.join(REASONS)}); 0 with patch=\"\" when none is "
                              "open (docs/operations.md, runbook).", labels=["patch", "reason"])
        for r, n in by_reason.items():
            g.add_metric([patch, r], n)
        yield g
        f = GaugeMetricFamily(PREFIX + "transition_blocking_function_tasks",
                              "Blocked tasks of the open transition by the patched function on "
                              f"their stack; at most {MAX_STALL_FUNCTIONS} functions, the rest "
                              f"as function=\"{OVERFLOW}\".", labels=["patch", "function"])
        ranked = sorted(by_function.items(), key=lambda kv: (-kv[1], kv[0]))
        rest = sum(n for _, n in ranked[MAX_STALL_FUNCTIONS:])
        for fn, n in sorted(ranked[:MAX_STALL_FUNCTIONS]):
            f.add_metric([patch, fn], n)
        if rest:
            f.add_metric([patch, OVERFLOW], rest)
        yield f
        age = 0.0
        if st.patch and st.opened_ns is not None:
            age = max(0, self._clock() - st.opened_ns) / 1e9
        yield self._one("transition_open_seconds",
                        "Age of the open livepatch transition (since its start, or since the "
                        "daemon started if that was later); 0 with patch=\"\" when none is open.",
                        patch, age)
        yield self._one("transition_sweeps",
                        "Sweeps over the tasks in the open transition's direction "
                        "(klp_try_complete_transition: at its start, then about once a second).",
                        patch, st.sweeps)
        yield self._one("transition_signals",
                        "Times the kernel signalled the remaining tasks of the open transition "
                        "(every 15th sweep that left tasks behind).", patch, st.signals)
        yield CounterMetricFamily(PREFIX + "stall_untracked_checks",
                                  "Failed task checks the BPF stall table had no room for "
                                  "(4096 tasks): their tasks are missing from the blocker gauges "
                                  "(an `overflow` stall record in the trace says so).",
                                  value=st.untracked_checks)
        yield GaugeMetricFamily(PREFIX + "stall_probes_armed",
                                "1 while the per-task stall check probes are armed: only once "
                                "a sweep of the open transition has left tasks behind "
                                "(docs/probes.md, \"Effect on transitions\").",
                                value=1 if getattr(st, "probes_armed", False) else 0)
        yield CounterMetricFamily(PREFIX + "stall_records_suppressed",
                                  "Stall task records the trace bound kept out (more than 64 "
                                  "blockers, or a task's reason changing more than 4 times); the "
                                  "gauges still count those tasks.", value=st.records_suppressed)

    @staticmethod
    def _one(name: str, doc: str, patch: str, value: float):
        g = GaugeMetricFamily(PREFIX + name, doc, labels=["patch"])
        g.add_metric([patch], value)
        return g


class InfoCollector:
    """Build and kernel info: constant 1 gauges whose labels carry the facts."""

    def __init__(self, kernel_release: str | None):
        self._kernel = kernel_release if kernel_release is not None else platform.release()

    def describe(self):
        return []

    def collect(self):
        b = GaugeMetricFamily(PREFIX + "build_info",
                              "klptrace build: version and the Python running it; always 1.",
                              labels=["version", "python_version"])
        b.add_metric([__version__, platform.python_version()], 1)
        yield b
        k = GaugeMetricFamily(PREFIX + "kernel_info",
                              "Kernel klptrace observes: release (uname -r); always 1.",
                              labels=["release"])
        k.add_metric([self._kernel], 1)
        yield k


def plan_probes(plan) -> list[tuple[str, str, bool, bool]]:
    """``[(point, kind, attached, required)]`` from a tracer/observe/probeplan.py.Plan
    (duck-typed: ``plan.results`` with ``point.name``, ``point.ret``,
    ``point.required`` and ``how``)."""
    out = []
    for r in plan.results:
        attached = r.how != "none"
        kind = r.how if attached else ("kretprobe" if r.point.ret else "kprobe")
        out.append((r.point.name, kind, attached, bool(getattr(r.point, "required", True))))
    return out
