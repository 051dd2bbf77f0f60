"""The stall points in the probe plan: optional, the klp_try_switch_task pair
a fallback only where klp_check_and_switch_task does not attach, and the
plan says how stalls are explained."""

from __future__ import annotations

from klptrace.tracer.observe import probeplan as pp


def plan(monkeypatch, absent=(), refuse=()):
    funcs = {p.func for p in pp.POINTS} - set(absent)
    monkeypatch.setattr(pp, "kernel_facts", lambda want: (funcs & want, funcs & want, set(), True))
    tried = []

    def attach(p):
        tried.append(p.name)
        return "refused" if p.name in refuse else None
    return pp.make_plan(attach), tried


def test_61_and_later_explain_stalls_with_the_check(monkeypatch):
    p, tried = plan(monkeypatch, absent={"klp_pre_patch_callback", "klp_post_patch_callback",
                                         "klp_pre_unpatch_callback"})
    assert p.stall_source() == "check"
    assert "stall-switch" not in tried and "stall-switch-ret" not in tried
    why = {r.point.name: r.why for r in p.results}
    assert why["stall-switch"].startswith("not needed")
    assert p.missing_required() == []          # inlined core helpers and unneeded fallbacks
    assert "klp_check_and_switch_task's return" in pp.format_plan(p)
    assert p.to_json()["stalls"] == "check"


def test_510_falls_back_to_klp_try_switch_task(monkeypatch):
    p, tried = plan(monkeypatch, absent={"klp_check_and_switch_task"})
    assert p.stall_source() == "switch"
    assert "stall-check-ret" not in tried          # not in kallsyms: never tried
    # the fallback's return probe before its entry, as for every pair
    assert tried.index("stall-switch-ret") < tried.index("stall-switch")
    assert p.attached("stall-switch") and p.attached("stall-switch-ret")
    assert p.missing_required() == []


def test_without_stall_probes_the_plan_says_proc(monkeypatch):
    p, _ = plan(monkeypatch, refuse={"stall-sweep-ret"})
    assert p.stall_source() == "proc"
    assert "/proc/*/task/*/patch_state" in pp.format_plan(p)


def test_every_stall_point_is_optional_and_its_program_exists():
    src = (pp.__file__.replace("tracer/observe/probeplan.py", "bpf/klptrace.bpf.c"))
    text = open(src).read()
    for p in pp.STALL_POINTS:
        assert not p.required, p.name
        assert f"int {p.prog}(struct pt_regs *ctx" in text, p.prog
