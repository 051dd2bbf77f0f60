"""The record sinks of the daemon's pipeline (tracer/daemon/pipeline.py), each
with the same small interface: ``record``, ``tick``, ``health`` (a typed
snapshot), ``finish``. In the order the pipeline calls them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from klptrace.tracer.daemon import statusfile
from klptrace.tracer.daemon.pipeline import Stage
from klptrace.tracer.judge.findings import UNKNOWN, VIOLATION
from klptrace.tracer.model import events as ev
from klptrace.tracer.model.livestate import LivepatchState

Log = Callable[[str], None]


@dataclass(frozen=True)
class TraceHealth:
    unwritten: int          # records the trace file is missing (a write failed)


class TraceSink:
    """The trace file. A write that fails (a full disk) is counted record by
    record (klptrace_trace_records_unwritten_total); judging and the metrics
    go on; once writing works again, a ``loss`` record in the trace says how
    many records it is missing, where they are missing."""
    stage = Stage.WRITE

    def __init__(self, writer, log: Log, count: Callable[[Stage], None]):
        self.writer = writer
        self._log = log
        self._count = count                    # the pipeline's error counter
        self.unwritten = 0                     # records not in the trace (write failed)
        self._unwritten_now = 0                # ... since writing last failed
        self._first: int | None = None         # seq of the first of them

    def record(self, rec: dict) -> None:
        try:
            if self._first is not None:
                # writing works again: the trace says what it is missing
                self.writer.write(ev.loss(self._first, rec["ts_ns"], self._unwritten_now,
                                          reason="trace write failed"))
                self._log(f"trace writable again; {self._unwritten_now} record(s) are missing "
                          "from it (a loss record marks the gap)")
                self._first = None
            self.writer.write(rec)
        except Exception as e:
            if self._first is None:
                self._first = rec["seq"]
                self._unwritten_now = 0
                self._log(f"cannot write the trace: {e}; judging and metrics go on, unwritten "
                          "records are counted (klptrace_trace_records_unwritten_total)")
            self._unwritten_now += 1
            self.unwritten += 1
            self._count(Stage.WRITE)

    def tick(self, now_ns: int) -> None:
        pass

    def health(self) -> TraceHealth:
        return TraceHealth(self.unwritten)

    def finish(self) -> None:
        pass


@dataclass(frozen=True)
class JudgeHealth:
    violations: int


class JudgeSink:
    """The rule engine, online: each finding is logged as it is settled. The
    engine applies each record to the kernel state tracker after judging it,
    so the sinks after this one read the state the record left."""
    stage = Stage.JUDGE

    def __init__(self, engine, log: Log):
        self.engine = engine
        self._log = log
        self.violations = 0

    def record(self, rec: dict) -> None:
        for f in self.engine.feed(rec):
            self._report(f)

    def _report(self, f) -> None:
        if f.kind == VIOLATION:
            self.violations += 1
            self._log(f"VIOLATION {f.rule}: {f.message}")
        elif f.kind == UNKNOWN:
            self._log(f"unknown: {f.message}")
        else:
            self._log(f"warning: {f.message}")

    def tick(self, now_ns: int) -> None:
        pass

    def health(self) -> JudgeHealth:
        return JudgeHealth(self.violations)

    def finish(self) -> None:
        for f in self.engine.finish():
            self._report(f)


class StallSink:
    """The stall view: notes the transition records, reads the BPF stall
    tables on its tick while a transition is open; its records go back into
    the inference's output queue, which numbers them in trace order."""
    stage = Stage.STALLS

    def __init__(self, tracker):
        self.tracker = tracker

    def record(self, rec: dict) -> None:
        self.tracker.on_record(rec)

    def tick(self, now_ns: int) -> None:
        self.tracker.tick(now_ns)

    def health(self):
        return self.tracker.state            # tracer/observe/stalls.py StallState

    def finish(self) -> None:
        pass


class MetricsSink:
    """What the exporters cannot read at scrape time: each transition's
    duration (the last `start` to its end: the kernel state tracker's, which
    the engine applied the record to), into
    klptrace_transition_duration_seconds. Everything else the exporters read
    from the engine's counters and the tracker when scraped."""
    stage = Stage.JUDGE

    def __init__(self, kstate: LivepatchState, metrics):
        self._kstate = kstate
        self._metrics = metrics
        self.observed = 0

    def record(self, rec: dict) -> None:
        if self._metrics is None or rec.get("type") != "transition" or \
                rec["event"] not in ("complete", "cancel"):
            return
        ended = self._kstate.ended
        if ended is None or ended.ts_ns != rec["ts_ns"] or ended.cause != rec["event"]:
            return              # not the end of the transition in progress
        t = ended.transition
        if t.started_ns is not None:
            self._metrics.observe_transition(t.patch, t.target, t.outcome,
                                             rec["ts_ns"] - t.started_ns)
            self.observed += 1

    def tick(self, now_ns: int) -> None:
        pass

    def health(self) -> int:
        return self.observed

    def finish(self) -> None:
        pass


@dataclass(frozen=True)
class StatusHealth:
    path: str
    writable: bool


class StatusSink:
    """The status file `klptrace status` reads (tracer/daemon/statusfile.py):
    written whenever the stall view's state changed (it is replaced whole on
    a change), removed at exit."""
    stage = Stage.STALLS

    def __init__(self, stalls, path: str, log: Log):
        self._stalls = stalls
        self.path = path
        self._log = log
        self._last = None
        self._said = False
        self.writable = True
        self.tick(0)

    def record(self, rec: dict) -> None:
        pass

    def tick(self, now_ns: int) -> None:
        state = self._stalls.state
        if state is self._last:
            return
        self._last = state
        try:
            statusfile.write(state, self.path)
            self.writable = True
        except OSError as e:
            self.writable = False
            if not self._said:
                self._said = True
                self._log(f"cannot write the status file {self.path}: {e.strerror}; "
                          "`klptrace status` will read /proc instead")

    def health(self) -> StatusHealth:
        return StatusHealth(self.path, self.writable)

    def finish(self) -> None:
        statusfile.remove(self.path)
