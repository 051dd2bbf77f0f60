"""What a stall looks like from outside: the blockers of the open
transition and why they block, as the metrics, the daemon's status file and
`klptrace status` read it. tracer/observe/stalls.py builds it; ``StallState``
is replaced whole, never mutated, so that scrapes may read it from other
threads.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from klptrace.tracer.observe import rawevents as rw

STATE_BLOCKERS = 256                 # blockers the status file lists (the rest counted)


class StallSource(str, enum.Enum):
    """Where the stall view comes from (tracer/observe/probeplan.py
    ``Plan.stall_source``; the status file's and the trace header's `stalls`)."""
    CHECK = "check"     # klp_check_and_switch_task's return: task, reason, function (5.16+)
    SWITCH = "switch"   # klp_try_switch_task's return: which tasks, no reason
    PROC = "proc"       # no stall probe: /proc/*/task/*/patch_state, scanned


class Reason(str, enum.Enum):
    """Why a task has not switched (the `reason` field and label)."""
    RUNNING = "running"                          # -EBUSY: on a CPU at the check
    UNRELIABLE_STACK = "unreliable_stack"        # -EINVAL: its stack cannot be walked reliably
    SLEEPING_ON_FUNCTION = "sleeping_on_function"  # -EADDRINUSE: a patched function on its stack
    NOT_SWITCHED = "not_switched"                # the kernel's reason is not known (fallbacks)
    ERROR = "error"                              # another return code


REASONS = tuple(r.value for r in Reason)
_ERRNO = {-16: Reason.RUNNING, -22: Reason.UNRELIABLE_STACK,
          -rw.EADDRINUSE: Reason.SLEEPING_ON_FUNCTION}


def reason_of(b: rw.Blocker) -> Reason:
    if b.source == rw.STALL_FROM_SWITCH:
        return Reason.NOT_SWITCHED
    return _ERRNO.get(b.ret, Reason.ERROR)


@dataclass(frozen=True)
class Task:
    """One blocker as reported."""
    key: int                    # task pointer (BPF) or thread id (proc)
    pid: int                    # thread id; 0 for an idle task
    tgid: int
    comm: str
    kthread: bool
    reason: str
    function: str | None
    since_ns: int               # its first failed check (proc: first seen)
    checks: int = 0             # failed checks (BPF sources)

    def to_json(self) -> dict:
        d = {"pid": self.pid, "tgid": self.tgid, "comm": self.comm, "kthread": self.kthread,
             "reason": self.reason, "since_ns": self.since_ns, "checks": self.checks}
        if self.function:
            d["function"] = self.function
        return d


@dataclass(frozen=True)
class StallState:
    """The open transition and its blockers, as of the last poll."""
    patch: str | None = None            # None: no transition open
    target: str | None = None
    opened_ns: int | None = None        # its `start` (the daemon's, if it began before)
    before_daemon: bool = False         # it was open when the daemon started
    source: StallSource = StallSource.PROC
    sweeps: int = 0                     # sweeps of this direction (BPF sources)
    signals: int = 0                    # times the kernel signalled the remaining tasks
    forced: bool = False
    reversed: bool = False
    blockers: tuple[Task, ...] = ()     # every blocker known, oldest first
    as_of_ns: int = 0                   # when this state was taken (CLOCK_MONOTONIC)
    # cumulative, for the life of the daemon
    untracked_checks: int = 0           # failed checks the BPF table had no room for
    records_suppressed: int = 0         # task records the bound kept out of the trace
    probes_armed: bool = False          # the per-task check probes are armed now

    def to_json(self, limit: int = STATE_BLOCKERS) -> dict:
        return {"patch": self.patch, "target": self.target, "opened_ns": self.opened_ns,
                "source": self.source, "sweeps": self.sweeps, "signals": self.signals,
                "forced": self.forced, "reversed": self.reversed, "as_of_ns": self.as_of_ns,
                "before_daemon": self.before_daemon,
                "blockers": [t.to_json() for t in self.blockers[:limit]],
                "blockers_total": len(self.blockers)}
