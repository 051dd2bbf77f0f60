"""The metric families klptrace exports.

Two kinds, as the Prometheus "Writing exporters" guide separates them:

* State owned elsewhere, read at scrape time by custom collectors:
  ``StatsCollector`` over the rule engine's Stats (callbacks, violations,
  transitions, lost records), ``LivepatchCollector`` over the kernel's
  /sys/kernel/livepatch, ``ProbeCollector`` over the daemon's attach results,
  ``InfoCollector`` (build and kernel info).
* Events the exporter sees itself, instrumented directly: the transition
  duration histogram (fed by the daemon's MetricsSink) and the
  exporter's own scrape counter.

``StatsCollector`` serves both the live daemon and ``klptrace validate
--textfile``, so the two agree on the same trace by construction.
docs/metrics.md is generated from a registry built here
(``python -m exporters.metricsdoc``); a test fails when it drifts.

Label cardinality: the only unbounded label is ``patch`` (livepatch module
names change with every cumulative patch a host receives, and the daemon runs
for months). ``PatchLabels`` gives the first ``max_patches`` distinct names
their own value and folds every later one into ``_overflow``.
"""

from __future__ import annotations

import platform
import threading
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram

try:
    from prometheus_client import disable_created_metrics
except ImportError:     # prometheus_client 0.16 (Debian 12): the same switch, by hand
    def disable_created_metrics() -> None:
        import prometheus_client.metrics as _pm
        _pm._use_created = False
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from klptrace.tracer import __version__
from klptrace.tracer.model import events as ev
from klptrace.tracer.model import rules as rules_mod
from klptrace.tracer.daemon.health import Health
from klptrace.tracer.daemon.pipeline import Stage
from klptrace.tracer.daemon.runloop import Wake
from klptrace.tracer.judge.engine import OUTCOMES, RESULTS, Stats
from klptrace.tracer.observe.directprobes import DirectError
from klptrace.tracer.observe.holds import HoldReason
from klptrace.tracer.observe.infer import Gap

PREFIX = "klptrace_"

# Distinct patch label values before folding into OVERFLOW. A host carries a
# handful of livepatches at a time; 32 leaves room for months of cumulative
# replacements while bounding the worst case to about a thousand series.
DEFAULT_MAX_PATCHES = 32
OVERFLOW = "_overflow"

# Livepatch transitions wait for every task to reach a safe point, retried each
# second by the kernel: most finish in well under a minute, a stalled one can
# take hours. Seconds, base unit.
TRANSITION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class PatchLabels:
    """Maps patch names to label values, at most ``max_patches`` distinct ones.

    A name keeps its value for the life of the process (a series never
    changes name mid-flight); names admitted after the cap is reached become
    ``_overflow``. Shared by every collector so one patch has one value.
    """

    def __init__(self, max_patches: int = DEFAULT_MAX_PATCHES):
        if max_patches < 1:
            raise ValueError("max_patches must be at least 1")
        self.max_patches = max_patches
        self._named: set[str] = set()
        self._overflowed: set[str] = set()
        self._lock = threading.Lock()   # scrapes run in server threads

    def __call__(self, patch: str) -> str:
        if not patch:          # findings without a patch keep the empty value
            return patch
        with self._lock:
            if patch in self._named:
                return patch
            if patch not in self._overflowed and len(self._named) < self.max_patches:
                self._named.add(patch)
                return patch
            self._overflowed.add(patch)
            return OVERFLOW

    def admit(self, patches: Iterable[str]) -> None:
        """Admit names in a deterministic (sorted) order before labelling, so
        the same trace gives the same labels however it is scraped."""
        for p in sorted(set(patches)):
            self(p)

    @property
    def overflowed(self) -> int:
        return len(self._overflowed)


def _fold(table: dict, label_patch: Callable[[str], str], patch_index: int) -> dict:
    """Sum a Stats table after relabelling its patch field (overflow merges keys)."""
    out: dict = {}
    for key, n in table.items():
        k = list(key)
        k[patch_index] = label_patch(k[patch_index])
        k = tuple(k)
        out[k] = out.get(k, 0) + n
    return out


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
    of tracer.probeplan (bounded), ``kind`` how it is (or would be) attached:
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
    """The open transition and its blockers (tracer.stalls.StallState, read
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
        from klptrace.tracer.observe.stalls import REASONS, StallState
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
    """``[(point, kind, attached, required)]`` from a tracer.probeplan.Plan
    (duck-typed: ``plan.results`` with ``point.name``, ``point.ret``,
    ``point.required`` and ``how``)."""
    out = []
    for r in plan.results:
        attached = r.how != "none"
        kind = r.how if attached else ("kretprobe" if r.point.ret else "kprobe")
        out.append((r.point.name, kind, attached, bool(getattr(r.point, "required", True))))
    return out


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
