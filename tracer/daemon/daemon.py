"""The run loop of ``klptrace run``: BPF events -> inference -> records ->
TraceWriter and the rule engine (online, violations logged as they happen).
SIGINT/SIGTERM stop it cleanly: the ring buffer is drained, held records are
flushed, tracefs probes are removed, the trace is closed.

The event path never loses a record silently. Every stage (decoding a ring
buffer event, the inference, writing the trace, judging) runs under a guard
(``_guarded``): an exception is counted (klptrace_handler_errors_total{stage}),
logged once per stage and kind with what it hit, and turned into a ``loss``
record at that point, so the engine says `unknown` where it cannot know.
A trace that cannot be written (a full disk) is counted record by record;
the daemon keeps judging and serving metrics, and once writing works again
a ``loss`` record in the trace says how many records are missing from it.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from klptrace.tracer.model import events as ev
from klptrace.tracer import exitcodes as xc
from klptrace.tracer.observe import kstate
from klptrace.tracer.observe import rawevents as rw
from klptrace.tracer.daemon import runloop
from klptrace.tracer.daemon import statusfile
from klptrace.tracer.daemon.pipeline import Stage
from klptrace.tracer.judge.findings import VIOLATION
from klptrace.tracer.model.livestate import LivepatchState
from klptrace.tracer.observe.infer import Inference
from klptrace.tracer.observe.probeplan import make_plan, format_plan


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


def _engine(header: dict, on_transition_done=None):
    from klptrace.tracer.judge.engine import Engine
    return Engine(header, on_transition_done=on_transition_done)


class FaultInjection:
    """Test hook (tests/kernel): KLPT_INJECT_FAULT=STAGE:N raises an exception
    in STAGE at its Nth event, once, to prove the guards. Unset: no cost but
    one comparison."""

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


class Daemon:
    def __init__(self, trace: str | None, preload: list[str], ready_file: str | None,
                 verbose: bool = False, *, listen=None, tls_cert: str | None = None,
                 tls_key: str | None = None, metrics_max_patches: int | None = None,
                 trace_max_bytes: int | None = None, trace_keep: int | None = None,
                 ring_pages: int = 64, skip_points: tuple[str, ...] = (),
                 discover_dirs: list[str] | None = None,
                 status_path: str = statusfile.PATH):
        self.trace_path = trace
        self.ring_pages = ring_pages
        self.preload_paths = preload
        self.skip_points = frozenset(skip_points)
        # where producers install livepatch modules (tracer/observe/discover.py); None: off
        self.discover_dirs = discover_dirs
        self.watcher = None
        self.ready_file = ready_file
        self.verbose = verbose
        self.listen = listen                  # exporters.server.Listen, None = no metrics
        self.tls = (tls_cert, tls_key)
        self.metrics_max_patches = metrics_max_patches
        self.trace_rotation = {"max_bytes": trace_max_bytes}
        if trace_keep is not None:
            self.trace_rotation["keep"] = trace_keep
        self.stop = False
        self.violations = 0
        self.records = 0
        self.engine = None
        self.plan = None
        self.writer = None
        self.inference: Inference | None = None
        self.probes = None
        self.loader = None
        self.metrics = None
        self.handler_errors: dict[str, int] = {}
        self._said: set[tuple[str, str]] = set()
        self.unwritten = 0                     # records not in the trace (write failed)
        self.unwritten_now = 0                 # ... since writing last failed
        self._unwritten_first: int | None = None
        self._fault = FaultInjection(os.environ.get("KLPT_INJECT_FAULT"))
        self.stalls = None                     # tracer.stalls.StallTracker, once attached
        self.status_path = status_path         # for `klptrace status` (tracer/daemon/statusfile.py)
        self._status_said = False
        self.waiter: runloop.Waiter | None = None

    def _on_signal(self, signum, _frame) -> None:
        self.stop = True

    def _on_hup(self, _signum, _frame) -> None:
        # logrotate (and the lab, per scenario): reopen the trace path; done
        # in the loop after draining, so records before the signal stay in
        # the old file (only a flag here: safe in a handler)
        if self.writer is not None:
            self.writer.request_reopen()

    def _start_metrics(self):
        """The endpoint binds before the long BPF compile, so a port in use
        fails fast; it reports no probes until they are attached."""
        if self.listen is None:
            return None
        from klptrace.exporters import server as mserver
        from klptrace.exporters.metrics import DaemonMetrics, plan_probes
        kw = {} if self.metrics_max_patches is None else {"max_patches": self.metrics_max_patches}
        self.metrics = DaemonMetrics(lambda: self.engine.stats if self.engine else None,
                                     livepatch_state=kstate.patches,
                                     probes=lambda: plan_probes(self.plan) if self.plan else [],
                                     health=self.health,
                                     stalls=lambda: self.stalls.state if self.stalls else None,
                                     kernel_release=os.uname().release, **kw)
        srv = mserver.start(self.metrics, self.listen, certfile=self.tls[0], keyfile=self.tls[1])
        log(f"metrics at {srv.url}")
        return srv

    def health(self) -> dict:
        """The daemon's own counters, read at scrape time (exporters.metrics)."""
        inf, probes, loader = self.inference, self.probes, self.loader
        hits = {}
        if loader is not None:
            try:
                hits = dict(zip(rw.HIT_PROGRAMS, loader.hits()))
            except Exception:       # a scrape must not fail because a map read did
                hits = {}
        return {
            "handler_errors": dict(self.handler_errors),
            "gaps": dict(inf.gaps) if inf else {},
            "holds_expired": dict(inf.out.expired) if inf else {},
            "unattributed": inf.unattributed if inf else 0,
            "unwritten": self.unwritten,
            "direct_errors": dict(probes.errors) if probes else {},
            "direct_attached": probes.attached if probes else 0,
            "probe_hits": hits,
            "wakeups": dict(self.waiter.wakeups) if self.waiter else {},
        }

    # --- the guarded event path --------------------------------------------------------

    def _guarded(self, stage: Stage, fn, *args, ts_ns: int | None = None) -> bool:
        """Run one stage; an exception is counted, logged once per kind, and
        becomes a gap (a loss record) where it happened."""
        try:
            self._fault.check(stage)
            fn(*args)
            return True
        except Exception as e:
            self.handler_errors[stage.value] = self.handler_errors.get(stage.value, 0) + 1
            key = (stage.value, type(e).__name__)
            if key not in self._said:
                self._said.add(key)
                gap = ("a loss record marks the gap" if stage is not Stage.STALLS
                       else "the stall view may be stale; callbacks are unaffected")
                log(f"error in {stage.value}: {type(e).__name__}: {e} (counted in "
                    f"klptrace_handler_errors_total{{stage=\"{stage.value}\"}}; {gap}; "
                    "further errors of this kind are only counted)")
            if stage in (Stage.DECODE, Stage.INFER, Stage.TICK):
                self._gap(ts_ns, f"{stage.value} error: {type(e).__name__}")
            return False

    def _gap(self, ts_ns: int | None, reason: str) -> None:
        ts = ts_ns if ts_ns is not None else time.monotonic_ns()
        try:
            self.inference.loss(ts, 0, reason)
        except Exception:
            # the inference itself is broken: write the gap past it
            rec = ev.loss(self.inference.out.seq, ts, 0, reason=reason)
            self.inference.out.seq += 1
            self._sink(rec)

    def _on_event(self, data) -> None:
        """bcc's ring-buffer callback: one raw event."""
        r = None

        def decode():
            nonlocal r
            r = rw.decode(data)
        if self._guarded(Stage.DECODE, decode):
            self._guarded(Stage.INFER, self.inference.feed, r, ts_ns=r.ts_ns)

    def _sink(self, rec: dict) -> None:
        self.records += 1
        self._write(rec)
        if self.verbose:
            log(f"record {rec}")
        if self.engine is not None:
            # judges, then applies the record to the kernel state tracker
            self._guarded(Stage.JUDGE, self._judge, rec)
        if self.stalls is not None:
            self.stalls.on_record(rec)      # notes transition records only

    def _judge(self, rec: dict) -> None:
        for f in self.engine.feed(rec):
            self._report(f)

    def _write(self, rec: dict) -> None:
        try:
            self._fault.check(Stage.WRITE)
            if self._unwritten_first is not None:
                # writing works again: the trace says what it is missing
                self.writer.write(ev.loss(self._unwritten_first, rec["ts_ns"], self.unwritten_now,
                                          reason="trace write failed"))
                log(f"trace writable again; {self.unwritten_now} record(s) are missing from it "
                    "(a loss record marks the gap)")
                self._unwritten_first = None
            self.writer.write(rec)
        except Exception as e:
            if self._unwritten_first is None:
                self._unwritten_first = rec["seq"]
                self.unwritten_now = 0
                log(f"cannot write the trace: {e}; judging and metrics go on, unwritten "
                    "records are counted (klptrace_trace_records_unwritten_total)")
            self.unwritten_now += 1
            self.unwritten += 1
            self.handler_errors[Stage.WRITE.value] = self.handler_errors.get(Stage.WRITE.value, 0) + 1

    def _report(self, f) -> None:
        if f.kind == VIOLATION:
            self.violations += 1
            log(f"VIOLATION {f.rule}: {f.message}")
        elif f.kind == "unknown":
            log(f"unknown: {f.message}")
        else:
            log(f"warning: {f.message}")

    def _tick(self) -> None:
        now = time.monotonic_ns()
        self.inference.check_lost(self.loader.lost(), now)
        self.inference.tick(now)
        if self.watcher is not None:
            for f in self.watcher.poll():
                n = len(self.preload.warnings)
                mods = self.preload.add_path(f, discovered=True)
                for w in self.preload.warnings[n:]:
                    log(f"warning: {w}")
                if mods:
                    log(f"discovery: {f}: preloading {', '.join(mods)}")
                    self.probes.add_preloaded(mods)
        if self.stalls is not None:
            # only while a transition is open does this read anything
            self._guarded(Stage.STALLS, self.stalls.tick, now)

    def _write_status(self, state) -> None:
        try:
            statusfile.write(state, self.status_path)
        except OSError as e:
            if not self._status_said:
                self._status_said = True
                log(f"cannot write the status file {self.status_path}: {e.strerror}; "
                    "`klptrace status` will read /proc instead")

    def _start_stalls(self, loader, plan, state: dict) -> None:
        """The stall view (tracer/observe/stalls.py): its records go through the
        inference's queue, which numbers them in order."""
        from klptrace.tracer.observe.loader import OnDemandProbes
        from klptrace.tracer.observe.stalls import StallSource, StallTracker
        source = plan.stall_source()
        on_demand = OnDemandProbes(loader, plan.on_demand(), log=lambda m: log(f"warning: {m}"))
        on_demand.set(False)        # armed by the tracker when a sweep leaves tasks behind
        self.stalls = StallTracker(self.inference.out.emit, self.engine.kstate, source=source,
                                   table=(loader.stall_table()
                                          if source is not StallSource.PROC else None),
                                   on_change=self._write_status, arm=on_demand.set)
        log(f"stalled transitions: source {source}")

    # --- the run --------------------------------------------------------------------

    def run(self) -> int:
        from klptrace.exporters.tracewriter import TraceWriter
        from klptrace.tracer.observe.directprobes import DirectProbes
        from klptrace.tracer.observe.loader import Loader, SOURCE
        from klptrace.tracer.observe import modsyms

        from klptrace.exporters import sdnotify

        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        # installed before READY: `systemctl reload` sends HUP, and an
        # unhandled HUP would kill the daemon
        signal.signal(signal.SIGHUP, self._on_hup)
        server = self._start_metrics()

        t0 = time.monotonic()
        raw_before: list = []

        def on_event(data):
            # events can only arrive after attach; the inference exists by then
            if self.inference is None:
                raw_before.append(rw.decode(data))
            else:
                self._on_event(data)

        try:
            loader = self.loader = Loader(on_event, ring_pages=self.ring_pages)
        except Exception as e:    # bcc raises bare Exceptions: compile or load failure
            msg = str(e).strip().splitlines()
            log(f"BPF compile/load of {SOURCE} failed: {msg[-1] if msg else type(e).__name__} "
                "(kernel headers matching `uname -r`? see the compiler output above)")
            if server is not None:
                server.close()
            return xc.ATTACH_FAILED
        tm = getattr(loader, "timing", {})
        log(f"BPF compiled and loaded in {time.monotonic() - t0:.1f}s "
            f"(bcc import {tm.get('import_s', 0):.1f}s, compile {tm.get('compile_s', 0):.1f}s; "
            f"struct offsets from {loader.layout})")
        preload = self.preload = modsyms.Preload(self.preload_paths)
        if self.discover_dirs is not None:
            from klptrace.tracer.observe import discover
            found = discover.existing_modules(self.discover_dirs)
            for f in found:
                preload.add_path(f, discovered=True)
            log(f"discovery: {len(preload.modules())} livepatch module(s) preloaded; watching "
                + ", ".join(self.discover_dirs))
            try:
                self.watcher = discover.Watcher(self.discover_dirs)
            except OSError as e:
                log(f"warning: cannot watch the livepatch directories ({e.strerror}); "
                    "modules installed from now on are probed at enable only")
        for w in preload.warnings:
            log(f"warning: {w}")
        probes = self.probes = DirectProbes(loader, preload, log)
        try:
            t1 = time.monotonic()
            probes.start()
            state = kstate.state()
            plan = self.plan = make_plan(loader.attach, kfunc=loader.kfunc_support(),
                                         exit_probes=loader,
                                         skip=self.skip_points)
            log(f"attached {sum(r.how != 'none' for r in plan.results)} point(s) and "
                f"{probes.attached} preloaded direct probe(s) in {time.monotonic() - t1:.1f}s")
            missing = plan.missing_required()
            if len(missing) == len([r for r in plan.results if r.point.required]):
                log("no probe could be attached to the livepatch core "
                    "(see `klptrace probes`); is this kernel built with CONFIG_KPROBES?")
                return xc.ATTACH_FAILED
            for m in missing:
                log(f"warning: point '{m}' not attached; its records will be missing")
            header = ev.header(os.uname().release, state=state,
                               observes=list(ev.CALLBACKS), probes=plan.to_json(),
                               preload=sorted(preload.modules()),
                               discover=self.discover_dirs or [], tracer="klptrace run")
            self.writer = TraceWriter(self.trace_path, header, state_provider=kstate.state,
                                      **self.trace_rotation)
            metrics = self.metrics
            self.engine = _engine(header, metrics.observe_transition if metrics else None)
            self.inference = Inference(self._sink, core_kinds=plan.core_kinds(), coverage=probes,
                                       start=LivepatchState.from_state(state))
            self._start_stalls(loader, plan, state)
            for r in raw_before:
                self._guarded(Stage.INFER, self.inference.feed, r, ts_ns=r.ts_ns)
            if self.verbose:
                log("\n" + format_plan(plan))
            rss_before = _rss_mb()
            loader.free_compiler_memory()   # the compiler is not needed again
            log(f"compiler memory given back: VmRSS {rss_before:.1f} -> {_rss_mb():.1f} MB")
            log(f"priority: {runloop.yield_cpu()}")
            if self.ready_file:
                with open(self.ready_file, "w") as f:
                    f.write(f"{os.getpid()}\n")
            sdnotify.ready("probes attached")
            log(f"tracing (ready after {time.monotonic() - t0:.1f}s); "
                f"trace: {self.trace_path or 'stdout'}")
            waiter = self.waiter = runloop.Waiter(
                loader.ring_fd, self.watcher.fileno() if self.watcher is not None else None)
            while not self.stop:
                waiter.wait(runloop.wait_s(
                    holding=self.inference.holding(),
                    transition_open=self.inference.transition_patch is not None))
                loader.read()
                self._guarded(Stage.TICK, self._tick)
                if self.writer.reopen_requested:
                    loader.drain()       # what happened before the HUP: old file
                    self._guarded(Stage.TICK, self._tick)
                    try:
                        self.writer.reopen()
                        log(f"trace reopened: {self.trace_path}")
                    except OSError as e:
                        log(f"cannot reopen the trace {self.trace_path}: {e.strerror}; "
                            "writing to the old file")
            sdnotify.stopping()
            loader.drain()
            self._guarded(Stage.TICK, self._tick)
            lost = loader.lost()
            self._guarded(Stage.TICK, self.inference.flush)
            if self.engine is not None:
                for f in self.engine.finish():
                    self._report(f)
            hits = loader.hits()
            log(f"stopped: {self.records} records, {lost} lost, {self.violations} violations; "
                f"probe hits {sum(hits)}"
                + (f"; {self.unwritten} record(s) not written" if self.unwritten else "")
                + (f"; handler errors {self.handler_errors}" if self.handler_errors else ""))
            if self.verbose:
                log(f"hits per program: {dict(zip(rw.HIT_PROGRAMS, hits))}")
            return 0
        finally:
            if server is not None:
                server.close()
            if self.writer is not None:
                try:
                    self.writer.close()
                except OSError as e:
                    log(f"closing the trace: {e.strerror}")
            probes.stop()
            if self.watcher is not None:
                self.watcher.close()
            if self.waiter is not None:
                self.waiter.close()
            loader.detach_tracefs()
            loader.close()
            if self.ready_file:
                try:
                    os.unlink(self.ready_file)
                except OSError:
                    pass
            if self.stalls is not None:
                statusfile.remove(self.status_path)
