"""tracer/observe/stalls.py without a kernel: the BPF tables are a fake with the
semantics of bpf/klptrace.bpf.c ("stalls"): an entry per task whose check
failed, a sweep state per transition direction. What must hold: a healthy
transition writes nothing, a real blocker is named with its reason and
function, the records are bounded whatever the number of tasks, nothing is
read outside a transition, and the state the metrics read counts every
blocker."""

from __future__ import annotations

import pytest

from klptrace.tracer.model import events as ev
from klptrace.tracer.observe import rawevents as rw
from klptrace.tracer.model.livestate import LivepatchState
from klptrace.tracer.observe import stalls as st
from klptrace.tracer.observe import stallstate as ss

S = 1_000_000_000
EBUSY, EINVAL = -16, -22


class Table:
    """bpf/klptrace.bpf.c's stall_tasks and stall_sweep, driven by the test as
    the kernel would: ``sweep()`` runs one sweep in which ``failing`` tasks
    fail their check."""

    def __init__(self):
        self.entries: dict[int, rw.Blocker] = {}
        self.sw = rw.Sweeps()
        self.gen = 1
        self.reads = 0
        self.forgotten: list[int] = []

    # the kernel side
    def new_direction(self):
        self.gen += 1

    def sweep(self, start: int, failing: dict, end: int | None = None, complete=False):
        """failing: key -> (pid, comm, ret, function, kthread)"""
        s = self.sw
        if s.gen != self.gen:
            self.sw = s = rw.Sweeps(gen=self.gen, gen_ns=start, overflow=s.overflow)
        s.start_ns, s.started = start, s.started + 1
        for key, (pid, comm, ret, fn, kthread) in failing.items():
            self.check(key, pid, comm, ret, fn, kthread, start + 1)
        for key, b in list(self.entries.items()):
            if b.gen == self.gen and key not in failing and b.last_ns >= s.done_start_ns:
                pass        # switched at kernel exit: the kernel does not check it again
        if not complete:
            if s.incomplete and s.incomplete % rw.SIGNALS_TIMEOUT == 0:
                s.signals += 1
                s.signal_ns = start + 2
            s.incomplete += 1
        s.done_start_ns, s.done_end_ns, s.start_ns = start, end or start + 3, 0

    def check(self, key, pid, comm, ret, fn, kthread, ts):
        window = self.sw.started if self.sw.gen == self.gen else 0
        b = self.entries.get(key)
        if b is not None and (b.gen != self.gen or b.pid != pid):
            b = None
        if b is None:
            if len(self.entries) >= rw.STALL_SLOTS:
                self.sw.overflow += 1
                return
            b = self.entries[key] = rw.Blocker(key, pid, pid, comm, kthread, ret,
                                               rw.STALL_FROM_CHECK, "", ts, ts, 0, self.gen,
                                               window, window)
        b.last_ns, b.last_window, b.ret, b.checks = ts, window, ret, b.checks + 1
        b.function = fn if ret == -rw.EADDRINUSE else ""

    def switch(self, key):
        self.entries.pop(key, None)

    # what tracer/observe/stalls.py calls
    def sweeps(self):
        return rw.Sweeps(**vars(self.sw))

    def blockers(self):
        self.reads += 1
        return [rw.Blocker(**vars(b)) for b in self.entries.values()]

    def forget(self, keys):
        self.forgotten += keys
        for k in keys:
            self.entries.pop(k, None)

    def clear(self):
        self.entries.clear()


class Tracked:
    """A stall tracker as the daemon feeds it: the kernel state tracker
    (tracer/model/livestate.py) applies each record first (the engine does
    that in the daemon), then the stall tracker sees it. ``tick`` takes the
    transition the tests name but reads the state tracker's, as the daemon's
    does."""

    def __init__(self, emit, *, open_at_start=None, **kw):
        state = None
        if open_at_start is not None:
            state = {"patches": [{"name": open_at_start[0], "objects": [], "transition": True,
                                  "enabled": open_at_start[1] == "patched"}]}
        self.kstate = LivepatchState.from_state(state)
        self.t = st.StallTracker(emit, self.kstate, **kw)

    def on_record(self, rec):
        self.kstate.apply(rec)
        self.t.on_record(rec)

    def tick(self, now, _transition_patch=None):
        self.t.tick(now)

    def __getattr__(self, name):
        return getattr(self.t, name)


def tracker(table=None, **kw):
    out = []
    t = Tracked(out.append, source="check", table=table or Table(), clock=lambda: 0, **kw)
    return t, out


def tr(event, ts, target="patched", patch="lp"):
    return ev.transition(0, ts, patch, event, target)


WORKER = {0xA: (42, "kworker/0:1", -rw.EADDRINUSE, "klpt_busy_work_func", True)}


def open_transition(t, ts=1 * S, target="patched"):
    t.on_record(tr("init", ts, target))
    t.on_record(tr("start", ts + 1, target))
    t.tick(ts + 2, "lp")


def block_worker(table, t):
    """The worker sleeps in the patched function at three sweeps (MIN_WINDOWS):
    from the tick after the third it is a blocker."""
    table.sweep(S + S // 2, WORKER)
    table.sweep(2 * S, WORKER)
    table.sweep(3 * S, WORKER)
    t.tick(3 * S + 10, "lp")


def test_a_healthy_transition_writes_nothing():
    table = Table()
    t, out = tracker(table)
    open_transition(t)
    # the first sweep finds an idle task on its CPU; it switches in its idle loop
    table.sweep(2 * S, {0xB: (0, "swapper/1", EBUSY, "", True)})
    table.switch(0xB)
    t.tick(2 * S + 10, "lp")
    table.sweep(3 * S, {}, complete=True)
    t.on_record(tr("complete", 3 * S + 5))
    t.tick(3 * S + 10, None)
    assert out == []
    assert t.state.patch is None and t.state.blockers == ()


def test_a_task_on_a_patched_function_is_named_and_its_switch_written():
    table = Table()
    t, out = tracker(table)
    open_transition(t)
    table.sweep(S + S // 2, WORKER)
    table.sweep(2 * S, WORKER)
    t.tick(2 * S + 10, "lp")
    assert out == []                    # two windows: not yet a blocker
    table.sweep(3 * S, WORKER)
    t.tick(3 * S + 10, "lp")
    (rec,) = out
    assert ev.check_record(rec)
    assert (rec["event"], rec["pid"], rec["comm"], rec["reason"], rec["function"],
            rec["kthread"], rec["patch"], rec["target"]) == \
        ("blocked", 42, "kworker/0:1", "sleeping_on_function", "klpt_busy_work_func", True,
         "lp", "patched")
    assert rec["since_ns"] == S + S // 2 + 1    # its first failed check
    (b,) = t.state.blockers
    assert b.function == "klpt_busy_work_func" and t.state.sweeps == 3
    # the same again: nothing new
    table.sweep(4 * S, WORKER)
    t.tick(4 * S + 10, "lp")
    assert len(out) == 1
    # the worker leaves the function and switches: the next sweep does not check it
    table.switch(0xA)
    table.sweep(5 * S, {}, complete=True)
    t.tick(5 * S + 10, "lp")
    assert out[-1]["event"] == "switched" and out[-1]["pid"] == 42
    t.on_record(tr("complete", 5 * S + 4))
    t.tick(5 * S + 20, None)
    assert out[-1]["event"] == "cleared" and out[-1]["tasks"] == 0
    assert out[-1]["cause"] == "complete" and out[-1]["ts_ns"] == 5 * S + 4
    assert all(ev.check_record(r) for r in out)
    assert t.state.patch is None


def test_an_entry_the_last_sweep_did_not_check_has_switched():
    """A task that switched at kernel exit keeps its entry (no probe saw the
    switch); the next completed sweep, which did not check it, proves it."""
    table = Table()
    t, out = tracker(table)
    open_transition(t)
    two = {**WORKER, 0xC: (77, "bash", EBUSY, "", False)}
    table.sweep(S + S // 2, two)
    table.sweep(2 * S, two)
    table.sweep(3 * S, two)
    t.tick(3 * S + 10, "lp")
    assert {r["pid"] for r in out} == {42, 77}
    table.sweep(4 * S, WORKER)          # bash went back to user space: switched
    t.tick(4 * S + 10, "lp")
    assert out[-1]["event"] == "switched" and out[-1]["pid"] == 77
    assert 0xC in table.forgotten and 0xC not in table.entries
    assert [b.pid for b in t.state.blockers] == [42]


def test_nothing_is_read_outside_a_transition():
    table = Table()
    t, out = tracker(table)
    for i in range(50):
        t.tick(i * S, None)
    assert table.reads == 0
    open_transition(t)
    table.sweep(2 * S, WORKER)
    t.tick(2 * S + 10, "lp")
    assert table.reads == 1
    for i in range(5):                  # no new sweep, within a second: no read
        t.tick(2 * S + 20 + i, "lp")
    assert table.reads == 1


def test_thousands_of_blockers_write_a_bounded_trace_and_count_them_all():
    table = Table()
    t, out = tracker(table)
    open_transition(t)
    many = {0x1000 + i: (1000 + i, f"t{i}", -rw.EADDRINUSE, "do_sys_poll", False)
            for i in range(5000)}        # more than the BPF table holds
    for k in range(30):
        table.sweep((2 + k) * S, many)
        t.tick((2 + k) * S + 10, "lp")
    blocked = [r for r in out if r["event"] == "blocked"]
    overflow = [r for r in out if r["event"] == "overflow"]
    assert len(blocked) == st.MAX_LISTED
    assert 1 <= len(overflow) <= 2 * 13
    assert overflow[-1]["tasks"] == rw.STALL_SLOTS - st.MAX_LISTED
    assert overflow[-1]["untracked_checks"] > 0            # the table was full: said so
    assert len(t.state.blockers) == rw.STALL_SLOTS        # the gauges count every one tracked
    assert t.state.untracked_checks == table.sw.overflow
    assert t.state.records_suppressed >= rw.STALL_SLOTS - st.MAX_LISTED
    signalled = [r for r in out if r["event"] == "signalled"]
    assert len(signalled) == 1 and signalled[0]["signals"] == 1
    assert len(out) <= st.MAX_LISTED * (st.MAX_RECORDS_PER_TASK + 1) + 2 + 2 * 13


def test_a_reason_that_keeps_changing_is_bounded_per_task():
    table = Table()
    t, out = tracker(table)
    open_transition(t)
    for k in range(20):
        ret = EBUSY if k % 2 else -rw.EADDRINUSE
        table.sweep((2 + k) * S, {0xA: (42, "spin", ret, "hot_fn", True)})
        t.tick((2 + k) * S + 10, "lp")
    blocked = [r for r in out if r["event"] == "blocked"]
    assert len(blocked) == st.MAX_RECORDS_PER_TASK
    assert {r["reason"] for r in blocked} == {"running", "sleeping_on_function"}
    # reported from the MIN_WINDOWS-th sweep on; each later sweep changes the reason
    assert t.state.records_suppressed == 20 - (st.MIN_WINDOWS - 1) - st.MAX_RECORDS_PER_TASK
    assert t.state.blockers[0].reason == ("running" if 19 % 2 else "sleeping_on_function")


def test_a_reverse_clears_the_old_direction_and_starts_afresh():
    table = Table()
    t, out = tracker(table)
    open_transition(t)
    block_worker(table, t)
    assert out[-1]["event"] == "blocked"
    # echo 0 > enabled: the kernel reverses; the worker is fine for the new target
    table.new_direction()
    t.on_record(tr("reverse", 4 * S, "unpatched"))
    t.tick(4 * S + 1, "lp")
    assert out[-1]["event"] == "cleared" and out[-1]["cause"] == "reverse"
    assert out[-1]["tasks"] == 1 and out[-1]["target"] == "patched"
    # the old direction's entry is not a blocker of the new one
    table.sweep(5 * S, {})
    t.tick(5 * S + 10, "lp")
    assert t.state.blockers == () and t.state.target == "unpatched" and t.state.reversed
    assert t.state.opened_ns == 1 * S + 1         # the transition is as old as its first start
    assert 0xA not in table.entries
    n = len(out)
    table.sweep(6 * S, {}, complete=True)
    t.on_record(tr("complete", 6 * S + 1, "unpatched"))
    t.tick(6 * S + 10, None)
    assert len(out) == n                 # the new direction reported nothing: no cleared


def test_stale_entries_of_an_earlier_transition_are_not_blockers():
    table = Table()
    t, out = tracker(table)
    open_transition(t)
    block_worker(table, t)
    table.sweep(4 * S, {}, complete=True)
    t.on_record(tr("complete", 4 * S + 1))
    t.tick(4 * S + 10, None)
    assert 0xA not in table.entries      # its direction's entries left the table
    # a new transition before any sweep of it: nothing is read as current
    table.new_direction()
    table.entries[0xD] = rw.Blocker(0xD, 9, 9, "old", False, EBUSY, rw.STALL_FROM_CHECK, "",
                                    1, 2, 1, 1, 1, 5)
    open_transition(t, ts=10 * S)
    t.tick(10 * S + 5, "lp")
    assert t.state.blockers == () and out[-1]["event"] == "cleared"


def test_the_daemon_started_inside_a_transition_reads_it():
    table = Table()
    t, out = tracker(table, open_at_start=("lp", "patched"))
    block_worker(table, t)
    assert out and out[0]["event"] == "blocked" and t.state.patch == "lp"
    # its age counts from the daemon's start (clock 0 here), and says so
    assert t.state.opened_ns == 0 and t.state.before_daemon


def test_on_change_sees_every_new_state():
    seen = []
    table = Table()
    t, _ = tracker(table, on_change=seen.append)
    open_transition(t)
    block_worker(table, t)
    assert seen[-1].blockers and seen[-1].patch == "lp"
    assert isinstance(seen[-1].to_json()["blockers"][0]["function"], str)


# --- the proc source (no stall probe attached) ------------------------------------

def fake_host(tmp, tasks, patch="lp", target="patched", funcs=("klpt_busy_work_func",)):
    sysfs = tmp / "livepatch"
    (sysfs / patch).mkdir(parents=True)
    (sysfs / patch / "transition").write_text("1\n")
    (sysfs / patch / "enabled").write_text("1\n" if target == "patched" else "0\n")
    for f in funcs:
        (sysfs / patch / "klpt_busy" / f"{f},1").mkdir(parents=True)
    proc = tmp / "proc"
    for tid, (pid, comm, state, stack, kthread) in tasks.items():
        d = proc / str(pid) / "task" / str(tid)
        d.mkdir(parents=True)
        (d / "patch_state").write_text(f"{state}\n")
        (d / "comm").write_text(comm + "\n")
        flags = 0x00200040 if kthread else 0x400000
        (d / "stat").write_text(f"{tid} ({comm}) S 2 0 0 0 -1 {flags} 0 0\n")
        (proc / str(tid)).mkdir(parents=True, exist_ok=True)
        (proc / str(tid) / "stack").write_text(stack)
    return sysfs, proc


STACK = ("[<0>] __schedule+0x2c3/0x870\n[<0>] schedule_timeout+0x95/0x150\n"
         "[<0>] klpt_busy_work_func+0x3a/0x60 [klpt_busy]\n[<0>] process_one_work+0x1c4/0x380\n")


def test_the_proc_source_names_a_blocker_and_its_function(tmp_path):
    sysfs, proc = fake_host(tmp_path, {50: (50, "kworker/1:2", 0, STACK, True),
                                      60: (60, "bash", 1, "", False),
                                      70: (70, "sshd", -1, "", False)})
    out = []
    t = Tracked(out.append, source="proc", proc_root=str(proc), sysfs_root=str(sysfs))
    open_transition(t)
    t.tick(2 * S, "lp")                          # open for less than 2 s: no scan yet
    for k in range(st.MIN_WINDOWS - 1):          # first scans: seen, not yet a blocker
        t.tick((4 + 6 * k) * S, "lp")
        assert out == []
    t.tick((4 + 6 * (st.MIN_WINDOWS - 1)) * S, "lp")     # a blocker
    (rec,) = out
    assert (rec["pid"], rec["reason"], rec["function"], rec["kthread"]) == \
        (50, "not_switched", "klpt_busy_work_func", True)
    assert [b.pid for b in t.state.blockers] == [50]


def test_procstall_unpatching_looks_for_the_livepatch_module(tmp_path):
    from klptrace.tracer.observe import procstall
    from klptrace.tracer.observe import sysfs as livepatch_sysfs
    stack = "[<0>] livepatch_cmdline_proc_show+0x10/0x40 [lp]\n[<0>] seq_read+0x1/0x2\n"
    sysfs, proc = fake_host(tmp_path, {5: (5, "cat", 1, stack, False)}, target="unpatched")
    assert livepatch_sysfs.open_transition(str(sysfs)) == ("lp", "unpatched")
    (b,) = procstall.blockers("unpatched", set(), "lp", proc=str(proc))
    assert b.function == "livepatch_cmdline_proc_show" and not b.kthread


@pytest.mark.parametrize("ret,reason", [(EBUSY, "running"), (EINVAL, "unreliable_stack"),
                                        (-rw.EADDRINUSE, "sleeping_on_function"), (-5, "error")])
def test_reasons_from_the_kernels_return_codes(ret, reason):
    b = rw.Blocker(1, 1, 1, "x", False, ret, rw.STALL_FROM_CHECK, "", 0, 0, 1, 1, 0, 0)
    assert ss.reason_of(b).value == reason
    b.source = rw.STALL_FROM_SWITCH
    assert ss.reason_of(b) is ss.Reason.NOT_SWITCHED


def test_reason_names_are_the_trace_formats():
    assert ss.REASONS == ev.STALL_REASONS


# --- in the daemon: through the inference's queue, into the trace, the status file

def _pipeline(tmp_path, table):
    """The daemon's event path (tracer/daemon/pipeline.py build()) with a fake
    trace file and BPF tables: what the daemon fans each record out to."""
    from klptrace.tracer.daemon.daemon import log
    from klptrace.tracer.daemon.pipeline import Pipeline
    from klptrace.tracer.daemon.sinks import JudgeSink, StallSink, StatusSink, TraceSink
    from klptrace.tracer.judge.engine import Engine
    from klptrace.tracer.observe.infer import Inference

    class Writer:
        def __init__(self):
            self.lines = []

        def write(self, rec):
            self.lines.append(dict(rec))

    pipe = Pipeline(log)
    writer = Writer()
    engine = Engine(ev.header("k", state={"patches": [], "modules": []}))
    inference = Inference(pipe.fan_out)
    stalls = st.StallTracker(inference.out.emit, engine.kstate, source="check", table=table)
    status = tmp_path / "run" / "status.json"
    pipe.assemble(inference, [TraceSink(writer, log, pipe.count), JudgeSink(engine, log),
                              StallSink(stalls), StatusSink(stalls, str(status), log)])
    return pipe, writer, engine, status


def test_the_daemon_writes_stall_records_in_order_and_the_status_file(tmp_path):
    import json
    import time

    from klptrace.tracer.daemon import statusfile

    table = Table()
    pipe, writer, engine, status = _pipeline(tmp_path, table)
    vm = rw.Obj("vmlinux", (0, 0, 0, 0))
    B = time.monotonic_ns()     # the BPF clock is the daemon's (CLOCK_MONOTONIC)
    pipe.feed(rw.Raw(rw.INIT_TRANSITION, B + 1 * S, patch="lp", arg=1, pid=5, objs=[vm]))
    pipe.feed(rw.Raw(rw.START_TRANSITION, B + 1 * S + 5, pid=5, objs=[vm]))
    table.sweep(B + S + S // 2, WORKER)
    table.sweep(B + 2 * S, WORKER)
    table.sweep(B + 3 * S, WORKER)
    pipe.tick(time.monotonic_ns(), 0)
    doc = statusfile.read(str(status))
    assert doc["stall"]["patch"] == "lp"
    assert doc["stall"]["blockers"][0]["function"] == "klpt_busy_work_func"
    assert oct(status.stat().st_mode & 0o777) == "0o644"
    table.switch(0xA)
    table.sweep(B + 4 * S, {}, complete=True)
    pipe.feed(rw.Raw(rw.COMPLETE, B + 4 * S + 2, pid=7, objs=[vm]))
    pipe.feed(rw.Raw(rw.COMPLETE_RET, B + 4 * S + 3, pid=7))
    pipe.tick(time.monotonic_ns(), 0)
    kinds = [(r["type"], r.get("event")) for r in writer.lines]
    assert kinds == [("patch", "enable"), ("transition", "init"), ("transition", "start"),
                     ("stall", "blocked"), ("transition", "complete"), ("stall", "cleared")], kinds
    seqs = [r["seq"] for r in writer.lines]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert engine.stats.records == len(writer.lines)
    assert json.loads(status.read_text())["stall"]["patch"] is None
    assert not pipe.handler_errors


def test_an_error_reading_the_stalls_is_not_a_gap_in_the_trace(tmp_path):
    class Broken(Table):
        def sweeps(self):
            raise OSError("map gone")

        def blockers(self):
            raise OSError("map gone")

    pipe, writer, engine, status = _pipeline(tmp_path, Broken())
    vm = rw.Obj("vmlinux", (0, 0, 0, 0))
    pipe.feed(rw.Raw(rw.INIT_TRANSITION, 1, patch="lp", arg=1, pid=5, objs=[vm]))
    pipe.tick(2 * S, 0)
    assert not [r for r in writer.lines if r["type"] == "loss"]


def test_the_status_lock_is_the_daemons():
    from klptrace.tracer.commands import run as runcmd
    from klptrace.tracer.daemon import statusfile
    assert runcmd.statusfile.LOCK == statusfile.LOCK      # one definition, the status file's


def test_the_per_task_probes_are_armed_only_while_a_sweep_left_tasks_behind():
    """Issue 21: the check probes cost a hit per task per sweep; a transition
    that completes at its first sweep never runs them."""
    table, arms = Table(), []
    t, out = tracker(table, arm=arms.append)
    # a transition that completes at its first sweep: never armed
    open_transition(t)
    table.sweep(1 * S + 5, {}, complete=True)
    t.on_record(tr("complete", 1 * S + 9))
    t.tick(1 * S + 10, None)
    assert arms == [] and not t.state.probes_armed
    # one that stalls: armed after the first sweep that left tasks behind ...
    table.new_direction()
    open_transition(t, 3 * S)
    t.tick(3 * S + 3, "lp")
    assert arms == []
    table.sweep(3 * S + 5, WORKER)
    t.tick(3 * S + 9, "lp")
    assert arms == [True] and t.state.probes_armed
    table.sweep(4 * S, WORKER)
    t.tick(4 * S + 9, "lp")
    assert arms == [True]                       # once
    # ... and disarmed when it ends
    t.on_record(tr("complete", 5 * S))
    t.tick(5 * S + 1, None)
    assert arms == [True, False] and not t.state.probes_armed


def test_no_transition_open_means_nothing_armed():
    """A transition's end record lost (a gap): the trace still shows it open,
    but once the kernel has not swept it for SWEEPS_STOPPED_NS the probes
    are disarmed; a transition that ends as the trace says disarms at once."""
    table, arms = Table(), []
    t, out = tracker(table, arm=arms.append)
    open_transition(t)
    table.sweep(1 * S + 5, WORKER)
    t.tick(1 * S + 9, "lp")
    assert arms == [True]
    t.tick(1 * S + 9 + st.SWEEPS_STOPPED_NS // 2, "lp")
    assert arms == [True]
    t.tick(1 * S + 9 + st.SWEEPS_STOPPED_NS, "lp")
    assert arms == [True, False]
    t.tick(2 * S + 9 + st.SWEEPS_STOPPED_NS, "lp")
    assert arms == [True, False]                # and stay disarmed


def test_a_blocker_is_still_named_at_the_third_sweep_when_armed_after_the_first():
    """The first sweep ran unobserved (nothing armed yet); a task failing the
    first observed sweep had failed every earlier one: it counts from the
    direction's first sweep."""
    table, arms = Table(), []
    t, out = tracker(table, arm=arms.append)
    open_transition(t)
    table.sweep(1 * S + 5, {})           # sweep 1 left the worker behind; nobody watched
    t.tick(1 * S + 9, "lp")
    assert arms == [True]
    table.sweep(2 * S, WORKER)           # sweep 2: seen
    t.tick(2 * S + 9, "lp")
    assert not [r for r in out if r["event"] == "blocked"]
    table.sweep(3 * S, WORKER)           # sweep 3: the third of the direction
    t.tick(3 * S + 9, "lp")
    blocked = [r for r in out if r["event"] == "blocked"]
    assert len(blocked) == 1 and blocked[0]["function"] == "klpt_busy_work_func"
