"""The ground-truth line format (tests/kmod/klpt_callbacks.h) and the scenario
data, checked without a kernel."""

from __future__ import annotations

from klptrace.tracer.lab.groundtruth import CALLBACKS, CallbackRecord, parse_line, parse_log
from klptrace.tracer.lab.scenarios import NAMES, SCENARIOS


def test_parse_lines() -> None:
    log = "\n".join([
        "[   47.826840] klpt: patch=klpt_lp object=vmlinux callback=pre_patch ret=0 state=-",
        "[   50.710192] klpt: patch=klpt_lp object=klpt_mod callback=pre_patch ret=-19 state=COMING",
        "[   51.238056] livepatch: reverting patch 'klpt_lp' on unloading module 'klpt_mod'",
        "klpt: patch=klpt_lp2 object=vmlinux callback=post_unpatch ret=- state=-",
    ])
    assert parse_log(log) == [
        CallbackRecord("klpt_lp", "vmlinux", "pre_patch", 0, None),
        CallbackRecord("klpt_lp", "klpt_mod", "pre_patch", -19, "COMING"),
        CallbackRecord("klpt_lp2", "vmlinux", "post_unpatch", None, None),
    ]
    assert parse_line("klpt-lab: % insmod klpt_lp") is None


def test_scenarios_are_the_eleven_documented_ones_then_the_fleet_shapes() -> None:
    assert NAMES[:11] == (
        "target-before-livepatch", "module-coming", "module-going", "module-coming-and-going",
        "target-not-present", "pre-patch-enodev", "module-coming-enodev",
        "multiple-target-modules", "busy-target", "multiple-livepatches", "atomic-replace")
    assert {"upgrade-address-reuse", "cumulative-upgrade-rollback", "many-objects"} <= set(NAMES)
    for s in SCENARIOS:
        assert s.steps and s.expected
        for patch, obj, cb, ret in s.expected:
            assert cb in CALLBACKS
            assert (ret is not None) == (cb == "pre_patch"), (s.name, cb, ret)
