"""The daemon's own health, one typed snapshot, read at scrape time by the
exporters (exporters/metrics.py HealthCollector): errors caught on the event
path, gaps in observation, holds that expired, records the trace is missing,
direct probes, the BPF programs' hits, why the daemon woke. Each table's keys
are the enum of the module that produces them."""

from __future__ import annotations

from dataclasses import dataclass, field

from klptrace.tracer.daemon.pipeline import Stage
from klptrace.tracer.daemon.runloop import Wake
from klptrace.tracer.observe.directprobes import DirectError
from klptrace.tracer.observe.holds import HoldReason
from klptrace.tracer.observe.infer import Gap


@dataclass(frozen=True)
class Health:
    handler_errors: dict[Stage, int] = field(default_factory=dict)
    gaps: dict[Gap, int] = field(default_factory=dict)
    holds_expired: dict[HoldReason, int] = field(default_factory=dict)
    unattributed: int = 0                   # direct hits naming no patch
    unwritten: int = 0                      # records the trace file is missing
    direct_errors: dict[DirectError, int] = field(default_factory=dict)
    direct_attached: int = 0
    probe_hits: dict[str, int] = field(default_factory=dict)   # rawevents.HIT_PROGRAMS
    wakeups: dict[Wake, int] = field(default_factory=dict)
