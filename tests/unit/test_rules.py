"""One test per rule: a trace that breaks it is caught, one that honours it is
not. Honouring traces come from the kernel model's scenarios."""

import pytest

from model_scenarios import SCENARIOS
from tracebuild import (cb, drop, duplicate, insert_after, is_cb, is_tr, judge,
                        move_after, move_before, violations)
from klptrace.tracer.model.rules import RULES

LP = "klpt_lp"


def scen(name):
    m = SCENARIOS[name]()
    return m.header, m.records


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_honours_every_rule(name):
    header, records = scen(name)
    found = judge(header, records)
    assert [f for f in found if f.kind != "warning"] == []
    assert [f for f in found if f.kind == "warning"] == []


def _pre(o):
    return lambda r: is_cb(r, LP, o, "pre_patch")


BREAKS = {
    # rule: (scenario, mutation)
    "KLP-SYM-001": ("target-before-livepatch",
                    lambda rs: drop(rs, _pre("vmlinux"))),
    # klpt_mod came during the stalled transition: no post_patch, so no pre_unpatch
    "KLP-SYM-002": ("busy-target",
                    lambda rs: insert_after(rs, lambda r: r["type"] == "module"
                                            and r["event"] == "going",
                                            cb(LP, "klpt_mod", "pre_unpatch"))),
    "KLP-ONCE-001": ("target-before-livepatch",
                     lambda rs: duplicate(rs, lambda r: is_cb(r, LP, "vmlinux", "post_unpatch"))),
    "KLP-FAIL-001": ("pre-patch-enodev",
                     lambda rs: insert_after(rs, lambda r: is_cb(r, LP, "vmlinux", "post_unpatch"),
                                             cb(LP, "klpt_mod", "post_unpatch"))),
    "KLP-FAIL-002": ("pre-patch-enodev",
                     lambda rs: insert_after(rs, _pre("klpt_mod"),
                                             cb(LP, "klpt_busy", "pre_patch", 0))),
    "KLP-REV-001": ("reversed-patching",
                    lambda rs: insert_after(rs, lambda r: is_tr(r, "reverse"),
                                            cb(LP, "vmlinux", "pre_unpatch"))),
    "KLP-NOSTART-001": ("pre-patch-enodev",
                        lambda rs: drop(rs, lambda r: is_cb(r, LP, "vmlinux", "post_unpatch"))),
    "KLP-LOAD-001": ("target-not-present",
                     lambda rs: insert_after(rs, _pre("vmlinux"),
                                             cb(LP, "klpt_mod", "pre_patch", 0))),
    "KLP-LOAD-002": ("target-not-present",
                     lambda rs: rs + [cb(LP, "vmlinux", "pre_patch", 0)]),
    "KLP-REPLACE-001": ("atomic-replace",
                        lambda rs: insert_after(rs, lambda r: r["type"] == "patch"
                                                and r["event"] == "replaced",
                                                cb(LP, "vmlinux", "pre_unpatch"))),
    "KLP-RUN-001": ("module-coming",
                    lambda rs: drop(rs, lambda r: is_cb(r, LP, "klpt_mod", "post_patch"))),
    "KLP-ORD-001": ("target-before-livepatch",
                    lambda rs: move_after(rs, _pre("klpt_mod"),
                                          lambda r: is_tr(r, "start", "patched"))),
    "KLP-ORD-002": ("target-before-livepatch",
                    lambda rs: move_before(rs, lambda r: is_cb(r, LP, "vmlinux", "post_patch"),
                                           lambda r: is_tr(r, "complete", "patched"))),
    "KLP-ORD-003": ("target-before-livepatch",
                    lambda rs: move_after(rs, lambda r: is_cb(r, LP, "vmlinux", "pre_unpatch"),
                                          lambda r: is_tr(r, "start", "unpatched"))),
    "KLP-ORD-004": ("target-before-livepatch",
                    lambda rs: move_before(rs, lambda r: is_cb(r, LP, "vmlinux", "post_unpatch"),
                                           lambda r: is_tr(r, "complete", "unpatched"))),
}


def test_every_rule_has_a_breaking_case():
    assert set(BREAKS) == set(RULES)


@pytest.mark.parametrize("rule", sorted(BREAKS))
def test_breaking_trace_is_caught(rule):
    name, mutate = BREAKS[rule]
    header, records = scen(name)
    assert rule not in violations(header, records)          # honoured as played
    assert rule in violations(header, mutate(records))      # caught when broken


def test_started_mid_cycle_is_unknown_not_violation():
    """The daemon started while a patch was enabled, then it was disabled."""
    header, records = scen("target-before-livepatch")
    i = next(i for i, r in enumerate(records) if r["type"] == "patch" and r["event"] == "disable")
    header = dict(header, state={"patches": [{"name": LP, "enabled": True, "transition": False,
                                              "objects": records[0]["objects"]}],
                                 "modules": ["klpt_mod"]})
    found = judge(header, records[i:])
    assert not [f for f in found if f.kind == "violation"]
    assert [f for f in found if f.kind == "unknown" and f.patch == LP]


def test_loss_makes_a_gap_unknown_not_violation():
    header, records = scen("module-coming")
    i = next(i for i, r in enumerate(records) if is_cb(r, LP, "klpt_mod", "post_patch"))
    gap = records[:i - 1] + [{"type": "loss", "seq": 0, "ts_ns": 0, "count": 3}] + records[i + 1:]
    found = judge(header, gap)
    assert not [f for f in found if f.kind == "violation"]
    assert any(f.kind == "unknown" for f in found)


def test_cycle_open_at_end_is_a_warning():
    header, records = scen("target-before-livepatch")
    i = next(i for i, r in enumerate(records) if r["type"] == "patch" and r["event"] == "disable")
    found = judge(header, records[:i])
    assert [f.kind for f in found] == ["warning"]


def test_trace_cut_before_post_callbacks_is_a_warning_not_violation():
    header, records = scen("target-before-livepatch")
    i = next(i for i, r in enumerate(records) if is_tr(r, "complete", "patched"))
    found = judge(header, records[:i + 1])
    assert found and all(f.kind == "warning" for f in found)


def test_enable_racing_with_a_module_unload_is_not_a_violation():
    """Seen in the stress suite: `rmmod klpt_mod` has entered klp_module_going
    but waits for klp_mutex while klpt_lp is enabled; the kernel still patches
    the module (state GOING, klp_alive still set), then the going section runs
    post_unpatch. The writer places the `going` record at that section
    (tracer/observe/infer.py), so the trace reads in the kernel's order."""
    from tracebuild import lp
    from klptrace.tracer.model import events as ev
    d = lp()
    objs = [{"name": n, "callbacks": c} for n, c in d.objects]
    recs = [ev.patch_enable(0, 0, LP, objs),
            ev.transition(0, 0, LP, "init", "patched"),
            cb(LP, "vmlinux", "pre_patch", 0), cb(LP, "klpt_mod", "pre_patch", 0),
            ev.transition(0, 0, LP, "start", "patched"),
            ev.module(0, 0, "klpt_mod", "going"),
            cb(LP, "klpt_mod", "post_unpatch"),
            ev.transition(0, 0, LP, "complete", "patched"),
            cb(LP, "vmlinux", "post_patch")]
    header = ev.header("k", state={"patches": [], "modules": ["klpt_mod"]})
    found = judge(header, recs)
    assert [f for f in found if f.kind == "violation"] == []


def test_a_gap_with_a_reason_is_unknown_and_says_why():
    """A loss record of an unknown count (0) with its reason (tracer/observe/infer.py
    writes one where it saw only part of an operation): unknown, with the
    reason, never a violation."""
    header, records = scen("module-coming")
    i = next(i for i, r in enumerate(records) if is_cb(r, LP, "klpt_mod", "pre_patch"))
    gap = records[:i] + [{"type": "loss", "seq": 0, "ts_ns": 0, "count": 0,
                          "reason": "a snapshot cut short"}] + records[i + 1:]
    found = judge(header, gap)
    assert not [f for f in found if f.kind == "violation"]
    assert any(f.kind == "unknown" and "a snapshot cut short" in f.message for f in found)
