"""The `stall` record of trace format v1: what check_record accepts and
refuses, that the engine never judges it, and what `klptrace validate` makes
of it (information: duration and blockers, never a finding)."""

from __future__ import annotations

import json

import pytest

from klptrace.tracer.model import events as ev
from klptrace.tracer.judge import stallsummary
from klptrace.tracer.judge.engine import Engine

S = 10**9


def blocked(ts=3 * S, pid=42, **kw):
    f = dict(pid=pid, tgid=pid, comm="kworker/0:1", reason="sleeping_on_function",
             function="klpt_busy_work_func", kthread=True, checks=2)
    f.update(kw)
    return ev.stall(0, ts, "lp", "patched", "blocked", since_ns=2 * S, **f)


def test_builders_give_what_readers_accept():
    recs = [blocked(),
            ev.stall(0, 4 * S, "lp", "patched", "switched", since_ns=2 * S, pid=42, tgid=42,
                     comm="kworker/0:1", reason="running", kthread=True, checks=3),
            ev.stall(0, 4 * S, "lp", "patched", "overflow", since_ns=S, tasks=10,
                     untracked_checks=0),
            ev.stall(0, 5 * S, "lp", "patched", "signalled", since_ns=S, tasks=1, signals=1),
            ev.stall(0, 6 * S, "lp", "patched", "cleared", since_ns=S, tasks=1, cause="complete",
                     sweeps=5, signals=1, forced=False)]
    for r in recs:
        r["seq"] = 1
        assert ev.check_record(json.loads(json.dumps(r))) is True


@pytest.mark.parametrize("change,field", [
    ({"target": "sideways"}, "target"),
    ({"pid": "42"}, "pid"),
    ({"pid": -1}, "pid"),
    ({"since_ns": None}, "since_ns"),
    ({"function": 7}, "function"),
    ({"reason": ""}, "reason"),
    ({"patch": ""}, "patch"),
])
def test_malformed_stall_records_name_the_field(change, field):
    r = blocked()
    r["seq"] = 1
    r.update(change)
    with pytest.raises(ev.RecordError, match=field):
        ev.check_record(r)


def test_a_direction_event_needs_its_task_count():
    r = ev.stall(1, 5, "lp", "patched", "cleared", since_ns=1, cause="complete")
    with pytest.raises(ev.RecordError, match="tasks"):
        ev.check_record(r)


def test_unknown_stall_events_and_reasons_are_information_too():
    r = blocked(reason="frozen")
    r["seq"] = 1
    assert ev.check_record(r)
    r = ev.stall(1, 5, "lp", "patched", "thawed", since_ns=1)
    assert ev.check_record(r)


def test_the_engine_never_judges_a_stall_record():
    e = Engine(ev.header("k", state={"patches": [], "modules": []}))
    r = blocked()
    r["seq"] = 1
    assert e.feed(r) == [] and e.finish() == [] and e.stats.records == 1


def _summary(recs):
    s = stallsummary.StallSummary()
    for r in recs:
        s.add(r)
    return s.finish()


def test_the_summary_has_duration_blockers_and_the_end():
    cleared = ev.stall(0, 12 * S, "lp", "patched", "cleared", since_ns=S, tasks=1,
                       cause="complete", sweeps=11, signals=0, forced=False)
    (s,) = _summary([blocked(), blocked(pid=43, comm="bash", kthread=False, reason="running",
                                        function=None),
                     ev.stall(0, 5 * S, "lp", "patched", "switched", since_ns=2 * S, pid=43,
                              tgid=43, comm="bash", reason="running", kthread=False, checks=3),
                     cleared])
    assert (s["patch"], s["target"], s["cause"], s["duration_s"]) == ("lp", "patched", "complete", 10.0)
    by_pid = {b["pid"]: b for b in s["blockers"]}
    assert by_pid[42]["function"] == "klpt_busy_work_func" and by_pid[42]["until_ns"] == 12 * S
    assert by_pid[43]["until_ns"] == 5 * S
    text = "\n".join(stallsummary.format_text([s]))
    assert "INFO stall: transition of lp to patched blocked for 10.0s by 2 task(s), ended by complete" in text
    assert "kthread kworker/0:1 (pid 42) sleeping_on_function in klpt_busy_work_func for 10.0s" in text
    assert all(l.startswith("  ") for l in text.splitlines())      # `validate -q` hides them


def test_a_stall_open_at_the_end_of_the_trace_and_a_reverse():
    recs = [blocked(),
            ev.stall(0, 6 * S, "lp", "patched", "cleared", since_ns=S, tasks=1, cause="reverse",
                     sweeps=4, signals=0, forced=False),
            ev.stall(0, 9 * S, "lp", "unpatched", "blocked", since_ns=8 * S, pid=7, tgid=7,
                     comm="cat", reason="sleeping_on_function", function="cmdline_proc_show",
                     kthread=False, checks=2)]
    a, b = _summary(recs)
    assert a["cause"] == "reverse" and b["ended_ns"] is None and b["target"] == "unpatched"
    assert "still open at the end of the trace" in "\n".join(stallsummary.format_text([b]))


def test_validate_reports_a_stall_as_information_never_a_finding(tmp_path):
    from click.testing import CliRunner

    from klptrace.tracer.commands.validate import validate, validate_file
    recs = [ev.patch_enable(0, S, "lp", [{"name": "vmlinux", "callbacks": []}]),
            ev.transition(0, S, "lp", "init", "patched"),
            ev.transition(0, S + 1, "lp", "start", "patched"),
            blocked(),
            ev.transition(0, 9 * S, "lp", "complete", "patched"),
            ev.stall(0, 9 * S, "lp", "patched", "cleared", since_ns=S + 1, tasks=1,
                     cause="complete", sweeps=8, signals=0, forced=False)]
    p = tmp_path / "t.jsonl"
    with open(p, "w") as f:
        f.write(json.dumps(ev.header("k", state={"patches": [], "modules": []})) + "\n")
        for i, r in enumerate(recs, 1):
            r["seq"] = i
            f.write(json.dumps(r) + "\n")
    res = validate_file(str(p))
    # the patch stays enabled (one warning says so); the stall adds nothing
    assert [f.kind for f in res.findings] == ["warning"] and "still enabled" in res.findings[0].message
    assert res.input_warnings == [] and res.error is None
    (s,) = res.stalls
    assert s["duration_s"] == 7.0 and s["blockers"][0]["comm"] == "kworker/0:1"
    r = CliRunner().invoke(validate, ["--format", "json", str(p)])
    assert r.exit_code == 0
    doc = json.loads(r.output)
    assert doc["violations"] == doc["unknown"] == 0 and doc["warnings"] == 1
    assert doc["files"][0]["stalls"][0]["cause"] == "complete"
    r = CliRunner().invoke(validate, [str(p)])
    assert r.exit_code == 0 and "INFO stall: transition of lp to patched blocked for 7.0s" in r.output
    r = CliRunner().invoke(validate, ["-q", str(p)])
    assert "INFO" not in r.output
