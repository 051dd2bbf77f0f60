"""exporters.metrics: names follow Prometheus conventions, children are
pre-initialised, the patch label is capped, scrape-time sources that fail do
not fail the scrape, and docs/metrics.md is generated from the registry."""

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from klptrace.exporters import metricsdoc
from klptrace.exporters.collectors import plan_probes
from klptrace.exporters.labels import DEFAULT_MAX_PATCHES, OVERFLOW, PatchLabels
from klptrace.exporters.metrics import DaemonMetrics, StatsCollector
from klptrace.tracer.judge.engine import OUTCOMES, Stats
from klptrace.tracer.model.rules import RULES

REPO = Path(__file__).resolve().parents[2]


def scrape(registry) -> dict:
    """{(sample name, frozenset(labels)): value}"""
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def samples(registry, name):
    return {labels: v for (n, labels), v in scrape(registry).items() if n == name}


def stats_with(n_patches: int) -> Stats:
    s = Stats()
    for i in range(n_patches):
        p = f"lp{i:03d}"
        s.callbacks[(p, "vmlinux", "pre_patch", "ok", "direct")] = 1
        s.transitions[(p, "patched", "completed")] = 2
        s.violations[("KLP-SYM-001", p)] = 1
    return s


def test_docs_metrics_md_is_generated_from_the_registry():
    assert (REPO / "docs/metrics.md").read_text() == metricsdoc.render(), \
        "docs/metrics.md drifted from exporters/metrics.py: run `python -m exporters.metricsdoc`"


def test_naming_conventions():
    for name, typ, help_, labels in metricsdoc.families() + metricsdoc.validate_families():
        assert name.startswith("klptrace_")
        assert name == name.lower()
        assert (typ == "counter") == name.endswith("_total"), name
        assert help_.strip(), name
        # no PIDs, addresses or other unbounded identifiers as labels
        assert not {"pid", "addr", "address", "ip", "seq", "ts_ns"} & set(labels)
        if typ == "histogram":
            assert name.endswith("_seconds")


def test_every_rule_has_a_violation_series_from_the_start():
    dm = DaemonMetrics(lambda: None, process_metrics=False)
    got = samples(dm.registry, "klptrace_violations_total")
    assert {dict(k)["rule"] for k in got} == set(RULES)
    assert set(got.values()) == {0.0}


def test_transition_children_preinitialised_per_patch_seen():
    s = Stats()
    s.transitions[("lp", "patched", "completed")] = 3
    reg = CollectorRegistry()
    reg.register(StatsCollector(lambda: s))
    got = samples(reg, "klptrace_transitions_total")
    assert len(got) == 2 * len(OUTCOMES)
    assert got[frozenset({"patch": "lp", "target": "patched", "outcome": "completed"}.items())] == 3


def test_histogram_children_preinitialised_and_observed_in_seconds():
    dm = DaemonMetrics(lambda: None, process_metrics=False)
    dm.observe_transition("lp", "patched", "completed", 1_500_000_000)
    dm.observe_transition("lp", "sideways", "completed", 1)    # never a new child
    counts = samples(dm.registry, "klptrace_transition_duration_seconds_count")
    assert len(counts) == 2 * len(OUTCOMES)
    sums = samples(dm.registry, "klptrace_transition_duration_seconds_sum")
    assert sums[frozenset({"target": "patched", "outcome": "completed"}.items())] == 1.5


def test_patch_label_cap_folds_into_overflow_and_keeps_totals():
    n = 5
    s = stats_with(n + 3)
    dm = DaemonMetrics(lambda: s, max_patches=n, process_metrics=False,
                       livepatch_state=lambda: [{"name": "lp007", "enabled": True,
                                                 "transition": True}])
    cbs = samples(dm.registry, "klptrace_callbacks_total")
    patches = {dict(k)["patch"] for k in cbs}
    assert patches == {f"lp{i:03d}" for i in range(n)} | {OVERFLOW}
    assert sum(cbs.values()) == n + 3                      # nothing lost in the fold
    assert cbs[frozenset({"patch": OVERFLOW, "object": "vmlinux", "callback": "pre_patch",
                          "result": "ok", "evidence": "direct"}.items())] == 3
    vio = samples(dm.registry, "klptrace_violations_total")
    assert vio[frozenset({"rule": "KLP-SYM-001", "patch": OVERFLOW}.items())] == 3
    en = samples(dm.registry, "klptrace_livepatch_enabled")
    assert en == {frozenset({"patch": OVERFLOW}.items()): 1.0}
    assert samples(dm.registry, "klptrace_exporter_overflowed_patches") == {frozenset(): 3.0}


def test_patch_labels_are_stable_once_given():
    lab = PatchLabels(2)
    assert lab("b") == "b" and lab("a") == "a"
    assert lab("c") == OVERFLOW
    assert lab("b") == "b" and lab("c") == OVERFLOW
    assert lab("") == ""
    assert DEFAULT_MAX_PATCHES == 32


def test_failing_scrape_time_sources_are_counted_not_fatal():
    def boom():
        raise OSError("sysfs gone")

    dm = DaemonMetrics(lambda: None, livepatch_state=boom, probes=boom, process_metrics=False)
    got = scrape(dm.registry)
    assert not any(n.startswith("klptrace_livepatch_") for n, _ in got)
    errs = samples(dm.registry, "klptrace_exporter_collect_errors_total")
    assert errs[frozenset({"collector": "livepatch"}.items())] >= 1
    assert errs[frozenset({"collector": "probes"}.items())] >= 1


def test_probes_and_info():
    dm = DaemonMetrics(lambda: None, process_metrics=False, kernel_release="6.1.0-test",
                       probes=lambda: [("init", "kprobe", True),
                                       ("core-pre-patch", "kprobe", False, False)])
    got = samples(dm.registry, "klptrace_probe_attached")
    # an optional point says so: the alert on unattached points skips it
    assert got == {frozenset({"point": "init", "kind": "kprobe", "required": "true"}.items()): 1.0,
                   frozenset({"point": "core-pre-patch", "kind": "kprobe",
                              "required": "false"}.items()): 0.0}
    assert samples(dm.registry, "klptrace_kernel_info") == {
        frozenset({"release": "6.1.0-test"}.items()): 1.0}
    (labels, v), = samples(dm.registry, "klptrace_build_info").items()
    assert v == 1.0 and dict(labels)["version"]


def test_plan_probes_from_a_plan_shape():
    class P:
        def __init__(self, name, ret, required=True):
            self.name, self.ret, self.required = name, ret, required

    class R:
        def __init__(self, name, ret, how, required=True):
            self.point, self.how = P(name, ret, required), how

    class Plan:
        results = [R("init", False, "kprobe"), R("enable-ret", True, "none"),
                   R("core-pre-patch", False, "none", required=False)]

    assert plan_probes(Plan()) == [("init", "kprobe", True, True),
                                   ("enable-ret", "kretprobe", False, True),
                                   ("core-pre-patch", "kprobe", False, False)]


def test_process_metrics_in_daemon_registry():
    dm = DaemonMetrics(lambda: None)
    names = {n for n, _ in scrape(dm.registry)}
    assert "process_resident_memory_bytes" in names
    assert "python_info" in names
