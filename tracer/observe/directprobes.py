"""Direct probes on livepatch callback functions, and which of them are live.

Two kinds of tracefs kprobe events (group ``klptrace``), each with the BPF
program on_direct / on_direct_pre / on_direct_ret attached:

* preloaded: ``p:klptrace/NAME MODULE:SPEC`` for the callbacks read from a
  ``.ko`` before it loads (tracer/observe/modsyms.py). The kernel accepts such an event
  for a module that is not loaded yet, arms it when the module comes (before
  its init: the first pre_patch is seen) and re-arms it at every load of a
  module of that name. Defined at start, removed at exit.
* by address: ``p:klptrace/NAME 0xADDR`` for the callbacks of a patch being
  enabled that no preloaded event covers, from the addresses of its
  klp_init_transition snapshot. Such an event is killed when its module is
  unloaded and never re-armed, and is removed then: nothing keyed by an
  address outlives the module that owned it, and a module loaded again gets
  events of its own.

The inference (tracer/observe/infer.py) asks ``covers()``: did a live probe of ours sit
on this callback, at this address, since before this step? Only then is a
silent probe evidence that the callback did not run. A preloaded event counts
once its kernel address is seen in /sys/kernel/debug/kprobes/list for that
module's callback; an event by address counts from the moment its BPF program
is attached (CLOCK_MONOTONIC, the clock of the BPF timestamps).

The slow work (tracefs writes, perf attach, reading the kprobe list) runs in
one worker thread, never in the ring-buffer callback; requests are queued in
kernel order and a module that went before its request was served gets
nothing (its generation changed).
"""

from __future__ import annotations

import enum
import os
import queue
import threading
import time
from typing import Callable

from klptrace.tracer.observe import rawevents as rw
from klptrace.tracer.observe.modsyms import CALLBACKS, Preload
from klptrace.tracer.observe.kfacts import tracefs_dir

GROUP = "klptrace"


class DirectError(str, enum.Enum):
    """A direct probe that could not be made or unmade (the `kind` label of
    klptrace_direct_probe_errors_total): its callbacks stay inferred."""
    PRELOAD = "preload"             # defining or attaching a probe of a preloaded module
    BY_ADDRESS = "by-address"       # ... one by address, at a patch's enable
    REMOVE = "remove"               # removing one
    WORKER = "worker"               # the worker thread itself
KPROBE_LIST = "/sys/kernel/debug/kprobes/list"


class TracefsEvents:
    """The ``klptrace`` group of /sys/kernel/tracing/kprobe_events. Every
    event of the group is ours: stale ones of a crashed run are removed at start."""

    def __init__(self):
        self.dir = tracefs_dir()
        self._n = 0

    def _write(self, line: str) -> None:
        if self.dir is None:
            raise OSError("tracefs not mounted (mount -t tracefs nodev /sys/kernel/tracing)")
        # os.open, not open(..., "a"): Python seeks to the end of a file opened
        # for appending, and tracefs' seq_file refuses SEEK_END with EINVAL.
        fd = os.open(os.path.join(self.dir, "kprobe_events"), os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def ours(self) -> list[str]:
        if self.dir is None:
            return []
        # "p:GROUP/NAME ..." but also "r10:GROUP/NAME ..." (a return probe's
        # maxactive): split at the colon, never at a fixed offset
        out = []
        with open(os.path.join(self.dir, "kprobe_events")) as f:
            for line in f:
                if line.split():
                    event = line.split()[0].partition(":")[2]
                    if event.startswith(GROUP + "/"):
                        out.append(event)
        return out

    def error_log(self) -> str:
        """The kernel's reason for the last refused probe definition."""
        try:
            with open(os.path.join(self.dir or "", "error_log")) as f:
                lines = [l.strip() for l in f if l.strip()]
            return " / ".join(lines[-3:])
        except OSError:
            return "no error_log"

    def remove_stale(self) -> int:
        n = 0
        for ev in self.ours():
            try:
                self._write(f"-:{ev}")
                n += 1
            except OSError:
                pass
        return n

    def define(self, ret: bool, location: str) -> tuple[str | None, str | None]:
        """(event name, None) or (None, why it was refused)."""
        name = f"d{os.getpid()}_{self._n}"
        self._n += 1
        try:
            self._write(f"{'r' if ret else 'p'}:{GROUP}/{name} {location}")
        except OSError as e:
            return None, f"kprobe_events refused {location}: {e.strerror or e} ({self.error_log()})"
        return name, None

    def remove(self, name: str) -> str | None:
        try:
            self._write(f"-:{GROUP}/{name}")
        except OSError as e:
            return f"cannot remove {GROUP}/{name}: {e.strerror or e}"
        return None


def live_kprobe_addresses(path: str = KPROBE_LIST) -> set[int]:
    """Addresses of the registered kprobes that are armed (not GONE), from the
    kernel's own list (kernel/kprobes.c report_probe)."""
    out = set()
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and "[GONE]" not in line:
                try:
                    out.add(int(parts[0], 16))
                except ValueError:
                    continue
    return out


class _Event:
    __slots__ = ("name", "fd")

    def __init__(self, name: str, fd: int | None):
        self.name, self.fd = name, fd


class DirectProbes:
    def __init__(self, loader, preload: Preload, log: Callable[[str], None], *,
                 events: TracefsEvents | None = None, clock=time.monotonic_ns,
                 kprobe_list: Callable[[], set[int]] = live_kprobe_addresses,
                 module_loaded: Callable[[str], bool] = lambda m: os.path.exists(f"/sys/module/{m}")):
        self.loader = loader
        self.preload = preload
        self.log = log
        self.events = events or TracefsEvents()
        self.clock = clock
        self.kprobe_list = kprobe_list
        self.module_loaded = module_loaded
        self._lock = threading.Lock()
        # (patch, object, callback index) -> (address, live since ns)
        self._live: dict[tuple[str, str, int], tuple[int, int]] = {}
        self._gen: dict[str, int] = {}                 # module -> unloads seen
        self._by_addr: dict[str, list[_Event]] = {}    # module -> its events by address
        self._preloaded: list[_Event] = []
        self._cover = preload.cover()
        self._q: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self.errors: dict[DirectError, int] = {}       # kind -> probe errors (a metric)
        self.attached = 0                              # events with a program attached now

    # --- life cycle -----------------------------------------------------------------

    def start(self) -> None:
        """Remove stale events, define the preloaded ones (returns first: an
        entry never fires without its return armed), start the worker."""
        n = self.events.remove_stale()
        if n:
            self.log(f"removed {n} stale {GROUP}/* kprobe event(s) of an earlier run")
        self._define_preloaded(None)
        self._thread = threading.Thread(target=self._work, name="klptrace-probes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout=30)
            self._thread = None
        for evs in list(self._by_addr.values()) + [self._preloaded]:
            for ev in evs:
                self._undefine(ev)
        self._by_addr, self._preloaded = {}, []

    def add_preloaded(self, modules: list[str]) -> None:
        """Livepatch modules read after start (a file that appeared in a
        watched directory): their events are defined by the worker."""
        if modules:
            self._q.put(("preload", list(modules)))

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until every queued request is served (tests, orderly exit)."""
        done = threading.Event()
        self._q.put(done.set)
        done.wait(timeout)

    # --- the inference's Coverage ----------------------------------------------------

    def covers(self, patch: str, obj: str, cb: int, addr: int, since_ns: int) -> bool:
        with self._lock:
            e = self._live.get((patch, obj, cb))
        return e is not None and e[0] == addr and e[1] <= since_ns

    def on_enable(self, patch: str, objs: list[rw.Obj], ts_ns: int) -> None:
        want = [(o.name, i, o.cb[i]) for o in objs for i in range(4) if o.cb[i]]
        if want:
            self._q.put(("enable", patch, want, self._gen.get(patch, 0)))

    def on_module_going(self, module: str, ts_ns: int) -> None:
        self._gen[module] = self._gen.get(module, 0) + 1
        with self._lock:
            self._live = {k: v for k, v in self._live.items() if k[0] != module}
        if module in self._by_addr or module in self.preload.modules():
            self._q.put(("going", module))

    # --- the worker ----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            req = self._q.get()
            if req is None:
                return
            try:
                if callable(req):
                    req()
                elif req[0] == "enable":
                    self._attach(*req[1:])
                elif req[0] == "going":
                    self._detach_module(req[1])
                elif req[0] == "preload":
                    self._define_preloaded(set(req[1]))
            except Exception as e:    # the worker must outlive any one request
                self._error(DirectError.WORKER, f"direct probes: {type(e).__name__}: {e}")

    def _attach(self, patch: str, want: list[tuple[str, int, int]], gen: int) -> None:
        live: dict[tuple[str, str, int], tuple[int, int]] = {}
        rest = want
        if patch in self.preload.modules():
            try:
                addrs = self.kprobe_list()
            except OSError:
                addrs = None      # no debugfs: the preloaded events cannot be verified
            # functions a preloaded event sits on (for any object: objects share
            # callback functions); never a second probe on one of them, which
            # would report each run twice
            preloaded = {a for obj, i, a in want if (patch, obj, CALLBACKS[i]) in self._cover}
            rest = []
            for obj, i, a in want:
                if a not in preloaded:
                    rest.append((obj, i, a))
                elif addrs is None:
                    continue      # unverified: its silence proves nothing (not live)
                elif any(a <= k <= a + rw.PROBE_IP_SLACK for k in addrs):
                    live[(patch, obj, i)] = (a, 0)       # armed since the module loaded
                else:
                    rest.append((obj, i, a))   # the kernel shows no probe there: ours by address
        if rest and not self.module_loaded(patch):
            return          # gone already (a refused enable): nothing to probe
        by_addr: dict[int, set[int]] = {}
        for obj, i, a in rest:
            by_addr.setdefault(a, set()).add(i)
        evs, ok = [], set()
        for a, kinds in by_addr.items():
            paired = 0 in kinds
            got = []
            if paired:
                got.append(self._define(True, f"{a:#x}", False, DirectError.BY_ADDRESS))
            got.append(self._define(False, f"{a:#x}", paired, DirectError.BY_ADDRESS))
            evs += [e for e in got if e is not None]
            if all(e is not None for e in got):
                ok.add(a)
        now = self.clock()
        if self._gen.get(patch, 0) != gen:
            for e in evs:       # the module went while we attached: nothing of it stays
                self._undefine(e)
            return
        for obj, i, a in rest:
            if a in ok:
                live[(patch, obj, i)] = (a, now)
        with self._lock:
            self._live.update(live)
        if evs:
            self._by_addr.setdefault(patch, []).extend(evs)
        self.log(f"direct probes: '{patch}': {len(live)} of {len(want)} callback(s) covered"
                 + (f" ({len(ok)} function(s) by address)" if ok else ""))

    def _define_preloaded(self, modules: set[str] | None) -> None:
        for t in sorted(self.preload.targets(modules), key=lambda t: not t.ret):
            ev = self._define(t.ret, f"{t.module}:{t.spec}", t.paired, DirectError.PRELOAD)
            if ev is not None:
                self._preloaded.append(ev)
        self._cover = self.preload.cover()

    def _detach_module(self, module: str) -> None:
        for ev in self._by_addr.pop(module, []):
            self._undefine(ev)

    # --- one event ---------------------------------------------------------------------

    def _define(self, ret: bool, location: str, paired: bool,
                kind: DirectError) -> _Event | None:
        name, err = self.events.define(ret, location)
        if name is None:
            self._error(kind, f"direct probe {location}: {err}")
            return None
        fd, err = self.loader.attach_tracefs(GROUP, name, ret, paired=paired)
        if fd is None:
            self.events.remove(name)
            self._error(kind, f"direct probe {location}: {err}")
            return None
        self.attached += 1
        return _Event(name, fd)

    def _undefine(self, ev: _Event) -> None:
        if ev.fd is not None:
            self.loader.detach_fd(ev.fd)
            self.attached -= 1
            ev.fd = None
        err = self.events.remove(ev.name)
        if err:
            self._error(DirectError.REMOVE, err)

    def _error(self, kind: DirectError, msg: str) -> None:
        first = kind not in self.errors
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if first or self.errors[kind] <= 3:
            self.log(f"warning: {msg}")
