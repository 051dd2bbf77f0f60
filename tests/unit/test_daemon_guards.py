"""The daemon's event path (tracer/daemon/pipeline.py) without bcc: every stage
is guarded, an error is counted, logged once per kind and becomes a loss
record; a trace that cannot be written is counted and, once writable again,
says what it misses. (The same on a real kernel: tests/kernel/test_daemon.py,
case "faults".)"""

from __future__ import annotations

import errno

from klptrace.tracer.model import events as ev
from klptrace.tracer.observe import rawevents as rw
from faults import FaultInjection

from klptrace.tracer.daemon.daemon import log
from klptrace.tracer.daemon.pipeline import Pipeline, Stage
from klptrace.tracer.daemon.sinks import JudgeSink, TraceSink
from klptrace.tracer.judge.engine import Engine
from klptrace.tracer.observe.infer import Inference


class Writer:
    def __init__(self):
        self.lines, self.full = [], False

    def write(self, rec):
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.lines.append(dict(rec))


class Daemon:
    """The event path as tracer/daemon/pipeline.py build() assembles it, with
    the sinks these tests look at."""

    def __init__(self, fault=None):
        self.pipe = Pipeline(log, faults=FaultInjection(fault))
        self.writer = Writer()
        self.engine = Engine(ev.header("k", state={"patches": [], "modules": []}))
        self.trace = TraceSink(self.writer, log, self.pipe.count)
        self.inference = Inference(self.pipe.fan_out)
        self.pipe.assemble(self.inference, [self.trace, JudgeSink(self.engine, log)])

    @property
    def handler_errors(self):
        return self.pipe.handler_errors

    @property
    def unwritten(self):
        return self.trace.unwritten

    def _guarded(self, stage, fn, *args, **kw):
        return self.pipe._guarded(stage, fn, *args, **kw)


def daemon(fault=None):
    return Daemon(fault)


def raw(kind, ts, **kw):
    return rw.Raw(kind, ts, pid=1, **kw)


def feed(d, events):
    for r in events:
        d._guarded(Stage.INFER, d.inference.feed, r, ts_ns=r.ts_ns)


def test_an_exception_in_a_stage_is_counted_and_becomes_a_gap(capsys):
    d = daemon("infer:2")
    feed(d, [raw(rw.MODULE_COMING, 10, module="a"), raw(rw.MODULE_COMING, 20, module="b"),
             raw(rw.MODULE_COMING_RET, 30, module="a")])
    assert d.handler_errors == {"infer": 1}
    types = [(r["type"], r.get("reason")) for r in d.writer.lines]
    assert ("loss", "infer error: RuntimeError") in types
    err = capsys.readouterr().err
    assert err.count("error in infer") == 1 and "Traceback" not in err
    assert d.engine.stats.unknown >= 1          # the engine was told


def test_an_engine_error_is_counted_and_the_record_still_written():
    d = daemon("judge:1")
    feed(d, [raw(rw.MODULE_COMING, 10, module="a"), raw(rw.MODULE_COMING_RET, 20, module="a")])
    assert d.handler_errors.get("judge") == 1
    assert [r["type"] for r in d.writer.lines][:1] == ["module"]


def test_a_full_disk_is_counted_and_the_gap_written_when_space_returns():
    d = daemon()
    feed(d, [raw(rw.MODULE_COMING, 10, module="a"), raw(rw.MODULE_COMING_RET, 20, module="a")])
    written = len(d.writer.lines)
    d.writer.full = True
    feed(d, [raw(rw.MODULE_COMING, 30, module="b"), raw(rw.MODULE_COMING_RET, 40, module="b")])
    assert len(d.writer.lines) == written and d.unwritten == 2
    assert d.engine.stats.records == written + 2        # judged all the same
    d.writer.full = False
    feed(d, [raw(rw.MODULE_COMING, 50, module="c"), raw(rw.MODULE_COMING_RET, 60, module="c")])
    gap = d.writer.lines[written]
    assert gap["type"] == "loss" and gap["count"] == 2 and gap["reason"] == "trace write failed"
    seqs = [r["seq"] for r in d.writer.lines]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_fault_injection_is_off_without_the_variable():
    f = FaultInjection(None)
    for _ in range(5):
        f.check(Stage.INFER)
