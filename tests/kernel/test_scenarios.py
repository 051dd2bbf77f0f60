"""Each documented callback scenario on a real kernel: the test modules'
kernel-log lines (ground truth) must equal the expected sequence written in
tracer/lab/scenarios.py, and every step must have done what it expects
(the run's phase without the tracer; tests/kernel/conftest.py)."""

from __future__ import annotations

import pytest

from klptrace.tracer.lab import NAMES, LabRun

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize("name", NAMES)
def test_scenario_callbacks(lab_run: LabRun, name: str) -> None:
    result = lab_run.result(name, "none")
    if not result.ok:
        pytest.fail(result.report(), pytrace=False)


def test_kernel_logs_left_per_scenario(lab_run: LabRun) -> None:
    """`klptrace lab scenarios --out DIR` promise: NAME.dmesg per scenario,
    with the livepatch core's dynamic-debug transition messages in it."""
    for r in lab_run.results:
        assert r.dmesg_path.exists(), r.dmesg_path
        assert f"===== scenario {r.name} =====" in r.dmesg
    text = lab_run.result("target-not-present", "none").dmesg
    assert "initializing patching transition" in text, "dynamic debug for kernel/livepatch is off"
    assert "completing unpatching transition" in text


def test_the_upgrade_landed_at_the_old_version_s_addresses(lab_run: LabRun) -> None:
    """upgrade-address-reuse is only the case it claims if the allocator gave
    klpt_up2 klpt_up1's freed addresses (lab notes: it does, for modules of
    the same size); record_text puts both .text addresses in the log."""
    import re
    text = lab_run.result("upgrade-address-reuse", "none").dmesg
    addrs = dict(re.findall(r"klpt-lab: text (klpt_up[12]) (0x[0-9a-f]+)", text))
    assert set(addrs) == {"klpt_up1", "klpt_up2"}, text[-2000:]
    assert addrs["klpt_up1"] == addrs["klpt_up2"], addrs
