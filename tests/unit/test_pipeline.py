"""Property tests through the daemon's real pipeline: the kernel model
(tests/kmodel.py) drives the raw events the BPF programs would write
(tests/kraw.py) through tracer/observe/infer.py.Inference into the Engine, as
`klptrace run` does. The verdict must equal the verdict on the model's own
record stream; where a writer may put the free records must not change it;
and a one-rule mutation of the raw stream must still be caught.

Raw events are shaped like the BPF programs' in the kernel's call order;
nothing here claims a kernel ran. A case that fails because of Inference,
not the engine, is written up in /work/notes/infer-bugs.md."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kraw import Probes, pipeline
from model_scenarios import SCENARIOS
from test_properties import lifecycles, play
from tracebuild import judge, replace_free
from klptrace.tracer.model import events as ev
from klptrace.tracer.observe import rawevents as rw
from klptrace.tracer.model import rules

N = int(os.environ.get("KLPT_PROPERTY_EXAMPLES", "200"))
MODES = ("inferred", "direct")
SETTINGS = settings(max_examples=N, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def verdict_of(found) -> list:
    return sorted((f.kind, f.rule or "") for f in found if f.kind != "warning")


def violations(found) -> set:
    return {f.rule for f in found if f.kind == "violation"}


def callbacks(records) -> list:
    return [(r["patch"], r["object"], r["callback"], r.get("ret")) for r in records
            if r["type"] == "callback"]


def run(name: str, mode: str):
    probes = Probes(mode)
    m = SCENARIOS[name](probes)
    return m, probes


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_through_the_pipeline(name, mode):
    """The daemon's records are the model's callbacks, in the kernel's
    order, and judged the same: clean."""
    m, probes = run(name, mode)
    records, found = pipeline(m.header, probes.events, probes)
    assert callbacks(records) == callbacks(m.records)
    assert verdict_of(found) == verdict_of(judge(m.header, m.records)) == []


def played(lc, mode: str):
    """A random lifecycle on the model: (the model, its probes)."""
    defs, ops, loaded = lc
    probes = Probes(mode)
    return play(defs, ops, loaded, probes), probes


@SETTINGS
@given(lifecycles, st.sampled_from(MODES))
def test_legal_lifecycles_through_the_pipeline(lc, mode):
    m, probes = played(lc, mode)
    records, found = pipeline(m.header, probes.events, probes)
    assert verdict_of(found) == verdict_of(judge(m.header, m.records)) == [], \
        (found, records)
    assert callbacks(records) == callbacks(m.records)


@SETTINGS
@given(lifecycles, st.sampled_from(MODES), st.data())
def test_the_daemons_trace_with_free_records_moved(lc, mode, data):
    """What the daemon wrote, with the free records moved where another
    writer may put them (docs/trace-format.md): still clean."""
    m, probes = played(lc, mode)
    records, _ = pipeline(m.header, probes.events, probes)
    moved = replace_free(records, lambda n: data.draw(st.integers(0, n - 1)))
    assert verdict_of(judge(m.header, moved)) == []


# --- one-rule mutations of the raw stream (every callback probed directly) ------

def _ran(events) -> list[tuple[int, tuple, int]]:
    """The raw events that say a callback ran: DIRECT for the void
    callbacks, DIRECT_RET (with the code) for pre_patch, as (index, (patch,
    object, callback), how many times that callback ran before)."""
    out, seen = [], {}
    for i, r in enumerate(events):
        if r.kind not in (rw.DIRECT, rw.DIRECT_RET):
            continue
        o = r.objs[0]
        k = next(k for k in range(4) if o.cb[k] and 0 <= r.ip - o.cb[k] <= 16)
        if (k == 0) != (r.kind == rw.DIRECT_RET):
            continue        # pre_patch's entry: its return says it ran, with the code
        key = (r.patch, o.name, ev.CALLBACKS[k])
        out.append((i, key, seen.get(key, 0)))
        seen[key] = seen.get(key, 0) + 1
    return out


def _record_index(records, key, nth) -> int:
    hits = [i for i, r in enumerate(records)
            if r["type"] == "callback" and (r["patch"], r["object"], r["callback"]) == key]
    return hits[nth]


def _closed_after(records, i) -> bool:
    """A pinned record that needs klp_mutex follows: the step is over."""
    return any(r["type"] == "transition" or (r["type"] == "module"
                                             and r["event"] in ("coming", "going"))
               for r in records[i + 1:])


@SETTINGS
@given(lifecycles, st.data())
def test_a_dropped_callback_is_caught_through_the_pipeline(lc, data):
    """A probed callback function that did not run (its DIRECT event
    removed): the engine finds the same rules broken as in the model's own
    stream with that callback record dropped. Only the callbacks the
    inference predicts before they run (a completion's, a disable's
    pre_unpatch, a module section's post callbacks): a pre_patch is proven
    by the klp_patch_object that follows it (klp_pre_patch_callback set
    post_unpatch_enabled), a module section's pre_unpatch by the
    klp_unpatch_object that follows it, whatever its probe says."""
    m, probes = played(lc, "direct")
    cands = [c for c in _ran(probes.events) if c[1][2] in (ev.POST_PATCH, ev.POST_UNPATCH)
             or (c[1][2] == ev.PRE_UNPATCH and probes.events[c[0]].ctx == rw.CTX_NONE)]
    assume(cands)
    i, key, nth = data.draw(st.sampled_from(cands))
    j = _record_index(m.records, key, nth)
    assume(_closed_after(m.records, j))
    events = probes.events[:i] + probes.events[i + 1:]
    _, found = pipeline(m.header, events, probes)
    expect = violations(judge(m.header, m.records[:j] + m.records[j + 1:]))
    assert expect, key
    assert violations(found) == expect, (key, nth)


def _doubled(m, probes, i, key, nth):
    """(rules the pipeline finds, rules the model's stream gives) when the
    callback of direct event i ran twice (its events copied)."""
    j = _record_index(m.records, key, nth)
    copy = [probes.events[i]]
    if probes.events[i].kind == rw.DIRECT_RET:
        copy = probes.events[i - 1:i + 1]       # pre_patch: entry and return
    events = probes.events[:i + 1] + copy + probes.events[i + 1:]
    _, found = pipeline(m.header, events, probes)
    expect = violations(judge(m.header, m.records[:j + 1] + [m.records[j]] + m.records[j + 1:]))
    return violations(found), expect


@SETTINGS
@given(lifecycles, st.data())
def test_a_doubled_callback_is_caught_through_the_pipeline(lc, data):
    """A probed callback function that ran twice (its DIRECT event copied):
    caught, with the rules of the model's stream with that record copied."""
    m, probes = played(lc, "direct")
    cands = _ran(probes.events)
    assume(cands)
    got, expect = _doubled(m, probes, *data.draw(st.sampled_from(cands)))
    assert expect
    assert got == expect


@pytest.mark.parametrize("name,cb,ctx", [
    ("target-before-livepatch", ev.PRE_PATCH, rw.CTX_NONE),
    ("module-coming", ev.PRE_PATCH, rw.CTX_COMING),
    ("module-going", ev.PRE_UNPATCH, rw.CTX_GOING)])
def test_a_callback_run_twice_in_its_step_is_caught_through_the_pipeline(name, cb, ctx):
    """__klp_enable_patch and klp_module_coming call klp_pre_patch_callback
    once per object, klp_cleanup_module_patches_limited calls
    klp_pre_unpatch_callback once per object (core.c, core.h): a second hit
    of that callback's direct probe in the same step is a second run,
    KLP-ONCE-001."""
    m, probes = run(name, "direct")
    i, key, nth = next(c for c in _ran(probes.events) if c[1][2] == cb
                       and probes.events[c[0]].ctx == ctx)
    got, expect = _doubled(m, probes, i, key, nth)
    assert expect == {rules.KLP_ONCE_001}
    assert got == expect


def test_a_pre_patch_failing_without_refusal_is_caught_through_the_pipeline():
    """module-coming-enodev with klp_module_coming returning 0 although
    pre_patch returned -ENODEV: the daemon writes `live` at that return,
    and the module loaded although the kernel must refuse it
    (klp_module_coming's error path, load_module's prepare_coming_module):
    KLP-FAIL-002. In the model's own stream: `live` instead of `refused`."""
    m, probes = run("module-coming-enodev", "direct")
    events = list(probes.events)
    i = next(i for i, r in enumerate(events)
             if r.kind == rw.MODULE_COMING_RET and r.module == "klpt_mod")
    assert events[i].arg == -19
    events[i].arg = 0
    records, found = pipeline(m.header, events, probes)
    assert ("module", "live") in [(r["type"], r.get("event")) for r in records]
    assert rules.KLP_FAIL_002 in violations(found)
    model = [dict(r, event="live") if r["type"] == "module" and r["event"] == "refused"
             else r for r in m.records]
    assert violations(judge(m.header, model)) == violations(found)


def test_a_refused_load_unwinds_an_earlier_patch_that_has_no_post_patch():
    """Found by `make stress` (3000 examples): klpt_lp's object for klpt_mod has
    pre_patch and pre_unpatch but no post_patch; klpt_lp2's pre_patch for the
    same module fails while klpt_lp2 is in transition, so klp_module_coming
    unwinds klpt_lp (klp_cleanup_module_patches_limited: pre_unpatch, as
    klpt_lp is not klp_transition_patch). klpt_lp's post-patch step passed
    with no callback to show it; its pre_unpatch is not KLP-SYM-002."""
    from test_properties import PatchDef
    defs = {"klpt_lp": PatchDef(name="klpt_lp", objects=[("vmlinux", []),
                                ("klpt_mod", ["pre_patch", "pre_unpatch"])],
                                replace=False, pre_patch_ret={}),
            "klpt_lp2": PatchDef(name="klpt_lp2", objects=[("vmlinux", []),
                                 ("klpt_mod", ["pre_patch"])], replace=False, pre_patch_ret={})}
    ops = [("enable", "klpt_lp"), ("complete", False), ("fail", "klpt_lp2", "klpt_mod", -19),
           ("enable", "klpt_lp2"), ("load", "klpt_mod")]
    for mode in MODES:
        m, probes = played((defs, ops, set()), mode)
        assert ("klpt_lp", "klpt_mod", "pre_unpatch", None) in callbacks(m.records)
        records, found = pipeline(m.header, probes.events, probes)
        assert verdict_of(judge(m.header, m.records)) == [], judge(m.header, m.records)
        assert verdict_of(found) == [], (mode, found)
