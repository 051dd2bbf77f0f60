"""The run loop of ``klptrace run``: BPF events -> inference -> records ->
TraceWriter and the rule engine (online, violations logged as they happen).
SIGINT/SIGTERM stop it cleanly: the ring buffer is drained, held records are
flushed, tracefs probes are removed, the trace is closed."""

from __future__ import annotations

import os
import signal
import sys
import time

from . import events as ev
from . import exitcodes as xc
from . import kstate
from .infer import Inference
from .probeplan import make_plan, format_plan

POLL_MS = 200


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
    from .engine import Engine
    return Engine(header, on_transition_done=on_transition_done)


class Daemon:
    def __init__(self, trace: str | None, preload: list[str], ready_file: str | None,
                 verbose: bool = False, *, listen=None, tls_cert: str | None = None,
                 tls_key: str | None = None, metrics_max_patches: int | None = None,
                 trace_max_bytes: int | None = None, trace_keep: int | None = None,
                 ring_pages: int = 64):
        self.trace_path = trace
        self.ring_pages = ring_pages
        self.preload_paths = preload
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
        from exporters import server as mserver
        from exporters.metrics import DaemonMetrics, plan_probes
        kw = {} if self.metrics_max_patches is None else {"max_patches": self.metrics_max_patches}
        self.metrics = DaemonMetrics(lambda: self.engine.stats if self.engine else None,
                                     livepatch_state=kstate.patches,
                                     probes=lambda: plan_probes(self.plan) if self.plan else [],
                                     kernel_release=os.uname().release, **kw)
        srv = mserver.start(self.metrics, self.listen, certfile=self.tls[0], keyfile=self.tls[1])
        log(f"metrics at {srv.url}")
        return srv

    def _sink(self, rec: dict) -> None:
        self.writer.write(rec)
        self.records += 1
        if self.verbose:
            log(f"record {rec}")
        if self.engine is not None:
            for f in self.engine.feed(rec):
                self._report(f)

    def _feed_raw(self, r) -> None:
        """Each event carries the BPF `lost` counter as it was when the event
        was reserved: an increase means records were lost right before it, so
        the `loss` record goes exactly there, not wherever the poll loop
        happens to notice it."""
        if r.lost > self.lost_seen:
            self.inference.loss(r.ts_ns, r.lost - self.lost_seen)
            self.lost_seen = r.lost
        self.inference.feed(r)

    def _check_lost(self, lost: int) -> None:
        """Losses after the last event read (no later event carries them)."""
        if lost > self.lost_seen:
            self.inference.loss(time.monotonic_ns(), lost - self.lost_seen)
            self.lost_seen = lost

    def _attach_for_enabled(self, patch: str, objs) -> None:
        """A patch not preloaded was just enabled: probe its callback functions
        directly for the callbacks that run later (post_patch, disable, modules).
        The BPF `armed` map is set only once all are attached, so a snapshot sees
        all or none of this patch's callbacks as directly observed."""
        want = {}
        for o in objs:
            for i, addr in enumerate(o.cb):
                if addr and (patch, o.name, ev.CALLBACKS[i]) not in self.preload_cover:
                    want.setdefault(addr, set()).add(i == 0)
        want = {a: r for a, r in want.items() if a not in self.armed_addrs}
        if not want:
            return
        from .modsyms import Target, kallsyms_lookup
        try:
            names = kallsyms_lookup(set(want))
        except OSError as e:
            log(f"warning: /proc/kallsyms: {e.strerror}; '{patch}' stays inferred")
            return
        armed = []
        for addr, rets in want.items():
            if addr not in names:
                continue
            mod, sym = names[addr]
            errs = [self.probes.add(Target(mod, sym, ret, paired=not ret and True in rets),
                                    self.loader) for ret in sorted({False} | rets)]
            if any(errs):
                log(f"warning: direct probe {mod}:{sym}: {[e for e in errs if e][0]}")
                continue
            armed.append(addr)
        for addr in armed:
            self.loader.set_armed(addr)
            self.armed_addrs.add(addr)
        if armed:
            log(f"direct probes on {len(armed)} callback function(s) of '{patch}'")

    def _report(self, f) -> None:
        if f.kind == "violation":
            self.violations += 1
            log(f"VIOLATION {f.rule}: {f.message}")
        elif f.kind == "unknown":
            log(f"unknown: {f.message}")
        else:
            log(f"warning: {f.message}")

    def run(self) -> int:
        from exporters.tracewriter import TraceWriter
        from .loader import Loader, SOURCE
        from . import modsyms

        from exporters import sdnotify

        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        # installed before READY: `systemctl reload` sends HUP, and an
        # unhandled HUP would kill the daemon
        signal.signal(signal.SIGHUP, self._on_hup)
        server = self._start_metrics()

        pending = []
        t0 = time.monotonic()
        self.inference: Inference | None = None
        raw_before: list = []

        self.lost_seen = 0

        def on_raw(r):
            # events can only arrive after attach; the inference exists by then
            if self.inference is None:
                raw_before.append(r)
            else:
                self._feed_raw(r)

        try:
            loader = Loader(on_raw, ring_pages=self.ring_pages)
        except Exception as e:    # bcc raises bare Exceptions: compile or load failure
            msg = str(e).strip().splitlines()
            log(f"BPF compile/load of {SOURCE} failed: {msg[-1] if msg else type(e).__name__} "
                "(kernel headers matching `uname -r`? see the compiler output above)")
            if server is not None:
                server.close()
            return xc.ATTACH_FAILED
        log(f"BPF compiled and loaded in {time.monotonic() - t0:.1f}s")
        probes = modsyms.TracefsProbes()
        self.probes, self.loader, self.armed_addrs = probes, loader, set()
        try:
            probes.remove_stale()
            preload = modsyms.Preload(self.preload_paths)
            for w in preload.warnings:
                log(f"warning: {w}")
            state = kstate.state()
            plan = self.plan = make_plan(loader.attach, kfunc=loader.kfunc_support())
            missing = plan.missing_required()
            if len(missing) == len([r for r in plan.results if r.point.required]):
                log("no probe could be attached to the livepatch core "
                    "(see `klptrace probes`); is this kernel built with CONFIG_KPROBES?")
                return xc.ATTACH_FAILED
            for m in missing:
                log(f"warning: point '{m}' not attached; its records will be missing")
            for target in preload.targets():
                err = probes.add(target, loader)
                if err:
                    log(f"warning: direct probe {target.module}:{target.symbol}: {err}")
            header = ev.header(os.uname().release, state=state,
                               observes=list(ev.CALLBACKS), probes=plan.to_json(),
                               preload=sorted(preload.modules()), tracer="klptrace run")
            self.writer = TraceWriter(self.trace_path, header, state_provider=kstate.state,
                                      **self.trace_rotation)
            metrics = getattr(self, "metrics", None)
            self.engine = _engine(header, metrics.observe_transition if metrics else None)
            self.preload_cover = preload.cover()
            self.inference = Inference(self._sink, core_kinds=plan.core_kinds(),
                                       preload_cover=self.preload_cover,
                                       on_enable=self._attach_for_enabled,
                                       active=[p for p in state["patches"]
                                               if p["enabled"] or p["transition"]])
            for r in raw_before:
                self._feed_raw(r)
            if self.verbose:
                log("\n" + format_plan(plan))
            rss_before = _rss_mb()
            loader.free_compiler_memory()   # the compiler is not needed again
            log(f"compiler memory given back: VmRSS {rss_before:.1f} -> {_rss_mb():.1f} MB")
            if self.ready_file:
                with open(self.ready_file, "w") as f:
                    f.write(f"{os.getpid()}\n")
            sdnotify.ready("probes attached")
            log(f"tracing (ready after {time.monotonic() - t0:.1f}s); "
                f"trace: {self.trace_path or 'stdout'}")
            while not self.stop:
                loader.poll(POLL_MS)
                self._check_lost(loader.lost())
                if self.writer.reopen_requested:
                    loader.drain()       # what happened before the HUP: old file
                    self.writer.reopen()
                    log(f"trace reopened: {self.trace_path}")
            sdnotify.stopping()
            loader.drain()
            lost = loader.lost()
            self._check_lost(lost)
            self.inference.flush()
            if self.engine is not None:
                for f in self.engine.finish():
                    self._report(f)
            hits = loader.hits()
            log(f"stopped: {self.records} records, {lost} lost, {self.violations} violations; "
                f"probe hits {sum(hits)}")
            if self.verbose:
                log(f"hits per program slot: {hits}")
            return 0
        finally:
            if server is not None:
                server.close()
            if getattr(self, "writer", None) is not None:
                self.writer.close()
            loader.detach_tracefs()
            probes.remove_all()
            loader.close()
            if self.ready_file:
                try:
                    os.unlink(self.ready_file)
                except OSError:
                    pass
