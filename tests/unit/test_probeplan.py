"""tracer.probeplan without a kernel: what it attaches, in which order, and
where (the kernel's facts are given; the lab runs the real plan)."""

from tracer import probeplan as pp


def plan_with(monkeypatch, kallsyms, skip=frozenset()):
    funcs = {p.func for p in pp.POINTS}
    monkeypatch.setattr(pp, "kernel_facts", lambda f: (set(kallsyms), set(funcs), set(), True))
    tried = []

    def attach(p):
        tried.append((p.name, p.func, p.ret))
        return None

    return pp.make_plan(attach, kfunc=True, skip=skip), tried


def test_return_probes_are_attached_before_entry_probes(monkeypatch):
    plan, tried = plan_with(monkeypatch, {p.func for p in pp.POINTS})
    rets = [i for i, t in enumerate(tried) if t[2]]
    entries = [i for i, t in enumerate(tried) if not t[2]]
    assert rets and max(rets) < min(entries)
    assert [r.point.name for r in plan.results] == [p.name for p in pp.POINTS]


def test_a_part_clone_is_attached_instead_of_its_function(monkeypatch):
    """Debian 6.1: klp_reverse_transition jumps into klp_start_transition.part.0,
    so a probe on klp_start_transition misses the start after a reverse."""
    syms = {p.func for p in pp.POINTS} | {"klp_start_transition.part.0"}
    plan, tried = plan_with(monkeypatch, syms)
    assert ("start", "klp_start_transition.part.0", False) in tried
    r = next(r for r in plan.results if r.point.name == "start")
    assert r.symbol == "klp_start_transition.part.0" and r.to_json()["symbol"] == r.symbol
    plan, tried = plan_with(monkeypatch, {p.func for p in pp.POINTS})
    assert ("start", "klp_start_transition", False) in tried


def test_skipped_and_unknown_points(monkeypatch):
    plan, tried = plan_with(monkeypatch, {p.func for p in pp.POINTS},
                            skip=frozenset({"module-coming-ret"}))
    assert "module-coming-ret" not in [t[0] for t in tried]
    assert "module-coming-ret" in plan.missing_required()
    import pytest
    with pytest.raises(ValueError, match="unknown point"):
        pp.make_plan(lambda p: None, skip=frozenset({"nope"}))
