"""A pure-Python model of the kernel livepatch core's callback behaviour, used to
generate legal traces for the property tests and the validator benchmark.

It mirrors kernel/livepatch/core.c and transition.c step by step (names in the
comments), but it is a model for generating test input: it never calls
itself a kernel and nothing else in the project imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tracer import events as ev

ALL = list(ev.CALLBACKS)


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


@dataclass
class _Patch:
    d: PatchDef
    objs: list[_Obj]
    enabled: bool = False


class KernelModel:
    def __init__(self, modules_loaded=(), kernel="model"):
        self.records: list[dict] = []
        self.seq = 0
        self.ts = 1_000
        self.modules = set(modules_loaded)
        self.patches: list[_Patch] = []          # klp_patches, in order
        self.transition: _Patch | None = None
        self.target: str | None = None
        self.header = ev.header(kernel, state={"patches": [], "modules": sorted(self.modules)})

    # --- emitting -------------------------------------------------------------

    def _emit(self, build, *args, **kw) -> None:
        self.seq += 1
        self.ts += 1_000
        self.records.append(build(self.seq, self.ts, *args, **kw))

    def _cb(self, p: _Patch, o: _Obj, cb: str, ret=None) -> None:
        if cb in o.callbacks:
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
        if o.armed:
            self._cb(p, o, ev.POST_UNPATCH)
        o.armed = False

    # --- operations (each returns False when the kernel would refuse it) ----

    def find(self, name: str) -> _Patch | None:
        return next((p for p in self.patches if p.d.name == name), None)

    def enable(self, d: PatchDef) -> bool:
        """klp_enable_patch -> __klp_enable_patch."""
        if self.find(d.name):
            return False
        self._emit(ev.patch_enable, d.name,
                   [{"name": n, "callbacks": list(c)} for n, c in d.objects], replace=d.replace)
        if self.transition is not None:
            self._emit(ev.patch_event, d.name, "enable_failed", ret=-16)   # -EBUSY
            return False
        p = _Patch(d, [_Obj(n, list(c)) for n, c in d.objects])
        self.patches.append(p)
        self.transition, self.target = p, "patched"
        self._emit(ev.transition, d.name, "init", "patched")
        for o in p.objs:
            if not self._loaded(o):
                continue
            ret = self._pre_patch(p, o)
            if ret:
                # klp_cancel_transition -> klp_complete_transition(UNPATCHED)
                self._emit(ev.transition, d.name, "cancel", "unpatched")
                self._emit(ev.transition, d.name, "complete", "unpatched")
                for o2 in p.objs:
                    if self._loaded(o2):
                        self._post_unpatch(p, o2)
                    o2.patched = False
                self.patches.remove(p)
                self.transition = self.target = None
                self._emit(ev.patch_event, d.name, "enable_failed", ret=ret)
                return False
            o.patched = True
        self._emit(ev.transition, d.name, "start", "patched")
        p.enabled = True
        return True

    def complete(self, force: bool = False) -> bool:
        """klp_try_complete_transition succeeding -> klp_complete_transition."""
        p = self.transition
        if p is None:
            return False
        if force:
            self._emit(ev.transition, p.d.name, "force", self.target)
        self._emit(ev.transition, p.d.name, "complete", self.target)
        if self.target == "patched":
            if p.d.replace:
                for old in [q for q in self.patches if q is not p]:
                    # klp_unpatch_replaced_patches: no callbacks at all
                    self._emit(ev.patch_event, old.d.name, "replaced")
                    self.patches.remove(old)
            for o in p.objs:
                if self._loaded(o):
                    self._cb(p, o, ev.POST_PATCH)
        else:
            for o in p.objs:
                o.patched = False
                if self._loaded(o):
                    self._post_unpatch(p, o)
            self.patches.remove(p)
        self.transition = self.target = None
        return True

    def disable(self, name: str) -> bool:
        """sysfs enabled=0: reverse if in transition, else __klp_disable_patch."""
        p = self.find(name)
        if p is None:
            return False
        if self.transition is p:
            return self.reverse()
        if self.transition is not None or not p.enabled:
            return False
        self._emit(ev.patch_event, name, "disable")
        self.transition, self.target = p, "unpatched"
        self._emit(ev.transition, name, "init", "unpatched")
        for o in p.objs:
            if o.patched:
                self._cb(p, o, ev.PRE_UNPATCH)
        self._emit(ev.transition, name, "start", "unpatched")
        p.enabled = False
        return True

    def reverse(self) -> bool:
        """klp_reverse_transition (sysfs enabled written during a transition)."""
        p = self.transition
        if p is None:
            return False
        self.target = "unpatched" if self.target == "patched" else "patched"
        p.enabled = self.target == "patched"
        self._emit(ev.transition, p.d.name, "reverse", self.target)
        return True

    def load_module(self, mod: str) -> bool:
        """klp_module_coming: pre_patch, then post_patch unless in transition."""
        if mod in self.modules:
            return False
        self._emit(ev.module, mod, "coming")
        done: list[_Patch] = []
        for p in self.patches:
            o = next((o for o in p.objs if o.name == mod), None)
            if o is None:
                continue
            ret = self._pre_patch(p, o)
            if ret:
                # klp_cleanup_module_patches_limited(mod, failing patch)
                for q in done:
                    qo = next(x for x in q.objs if x.name == mod)
                    if q is not self.transition:
                        self._cb(q, qo, ev.PRE_UNPATCH)
                    qo.patched = False
                    self._post_unpatch(q, qo)
                self._emit(ev.module, mod, "refused")
                return False
            o.patched = True
            if p is not self.transition:
                self._cb(p, o, ev.POST_PATCH)
            done.append(p)
        self.modules.add(mod)
        self._emit(ev.module, mod, "live")
        return True

    def unload_module(self, mod: str) -> bool:
        """klp_module_going -> klp_cleanup_module_patches_limited(mod, NULL)."""
        if mod not in self.modules:
            return False
        self._emit(ev.module, mod, "going")
        for p in self.patches:
            o = next((o for o in p.objs if o.name == mod), None)
            if o is None or not o.patched:
                continue
            if p is not self.transition:
                self._cb(p, o, ev.PRE_UNPATCH)
            o.patched = False
            self._post_unpatch(p, o)
        self.modules.discard(mod)
        return True

    def set_ret(self, name: str, obj: str, ret: int) -> None:
        for p in self.patches:
            if p.d.name == name:
                p.d.pre_patch_ret[obj] = ret

    def remove(self, name: str) -> bool:
        """The livepatch module is unloaded (only possible once disabled)."""
        if self.find(name) is not None:
            return False
        self._emit(ev.patch_event, name, "removed")
        return True
