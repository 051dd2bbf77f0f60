"""The daemon's event path, from the ring buffer to the record sinks."""

from __future__ import annotations

import enum


class Stage(str, enum.Enum):
    """Where on the event path an error was caught (the `stage` label of
    klptrace_handler_errors_total)."""
    DECODE = "decode"       # a ring-buffer event into rawevents.Raw
    INFER = "infer"         # tracer.infer: raw events into records
    WRITE = "write"         # the trace writer
    JUDGE = "judge"         # the rule engine
    TICK = "tick"           # the run loop's own work (losses, hold deadlines)
    STALLS = "stalls"       # reading a stalled transition's blockers (tracer/observe/stalls.py)
