"""The daemon (`klptrace run`) on a real kernel in the lab VM, beyond the
scenarios (tests/kernel/test_tracer.py): one guest boot runs the cases of
tests/kernel/guest_daemon.sh, one daemon each.

* quiet: no livepatch activity costs nothing; with a livepatch enabled and
  its .ko preloaded, a workload calling the patched function in a loop costs
  nothing either (no probe on a replacement function), and `klptrace inspect`
  lists exactly the module's callbacks.
* midway: started while a patch is enabled and a target module's load is
  inside klp_module_coming, with the return probe of klp_module_coming not
  attached: gaps are loss records, the trace goes on, nothing is a violation.
* faults: an exception injected into the event path and a trace disk that
  fills up: counted, a loss record where each gap is, judging goes on, the
  trace validates.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from guestout import parse

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
KLPTRACE = ROOT / ".venv" / "bin" / "klptrace"
GUEST = Path(__file__).with_name("guest_daemon.sh")


@pytest.fixture(scope="module")
def daemon_run(lab_means, lab_out_dir):
    from tracer.lab import kmod, packages, vm
    kernel = packages.resolve_kernel(os.environ.get("KLPT_KERNEL"))
    out_dir = lab_out_dir("daemon")
    out_dir.mkdir(parents=True, exist_ok=True)
    staged = kmod.stage_modules(kmod.build_modules(kernel), out_dir / "kmod")
    pre = (f"export KLPT_KMOD={staged} KLPT_STEP_TIMEOUT=120 KLPT={KLPTRACE}; "
           f"source {ROOT}/tracer/lab/guest_helpers.sh; source {GUEST}; "
           "mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing; "
           "mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug; ")
    cases = ("quiet", "midway", "faults")
    results, dmesg = vm.run_commands(kernel, [pre + f"case_{c}" for c in cases], timeout=1500)
    got, outs = {}, {}
    for c, r in zip(cases, results):
        outs[c] = r.output
        (out_dir / f"{c}.out").write_text(r.output)
        got.update(parse(r.output))
    (out_dir / "dmesg").write_text(dmesg)
    return got, outs


def _report(got, name):
    return json.JSONDecoder().raw_decode(got[f"json_{name}"].lstrip())[0]


def test_no_livepatch_activity_costs_nothing(daemon_run):
    got, outs = daemon_run
    assert float(got["quiet_hits"]) == 0, outs["quiet"]


def test_a_patched_function_on_the_hot_path_costs_no_probe_hit(daemon_run):
    """Before: --preload of a module could put direct probes on a replacement
    function (from relocations of its debug information), which fire on every
    call of the patched function."""
    got, outs = daemon_run
    assert "klpt_lp: this has been live patched" in got["patched_output"], outs["quiet"]
    assert float(got["hot_hits_delta"]) == 0, outs["quiet"]


def test_inspect_lists_exactly_the_real_callbacks(daemon_run):
    got, outs = daemon_run
    text = got["inspect"]
    rows = re.findall(r"^\s+(pre_patch|post_patch|pre_unpatch|post_unpatch)\s+(\S+)", text, re.M)
    assert len(rows) == 12, text                 # 3 objects x 4 callbacks (tests/kmod/klpt_lp.c)
    assert {sym for _cb, sym in rows} == {"klpt_pre_patch", "klpt_post_patch",
                                         "klpt_pre_unpatch", "klpt_post_unpatch"}, text
    assert re.findall(r"object (\S+)", text) == ["vmlinux", "klpt_mod", "klpt_busy"], text


def test_started_midway_with_a_return_probe_missing_is_a_gap_not_a_freeze(daemon_run):
    got, outs = daemon_run
    out = outs["midway"]
    assert got.get("held") == "1" and got.get("insmod_rc") == "0", out
    reasons = got["loss_reasons"]
    assert "before the probes" in reasons or "outside any observed" in reasons, reasons
    assert "no return from klp_module_coming" in reasons, reasons
    assert float(got["gaps"]) >= 2, out
    # the trace went on after the gaps: the disable's pre_unpatch is there
    assert int(got["after_gaps"]) >= 1, out
    doc = _report(got, "midway")
    assert doc["violations"] == 0 and got["rc_midway"] == "0", got["json_midway"]
    assert doc["unknown"] >= 1, got["json_midway"]
    assert "Traceback" not in got["log_midway"], got["log_midway"]


def test_an_exception_and_a_full_disk_are_counted_gaps(daemon_run):
    got, outs = daemon_run
    out = outs["faults"]
    log = got["log_faults"]
    assert "Traceback" not in log, log
    assert float(got["infer_errors"]) == 1, out
    assert "fault injected by KLPT_INJECT_FAULT" in log, log
    assert float(got["unwritten"]) > 0 and got["alive_full"] == "1", out
    reasons = got["loss_reasons_faults"]
    assert "infer error" in reasons, reasons
    assert "trace write failed" in reasons, reasons
    m = re.search(r'"reason":"trace write failed"', reasons)
    assert m, reasons
    assert int(got["last_cycle_callbacks"]) >= 8, out     # the cycle after the disk had room
    doc = _report(got, "faults")
    assert doc["violations"] == 0 and got["rc_faults"] == "0", got["json_faults"]
    assert doc["files"][0]["error"] is None, got["json_faults"]
