"""Fault injection into the daemon's event path, supplied by the tests (the
product only takes an injector: tracer/daemon/pipeline.py ``Faults``).

``FaultInjection("STAGE:N")`` raises an exception in STAGE at its Nth event,
once, to prove the guards. The kernel tests' daemon gets it through
tests/kernel/klptrace_faulty.py, from KLPT_INJECT_FAULT."""

from __future__ import annotations

from klptrace.tracer.daemon.pipeline import Stage


class FaultInjection:
    def __init__(self, spec: str | None):
        self.stage, self.at, self.n = None, 0, 0
        if spec:
            stage, _, n = spec.partition(":")
            self.stage, self.at = Stage(stage), int(n or 1)

    def check(self, stage: Stage) -> None:
        if stage is self.stage:
            self.n += 1
            if self.n == self.at:
                raise RuntimeError(f"fault injected by KLPT_INJECT_FAULT at {stage.value} #{self.n}")
