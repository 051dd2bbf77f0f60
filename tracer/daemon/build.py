"""The daemon's event path, put together in this one place: the kernel state
tracker, the engine, the inference, the stall view and its on-demand probes,
and the sinks in their order (tracer/daemon/pipeline.py says why that order)."""

from __future__ import annotations

from typing import Callable

from klptrace.tracer.daemon import sinks as sk
from klptrace.tracer.daemon.pipeline import Faults, Pipeline
from klptrace.tracer.judge.engine import Engine
from klptrace.tracer.model.livestate import LivepatchState
from klptrace.tracer.observe.infer import Inference
from klptrace.tracer.observe.loader import OnDemandProbes
from klptrace.tracer.observe.stallstate import StallSource
from klptrace.tracer.observe.stalls import StallTracker


def build(header: dict, *, plan, loader, coverage, writer, metrics, status_path: str,
          log: Callable[[str], None], verbose: bool = False,
          faults: Faults | None = None) -> Pipeline:
    """The whole event path."""
    pipe = Pipeline(log, verbose=verbose, faults=faults)
    # the kernel state tracker, fed in trace order by the engine (the
    # decoder starts from the same start state, then runs ahead of it)
    kstate = LivepatchState.from_state(header.get("state"))
    engine = Engine(header, kstate=kstate)
    inference = Inference(pipe.fan_out, core_kinds=plan.core_kinds(), coverage=coverage,
                          start=LivepatchState.from_state(header.get("state")))
    source = plan.stall_source()
    on_demand = OnDemandProbes(loader, plan.on_demand(), log=lambda m: log(f"warning: {m}"))
    on_demand.set(False)        # armed by the stall view when a sweep leaves tasks behind
    stalls = StallTracker(inference.out.emit, kstate, source=source,
                          table=loader.stall_table() if source is not StallSource.PROC else None,
                          arm=on_demand.set)
    log(f"stalled transitions: source {source.value}")
    pipe.assemble(inference, [
        sk.TraceSink(writer, log, pipe.count),
        sk.JudgeSink(engine, log),
        sk.StallSink(stalls),
        sk.MetricsSink(kstate, metrics),
        sk.StatusSink(stalls, status_path, log),
    ])
    return pipe
