"""The lab's hook for the tracer (issue 5), with a fake tracer: started in
the guest before the scenario's steps, waited for through its ready file,
given --preload for the lab's livepatches, handed the trace over with SIGHUP after it,
leaving NAME.jsonl beside NAME.dmesg; the ground truth is unaffected."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from klptrace.tracer.lab import LabError, run_scenarios

pytestmark = pytest.mark.kernel
FAKE = Path(__file__).with_name("fake_tracer.py")


def test_tracer_started_once_and_trace_handed_over_per_scenario(lab_means: None, lab_out_dir) -> None:
    kernel = os.environ.get("KLPT_KERNEL") or None
    out = lab_out_dir("tracer-hook")
    try:
        run = run_scenarios(kernel=kernel, only="target-not-present", out_dir=out,
                            tracer_cmd=f"{sys.executable} {FAKE}", preload=True,
                            progress=lambda m: None)
    except LabError as e:
        from linechecks import fail_lab
        fail_lab(e)
    r = run.result("target-not-present")
    if not r.ok:
        pytest.fail(r.report() + "\ntracer log:\n"
                    + (out / "tracer.log").read_text(errors="replace"),
                    pytrace=False)
    assert r.tracer_rc == 0
    assert (out / "tracer.rc").read_text().strip() == "0"   # stopped by SIGINT, cleanly
    record = json.loads(r.trace_path.read_text().splitlines()[0])
    assert record["handed_over_by"] == "SIGHUP"
    from klptrace.tracer.lab.kmod import LIVEPATCHES
    assert [Path(p).name for p in record["preload"]] == [f"{m}.ko" for m in LIVEPATCHES]
    assert all(Path(p).exists() for p in record["preload"])
