"""``klptrace run``: the daemon's lifecycle, and nothing else.

attach (compile and load the BPF programs, plan and attach the probes,
direct probes on preloaded and discovered livepatch modules) -> ready
(sd_notify, the ready file) -> the wait loop (tracer/daemon/runloop.py: sleep
until the ring buffer, discovery or a signal wakes it; read; tick) ->
shutdown (drain, flush, detach, close). The event path itself, from the ring
buffer to the trace, the engine, the stall view, the metrics and the status
file, is the pipeline's (tracer/daemon/pipeline.py).

SIGINT/SIGTERM stop it cleanly: the ring buffer is drained, held records are
flushed, tracefs probes are removed, the trace is closed. SIGHUP reopens the
trace (logrotate), after what came before it is written to the old file.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field

from klptrace.tracer import exitcodes as xc
from klptrace.tracer.daemon import runloop, statusfile
from klptrace.tracer.daemon.health import Health
from klptrace.tracer.daemon.build import build
from klptrace.tracer.daemon.pipeline import Pipeline
from klptrace.tracer.daemon.sinks import JudgeSink, TraceSink
from klptrace.tracer.model import events as ev
from klptrace.tracer.observe import sysfs
from klptrace.tracer.observe import rawevents as rw
from klptrace.tracer.observe.probeplan import format_plan, make_plan


def log(msg: str) -> None:
    print(f"klptrace: {msg}", file=sys.stderr, flush=True)


def _rss_mb() -> float:
    """This process's resident memory (VmRSS), for the start-up log line."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@dataclass
class RunOptions:
    """`klptrace run`'s options (tracer/commands/run.py)."""
    trace: str | None                       # None: stdout
    preload: list[str] = field(default_factory=list)
    ready_file: str | None = None
    verbose: bool = False
    listen: object = None                   # exporters.server.Listen; None: no endpoint
    tls_cert: str | None = None
    tls_key: str | None = None
    metrics_max_patches: int | None = None
    trace_max_bytes: int | None = None
    trace_keep: int | None = None
    ring_pages: int = 64
    skip_points: frozenset[str] = frozenset()
    discover_dirs: list[str] | None = None  # where producers install livepatches; None: off
    status_path: str = statusfile.PATH


class Daemon:
    def __init__(self, opts: RunOptions, *, faults=None):
        self.opts = opts
        self._faults = faults                # a test's fault injector (tests/faults.py)
        self.stop = False
        self.plan = None
        self.loader = None
        self.probes = None
        self.preload = None
        self.watcher = None
        self.waiter: runloop.Waiter | None = None
        self.writer = None
        self.metrics = None
        self.pipe: Pipeline | None = None

    # --- signals ------------------------------------------------------------------------

    def _on_signal(self, signum, _frame) -> None:
        self.stop = True

    def _on_hup(self, _signum, _frame) -> None:
        # logrotate (and the lab, per scenario): reopen the trace path; done
        # in the loop after draining, so records before the signal stay in
        # the old file (only a flag here: safe in a handler)
        if self.writer is not None:
            self.writer.request_reopen()

    # --- metrics: bound first, fed once attached ---------------------------------------

    def _start_metrics(self):
        """The endpoint binds before the long BPF compile, so a port in use
        fails fast; it reports no probes until they are attached."""
        o = self.opts
        if o.listen is None:
            return None
        from klptrace.exporters import server as mserver
        from klptrace.exporters.collectors import plan_probes
        from klptrace.exporters.metrics import DaemonMetrics
        kw = {} if o.metrics_max_patches is None else {"max_patches": o.metrics_max_patches}
        judge = lambda: self.pipe.sink(JudgeSink) if self.pipe else None   # noqa: E731
        self.metrics = DaemonMetrics(lambda: judge().engine.stats if judge() else None,
                                     livepatch_state=sysfs.patches,
                                     probes=lambda: plan_probes(self.plan) if self.plan else [],
                                     health=self.health,
                                     stalls=self._stall_state,
                                     kernel_release=os.uname().release, **kw)
        srv = mserver.start(self.metrics, o.listen, certfile=o.tls_cert, keyfile=o.tls_key)
        log(f"metrics at {srv.url}")
        return srv

    def _stall_state(self):
        from klptrace.tracer.daemon.sinks import StallSink
        s = self.pipe.sink(StallSink) if self.pipe else None
        return s.tracker.state if s else None

    def health(self) -> Health:
        """The daemon's own counters, read at scrape time (exporters/metrics.py)."""
        hits = {}
        if self.loader is not None:
            try:
                hits = dict(zip(rw.HIT_PROGRAMS, self.loader.hits()))
            except Exception:       # a scrape must not fail because a map read did
                hits = {}
        p = self.pipe.health() if self.pipe is not None else None
        trace = p.sinks.get(TraceSink.__name__) if p else None
        probes = self.probes
        return Health(
            handler_errors=p.handler_errors if p else {}, gaps=p.gaps if p else {},
            holds_expired=p.holds_expired if p else {},
            unattributed=p.unattributed if p else 0,
            unwritten=trace.unwritten if trace else 0,
            direct_errors=dict(probes.errors) if probes else {},
            direct_attached=probes.attached if probes else 0,
            probe_hits=hits,
            wakeups=dict(self.waiter.wakeups) if self.waiter else {})

    # --- attach ---------------------------------------------------------------------------

    def _load(self, on_event):
        from klptrace.tracer.observe.loader import SOURCE, Loader
        t0 = time.monotonic()
        try:
            loader = Loader(on_event, ring_pages=self.opts.ring_pages)
        except Exception as e:    # bcc raises bare Exceptions: compile or load failure
            msg = str(e).strip().splitlines()
            log(f"BPF compile/load of {SOURCE} failed: {msg[-1] if msg else type(e).__name__} "
                "(kernel headers matching `uname -r`? see the compiler output above)")
            return None
        tm = getattr(loader, "timing", {})
        log(f"BPF compiled and loaded in {time.monotonic() - t0:.1f}s "
            f"(bcc import {tm.get('import_s', 0):.1f}s, compile {tm.get('compile_s', 0):.1f}s; "
            f"struct offsets from {loader.layout})")
        return loader

    def _discover(self) -> None:
        """The livepatch modules to probe directly: --preload, and those where
        the producers install them (tracer/observe/discover.py), watched."""
        from klptrace.tracer.observe import discover, modsyms
        o = self.opts
        preload = self.preload = modsyms.Preload(o.preload)
        if o.discover_dirs is not None:
            for f in discover.existing_modules(o.discover_dirs):
                preload.add_path(f, discovered=True)
            log(f"discovery: {len(preload.modules())} livepatch module(s) preloaded; watching "
                + ", ".join(o.discover_dirs))
            try:
                self.watcher = discover.Watcher(o.discover_dirs)
            except OSError as e:
                log(f"warning: cannot watch the livepatch directories ({e.strerror}); "
                    "modules installed from now on are probed at enable only")
        for w in preload.warnings:
            log(f"warning: {w}")

    def _poll_discovery(self) -> None:
        if self.watcher is None:
            return
        for f in self.watcher.poll():
            n = len(self.preload.warnings)
            mods = self.preload.add_path(f, discovered=True)
            for w in self.preload.warnings[n:]:
                log(f"warning: {w}")
            if mods:
                log(f"discovery: {f}: preloading {', '.join(mods)}")
                self.probes.add_preloaded(mods)

    def _plan(self):
        """Attach the plan's points; None when not one required point could be."""
        t1 = time.monotonic()
        self.probes.start()
        plan = self.plan = make_plan(self.loader.attach, kfunc=self.loader.kfunc_support(),
                                     exit_probes=self.loader, skip=self.opts.skip_points)
        log(f"attached {sum(r.how != 'none' for r in plan.results)} point(s) and "
            f"{self.probes.attached} preloaded direct probe(s) in {time.monotonic() - t1:.1f}s")
        missing = plan.missing_required()
        if len(missing) == len([r for r in plan.results if r.point.required]):
            log("no probe could be attached to the livepatch core "
                "(see `klptrace probes`); is this kernel built with CONFIG_KPROBES?")
            return None
        for m in missing:
            log(f"warning: point '{m}' not attached; its records will be missing")
        return plan

    # --- the run ------------------------------------------------------------------------------

    def run(self) -> int:
        from klptrace.exporters import sdnotify
        from klptrace.exporters.tracewriter import TraceWriter
        from klptrace.tracer.observe.directprobes import DirectProbes

        o = self.opts
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        # installed before READY: `systemctl reload` sends HUP, and an
        # unhandled HUP would kill the daemon
        signal.signal(signal.SIGHUP, self._on_hup)
        server = self._start_metrics()
        t0 = time.monotonic()
        # events arrive only after attach, which comes before the pipeline:
        # what arrives in between waits here and is fed first
        early: list = []

        def on_event(data, size):
            if self.pipe is None:
                early.append(rw.decode(data, size))
            else:
                self.pipe.on_ring(data, size)

        loader = self.loader = self._load(on_event)
        if loader is None:
            if server is not None:
                server.close()
            return xc.ATTACH_FAILED
        self._discover()
        self.probes = DirectProbes(loader, self.preload, log)
        try:
            state = sysfs.state()
            plan = self._plan()
            if plan is None:
                return xc.ATTACH_FAILED
            header = ev.header(os.uname().release, state=state,
                               observes=list(ev.CALLBACKS), probes=plan.to_json(),
                               preload=sorted(self.preload.modules()),
                               discover=o.discover_dirs or [], tracer="klptrace run")
            rotation = {"max_bytes": o.trace_max_bytes}
            if o.trace_keep is not None:
                rotation["keep"] = o.trace_keep
            self.writer = TraceWriter(o.trace, header, state_provider=sysfs.state, **rotation)
            pipe = build(header, plan=plan, loader=loader, coverage=self.probes,
                         writer=self.writer, metrics=self.metrics, status_path=o.status_path,
                         log=log, verbose=o.verbose, faults=self._faults)
            for r in early:
                pipe.feed(r)
            self.pipe = pipe
            self._ready(t0, plan)
            self._loop()
            sdnotify.stopping()
            loader.drain()
            self._tick()
            lost = loader.lost()
            pipe.finish()
            self._stopped(lost)
            return 0
        finally:
            if server is not None:
                server.close()
            if self.writer is not None:
                try:
                    self.writer.close()
                except OSError as e:
                    log(f"closing the trace: {e.strerror}")
            self.probes.stop()
            if self.watcher is not None:
                self.watcher.close()
            if self.waiter is not None:
                self.waiter.close()
            loader.detach_tracefs()
            loader.close()
            if o.ready_file:
                try:
                    os.unlink(o.ready_file)
                except OSError:
                    pass
            if self.pipe is not None:
                statusfile.remove(o.status_path)

    def _ready(self, t0: float, plan) -> None:
        from klptrace.exporters import sdnotify
        o = self.opts
        if o.verbose:
            log("\n" + format_plan(plan))
        rss_before = _rss_mb()
        self.loader.free_compiler_memory()   # the compiler is not needed again
        log(f"compiler memory given back: VmRSS {rss_before:.1f} -> {_rss_mb():.1f} MB")
        log(f"priority: {runloop.yield_cpu()}")
        if o.ready_file:
            with open(o.ready_file, "w") as f:
                f.write(f"{os.getpid()}\n")
        sdnotify.ready("probes attached")
        log(f"tracing (ready after {time.monotonic() - t0:.1f}s); trace: {o.trace or 'stdout'}")

    def _loop(self) -> None:
        loader, pipe = self.loader, self.pipe
        waiter = self.waiter = runloop.Waiter(
            loader.ring_fd, self.watcher.fileno() if self.watcher is not None else None)
        kstate_now = pipe.sink(JudgeSink).engine.kstate
        while not self.stop:
            waiter.wait(runloop.wait_s(holding=pipe.holding(),
                                       transition_open=kstate_now.transition is not None))
            loader.read()
            self._tick()
            if self.writer.reopen_requested:
                loader.drain()       # what happened before the HUP: old file
                self._tick()
                try:
                    self.writer.reopen()
                    log(f"trace reopened: {self.opts.trace}")
                except OSError as e:
                    log(f"cannot reopen the trace {self.opts.trace}: {e.strerror}; "
                        "writing to the old file")

    def _tick(self) -> None:
        self.pipe.tick(time.monotonic_ns(), self.loader.lost())
        self._poll_discovery()

    def _stopped(self, lost: int) -> None:
        pipe = self.pipe
        h = pipe.health()
        unwritten = pipe.sink(TraceSink).unwritten
        errors = {k.value: n for k, n in h.handler_errors.items()}
        hits = self.loader.hits()
        log(f"stopped: {pipe.records} records, {lost} lost, "
            f"{pipe.sink(JudgeSink).violations} violations; probe hits {sum(hits)}"
            + (f"; {unwritten} record(s) not written" if unwritten else "")
            + (f"; handler errors {errors}" if errors else ""))
        if self.opts.verbose:
            log(f"hits per program: {dict(zip(rw.HIT_PROGRAMS, hits))}")

