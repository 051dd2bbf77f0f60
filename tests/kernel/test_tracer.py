"""The tracer (`klptrace run`) against the lab's kernel-log ground truth.

The lab run (tests/kernel/conftest.py `lab_run`) runs every scenario in one
guest boot, in phases: in each traced phase one tracer is started before the
first scenario (tracer/lab/runner.py), its trace handed over per scenario
with SIGHUP, stopped with SIGINT after the last. The tracer's callback
records must equal the ground truth of the test modules' kernel log (same
order, patch, object, callback, pre_patch return code), its transition and
module records must be there, and the trace must validate clean.
Without --preload (phase `inferred`) every callback is `inferred`; with it
(phase `direct`), every one `direct`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tracefiles import callback_keys as _callback_keys
from tracefiles import records as _records

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
KLPTRACE = ROOT / ".venv" / "bin" / "klptrace"


class Traced:
    """One traced phase of the lab run: its results and its directory."""

    def __init__(self, lab_run, phase: str):
        self.results = lab_run.phase(phase)
        self.run_dir = lab_run.run_dir / phase


@pytest.fixture(scope="module", params=["inferred", "direct"])
def traced_run(request, lab_run):
    return request.param, Traced(lab_run, request.param)


def test_callbacks_equal_ground_truth(traced_run):
    evidence, run = traced_run
    bad = []
    for res in run.results:
        if res.tracer_rc not in (None, 0) or not res.trace_path.exists():
            bad.append(f"{res.name}: tracer rc {res.tracer_rc}, trace "
                       f"{'present' if res.trace_path.exists() else 'missing'}")
            continue
        recs = _records(res.trace_path)
        got = _callback_keys(recs)
        if got != res.observed_keys:
            bad.append(f"{res.name}: tracer {got}\n   kernel log {res.observed_keys}")
        evs = {r["evidence"] for r in recs if r["type"] == "callback"}
        if evidence == "direct" and evs - {"direct"}:
            bad.append(f"{res.name}: evidence {sorted(evs)} with --preload")
        kinds = {r["type"] for r in recs}
        if got and not {"transition", "patch"} <= kinds:
            bad.append(f"{res.name}: no transition/patch records ({sorted(kinds)})")
    assert not bad, "\n".join(bad)


def test_traces_validate_clean(traced_run):
    _, run = traced_run
    paths = [str(r.trace_path) for r in run.results if r.trace_path.exists()]
    assert paths
    p = subprocess.run([str(KLPTRACE), "validate", *paths], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_ground_truth_unchanged_by_tracer(traced_run):
    """The lab's own check with the tracer running: the kernel-log callbacks
    are still exactly the scenario's expected sequence."""
    _, run = traced_run
    bad = [r.report() for r in run.results if not r.matches]
    assert not bad, "\n\n".join(bad)


# --- the Prometheus endpoint, scraped for real in the guest --------------------

def _samples(text: str, family: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    out = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == family:
            for s in fam.samples:
                if s.name == family + "_total" and s.value:
                    out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_scrape_equals_the_traces_and_passes_promtool(traced_run, tmp_path):
    """The daemon's /metrics, scraped over HTTP in the guest after the last
    scenario, holds the same counts as `validate --textfile` of its traces."""
    _, run = traced_run
    scrape = (run.run_dir / "metrics.prom").read_text()
    check = subprocess.run(["promtool", "check", "metrics"], input=scrape,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    textfile = tmp_path / "validate.prom"
    paths = [str(r.trace_path) for r in run.results]
    subprocess.run([str(KLPTRACE), "validate", "-q", "--textfile", str(textfile), *paths],
                   check=True, capture_output=True)
    offline = textfile.read_text()
    for family in ("klptrace_callbacks", "klptrace_transitions", "klptrace_violations",
                   "klptrace_lost_records"):
        assert _samples(scrape, family) == _samples(offline, family), family
    assert sum(_samples(scrape, "klptrace_callbacks").values()) > 50


# --- stalled transitions (issue 15) ---------------------------------------------------

# the scenarios whose transition klpt_busy's worker stalls, and how it ends
STALLED = {"busy-target": "reverse", "second-livepatch-waits": "complete",
           "target-loads-during-transition": "complete"}


def test_the_busy_target_stall_is_explained_and_healthy_ones_write_nothing(traced_run):
    """busy-target: klpt_busy's worker sleeps in klpt_busy_work_func, which
    klpt_lp patches, until the disable reverses the transition: the trace
    names the worker, the reason and the function, and clears the stall at
    the reverse. The same worker stalls the transitions of
    second-livepatch-waits and target-loads-during-transition until it is
    released: cleared at the completion. Every other scenario's transitions
    complete within a sweep or two: no stall record at all."""
    _, run = traced_run
    bad = []
    for res in run.results:
        recs = [r for r in _records(res.trace_path) if r["type"] == "stall"]
        if res.name not in STALLED:
            if recs:
                bad.append(f"{res.name}: {recs}")
            continue
        blocked = [r for r in recs if r["event"] == "blocked"]
        assert blocked, (res.name, recs)
        w = blocked[0]
        assert (w["patch"], w["target"], w["reason"], w["function"], w["kthread"]) == \
            ("klpt_lp", "patched", "sleeping_on_function", "klpt_busy_work_func", True), w
        assert w["comm"].startswith("kworker/"), w
        assert {r["pid"] for r in blocked} == {w["pid"]}, blocked
        cleared = [r for r in recs if r["event"] == "cleared"]
        assert [c["cause"] for c in cleared] == [STALLED[res.name]], (res.name, recs)
        assert cleared[0]["tasks"] == 1 and cleared[0]["seq"] > w["seq"]
    assert not bad, "\n".join(bad)
