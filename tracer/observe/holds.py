"""The inference's output queue: records in kernel order, with holds.

Some records can only be written once a later event says what they are: a
failing pre_patch's return code comes with klp_enable_patch's (or
klp_module_coming's) return; a post_patch the kernel is about to run is
`direct` if its probe fires, absent if a live probe stays silent, `inferred`
otherwise, and that is known only when the step is over. Such a record holds
its place in the queue (a ``Hold``) and everything after it waits, so the
trace keeps the kernel's order.

Invariant: every hold is bounded. It is resolved by the event it waits for,
or it expires at ``deadline_ns`` (CLOCK_MONOTONIC, the clock of the BPF
timestamps and of the daemon's tick, tracer/daemon/runloop.py) or when the queue behind it grows
past ``max_queue``. An expired hold goes out as far as it is known, followed
by a ``loss`` record (count 0, with the reason), so the engine judges what it
touches `unknown`: a hold that cannot resolve is a gap, never a freeze and
never a guess passed off as an observation. Expiries are counted in
``expired`` (exported as klptrace_hold_expired_total{reason}).
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Callable

from klptrace.tracer.model import events as ev

HOLD_NS = 10_000_000_000    # a hold waits at most 10 s (a callback may be slow; docs/probes.md)


class HoldReason(str, enum.Enum):
    """What a hold waits for, or why it was let go (the `hold` label of
    klptrace_holds_expired_total): the inference's steps and returns, and the
    queue's own flushes."""
    PRE_UNPATCH = "pre_unpatch"                     # the disable step's pre_unpatch callbacks
    COMPLETION = "completion"                       # klp_complete_transition's post callbacks
    MODULE_POST_PATCH = "module post_patch"         # klp_module_coming's post_patch
    MODULE_POST_UNPATCH = "module post_unpatch"     # klp_cleanup_module_patches_limited's
    ENABLE_RETURN = "enable return"                 # a failing pre_patch's code, at klp_enable_patch's return
    MODULE_COMING_RETURN = "module coming return"   # ... at klp_module_coming's return
    EXIT = "exit"                                   # the daemon stopped
    RECORDS_LOST = "records lost"                   # a ring-buffer loss came first
MAX_QUEUE = 10_000          # records waiting behind the oldest hold


class Hold:
    """A place in the queue whose records are not known yet."""

    __slots__ = ("why", "deadline_ns", "records", "resolved", "on_expire")

    def __init__(self, why: HoldReason, deadline_ns: int, records: list[dict] | None = None,
                 on_expire: Callable[["Hold"], None] | None = None):
        self.why = why                        # a bounded reason, also the metric label
        self.deadline_ns = deadline_ns
        self.records = records if records is not None else []   # what is known so far
        self.resolved = False
        self.on_expire = on_expire            # last chance to fill in `records`

    def resolve(self, records: list[dict] | None = None) -> None:
        if records is not None:
            self.records = records
        self.resolved = True


class OutputQueue:
    def __init__(self, sink: Callable[[dict], None], *, first_seq: int = 1,
                 hold_ns: int = HOLD_NS, max_queue: int = MAX_QUEUE):
        self._sink = sink
        self.seq = first_seq
        self.hold_ns = hold_ns
        self.max_queue = max_queue
        self._q: deque = deque()              # dict (ready record) or Hold
        self.expired: dict[HoldReason, int] = {}     # reason -> holds that expired

    def __len__(self) -> int:
        return len(self._q)

    def emit(self, rec: dict) -> None:
        self._q.append(rec)
        self._pump()

    def hold(self, why: HoldReason, now_ns: int, records: list[dict] | None = None,
             on_expire: Callable[[Hold], None] | None = None) -> Hold:
        h = Hold(why, now_ns + self.hold_ns, records, on_expire)
        self._q.append(h)
        return h

    def pump(self, now_ns: int | None = None) -> None:
        """Write what is ready; expire holds past their deadline (at ``now_ns``)
        or behind which too much waits."""
        self._pump(now_ns)

    def flush(self, why: HoldReason = HoldReason.EXIT, *, gap: bool = True) -> None:
        """Everything goes out: unresolved holds expire (at exit; before a ring
        loss, whose own loss record follows, with ``gap=False``)."""
        while self._q:
            item = self._q.popleft()
            if isinstance(item, Hold):
                if not item.resolved:
                    self._expire(item, why, gap=gap)
                else:
                    self._write_all(item.records)
            else:
                self._write(item)

    # --- internals -------------------------------------------------------------

    def _pump(self, now_ns: int | None = None) -> None:
        q = self._q
        while q:
            head = q[0]
            if isinstance(head, Hold):
                if not head.resolved:
                    late = now_ns is not None and now_ns >= head.deadline_ns
                    if not late and len(q) <= self.max_queue:
                        return
                    q.popleft()
                    self._expire(head, head.why)
                    continue
                q.popleft()
                self._write_all(head.records)
            else:
                q.popleft()
                self._write(head)

    def _expire(self, h: Hold, reason: HoldReason, *, gap: bool = True) -> None:
        if h.on_expire is not None:
            h.on_expire(h)
        self.expired[reason] = self.expired.get(reason, 0) + 1
        self._write_all(h.records)
        if gap:
            ts = h.records[-1]["ts_ns"] if h.records else h.deadline_ns - self.hold_ns
            self._write(ev.loss(0, ts, 0, reason=f"hold expired: {reason.value}"))

    def _write_all(self, records: list[dict]) -> None:
        for r in records:
            self._write(r)

    def _write(self, rec: dict) -> None:
        rec["seq"] = self.seq
        self.seq += 1
        self._sink(rec)
