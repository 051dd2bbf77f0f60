"""The verdict depends on what the kernel did, not on which writer wrote it
down: every record the kernel's order leaves free (docs/trace-format.md,
"Where each record may stand") is tried at every place it may stand, and the
verdict stays the same. Each case names the kernel function whose order it
follows (kernel/livepatch/core.c, transition.c; kernel/module/main.c).

Also here: each rule is judged in exactly one place (tracer/model/rules.py ``where``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kmodel import ALL, KernelModel, PatchDef
from model_scenarios import SCENARIOS, lp
from tracebuild import (cb, drop, index, insert_after, is_cb, is_tr, placements,
                        same_completion_completes, verdict)
from klptrace.tracer.model import events as ev
from klptrace.tracer.model import rules
from klptrace.tracer.model.rules import RULES

LP, LP2, MOD, BUSY = "klpt_lp", "klpt_lp2", "klpt_mod", "klpt_busy"
ENODEV = -19
REPO = Path(__file__).resolve().parents[2]


def is_patch(r, event, patch=None):
    return r["type"] == "patch" and r["event"] == event and (patch is None
                                                            or r["patch"] == patch)


def is_mod(r, event, module=MOD):
    return r["type"] == "module" and r["event"] == event and r["module"] == module


def every_placement(header, records, pred, expect):
    """Each legal place of the free record ``pred`` picks: the same verdict."""
    i = index(records, pred)
    variants = placements(records, i)
    assert len(variants) > 1, "the record has more than one legal place"
    for v in variants:
        assert verdict(header, v) == expect, [(r["type"], r.get("event") or r.get("callback"))
                                              for r in v]
    return variants


# --- enable_failed ---------------------------------------------------------------

def test_enable_failed_may_stand_where_the_kernel_log_prints_it():
    """__klp_enable_patch prints "failed to enable patch" right after the
    failing pre_patch, before klp_cancel_transition runs the completion and
    its post_unpatch callbacks; `klptrace run` writes it at klp_enable_patch's
    return, after them. A kernel-log placement used to end the cycle early
    (false KLP-RUN-001 and KLP-LOAD-002)."""
    m = SCENARIOS["pre-patch-enodev"]()
    variants = every_placement(m.header, m.records, lambda r: is_patch(r, "enable_failed"), [])
    first = variants[0]
    i = index(first, lambda r: is_patch(r, "enable_failed"))
    assert is_cb(first[i - 1], LP, MOD, "pre_patch") and first[i - 1]["ret"] == ENODEV


def test_an_enable_failing_before_its_init_has_no_transition():
    """__klp_enable_patch returns -EBUSY while another patch is in
    transition (and klp_init_patch may fail) before klp_init_transition: the
    trace has `enable` and `enable_failed` only. The patch never joined
    klp_patches: a module coming owes it nothing, and a callback of it is
    KLP-LOAD-002."""
    m = KernelModel()
    m.enable(lp())                                   # in transition
    m.enable(PatchDef(LP2, [("vmlinux", ALL), (MOD, ALL)]))   # -EBUSY
    m.load_module(MOD)
    m.complete()
    assert [r["event"] for r in m.records if r.get("patch") == LP2] == ["enable", "enable_failed"]
    assert verdict(m.header, m.records) == []
    every_placement(m.header, m.records, lambda r: is_patch(r, "enable", LP2), [])
    late = m.records + [cb(LP2, "vmlinux", "pre_patch", 0)]
    assert ("violation", rules.KLP_LOAD_002) in verdict(m.header, late)


# --- refused ----------------------------------------------------------------------

def two_patches_refusing(mod_loaded_later=True):
    """klpt_lp2 patched klpt_mod, then klpt_lp's pre_patch for it fails:
    klp_module_coming unwinds klpt_lp2 (klp_cleanup_module_patches_limited)."""
    m = KernelModel()
    m.enable(PatchDef(LP2, [("vmlinux", ALL), (MOD, ALL)])); m.complete()
    m.enable(lp(pre_patch_ret={MOD: ENODEV})); m.complete()
    m.load_module(MOD)
    m.disable(LP); m.complete(); m.remove(LP)
    m.disable(LP2); m.complete(); m.remove(LP2)
    return m


def test_refused_may_stand_where_the_kernel_log_prints_it():
    """klp_module_coming prints "refusing to load module" before
    klp_cleanup_module_patches_limited runs klpt_lp2's pre_unpatch and
    post_unpatch for the module; `klptrace run` writes `refused` at
    klp_module_coming's return, after them, and other operations may come in
    between (here: both disables). Before, a refusal before the unwinding
    gave six false violations."""
    m = two_patches_refusing()
    rs = m.records
    assert [(r["patch"], r["callback"]) for r in rs if r["type"] == "callback"
            and r["object"] == MOD] == [(LP2, "pre_patch"), (LP2, "post_patch"),
                                        (LP, "pre_patch"), (LP2, "pre_unpatch"),
                                        (LP2, "post_unpatch")]
    variants = every_placement(m.header, rs, lambda r: is_mod(r, "refused"), [])
    assert any(is_tr(v[index(v, lambda r: is_mod(r, "refused")) - 1], "start")
               for v in variants), "refused also tried after another operation's records"


def test_a_refusal_that_does_not_unwind_is_caught_wherever_refused_stands():
    """klp_cleanup_module_patches_limited(mod, failing patch) unwinds every
    patch before the failing one inside klp_module_coming's section:
    pre_unpatch (unless klp_transition_patch), then post_unpatch. Without it
    the refusal leaves klpt_lp2's pre_patch resources behind: KLP-RUN-001,
    the same wherever `refused` stands."""
    m = two_patches_refusing()
    rs = drop(m.records, lambda r: is_cb(r, LP2, MOD, "pre_unpatch"))
    rs = drop(rs, lambda r: is_cb(r, LP2, MOD, "post_unpatch"))
    expect = [("violation", rules.KLP_RUN_001)] * 2
    every_placement(m.header, rs, lambda r: is_mod(r, "refused"), expect)


def test_no_later_patch_runs_pre_patch_after_the_failing_one():
    """klp_module_coming goes to its error path at the first failing
    pre_patch: no later patch's pre_patch for that module in that section."""
    m = KernelModel()
    m.enable(lp(pre_patch_ret={MOD: ENODEV})); m.complete()
    m.enable(PatchDef(LP2, [("vmlinux", ALL), (MOD, ALL)])); m.complete()
    m.load_module(MOD)
    rs = insert_after(m.records, lambda r: is_cb(r, LP, MOD, "pre_patch"),
                      cb(LP2, MOD, "pre_patch", 0))
    assert ("violation", rules.KLP_FAIL_002) in verdict(m.header, rs)


def refused_then(extra):
    """module-coming-enodev with what happens next to klpt_mod."""
    m = SCENARIOS["module-coming-enodev"]()
    rs = m.records
    i = index(rs, lambda r: is_mod(r, "refused"))
    return m.header, rs[:i] + extra + rs[i + 1:]


@pytest.mark.parametrize("shows", ["live", "going", "callback"])
def test_a_module_whose_pre_patch_failed_never_loads(shows):
    """A failing pre_patch in klp_module_coming makes it return the error;
    load_module's prepare_coming_module then fails and goes to bug_cleanup,
    skipping do_init_module and the klp_module_going of coming_cleanup
    (kernel/module/main.c). A `live`, a `going`, or a callback of that
    module's object afterwards shows it loaded: KLP-FAIL-002. From there it
    is taken as loaded: its later callbacks are not KLP-LOAD-001."""
    extra = {"live": [ev.module(0, 0, MOD, "live")], "going": [ev.module(0, 0, MOD, "going")],
             "callback": []}[shows]
    header, rs = refused_then(extra)
    if shows == "callback":
        # klpt_lp's disable reaches the module object it thinks loaded
        rs = insert_after(rs, lambda r: is_cb(r, LP, "vmlinux", "pre_unpatch"),
                          cb(LP, MOD, "post_unpatch"))
    found = verdict(header, rs)
    assert ("violation", rules.KLP_FAIL_002) in found
    assert ("violation", rules.KLP_LOAD_001) not in found


def test_a_module_loaded_despite_its_failing_pre_patch_is_judged_loaded():
    """The one-rule mutation "a pre_patch failing without refusal": the
    module goes live, later goes. Only KLP-FAIL-002: the going section owes
    nothing for the object whose pre_patch failed (its post_unpatch_enabled
    is clear), and nothing is KLP-LOAD-001."""
    header, rs = refused_then([ev.module(0, 0, MOD, "live")])
    rs = rs + [ev.module(0, 0, MOD, "going")]
    assert verdict(header, rs) == [("violation", rules.KLP_FAIL_002)]


def test_a_refusal_for_another_reason_judged_the_same_wherever_refused_stands():
    """klp_module_coming also fails when klp_init_object_loaded fails,
    before any callback: the only record of the failure is `refused`. Its
    section then owes nothing; the verdict is the same with `refused` inside
    the section or after the next operation's records."""
    m = KernelModel()
    m.enable(lp()); m.complete()
    m.set_ret(LP, MOD, ENODEV)
    m.load_module(MOD)
    m.disable(LP); m.complete(); m.remove(LP)
    rs = drop(m.records, lambda r: is_cb(r, LP, MOD, "pre_patch"))   # it never ran
    every_placement(m.header, rs, lambda r: is_mod(r, "refused"), [])


# --- transitions ------------------------------------------------------------------

def test_a_start_after_reverse_owes_nothing():
    """Writing `enabled` during a stalled disable reverses it (enabled_store
    -> klp_reverse_transition): no callback, then klp_start_transition. That
    `start` is the reverse's, not the end of an enable step: it owes no
    pre_patch (before, a false KLP-RUN-001 for every object)."""
    m = SCENARIOS["reenabled-during-disable"]()
    rs = m.records
    i = index(rs, lambda r: is_tr(r, "reverse", "patched"))
    assert is_tr(rs[i + 1], "start", "patched")
    assert verdict(m.header, rs) == []
    m = SCENARIOS["reversed-patching"]()
    assert verdict(m.header, m.records) == []


def test_the_complete_after_cancel_may_be_there_or_not():
    """klp_cancel_transition calls klp_complete_transition: a writer that
    probes the latter writes `complete` after `cancel`, one that does not
    leaves it out; it is the same completion."""
    m = SCENARIOS["pre-patch-enodev"]()
    [j] = same_completion_completes(m.records)
    assert verdict(m.header, m.records) == verdict(m.header, m.records[:j] + m.records[j + 1:]) == []
    broken = drop(m.records, lambda r: is_cb(r, LP, "vmlinux", "post_unpatch"))
    [j] = same_completion_completes(broken)
    assert verdict(m.header, broken) == verdict(m.header, broken[:j] + broken[j + 1:]) \
        == [("violation", rules.KLP_NOSTART_001)]


def test_replaced_anywhere_inside_the_replacing_completion():
    """klp_complete_transition unpatches the replaced patches
    (klp_unpatch_replaced_patches) before the replacing patch's post_patch
    callbacks; a writer may note it anywhere in that completion."""
    m = SCENARIOS["atomic-replace"]()
    every_placement(m.header, m.records, lambda r: is_patch(r, "replaced"), [])


def test_disable_anywhere_before_its_init():
    """The sysfs write is seen before enabled_store takes klp_mutex: the
    `disable` request may stand before the end of the patch's own patching
    completion (here, before its post_patch callbacks), which it must not
    end (before: a false KLP-RUN-001)."""
    m = SCENARIOS["target-before-livepatch"]()
    variants = every_placement(m.header, m.records, lambda r: is_patch(r, "disable"), [])
    assert any(is_cb(v[index(v, lambda r: is_patch(r, "disable")) + 1], LP, "vmlinux",
                     "post_patch") for v in variants)


def test_enable_anywhere_before_its_init():
    """klp_enable_patch begins before mutex_lock(&klp_mutex): the second
    patch's `enable` may stand inside the first patch's completion."""
    m = SCENARIOS["multiple-livepatches"]()
    every_placement(m.header, m.records, lambda r: is_patch(r, "enable", LP2), [])


def test_removed_anywhere_after_the_cycle_ended():
    m = SCENARIOS["multiple-livepatches"]()
    every_placement(m.header, m.records, lambda r: is_patch(r, "removed", LP2), [])


def test_live_anywhere_after_the_coming_section():
    """klp_module_coming returns before the module's init runs; an enable
    or disable may run in between and already reach the module's object."""
    m = SCENARIOS["module-coming"]()
    every_placement(m.header, m.records, lambda r: is_mod(r, "live"), [])


# --- what the header knows --------------------------------------------------------

def started_enabled(modules):
    """The writer started with klpt_lp enabled (its history unknown) and
    klpt_busy the only loaded module."""
    objs = [{"name": n, "callbacks": c} for n, c in lp().objects]
    state = {"patches": [{"name": LP, "enabled": True, "transition": False, "objects": objs}]}
    if modules is not None:
        state["modules"] = modules
    return ev.header("k", state=state)


def test_a_callback_of_a_module_known_absent_is_a_violation_whatever_the_history():
    """klp_is_object_loaded: no callback runs for an object whose module is
    not loaded. The header says klpt_mod is not loaded and no coming
    follows: no earlier history of klpt_lp makes its callback legal."""
    header = started_enabled([BUSY])
    found = verdict(header, [cb(LP, MOD, "pre_unpatch")])
    assert ("violation", rules.KLP_LOAD_001) in found
    # the rules that need klpt_lp's history are unknown, not violated
    assert all(kind == "unknown" for kind, rule in found if rule != rules.KLP_LOAD_001)


def test_a_callback_while_the_module_state_is_unknown_is_reported_unknown():
    """Without the header's `modules` and before any module record, whether
    klpt_mod is loaded is not known: its object's callbacks are `unknown`
    (once per patch and object), never a silent pass."""
    m = SCENARIOS["module-going"]()
    header = dict(m.header, state={"patches": []})
    found = verdict(header, m.records)
    assert ("unknown", rules.KLP_LOAD_001) in found
    assert found.count(("unknown", rules.KLP_LOAD_001)) == 1
    assert not [f for f in found if f[0] == "violation"]


def test_a_rule_that_needs_no_history_is_judged_in_a_cycle_begun_before_the_trace():
    """KLP-FAIL-001 needs only the failing pre_patch, which is in the trace:
    klpt_lp's cycle began before it, yet the post_unpatch after klpt_mod's
    failed pre_patch is a violation."""
    header = started_enabled([BUSY])
    rs = [ev.module(0, 0, MOD, "coming"), cb(LP, MOD, "pre_patch", ENODEV),
          ev.module(0, 0, MOD, "refused"), cb(LP, MOD, "post_unpatch")]
    found = verdict(header, rs)
    assert ("violation", rules.KLP_FAIL_001) in found


# --- one place per rule -----------------------------------------------------------

def test_rule_ids_are_constants_of_the_catalogue():
    consts = {v for k, v in vars(rules).items() if k.startswith("KLP_")}
    assert consts == set(RULES)
    for rid in RULES:
        assert getattr(rules, rid.replace("-", "_")) == rid


ENGINE = sorted(str(p.relative_to(REPO)) for p in (REPO / "tracer/judge").glob("*.py"))


def _uses() -> dict[str, set[str]]:
    """rule constant -> the engine functions (path Class.function) naming it."""
    uses: dict[str, set[str]] = {}
    for path in ENGINE:
        tree = ast.parse((REPO / path).read_text())
        for cls in [n for n in tree.body if isinstance(n, ast.ClassDef)]:
            for fn in [n for n in cls.body if isinstance(n, ast.FunctionDef)]:
                for node in ast.walk(fn):
                    if isinstance(node, ast.Name) and node.id.startswith("KLP_"):
                        uses.setdefault(node.id, set()).add(f"{path} {cls.name}.{fn.name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in RULES:
                uses.setdefault("string", set()).add(f"{path}: {node.value}")
    return uses


def test_each_rule_is_judged_in_exactly_the_place_the_catalogue_names():
    uses = _uses()
    assert "string" not in uses, "rule IDs are named by their constants"
    for rid, rule in RULES.items():
        assert uses.get(rid.replace("-", "_")) == {rule.where}, rid
