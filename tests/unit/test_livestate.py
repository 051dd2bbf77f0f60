"""tracer.model.livestate: the kernel's livepatch state, tracked once from
the records (read by the engine, the stall view, the metrics, status)."""

from klptrace.tracer.model import events as ev
from klptrace.tracer.model.livestate import LivepatchState


def tr(ts, patch, event, target):
    return ev.transition(0, ts, patch, event, target)


def enable(ts, patch, objs=("vmlinux",), replace=False):
    return ev.patch_enable(0, ts, patch, [{"name": o, "callbacks": ["pre_patch"]} for o in objs],
                           replace=replace)


def test_a_patch_joins_klp_patches_at_init_and_leaves_after_unpatching():
    s = LivepatchState()
    s.apply(enable(1, "a", ("vmlinux", "m")))
    assert "a" not in s.patches and "a" in s.announced
    s.apply(tr(2, "a", "init", "patched"))
    assert list(s.patches) == ["a"] and s.in_transition("a") and s.targeted("m")
    s.apply(tr(3, "a", "start", "patched"))
    assert s.transition.opened_ns == s.transition.started_ns == 3
    s.apply(tr(4, "a", "complete", "patched"))
    assert s.transition is None and s.ended.cause == "complete"
    assert s.ended.transition.outcome == "completed" and "a" in s.patches
    for ts, e in ((5, "init"), (6, "start"), (7, "complete")):
        s.apply(tr(ts, "a", e, "unpatched"))
    assert "a" not in s.patches and s.transition is None


def test_a_reverse_changes_the_direction_and_keeps_the_first_start():
    s = LivepatchState()
    s.apply(tr(1, "a", "init", "patched"))
    s.apply(tr(2, "a", "start", "patched"))
    d = s.transition.direction
    s.apply(tr(5, "a", "reverse", "unpatched"))
    s.apply(tr(5, "a", "start", "unpatched"))
    t = s.transition
    assert (t.target, t.began_ns, t.opened_ns, t.started_ns) == ("unpatched", 5, 2, 5)
    assert t.direction > d and t.outcome == "reversed"
    s.apply(tr(6, "a", "force", "unpatched"))
    assert s.transition.outcome == "forced"


def test_a_cancel_ends_the_transition_and_the_patch():
    s = LivepatchState()
    s.apply(enable(1, "a"))
    s.apply(tr(2, "a", "init", "patched"))
    s.apply(tr(3, "a", "cancel", "unpatched"))
    assert s.transition is None and "a" not in s.patches
    assert s.ended.cause == "cancel" and s.ended.transition.outcome == "cancelled"


def test_an_atomic_replace_removes_every_other_patch():
    s = LivepatchState()
    for p, rep in (("a", False), ("b", True)):
        s.apply(enable(1, p, replace=rep))
        for ts, e in ((2, "init"), (3, "start"), (4, "complete")):
            s.apply(tr(ts, p, e, "patched"))
    assert list(s.patches) == ["b"]


def test_the_header_says_whether_the_trace_began_inside_a_transition():
    s = LivepatchState.from_state({"modules": ["m"], "patches": [
        {"name": "a", "enabled": True, "transition": False, "objects": []},
        {"name": "b", "enabled": False, "transition": True, "objects": [{"name": "m"}]}]})
    assert list(s.patches) == ["a", "b"] and s.modules == {"m"}
    t = s.transition
    assert (t.patch, t.target, t.before_trace, t.opened_ns, t.started_ns) == \
        ("b", "unpatched", True, None, None)


def test_modules_follow_their_records_and_are_unknown_after_a_loss():
    s = LivepatchState.from_state({"modules": [], "patches": []})
    s.apply(ev.module(0, 1, "m", "coming"))
    assert s.modules == {"m"}
    s.apply(ev.module(0, 2, "m", "going"))
    assert s.modules == set()
    s.apply(ev.loss(0, 3, 5))
    assert s.modules is None


def test_a_start_without_its_init_opens_the_transition():
    """After lost records the kernel is in the transition all the same."""
    s = LivepatchState()
    s.apply(tr(7, "a", "start", "patched"))
    assert s.in_transition("a") and s.transition.started_ns == 7
    s.apply(tr(8, "b", "complete", "patched"))      # not the transition patch: no change
    assert s.in_transition("a")
