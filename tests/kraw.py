"""The raw events the BPF programs would write for a run of the kernel model,
and the daemon's pipeline they go through (tracer/observe/infer.py.Inference into
tracer/judge/engine.py.Engine). The one place in the tests that knows the raw layout
(tracer/observe/rawevents.py) and what each probe snapshots when
(bpf/klptrace.bpf.c, docs/probes.md): tests/kmodel.py calls ``Probes`` at
each probe point with the kernel state there; nothing here claims a kernel
ran.

Two modes, as the daemon runs: ``inferred`` (no direct probe: every
callback is reconstructed from the snapshots) and ``direct`` (every
callback function probed, as with ``--preload`` of every livepatch: a
DIRECT event when it runs, DIRECT_RET with the code for pre_patch).
"""

from __future__ import annotations

import inspect

from klptrace.tracer.model import events as ev
from klptrace.tracer.observe import rawevents as rw
from klptrace.tracer.judge.engine import Engine
from klptrace.tracer.observe.infer import Inference

CHUNK = getattr(rw, "CHUNK_OBJS", getattr(rw, "MAX_OBJS", 8))
STEP_NS = 1_000                 # between two raw events (far below any hold's deadline)
ENDBR64 = 4                     # a kprobe on a function sits past its endbr64


class Probes:
    """The BPF side of one run: tests/kmodel.py calls a method at each probe
    point; ``events`` collects the struct klpt_event each would write."""

    def __init__(self, mode: str = "inferred"):
        assert mode in ("inferred", "direct")
        self.mode = mode
        self.events: list[rw.Raw] = []
        self.ts = 0
        self.pid = 100                  # the running thread
        self._pids = 100
        self.ctx: dict[int, int] = {}   # task_ctx: tid -> KLPT_CTX_* inside klp_module_coming/going
        self.cur = None                 # cur_patch: set at klp_init_transition
        self._addr: dict = {}

    # --- the layout -------------------------------------------------------------

    def addr(self, patch: str, obj: str, i: int) -> int:
        """Callback i's address: one per (patch, object, callback), never reused."""
        key = (patch, obj, i)
        if key not in self._addr:
            self._addr[key] = 0xffffffffc0000000 + 0x1000 * (len(self._addr) + 1)
        return self._addr[key]

    def _obj(self, p, o) -> rw.Obj:
        cb = tuple(self.addr(p.d.name, o.name, i) if name in o.callbacks else 0
                   for i, name in enumerate(ev.CALLBACKS))
        return rw.Obj(o.name, cb, loaded=o.name == ev.VMLINUX or o.mod, patched=o.patched,
                      post_unpatch_enabled=o.armed, dynamic=o.dynamic)

    def _raw(self, kind: int, objs=(), *, patch: str = "", module: str = "", arg: int = 0,
             ip: int = 0, replace: bool = False, chunk: int = 0, snap: int = 0) -> None:
        self.ts += STEP_NS
        kw = {"chunk": chunk, "snap": snap} if hasattr(rw, "SNAP_LAST") else {}
        self.events.append(rw.Raw(kind, self.ts, patch=patch, module=module, arg=arg, ip=ip,
                                  pid=self.pid, ctx=self.ctx.get(self.pid, rw.CTX_NONE),
                                  replace=replace, objs=list(objs), **kw))

    def _snapshot(self, kind: int, p, arg: int = 0) -> None:
        """do_snap_patch: the patch's obj_list, CHUNK objects per event."""
        objs = [self._obj(p, o) for o in p.objs]
        chunks = [objs[i:i + CHUNK] for i in range(0, len(objs), CHUNK)] or [[]]
        for n, c in enumerate(chunks):
            more = n < len(chunks) - 1
            self._raw(kind, c, patch=p.d.name, arg=arg, replace=p.d.replace, chunk=n,
                      snap=getattr(rw, "SNAP_MORE", 1) if more else 0)

    def _one(self, kind: int, p, o, arg: int = 0, ip: int = 0) -> None:
        """do_snap_obj: one object and its patch (obj->kobj.parent)."""
        self._raw(kind, [self._obj(p, o)], patch=p.d.name, arg=arg, ip=ip, replace=p.d.replace)

    # --- probe points, called by the model ---------------------------------------

    def begin(self, op: str) -> None:
        """A new operation: a thread of its own (insmod, rmmod, a sysfs write,
        the transition work)."""
        self._pids += 1
        self.pid = self._pids

    def resume(self, pid: int) -> None:
        """Thread ``pid`` runs again (it waited for klp_mutex)."""
        self.pid = pid

    def enable(self, patch: str) -> None:
        # the livepatch module loads: klp_module_coming for it (no patch has
        # an object of that name), then its init calls klp_enable_patch
        self.module_coming(patch)
        self.module_coming_ret(patch, 0)

    def enable_ret(self, patch: str, ret: int) -> None:
        self._raw(rw.ENABLE_RET, patch=patch, arg=ret)
        if ret:
            # its init failed: do_init_module's error path calls klp_module_going
            self.module_going(patch)
            self.module_going_ret(patch)

    def remove(self, patch: str) -> None:
        self.begin("rmmod")
        self.module_going(patch)
        self.module_going_ret(patch)

    def init_transition(self, p, target: str) -> None:
        self.cur = p
        self._snapshot(rw.INIT_TRANSITION, p,
                       rw.KLP_PATCHED if target == "patched" else rw.KLP_UNPATCHED)

    def patch_object(self, p, o, ctx: str) -> None:
        self._one(rw.PATCH_OBJECT, p, o)

    def patch_object_ret(self, p, o, ret: int, ctx: str) -> None:
        if self.ctx.get(self.pid) == rw.CTX_COMING:   # on_patch_object_ret: a module coming only
            self._one(rw.PATCH_OBJECT_RET, p, o, arg=ret)

    def start_transition(self, p) -> None:
        self._snapshot(rw.START_TRANSITION, self.cur)

    def complete_transition(self, p, target: str) -> None:
        self._snapshot(rw.COMPLETE, self.cur)

    def complete_transition_ret(self, p) -> None:
        if hasattr(rw, "COMPLETE_RET"):
            self._raw(rw.COMPLETE_RET)

    def cancel_transition(self, p) -> None:
        self._snapshot(rw.CANCEL, self.cur)

    def reverse_transition(self, p) -> None:
        self._snapshot(rw.REVERSE, self.cur)

    def force_transition(self, p) -> None:
        self._snapshot(rw.FORCE, self.cur)

    def module_coming(self, mod: str) -> None:
        self.ctx[self.pid] = rw.CTX_COMING
        self._raw(rw.MODULE_COMING, module=mod)

    def module_coming_ret(self, mod: str, ret: int) -> None:
        self._raw(rw.MODULE_COMING_RET, module=mod, arg=ret)
        self.ctx.pop(self.pid, None)

    def module_going(self, mod: str) -> None:
        self.ctx[self.pid] = rw.CTX_GOING
        self._raw(rw.MODULE_GOING, module=mod)

    def module_going_ret(self, mod: str) -> None:
        self._raw(rw.MODULE_GOING_RET, module=mod)
        self.ctx.pop(self.pid, None)

    def unpatch_object(self, p, o, ctx: str) -> None:
        if self.pid in self.ctx:          # on_unpatch_object: a module coming/going only
            self._one(rw.UNPATCH_OBJECT, p, o)

    def callback(self, p, o, cb: str, ret) -> None:
        """The callback function itself runs: on_direct (on_direct_pre for
        pre_patch, whose return on_direct_ret reports with the code)."""
        if self.mode != "direct":
            return
        i = ev.CALLBACKS.index(cb)
        ip = self.addr(p.d.name, o.name, i) + ENDBR64
        self._one(rw.DIRECT, p, o, ip=ip)
        if i == 0:
            self._one(rw.DIRECT_RET, p, o, arg=ret or 0, ip=ip)


class EveryCallbackProbed:
    """tracer/observe/infer.py's Coverage when every callback function is probed from
    the start (``--preload`` of every livepatch)."""

    def __init__(self, probes: Probes):
        self.probes = probes

    def covers(self, patch, obj, cb, addr, since_ns) -> bool:
        return addr != 0

    def on_enable(self, patch, objs, ts_ns) -> None:
        pass

    def on_module_going(self, module, ts_ns) -> None:
        pass


def inference(sink, probes: Probes) -> Inference:
    """The daemon's Inference for this run's mode."""
    params = inspect.signature(Inference).parameters
    if probes.mode == "direct":
        if "coverage" in params:
            return Inference(sink, coverage=EveryCallbackProbed(probes))
        cover = {(p, o, ev.CALLBACKS[i]) for (p, o, i) in probes._addr}
        return Inference(sink, preload_cover=cover)
    return Inference(sink)


def pipeline(header: dict, events: list[rw.Raw], probes: Probes):
    """Raw events through Inference into the Engine, as `klptrace run` does:
    (the records written, the findings)."""
    engine = Engine(header)
    records, found = [], []

    def sink(rec: dict) -> None:
        records.append(rec)
        found.extend(engine.feed(rec))

    inf = inference(sink, probes)
    for r in events:
        inf.feed(r)
    inf.flush()
    found.extend(engine.finish())
    return records, found
