"""When the daemon wakes, and why.

The daemon must not slow the livepatch operations it watches (issue 16): on a
small host, a daemon that is runnable while a task enables or disables a patch
takes the CPU from it, and a disable's RCU-tasks grace period (ftrace, at the
end of an unpatching transition) waits for every runnable task. So the daemon
sleeps until something is due, and only these end its wait:

* the ring buffer, when the BPF side wakes it: at the end of an operation
  (klp_enable_patch, klp_complete_transition, klp_module_coming/going
  returning) or when a quarter of it is full (bpf/klptrace.bpf.c submit());
* discovery's inotify watch (tracer/observe/discover.py), when a livepatch module or
  a directory on the way to one appears;
* a signal (SIGINT/SIGTERM stop, SIGHUP reopens the trace), through
  ``signal.set_wakeup_fd``: Python retries an interrupted wait, so without
  the pipe a signal would wait for the timeout;
* the clock, at most ``wait_s()`` later.

The clock's share (``wait_s``) is the invariant: a short wait (``BUSY_S``)
only while something waits for a deadline (a held record, an open module
section: tracer/observe/holds.py) or a transition is open (the stall view reads its
tables, tracer/observe/stalls.py); else ``IDLE_S``, a backstop that bounds how late the
daemon reads events no wake-up announced (a disable whose transition stays
open: its records until then are submitted without one) and the BPF loss
counter. An idle host wakes the daemon every ``IDLE_S`` and for nothing else.
"""

from __future__ import annotations

import enum
import os
import select
import signal

# Once ready, every thread of the daemon runs at this nice value and under
# SCHED_BATCH (no wake-up preemption): a wake-up at the end of an operation
# must not take the CPU from the kernel's own work that follows it (the
# transition's kworker freeing the patch, whose sysfs directory a person
# waits for). Nothing the daemon does is urgent: every record carries its BPF
# timestamp, and the ring buffer holds an operation's records many times
# over. The start (the bcc compile) keeps the caller's priority: at boot the
# unit orders kpatch.service after it (docs/operations.md).
NICE = 19
BUSY_S = 0.2        # holds and open transitions: the poll tick as it always was
IDLE_S = 5.0        # nothing due: the backstop (docs/probes.md "Gaps, and every bound")


class Wake(str, enum.Enum):
    """Why a wait ended (the `reason` label of klptrace_daemon_wakeups_total)."""
    RING = "ring"               # the BPF side woke the ring buffer
    DISCOVERY = "discovery"     # a file or directory where livepatches are installed
    SIGNAL = "signal"
    TIMER = "timer"             # the wait's timeout


def yield_cpu() -> str:
    """Every thread of this process to NICE and SCHED_BATCH (nice values are
    per thread on Linux); what was done, for the log."""
    done, failed = 0, 0
    for tid in os.listdir("/proc/self/task"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), NICE)
            os.sched_setscheduler(int(tid), os.SCHED_BATCH, os.sched_param(0))
            done += 1
        except OSError:
            failed += 1     # a thread that ended meanwhile, or a seccomp'd call
    return (f"{done} thread(s) at nice {NICE}, SCHED_BATCH"
            + (f" ({failed} not changed)" if failed else ""))


def wait_s(*, holding: bool, transition_open: bool) -> float:
    """How long the daemon may sleep if nothing wakes it."""
    return BUSY_S if holding or transition_open else IDLE_S


class Waiter:
    """One epoll set: the ring buffer's map fd, discovery's watch (optional)
    and a signal wake-up pipe. Main thread only (set_wakeup_fd)."""

    def __init__(self, ring_fd: int, watch_fd: int | None = None):
        self._ep = select.epoll()
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_wakeup = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        self._why = {ring_fd: Wake.RING, self._r: Wake.SIGNAL}
        if watch_fd is not None:
            self._why[watch_fd] = Wake.DISCOVERY
        for fd in self._why:
            self._ep.register(fd, select.EPOLLIN)
        self.wakeups = {w.value: 0 for w in Wake}    # read at scrape time (a metric)

    def wait(self, timeout_s: float) -> set[Wake]:
        """Sleep until a source is readable or the timeout; returns why. The
        ring buffer's readiness is level-triggered and left to the caller's
        read; the signal pipe is emptied here."""
        ready = {self._why[fd] for fd, _ in self._ep.poll(timeout_s) if fd in self._why}
        if Wake.SIGNAL in ready:
            try:
                while os.read(self._r, 512):
                    pass
            except BlockingIOError:
                pass
        if not ready:
            ready = {Wake.TIMER}
        for w in ready:
            self.wakeups[w.value] += 1
        return ready

    def close(self) -> None:
        signal.set_wakeup_fd(self._old_wakeup)
        self._ep.close()
        for fd in (self._r, self._w):
            os.close(fd)
