"""A pure-Python model of the kernel livepatch core's callback behaviour, used to
generate legal traces for the property tests and the validator benchmark.

It mirrors kernel/livepatch/core.c and transition.c step by step (names in the
comments), but it is a model for generating test input: it never calls
itself a kernel and nothing else in the project imports it.

Besides its own record stream (``records``, what a writer that sees every
step would write), it calls ``probes`` at each point the BPF programs probe
(bpf/klptrace.bpf.c, docs/probes.md) with the kernel state those programs
would read there; tests/kraw.py turns that into the daemon's raw events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from klptrace.tracer.model import events as ev

ALL = list(ev.CALLBACKS)
EBUSY, EINVAL = -16, -22


@dataclass
class PatchDef:
    name: str
    objects: list[tuple[str, list[str]]]        # (object name, registered callbacks)
    replace: bool = False
    pre_patch_ret: dict[str, int] = field(default_factory=dict)  # object -> ret


@dataclass
class _Obj:
    name: str
    callbacks: list[str]
    armed: bool = False       # callbacks.post_unpatch_enabled
    patched: bool = False     # obj->patched
    mod: bool = False         # obj->mod is set (klp_is_object_loaded for a module)
    dynamic: bool = False     # a nop object of atomic replace (klp_add_nops)


@dataclass
class _Patch:
    d: PatchDef
    objs: list[_Obj]
    enabled: bool = False     # patch->enabled


class NoProbes:
    """The probe points, for a model that only writes records."""
    pid = 0

    def __getattr__(self, name):
        return lambda *args, **kw: None


class KernelModel:
    def __init__(self, modules_loaded=(), kernel="model", probes=None):
        self.records: list[dict] = []
        self.seq = 0
        self.ts = 1_000
        self.modules = set(modules_loaded)
        self.patches: list[_Patch] = []          # klp_patches, in order
        self.transition: _Patch | None = None    # klp_transition_patch
        self.target: str | None = None           # klp_target_state
        self.probes = probes if probes is not None else NoProbes()
        self.header = ev.header(kernel, state={"patches": [], "modules": sorted(self.modules)})

    # --- emitting -------------------------------------------------------------

    def _emit(self, build, *args, **kw) -> None:
        self.seq += 1
        self.ts += 1_000
        self.records.append(build(self.seq, self.ts, *args, **kw))

    def _cb(self, p: _Patch, o: _Obj, cb: str, ret=None) -> None:
        """The callback function itself runs (klp_*_callback, core.h)."""
        if cb in o.callbacks:
            self.probes.callback(p, o, cb, ret)
            self._emit(ev.callback, p.d.name, o.name, cb,
                       ret=ret if cb == ev.PRE_PATCH else None)

    def _loaded(self, o: _Obj) -> bool:
        return o.name == ev.VMLINUX or o.name in self.modules

    def _pre_patch(self, p: _Patch, o: _Obj) -> int:
        """klp_pre_patch_callback: post_unpatch_enabled = !ret."""
        ret = p.d.pre_patch_ret.get(o.name, 0) if ev.PRE_PATCH in o.callbacks else 0
        self._cb(p, o, ev.PRE_PATCH, ret)
        o.armed = ret == 0
        return ret

    def _post_unpatch(self, p: _Patch, o: _Obj) -> None:
        """klp_post_unpatch_callback: only where post_unpatch_enabled, then clears it."""
        if o.armed:
            self._cb(p, o, ev.POST_UNPATCH)
        o.armed = False

    def _patch_object(self, p: _Patch, o: _Obj, ctx: str) -> None:
        self.probes.patch_object(p, o, ctx)
        o.patched = True
        self.probes.patch_object_ret(p, o, 0, ctx)

    def _complete_transition(self) -> None:
        """klp_complete_transition (also called by klp_cancel_transition)."""
        p = self.transition
        self.probes.complete_transition(p, self.target)
        self._emit(ev.transition, p.d.name, "complete", self.target)
        if self.target == "patched":
            if p.d.replace:
                for old in [q for q in self.patches if q is not p]:
                    # klp_unpatch_replaced_patches: no callbacks at all
                    self._emit(ev.patch_event, old.d.name, "replaced")
                    old.enabled = False
                    self.patches.remove(old)
                p.objs = [o for o in p.objs if not o.dynamic]   # klp_discard_nops
            for o in p.objs:
                if self._loaded(o):
                    self._cb(p, o, ev.POST_PATCH)
        else:
            for o in p.objs:
                o.patched = False                # klp_unpatch_objects
            for o in p.objs:
                if self._loaded(o):
                    self._post_unpatch(p, o)
        self.probes.complete_transition_ret(p)
        self.transition = self.target = None

    # --- operations (each returns False when the kernel would refuse it) ----

    def find(self, name: str) -> _Patch | None:
        return next((p for p in self.patches if p.d.name == name), None)

    def enable(self, d: PatchDef) -> bool:
        """klp_enable_patch -> klp_init_patch -> __klp_enable_patch."""
        if self.find(d.name):
            return False        # insmod of a module already loaded: no klp_enable_patch
        self.probes.begin("insmod")
        self.probes.enable(d.name)
        self._emit(ev.patch_enable, d.name,
                   [{"name": n, "callbacks": list(c)} for n, c in d.objects], replace=d.replace)
        if self.transition is not None:
            # __klp_enable_patch: klp_transition_patch is set -> -EBUSY, before
            # any transition of this patch
            self.probes.enable_ret(d.name, EBUSY)
            self._emit(ev.patch_event, d.name, "enable_failed", ret=EBUSY)
            return False
        p = _Patch(d, [_Obj(n, list(c)) for n, c in d.objects])
        if d.replace:           # klp_add_nops: a nop object for each object of the others
            own = {o.name for o in p.objs}
            for q in self.patches:
                for qo in q.objs:
                    if qo.name not in own and not qo.dynamic:
                        p.objs.append(_Obj(qo.name, [], dynamic=True))
                        own.add(qo.name)
        for o in p.objs:        # klp_init_object -> klp_find_object_module
            o.mod = o.name != ev.VMLINUX and o.name in self.modules
        self.patches.append(p)  # klp_init_patch: list_add_tail(&patch->list, &klp_patches)
        self.transition, self.target = p, "patched"
        self.probes.init_transition(p, "patched")
        self._emit(ev.transition, d.name, "init", "patched")
        for o in p.objs:
            if not self._loaded(o):
                continue
            ret = self._pre_patch(p, o)
            if ret:
                # goto err: klp_cancel_transition -> klp_complete_transition(UNPATCHED)
                self.probes.cancel_transition(p)
                self._emit(ev.transition, d.name, "cancel", "unpatched")
                self.target = "unpatched"
                self._complete_transition()
                self.patches.remove(p)           # klp_free_patch_start
                self.probes.enable_ret(d.name, ret)
                self._emit(ev.patch_event, d.name, "enable_failed", ret=ret)
                return False
            self._patch_object(p, o, "enable")
        self.probes.start_transition(p)
        self._emit(ev.transition, d.name, "start", "patched")
        p.enabled = True
        self.probes.enable_ret(d.name, 0)
        return True

    def complete(self, force: bool = False) -> bool:
        """klp_try_complete_transition succeeding -> klp_complete_transition."""
        p = self.transition
        if p is None:
            return False
        if force:
            self.probes.begin("sysfs")
            self.probes.force_transition(p)      # force_store -> klp_force_transition
            self._emit(ev.transition, p.d.name, "force", self.target)
        self.probes.begin("klp_transition_work")
        unpatching = self.target == "unpatched"
        self._complete_transition()
        if unpatching:
            self.patches.remove(p)               # klp_free_patch_async
        return True

    def write_enabled(self, name: str, enabled: bool) -> bool:
        """sysfs ``enabled`` written (core.c enabled_store, under klp_mutex):
        the same state is -EINVAL; the patch in transition is reversed (either
        way); otherwise 0 disables it and 1 is -EINVAL."""
        p = self.find(name)
        if p is None or p.enabled == enabled:
            return False
        self.probes.begin("sysfs")
        if self.transition is p:
            return self._reverse()
        if enabled or self.transition is not None:
            return False        # re-enabling a disabled patch: -EINVAL; __klp_disable_patch: -EBUSY
        self._emit(ev.patch_event, name, "disable")
        self._disable(p)
        return True

    def disable(self, name: str) -> bool:
        return self.write_enabled(name, False)

    def _disable(self, p: _Patch) -> None:
        """__klp_disable_patch."""
        self.transition, self.target = p, "unpatched"
        self.probes.init_transition(p, "unpatched")
        self._emit(ev.transition, p.d.name, "init", "unpatched")
        for o in p.objs:
            if o.patched:
                self._cb(p, o, ev.PRE_UNPATCH)
        self.probes.start_transition(p)
        self._emit(ev.transition, p.d.name, "start", "unpatched")
        p.enabled = False

    def _reverse(self) -> bool:
        """klp_reverse_transition: flip patch->enabled and the target, run no
        callback, then klp_start_transition."""
        p = self.transition
        self.probes.reverse_transition(p)
        p.enabled = not p.enabled
        self.target = "unpatched" if self.target == "patched" else "patched"
        self._emit(ev.transition, p.d.name, "reverse", self.target)
        self.probes.start_transition(p)
        self._emit(ev.transition, p.d.name, "start", self.target)
        return True

    def _racing(self, race) -> None:
        """klp_module_coming/going's entry probe fired, then another thread
        took klp_mutex first and ran ``race`` whole (the module is not
        klp_alive yet when coming, still klp_alive when going); then this
        thread's section runs."""
        if race is not None:
            pid = self.probes.pid
            race()
            self.probes.resume(pid)

    def load_module(self, mod: str, race=None) -> bool:
        """klp_module_coming: pre_patch, then post_patch unless in transition."""
        if mod in self.modules:
            return False
        self.probes.begin("insmod")
        self.probes.module_coming(mod)
        self._racing(race)
        self._emit(ev.module, mod, "coming")
        done: list[_Patch] = []
        for p in self.patches:
            o = next((o for o in p.objs if o.name == mod), None)
            if o is None:
                continue
            o.mod = True
            ret = self._pre_patch(p, o)
            if ret:
                # goto err: klp_alive = false, obj->mod = NULL, then
                # klp_cleanup_module_patches_limited(mod, failing patch)
                o.mod = False
                for q in done:
                    qo = next(x for x in q.objs if x.name == mod)
                    self._cleanup_object(q, qo, "coming")
                self.probes.module_coming_ret(mod, ret)
                self._emit(ev.module, mod, "refused")
                return False
            self._patch_object(p, o, "coming")
            if p is not self.transition:
                self._cb(p, o, ev.POST_PATCH)
            done.append(p)
        self.modules.add(mod)
        self.probes.module_coming_ret(mod, 0)
        # trace format: `live` is written when klp_module_coming accepted the module
        self._emit(ev.module, mod, "live")
        return True

    def _cleanup_object(self, p: _Patch, o: _Obj, ctx: str) -> None:
        """One object in klp_cleanup_module_patches_limited."""
        if p is not self.transition:
            self._cb(p, o, ev.PRE_UNPATCH)
        self.probes.unpatch_object(p, o, ctx)
        o.patched = False
        self._post_unpatch(p, o)
        o.mod = False                               # klp_free_object_loaded

    def unload_module(self, mod: str, race=None) -> bool:
        """klp_module_going -> klp_cleanup_module_patches_limited(mod, NULL)."""
        if mod not in self.modules:
            return False
        self.probes.begin("rmmod")
        self.probes.module_going(mod)
        self._racing(race)
        self._emit(ev.module, mod, "going")
        for p in self.patches:
            o = next((o for o in p.objs if o.name == mod), None)
            if o is None or not o.patched:
                continue
            self._cleanup_object(p, o, "going")
        self.modules.discard(mod)
        self.probes.module_going_ret(mod)
        return True

    def set_ret(self, name: str, obj: str, ret: int) -> None:
        for p in self.patches:
            if p.d.name == name:
                p.d.pre_patch_ret[obj] = ret

    def remove(self, name: str) -> bool:
        """The livepatch module is unloaded (only possible once disabled)."""
        if self.find(name) is not None:
            return False
        self.probes.remove(name)
        self._emit(ev.patch_event, name, "removed")
        return True
