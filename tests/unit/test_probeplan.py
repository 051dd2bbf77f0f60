"""tracer/observe/probeplan.py without a kernel: what it attaches, in which order, and
where (the kernel's facts are given; the lab runs the real plan)."""

from klptrace.tracer.observe import probeplan as pp


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


class FakeExits:
    """exit_probes for make_plan: the 'kernel' accepts the sites in `real`."""

    def __init__(self, real):
        self.real = real
        self.attached, self.detached = {}, []

    def attach_exits(self, p, sites):
        got = [s for s in sites if s in self.real]
        self.attached[p.name] = got
        return got, None

    def detach_exits(self, p):
        self.detached.append(p.name)


def exits_of(sites):
    from klptrace.tracer.observe import kerneltext as kt

    def function_exits(func):
        return kt.Exits(func, [(func, 0x100)], [kt.Site(func, o, k, c, callee)
                                                for o, k, c, callee in sites.get(func, ())])
    return function_exits


def test_no_kretprobe_where_the_unwinder_cannot_pass_its_trampoline(monkeypatch):
    """5.10: every return point is kprobes on the function's exits; the
    candidates the kernel refuses (not instructions) are left out."""
    syms = {p.func for p in pp.POINTS} | {"kretprobe_trampoline"}
    monkeypatch.setattr(pp, "function_exits", exits_of({
        "klp_enable_patch": [(0x20, "ret", False, ""), (0x33, "ret", False, "")],
        "klp_module_going": [(0x38, "tail", False, "mutex_unlock"), (0x3f, "ret", False, "")],
        "klp_module_coming": [(0x10, "ret", False, "")],
        "klp_patch_object": [(0x10, "ret", False, "")],
        "klp_complete_transition": [(0x10, "ret", False, "")],
        "klp_try_complete_transition": [(0x10, "ret", False, "")],
    }))
    fake = FakeExits({("klp_enable_patch", 0x20), ("klp_module_going", 0x38),
                      ("klp_module_going", 0x3f), ("klp_module_coming", 0x10),
                      ("klp_patch_object", 0x10), ("klp_complete_transition", 0x10),
                      ("klp_try_complete_transition", 0x10)})
    funcs = {p.func for p in pp.POINTS}
    monkeypatch.setattr(pp, "kernel_facts", lambda f: (set(syms), set(funcs), set(), True))
    tried = []
    plan = pp.make_plan(lambda p: tried.append(p) or None, kfunc=True, exit_probes=fake)
    assert plan.returns is not None and plan.returns.mechanism == "exit-kprobes"
    assert not [p for p in tried if p.ret], "a kretprobe was attached"
    r = {x.point.name: x for x in plan.results}
    assert r["enable-ret"].how == "exit-kprobes" and r["enable-ret"].sites == [("klp_enable_patch", 0x20)]
    # a void function may leave by a tail call: that is its exit too
    assert r["module-going-ret"].how == "exit-kprobes" and len(r["module-going-ret"].sites) == 2
    assert not plan.missing_required()
    assert plan.to_json()["returns"]["how"] == "exit-kprobes"
    assert "return points: kprobes on each function's exits" in pp.format_plan(plan)


def test_a_return_value_cannot_be_read_at_a_tail_call(monkeypatch):
    syms = {p.func for p in pp.POINTS} | {"kretprobe_trampoline"}
    monkeypatch.setattr(pp, "function_exits", exits_of({
        "klp_enable_patch": [(0x20, "ret", False, ""), (0x40, "tail", False, "helper")],
        "klp_module_coming": [(0x10, "thunk", True, "")],
    }))
    fake = FakeExits({("klp_enable_patch", 0x20), ("klp_enable_patch", 0x40),
                      ("klp_module_coming", 0x10)})
    funcs = {p.func for p in pp.POINTS}
    monkeypatch.setattr(pp, "kernel_facts", lambda f: (set(syms), set(funcs), set(), True))
    plan = pp.make_plan(lambda p: None, kfunc=True, exit_probes=fake)
    r = {x.point.name: x for x in plan.results}
    assert r["enable-ret"].how == "none" and "tail call" in r["enable-ret"].why
    assert r["module-coming-ret"].how == "none" and "conditional" in r["module-coming-ret"].why
    assert {"enable-ret", "module-coming-ret"} <= set(fake.detached)
    assert {"enable-ret", "module-coming-ret"} <= set(plan.missing_required())


def test_kretprobes_where_the_kernel_unwinds_through_them(monkeypatch):
    syms = {p.func for p in pp.POINTS} | {"arch_rethook_trampoline"}
    funcs = {p.func for p in pp.POINTS}
    monkeypatch.setattr(pp, "kernel_facts", lambda f: (set(syms), set(funcs), set(), True))
    fake = FakeExits(set())
    plan = pp.make_plan(lambda p: None, kfunc=True, exit_probes=fake)
    assert plan.returns.mechanism == "kretprobe" and not fake.attached
    assert {r.how for r in plan.results if r.point.ret and not r.point.fallback_for} == {"kretprobe"}


def test_the_per_task_stall_checks_are_armed_on_demand(monkeypatch):
    plan, _ = plan_with(monkeypatch, {p.func for p in pp.POINTS})
    names = {r.point.name for r in plan.on_demand()}
    assert names == {"stall-check", "stall-check-ret"}     # the fallback is not needed
    assert all(pp.ON_DEMAND_TEXT in r.why for r in plan.on_demand())
