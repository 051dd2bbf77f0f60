"""Stalled transitions explained: which tasks keep a livepatch transition
open, why, on which function, since when; turned into `stall` records (trace
format v1, docs/trace-format.md) and kept as the current state for the
metrics, the daemon's status file and `klptrace status`.

Sources (tracer/observe/probeplan.py ``Plan.stall_source``):

* ``check``: the BPF table ``stall_tasks`` (bpf/klptrace.bpf.c, "stalls"),
  one entry per task whose klp_check_and_switch_task() failed, with the
  kernel's reason and, on -EADDRINUSE, the function (func->old_name); and
  ``stall_sweep``, the sweeps of klp_try_complete_transition().
* ``switch``: the same tables filled from klp_try_switch_task() (kernels
  without klp_check_and_switch_task): which tasks, no reason; the function
  is looked up in /proc/TID/stack (tracer/observe/procstall.py).
* ``proc``: no stall probe: /proc/*/task/*/patch_state, scanned while a
  transition is open.

Invariants:

* Nothing is read outside a transition: the tables are read only while the
  kernel state tracker has one open, after each sweep the kernel completes
  (about once a second) or every ``READ_EVERY_NS`` at the latest, at the
  daemon's ``tick``.
* A task is a *blocker* once its checks failed in three sweep windows
  (``MIN_WINDOWS``): the kernel retried it twice, about two seconds. Tasks
  that are merely on a CPU at a sweep (idle tasks, the enabling process, a
  kthread busy at that moment) switch at their next idle loop, kernel exit
  or sleep and are not reported: the lab saw rcu_preempt `running` at two
  sweeps in a row of a healthy transition, never at three. An entry that
  the last completed sweep did not check has switched (or exited): the sweep
  checks every task that has not.
* Bounded output, never silent: per transition direction at most
  ``MAX_LISTED`` tasks get records of their own, each at most
  ``MAX_RECORDS_PER_TASK`` `blocked` records (first report, then changes of
  reason or function) and one `switched`; blockers beyond the list, and
  failed checks the BPF table had no room for, are counted in `overflow`
  records, written when either number first becomes non-zero and each time
  it doubles; one `signalled` record (the first time the kernel signals the
  remaining tasks), one `cleared` at the end. So a direction writes at most
  64 * 5 + 2 records plus one `overflow` per doubling (at most 13 for
  unlisted blockers, which the 4096-entry table bounds), however many tasks
  retry however often. Every task record the bound keeps out is counted
  (``records_suppressed``); the state, and so the metrics, counts every
  blocker.
* Which transition is open, in which direction, since when, forced or
  reversed: the kernel state tracker's (tracer/model/livestate.py), which
  the engine applies each record to before this tracker sees it. A
  direction here begins where the tracker's does (an init, a reverse, a
  start whose init was lost) and ends where it ends (complete, cancel, the
  next init, the reverse), with that record's event as the cause.
* Records go out through the inference's output queue (``emit``), which
  numbers them: the trace stays in order. ``on_record`` only notes the state
  a transition record left; the records it implies are written at the next
  ``tick`` (never from inside the queue's own write).
* ``state`` is replaced whole, never mutated: scrapes read it from other
  threads.
* The per-task check probes (the BPF sources' ``stall-check``/``stall-switch``
  points, hit for every task at every sweep) are armed (``arm(True)``) only
  once a sweep of the open transition has left tasks behind, and disarmed
  when the transition ends or no transition is open: a transition that
  completes at its first sweep never runs them; nor does one whose end the
  trace lost: no sweep for SWEEPS_STOPPED_NS disarms them too. A task whose first seen
  failed check is at the first sweep after the arming had not switched at
  any earlier sweep of the direction either (a task never switches back
  within one), so its windows count from the direction's first sweep, and a
  blocker is still named at the third sweep.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from klptrace.tracer.model import events as ev
from klptrace.tracer.model.livestate import LivepatchState, Transition
from klptrace.tracer.observe import procstall, sysfs
from klptrace.tracer.observe import rawevents as rw
from klptrace.tracer.observe.stallstate import (Reason, StallSource, StallState, Task,
                                                reason_of)

MIN_WINDOWS = 3
MAX_LISTED = 64
MAX_RECORDS_PER_TASK = 4
READ_EVERY_NS = 1_000_000_000        # at the latest, when no sweep completed (a long sweep)
# The kernel sweeps an open transition about once a second; no sweep for this
# long means it ended even if its end is not in the trace (lost records):
# the per-task probes are disarmed then (they cost a hit per task per sweep)
SWEEPS_STOPPED_NS = 5_000_000_000
PROC_SCAN_AFTER_NS = 2_000_000_000   # the proc source: first scan once open this long
PROC_SCAN_EVERY_NS = 5_000_000_000   # ... then every 5 s (O(threads) file reads)


class StallTable(Protocol):
    """The BPF tables (tracer/observe/loader.py ``BpfStallTable``)."""

    def sweeps(self) -> rw.Sweeps: ...
    def blockers(self) -> list[rw.Blocker]: ...
    def forget(self, keys: list[int]) -> None: ...


@dataclass
class _Listed:
    """A task with records of its own in this direction."""
    records: int = 0            # blocked records written
    reason: str = ""
    function: str | None = None


@dataclass
class _Direction:
    """One transition direction: from init (or a reverse) to its end; ``t``
    is the kernel state tracker's transition as of the last record seen."""
    t: Transition
    opened_ns: int | None       # its first `start` (before the daemon: the daemon's start)
    listed: dict = field(default_factory=dict)      # (key, pid) -> _Listed
    current: dict = field(default_factory=dict)     # (key, pid) -> Task
    unlisted_written: int = 0   # unlisted blockers when the last overflow record went out
    untracked_written: int = 0  # ... and failed checks the table had no room for
    untracked_base: int | None = None   # the table's overflow counter when this began
    signalled: bool = False
    reported: bool = False      # any blocker reported: a `cleared` is owed
    sweeps: int = 0
    signals: int = 0
    gen: int | None = None      # the BPF generation of this direction, once read
    armed_window: int | None = None     # sweeps started when the check probes were armed
    last_done_ns: int = 0       # the sweep the last read followed
    last_read_ns: int = 0
    seen: dict = field(default_factory=dict)        # proc: tid -> (first seen ns, scans)

    # what the tracker says of the transition (tracer/model/livestate.py)
    patch = property(lambda self: self.t.patch)
    target = property(lambda self: self.t.target)
    began_ns = property(lambda self: self.t.began_ns)      # init / reverse (0: before the daemon)
    forced = property(lambda self: self.t.forced)
    reversed = property(lambda self: self.t.reversed)
    before_daemon = property(lambda self: self.t.before_trace)


class StallTracker:
    def __init__(self, emit: Callable[[dict], None], kstate: LivepatchState, *,
                 source: StallSource = StallSource.PROC,
                 table: StallTable | None = None, on_change: Callable[[StallState], None] | None = None,
                 clock: Callable[[], int] = time.monotonic_ns,
                 proc_root: str = procstall.PROC, sysfs_root: str = sysfs.LIVEPATCH,
                 arm: Callable[[bool], None] | None = None):
        self._emit = emit
        self._kstate = kstate
        self._arm = arm
        self.probes_armed = False
        self.source = StallSource(source) if table is not None else StallSource.PROC
        self._table = table
        self._on_change = on_change
        self._clock = clock
        self._proc, self._sysfs = proc_root, sysfs_root
        self._queue: list[tuple[str, int, Transition | None]] = []
        self._dir: _Direction | None = None
        t = kstate.transition
        if t is not None:
            # the daemon started inside a transition: its start is not known;
            # its age counts from now (a lower bound, said so)
            self._dir = _Direction(dataclasses.replace(t), self._clock())
        self._functions: dict[tuple[int, int], str | None] = {}     # proc lookups, per task
        self.untracked_checks = 0
        self.records_suppressed = 0
        self.state = StallState(source=self.source)
        self._publish(self._clock())

    # --- what the trace says -----------------------------------------------------

    def on_record(self, rec: dict) -> None:
        """Every record the daemon writes passes here, after the kernel state
        tracker applied it; for a transition record the state it left is
        noted (cheap), everything else ignored."""
        if rec.get("type") == "transition":
            t = self._kstate.transition
            self._queue.append((rec["event"], rec["ts_ns"],
                                dataclasses.replace(t) if t is not None else None))

    def tick(self, now_ns: int) -> None:
        """The daemon's tick (tracer/daemon/runloop.py): what the transition records implied, then,
        while a transition is open, a read of the source."""
        changed = False
        queue, self._queue = self._queue, []
        for e, ts, t in queue:
            changed |= self._follow(e, ts, t)
        d = self._dir
        if d is not None and self._kstate.transition is not None:
            changed |= self._poll(d, now_ns)
        elif self.probes_armed:
            changed |= self._set_armed(False)       # nothing open: nothing to check
        if changed:
            self._publish(now_ns)

    def _set_armed(self, on: bool) -> bool:
        if self._arm is None or on == self.probes_armed:
            return False
        self._arm(on)
        self.probes_armed = on
        return True

    def _follow(self, e: str, ts: int, t: Transition | None) -> bool:
        """A transition record left the tracker's transition ``t``: a
        direction that is not ``t``'s any more has ended (this record's event
        is the cause), and ``t``'s, if new, begins."""
        d = self._dir
        if d is not None and (t is None or t.direction != d.t.direction):
            # what ended it: the trace format's causes (a start that opened
            # another transition after lost records counts as a new init)
            self._end(d, ts, e if e in ("init", "reverse", "complete", "cancel") else "init")
            self._dir = None
            if t is None:
                self._set_armed(False)
        if t is None:
            return d is not None
        if self._dir is None:
            same = d is not None and d.t.patch == t.patch and t.before_trace
            opened = t.opened_ns if t.opened_ns is not None else (d.opened_ns if same else None)
            self._dir = _Direction(t, opened, armed_window=0 if self.probes_armed else None)
        else:
            d.t = t
            if d.opened_ns is None:
                d.opened_ns = t.opened_ns
        return True

    def _end(self, d: _Direction, ts: int, cause: str) -> None:
        """The direction ended: a `cleared` record if it reported anything,
        and its entries leave the table (a later transition's have a higher
        generation and stay)."""
        if d.reported:
            self._write(ev.stall(0, ts, d.patch, d.target, "cleared", since_ns=self._since(d),
                                 tasks=len(d.current), cause=cause, sweeps=d.sweeps,
                                 signals=d.signals, forced=d.forced))
        self._functions.clear()
        if self._table is not None and d.gen is not None:
            try:
                self._table.forget([b.key for b in self._table.blockers() if b.gen <= d.gen])
            except Exception:       # a failed map call: the generation check still holds
                pass

    @staticmethod
    def _since(d: _Direction) -> int:
        """since_ns of the records about the whole direction: when it began
        (its start; for a reversed one, the reverse)."""
        if d.opened_ns is not None and d.opened_ns >= d.began_ns:
            return d.opened_ns
        return d.began_ns

    # --- reading the source --------------------------------------------------------

    def _poll(self, d: _Direction, now: int) -> bool:
        if self.source is StallSource.PROC:
            return self._poll_proc(d, now)
        try:
            sw = self._table.sweeps()
        except Exception:
            return False
        if sw.gen_ns < d.began_ns:
            return False        # no sweep of this direction yet
        last_sweep = max(sw.start_ns, sw.done_end_ns)
        if last_sweep and now - last_sweep > SWEEPS_STOPPED_NS:
            return self._set_armed(False)           # the kernel stopped sweeping: it ended
        armed = False
        if sw.incomplete or d.before_daemon:
            armed = self._set_armed(True)           # tasks left behind: watch each check
            if d.armed_window is None:
                d.armed_window = sw.started
        if sw.done_end_ns == d.last_done_ns and now - d.last_read_ns < READ_EVERY_NS:
            return armed
        d.last_done_ns, d.last_read_ns, d.gen = sw.done_end_ns, now, sw.gen
        if d.untracked_base is None:
            d.untracked_base = sw.overflow
        self.untracked_checks = sw.overflow
        try:
            entries = self._table.blockers()
        except Exception:
            return False
        stale, tasks = [], {}
        for b in entries:
            if b.gen != sw.gen or (sw.done_start_ns and b.last_ns < sw.done_start_ns):
                stale.append(b.key)     # an earlier direction's, or switched / exited since
            elif b.last_window >= self._first_window(d, b) + MIN_WINDOWS - 1:
                fn = b.function or None
                if fn is None and self.source is StallSource.SWITCH:
                    fn = self._function_from_proc(d, b.key, b.pid)
                tasks[(b.key, b.pid)] = Task(b.key, b.pid, b.tgid, b.comm, b.kthread,
                                             reason_of(b).value, fn, b.first_ns, b.checks)
        if stale:
            try:
                self._table.forget(stale)
            except Exception:
                pass
        d.sweeps, d.signals = sw.started, sw.signals
        if sw.signals and not d.signalled:
            d.signalled = True
            self._write(ev.stall(0, sw.signal_ns or now, d.patch, d.target, "signalled",
                                 since_ns=self._since(d), tasks=len(tasks), signals=sw.signals))
        self._report(d, tasks, now, untracked=sw.overflow - d.untracked_base)
        return True

    @staticmethod
    def _first_window(d: _Direction, b: rw.Blocker) -> int:
        """The first sweep of the direction the task failed: a task first seen
        failing at the first sweep after the arming failed every earlier one."""
        if d.armed_window and b.first_window == d.armed_window + 1:
            return 1
        return b.first_window

    def _function_from_proc(self, d: _Direction, key: int, pid: int) -> str | None:
        """The fallback source names no function: /proc/TID/stack, once per task."""
        k = (key, pid)
        if k not in self._functions:
            names, module = self._stack_match(d)
            self._functions[k] = procstall.function_on_stack(pid, names, module, self._proc)
        return self._functions[k]

    def _stack_match(self, d: _Direction) -> tuple[set[str], str | None]:
        """What a stack frame must be to block: patching, one of the patch's
        functions; unpatching, a function of the livepatch module itself."""
        if d.target == "patched":
            return sysfs.patch_functions(d.patch, self._sysfs), None
        return set(), d.patch

    def _poll_proc(self, d: _Direction, now: int) -> bool:
        if d.last_read_ns:
            if now - d.last_read_ns < PROC_SCAN_EVERY_NS:
                return False
        elif d.began_ns and now - self._since(d) < PROC_SCAN_AFTER_NS:
            return False
        d.last_read_ns = now
        names, module = self._stack_match(d)
        try:
            found = procstall.blockers(d.target, names, module, proc=self._proc)
        except procstall.ProcAccessError:
            return False
        tasks, seen = {}, {}
        for t in found:
            first, scans = d.seen.get(t.tid, (now, 0))
            seen[t.tid] = (first, scans + 1)
            if scans + 1 >= MIN_WINDOWS:
                tasks[(t.tid, t.tid)] = Task(t.tid, t.tid, t.tgid, t.comm, t.kthread,
                                             Reason.NOT_SWITCHED.value, t.function, first)
        d.seen = seen
        d.sweeps += 1           # the proc source's "sweeps" are its scans
        self._report(d, tasks, now, untracked=0)
        return True

    # --- records ---------------------------------------------------------------------

    def _report(self, d: _Direction, tasks: dict, now: int, *, untracked: int) -> None:
        """Diff the blockers with the last poll's; write what the bound allows,
        count what it does not."""
        for k, t in tasks.items():
            listed = d.listed.get(k)
            if listed is None:
                if len(d.listed) >= MAX_LISTED:
                    if k not in d.current:
                        self.records_suppressed += 1    # a new blocker, unlisted
                    continue
                listed = d.listed[k] = _Listed()
            elif (listed.reason, listed.function) == (t.reason, t.function):
                continue
            listed.reason, listed.function = t.reason, t.function
            if listed.records >= MAX_RECORDS_PER_TASK:
                self.records_suppressed += 1            # a change beyond the task's bound
                continue
            listed.records += 1
            d.reported = True
            self._write(self._task_record(d, "blocked", t, now))
        for k, t in d.current.items():
            if k not in tasks and k in d.listed:
                self._write(self._task_record(d, "switched", t, now))
        d.current = tasks
        unlisted = sum(1 for k in tasks if k not in d.listed)
        grew = ((unlisted and unlisted >= 2 * d.unlisted_written)
                or (untracked and untracked >= 2 * d.untracked_written))
        if grew:
            d.unlisted_written = max(d.unlisted_written, unlisted)
            d.untracked_written = max(d.untracked_written, untracked)
            d.reported = True
            self._write(ev.stall(0, now, d.patch, d.target, "overflow", since_ns=self._since(d),
                                 tasks=unlisted, untracked_checks=untracked))

    @staticmethod
    def _task_record(d: _Direction, event: str, t: Task, now: int) -> dict:
        return ev.stall(0, now, d.patch, d.target, event, since_ns=t.since_ns, pid=t.pid,
                        tgid=t.tgid, comm=t.comm, reason=t.reason, function=t.function,
                        kthread=t.kthread, checks=t.checks)

    def _write(self, rec: dict) -> None:
        self._emit(rec)

    def _publish(self, now: int) -> None:
        d = self._dir
        common = {"source": self.source, "as_of_ns": now,
                  "untracked_checks": self.untracked_checks,
                  "records_suppressed": self.records_suppressed,
                  "probes_armed": self.probes_armed}
        if d is None:
            self.state = StallState(**common)
        else:
            self.state = StallState(
                patch=d.patch, target=d.target, opened_ns=d.opened_ns, sweeps=d.sweeps,
                signals=d.signals, forced=d.forced, reversed=d.reversed,
                before_daemon=d.before_daemon, blockers=tuple(sorted(d.current.values(), key=lambda t: (t.since_ns, t.pid))),
                **common)
        if self._on_change is not None:
            try:
                self._on_change(self.state)
            except Exception:
                pass            # a status file that cannot be written changes nothing here
