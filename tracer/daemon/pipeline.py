"""The daemon's event path (put together in tracer/daemon/build.py):

    ring buffer --decode--> Raw --inference--> records --> the sinks, in order:

        trace    the trace file (exporters/tracewriter.py)
        judge    the rule engine, which then applies the record to the
                 kernel state tracker (tracer/model/livestate.py)
        stalls   the stall view (tracer/observe/stalls.py), which reads that
                 tracker and writes its own records back into the inference's
                 output queue
        metrics  what the exporters cannot read at scrape time (transition
                 durations)
        status   the status file `klptrace status` reads

Every stage runs under a guard (``Pipeline._guarded``): an exception is
counted (klptrace_handler_errors_total{stage}), logged once per stage and
kind with what it hit, and turned into a ``loss`` record where it happened
(decoding, the inference, the tick), so the engine says `unknown` where it
cannot know. A sink's error costs that sink the record, never the others.

Each sink has the same small interface: ``record(rec)``, ``tick(now_ns)``,
``health()`` (a typed snapshot), ``finish()``. The daemon (daemon.py) keeps
the lifecycle: attach, the wait loop, signals, shutdown.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from klptrace.tracer.model import events as ev
from klptrace.tracer.observe import rawevents as rw
from klptrace.tracer.observe.holds import HoldReason
from klptrace.tracer.observe.infer import Gap, Inference


class Stage(str, enum.Enum):
    """Where on the event path an error was caught (the `stage` label of
    klptrace_handler_errors_total)."""
    DECODE = "decode"       # a ring-buffer event into rawevents.Raw
    INFER = "infer"         # tracer/observe/infer.py: raw events into records
    WRITE = "write"         # the trace writer
    JUDGE = "judge"         # the rule engine
    TICK = "tick"           # the run loop's own work (losses, hold deadlines)
    STALLS = "stalls"       # reading a stalled transition's blockers (tracer/observe/stalls.py)


# the stages whose error is a gap in the trace (a loss record where it happened)
GAP_STAGES = frozenset((Stage.DECODE, Stage.INFER, Stage.TICK))


class Sink(Protocol):
    """What the pipeline fans each record out to."""
    stage: Stage                    # where its errors are counted

    def record(self, rec: dict) -> None: ...
    def tick(self, now_ns: int) -> None: ...
    def health(self) -> object: ...
    def finish(self) -> None: ...


class Faults(Protocol):
    """A test's fault injector (tests/faults.py): raises in a stage."""

    def check(self, stage: Stage) -> None: ...


@dataclass(frozen=True)
class PipelineHealth:
    records: int
    handler_errors: dict[Stage, int]
    gaps: dict[Gap, int]
    holds_expired: dict[HoldReason, int]
    unattributed: int               # direct hits naming no patch
    sinks: dict[str, object] = field(default_factory=dict)    # sink name -> its health()


class Pipeline:
    def __init__(self, log: Callable[[str], None], *, verbose: bool = False,
                 faults: Faults | None = None):
        self._log = log
        self._verbose = verbose
        self._faults = faults
        self.inference: Inference | None = None
        self.sinks: list[Sink] = []
        self.records = 0
        self.handler_errors: dict[Stage, int] = {}
        self._said: set[tuple[Stage, str]] = set()

    def assemble(self, inference: Inference, sinks: list[Sink]) -> None:
        self.inference, self.sinks = inference, sinks

    # --- the stages ------------------------------------------------------------------

    def on_ring(self, data, size: int) -> None:
        """bcc's ring-buffer callback: one raw event of ``size`` bytes."""
        r = None

        def decode():
            nonlocal r
            r = rw.decode(data, size)
        if self._guarded(Stage.DECODE, decode):
            self.feed(r)

    def feed(self, r: rw.Raw) -> None:
        """One decoded event (those that came before the pipeline existed)."""
        self._guarded(Stage.INFER, self.inference.feed, r, ts_ns=r.ts_ns)

    def fan_out(self, rec: dict) -> None:
        """The inference's output queue hands over each record, numbered."""
        self.records += 1
        if self._verbose:
            self._log(f"record {rec}")
        for s in self.sinks:
            self._guarded(s.stage, s.record, rec)

    def tick(self, now_ns: int, lost: int) -> None:
        """The run loop's clock: losses after the last event, hold deadlines,
        then each sink's own work."""
        self._guarded(Stage.TICK, self._tick_inference, now_ns, lost)
        for s in self.sinks:
            self._guarded(s.stage, s.tick, now_ns)

    def _tick_inference(self, now_ns: int, lost: int) -> None:
        self.inference.check_lost(lost, now_ns)
        self.inference.tick(now_ns)

    def finish(self) -> None:
        """At exit: what is held goes out, then each sink finishes."""
        self._guarded(Stage.TICK, self.inference.flush)
        for s in self.sinks:
            self._guarded(s.stage, s.finish)

    def holding(self) -> bool:
        return self.inference.holding()

    # --- guards and gaps ----------------------------------------------------------------

    def _guarded(self, stage: Stage, fn, *args, ts_ns: int | None = None) -> bool:
        """Run one stage; an exception is counted, logged once per kind, and
        becomes a gap (a loss record) where it happened."""
        try:
            if self._faults is not None:
                self._faults.check(stage)
            fn(*args)
            return True
        except Exception as e:
            self.handler_errors[stage] = self.handler_errors.get(stage, 0) + 1
            key = (stage, type(e).__name__)
            if key not in self._said:
                self._said.add(key)
                gap = ("a loss record marks the gap" if stage is not Stage.STALLS
                       else "the stall view may be stale; callbacks are unaffected")
                self._log(f"error in {stage.value}: {type(e).__name__}: {e} (counted in "
                          f"klptrace_handler_errors_total{{stage=\"{stage.value}\"}}; {gap}; "
                          "further errors of this kind are only counted)")
            if stage in GAP_STAGES:
                self.gap(ts_ns, f"{stage.value} error: {type(e).__name__}")
            return False

    def count(self, stage: Stage) -> None:
        """An error a sink handled itself (a trace write that failed)."""
        self.handler_errors[stage] = self.handler_errors.get(stage, 0) + 1

    def gap(self, ts_ns: int | None, reason: str) -> None:
        ts = ts_ns if ts_ns is not None else time.monotonic_ns()
        try:
            self.inference.loss(ts, 0, reason)
        except Exception:
            # the inference itself is broken: write the gap past it
            out = self.inference.out
            rec = ev.loss(out.seq, ts, 0, reason=reason)
            out.seq += 1
            self.fan_out(rec)

    # --- health --------------------------------------------------------------------------

    def health(self) -> PipelineHealth:
        inf = self.inference
        return PipelineHealth(
            records=self.records, handler_errors=dict(self.handler_errors),
            gaps=dict(inf.gaps) if inf else {},
            holds_expired=dict(inf.out.expired) if inf else {},
            unattributed=inf.unattributed if inf else 0,
            sinks={type(s).__name__: s.health() for s in self.sinks})

    def sink(self, cls):
        """The sink of this class (the daemon's final log line, the tests)."""
        return next((s for s in self.sinks if isinstance(s, cls)), None)
