"""From raw probe events (tracer/rawevents.py) to trace format v1 records.

This is where klptrace decides which callbacks ran, and how it knows:

* ``direct``: a probe on the livepatch module's callback function fired.
* ``core``: an out-of-line klp_*_callback helper fired (only where the kernel
  has one that attaches; never on Debian's 6.1/6.12, see docs/probes.md).
* ``inferred``: reconstructed from the snapshot of struct klp_patch /
  klp_object that the probes on the livepatch core's out-of-line functions
  took, following the call order of kernel/livepatch/core.c and transition.c.
  Each rule below names the kernel code it mirrors.

Deduplication happens in one place, ``_callback``: a callback already
reported by one source in the current window is not reported again, and an
inferred/core record is not produced at all when a direct probe was armed on
that callback (preloaded module, or the BPF ``armed`` map at snapshot time).

Records are built with tracer.events and handed to ``sink`` in order, with
strictly increasing ``seq``. Two places must wait for a return value before
they can say what happened (a failing pre_patch in klp_enable_patch and in
klp_module_coming); records are held back until then, so the order of the
trace is the kernel's order.

A module's `coming` / `going` record stands where klp_module_coming /
klp_module_going hold klp_mutex, not where their entry probe fired: the entry
runs before mutex_lock(&klp_mutex), so another thread's enable or disable may
take the mutex first and run entirely between the entry and the module's own
section. Such a record is pending (per thread) until the evidence places it
(``_place_pending``): the next event of the same thread (it is inside its
section, or past it), or another thread's snapshot showing the module's
object in the state the section leaves it in (loaded after coming, not loaded
after going: obj->mod follows mod->klp_alive, which the section sets).
"""

from __future__ import annotations

from typing import Callable

from . import events as ev
from . import rawevents as rw

CB_NAMES = ev.CALLBACKS      # index = struct klp_callbacks order
DIRECT_SLACK = 16            # a kprobe's ip may be the address + 1 (int3) or + 4 (endbr64)


class Inference:
    def __init__(self, sink: Callable[[dict], None], *, first_seq: int = 1,
                 core_kinds: frozenset[int] = frozenset(),
                 preload_cover: set[tuple[str, str, str]] | None = None,
                 active: list[dict] | None = None,
                 on_enable: Callable[[str, list[rw.Obj]], None] | None = None):
        self.sink = sink
        self.on_enable = on_enable        # the daemon attaches direct probes for later callbacks
        self.seq = first_seq
        self.core_kinds = core_kinds                 # callback indexes a core probe reports
        self.preload_cover = preload_cover if preload_cover is not None else set()
        # klp_patches as far as we know it, in list order: name -> {"objects": {obj: cbs}}
        self.active: dict[str, dict] = {}
        for p in active or []:
            self.active[p["name"]] = {"objects": {o["name"]: o.get("callbacks")
                                                  for o in p.get("objects", [])}}
        self.transition_patch: str | None = None     # klp_transition_patch
        self.target: str | None = None               # klp_target_state
        for p in active or []:
            if p.get("transition"):
                # started mid-transition: the BPF side never saw its init, so the
                # events that finish it carry no patch name; sysfs has it
                self.transition_patch = p["name"]
                self.target = "patched" if p.get("enabled") else "unpatched"
        self.reversed = False                        # the next start follows a reverse
        self.window: dict[tuple[str, str, str], str] = {}
        self.held: list[dict] | None = None          # records waiting for a return value
        self.placeholder: dict | None = None         # a failing pre_patch awaiting its ret
        self.comings: dict[int, dict] = {}           # tid -> the klp_module_coming it is in
        self.pending_mod: dict[int, tuple[str, str, int]] = {}   # tid -> (module, event, entry ts)
        self.unmatched_direct = 0                    # direct hits we could not place

    # --- output -----------------------------------------------------------------

    def _emit(self, rec: dict) -> None:
        if self.held is not None:
            self.held.append(rec)
        else:
            self._out(rec)

    def _out(self, rec: dict) -> None:
        rec["seq"] = self.seq
        self.seq += 1
        self.sink(rec)

    def _flush(self) -> None:
        held, self.held, self.placeholder = self.held or [], None, None
        for rec in held:
            self._out(rec)

    def flush(self) -> None:
        """At exit: whatever is held goes out as it is (a ret never came)."""
        self._place_all_pending()
        if self.placeholder is not None and self.placeholder.get("ret") is None:
            self.placeholder.pop("ret", None)
        self._flush()

    def loss(self, ts_ns: int, count: int) -> None:
        """Records were lost right here. What was held back for a return value
        goes out first, as it is: that return may be among the lost events."""
        self.flush()
        self.comings = {}
        self._emit(ev.loss(0, ts_ns, count))

    # --- the one place callbacks are reported -------------------------------------

    def _callback(self, ts: int, patch: str, obj: str, idx: int, evidence: str, *,
                  ret: int | None = None, armed: bool = False) -> dict | None:
        cb = CB_NAMES[idx]
        key = (patch, obj, cb)
        if evidence != "direct":
            if armed or key in self.preload_cover:
                return None             # the direct probe reports it
            if evidence == "inferred" and idx in self.core_kinds:
                return None             # the core probe reports it
        if key in self.window:
            return None                 # already reported in this window
        self.window[key] = evidence
        rec = ev.callback(0, ts, patch, obj, cb, ret=ret, evidence=evidence)
        self._emit(rec)
        return rec

    def _clear_window(self, *, patch: str | None = None, obj: str | None = None) -> None:
        self.window = {k: v for k, v in self.window.items()
                       if not ((patch is not None and k[0] == patch)
                               or (obj is not None and k[1] == obj))}

    def _transition(self, ts: int, patch: str, event: str, target: str) -> None:
        self._clear_window(patch=patch)
        self._emit(ev.transition(0, ts, patch, event, target))

    def _module(self, ts: int, name: str, event: str) -> None:
        self._clear_window(obj=name)
        self._emit(ev.module(0, ts, name, event))

    # --- raw events -----------------------------------------------------------------

    def _place_all_pending(self) -> None:
        """At exit or a loss: nothing more will place them; they go out as they are."""
        for tid in list(self.pending_mod):
            mod, e, ts = self.pending_mod.pop(tid)
            self._module(ts, mod, e)

    def _place_pending(self, r: rw.Raw) -> None:
        """Emit each pending module record this event shows to be in the past
        (see the module docstring); ts is the event's, when that was known."""
        for tid, (mod, e, _) in list(self.pending_mod.items()):
            if r.pid == tid:
                placed = True       # its thread runs again: inside its section, or past it
            else:
                placed = any(o.name == mod and o.loaded == (e == "coming") for o in r.objs)
            if placed:
                del self.pending_mod[tid]
                self._module(r.ts_ns, mod, e)

    def feed(self, r: rw.Raw) -> None:
        if self.pending_mod:
            self._place_pending(r)
        handler = self._HANDLERS.get(r.kind)
        if handler is not None:
            if not r.patch and self.transition_patch and r.kind in self._TRANSITION_KINDS:
                r.patch = self.transition_patch
            handler(self, r)

    @staticmethod
    def _registered(o: rw.Obj) -> list[str]:
        return [CB_NAMES[i] for i in range(4) if o.cb[i]]

    @staticmethod
    def _static_objs(r: rw.Raw) -> list[rw.Obj]:
        """The patch's own objects; the nop objects of atomic replace have no callbacks."""
        return [o for o in r.objs if not o.dynamic]

    def _on_init(self, r: rw.Raw) -> None:
        # klp_init_transition(patch, state): from __klp_enable_patch (state
        # KLP_PATCHED) or __klp_disable_patch (KLP_UNPATCHED), nothing else.
        p = r.patch
        self.transition_patch, self.reversed = p, False
        if r.arg == rw.KLP_PATCHED:
            objs = [{"name": o.name, "callbacks": self._registered(o)} for o in self._static_objs(r)]
            self._emit(ev.patch_enable(0, r.ts_ns, p, objs, replace=r.replace))
            self.active.pop(p, None)
            self.active[p] = {"objects": {o["name"]: o["callbacks"] for o in objs}}
            self.target = "patched"
            if self.on_enable is not None:
                self.on_enable(p, self._static_objs(r))
        else:
            self._emit(ev.patch_event(0, r.ts_ns, p, "disable"))
            self.target = "unpatched"
        self._transition(r.ts_ns, p, "init", self.target)

    def _on_patch_object(self, r: rw.Raw) -> None:
        # klp_patch_object(obj) runs right after klp_pre_patch_callback(obj)
        # succeeded (core.c __klp_enable_patch, klp_module_coming), and that
        # helper set post_unpatch_enabled = !ret. So: pre_patch ran and
        # returned 0 iff it is registered and post_unpatch_enabled is set.
        o = r.objs[0]
        c = self.comings.get(r.pid) if r.ctx == rw.CTX_COMING else None
        if c is not None:
            c["patched"].add(r.patch)
        if o.dynamic or not o.cb[0] or not o.post_unpatch_enabled:
            return
        self._callback(r.ts_ns, r.patch, o.name, 0, "inferred", ret=0, armed=o.armed[0])

    def _on_patch_object_ret(self, r: rw.Raw) -> None:
        # klp_module_coming: after a successful klp_patch_object,
        # klp_post_patch_callback runs unless the patch is in transition.
        o = r.objs[0]
        if r.arg != 0 or o.dynamic or not o.cb[1] or r.patch == self.transition_patch:
            return
        self._callback(r.ts_ns, r.patch, o.name, 1, "inferred", armed=o.armed[1])

    def _on_start(self, r: rw.Raw) -> None:
        # __klp_disable_patch runs klp_pre_unpatch_callback for each patched
        # object between klp_init_transition and klp_start_transition. A start
        # that follows klp_reverse_transition runs no callback.
        if self.target == "unpatched" and not self.reversed:
            for o in self._static_objs(r):
                if o.patched and o.cb[2]:
                    self._callback(r.ts_ns, r.patch, o.name, 2, "inferred", armed=o.armed[2])
        self._transition(r.ts_ns, r.patch, "start", self.target or "patched")

    def _on_cancel(self, r: rw.Raw) -> None:
        # __klp_enable_patch's error path: the object whose pre_patch failed is
        # the first loaded one that is not patched and has post_unpatch_enabled
        # clear (klp_pre_patch_callback stored !ret). Its ret is what
        # klp_enable_patch returns, so hold everything until that return.
        self.held = self.held if self.held is not None else []
        for o in self._static_objs(r):
            if o.loaded and not o.patched and not o.post_unpatch_enabled:
                if o.cb[0]:
                    rec = self._callback(r.ts_ns, r.patch, o.name, 0, "inferred",
                                         armed=o.armed[0])
                    if rec is not None:
                        rec["ret"] = None
                        self.placeholder = rec
                break
        self.target = "unpatched"
        self._transition(r.ts_ns, r.patch, "cancel", "unpatched")

    def _on_complete(self, r: rw.Raw) -> None:
        # klp_complete_transition: replaced patches are unpatched first (no
        # callbacks), then post_patch / post_unpatch per loaded object; post_unpatch
        # only where post_unpatch_enabled (klp_post_unpatch_callback).
        p, target = r.patch, self.target or "patched"
        self._transition(r.ts_ns, p, "complete", target)
        if target == "patched" and r.replace:
            for other in [n for n in self.active if n != p]:
                self._emit(ev.patch_event(0, r.ts_ns, other, "replaced"))
                del self.active[other]
        for o in self._static_objs(r):
            if not o.loaded:
                continue
            if target == "patched" and o.cb[1]:
                self._callback(r.ts_ns, p, o.name, 1, "inferred", armed=o.armed[1])
            elif target == "unpatched" and o.cb[3] and o.post_unpatch_enabled:
                self._callback(r.ts_ns, p, o.name, 3, "inferred", armed=o.armed[3])
        if target == "unpatched":
            self.active.pop(p, None)      # klp_free_patch_async: gone from klp_patches
        self.transition_patch, self.target = None, None

    def _on_reverse(self, r: rw.Raw) -> None:
        self.target = "unpatched" if self.target == "patched" else "patched"
        self.reversed = True
        self._transition(r.ts_ns, r.patch, "reverse", self.target)

    def _on_force(self, r: rw.Raw) -> None:
        self._transition(r.ts_ns, r.patch, "force", self.target or "patched")

    def _on_enable_ret(self, r: rw.Raw) -> None:
        if self.placeholder is not None:
            self.placeholder["ret"] = int(r.arg)
        if self.held is not None and not self.comings:
            self._flush()
        if r.arg != 0:
            self._emit(ev.patch_event(0, r.ts_ns, r.patch or "?", "enable_failed", ret=int(r.arg)))
            self.active.pop(r.patch, None)

    def _on_module_coming(self, r: rw.Raw) -> None:
        if self.comings.pop(r.pid, None) is not None and not self.comings:
            self._flush()                # the previous one's return was never seen
        self.pending_mod[r.pid] = (r.module, "coming", r.ts_ns)
        # hold: a failing pre_patch is only known at klp_module_coming's return
        self.comings[r.pid] = {"module": r.module, "patched": set(), "fail_at": None}
        self.held = self.held if self.held is not None else []

    def _on_unpatch_object(self, r: rw.Raw) -> None:
        # klp_cleanup_module_patches_limited (module going, or a refused load):
        # pre_unpatch unless the patch is in transition, klp_unpatch_object,
        # then post_unpatch where post_unpatch_enabled.
        o = r.objs[0]
        c = self.comings.get(r.pid)
        if c is not None and c["fail_at"] is None and self.held is not None:
            c["fail_at"] = len(self.held)
        if o.dynamic:
            return
        if o.cb[2] and r.patch != self.transition_patch:
            self._callback(r.ts_ns, r.patch, o.name, 2, "inferred", armed=o.armed[2])
        if o.cb[3] and o.post_unpatch_enabled:
            self._callback(r.ts_ns, r.patch, o.name, 3, "inferred", armed=o.armed[3])

    def _on_module_coming_ret(self, r: rw.Raw) -> None:
        c = self.comings.pop(r.pid, None)
        if c is None:
            return
        if r.arg != 0 and self.held is not None:
            # The failing patch: the first in klp_patches with an object for this
            # module that klp_patch_object never saw in this load.
            fail = None
            for pname, p in self.active.items():
                if c["module"] in p["objects"] and pname not in c["patched"]:
                    fail = (pname, p["objects"][c["module"]])
                    break
            if fail is not None and (fail[1] is None or "pre_patch" in fail[1]):
                at = c["fail_at"] if c["fail_at"] is not None else len(self.held)
                tail, self.held = self.held[at:], self.held[:at]
                self._callback(r.ts_ns, fail[0], c["module"], 0, "inferred", ret=int(r.arg))
                self.held.extend(tail)
                for other in self.comings.values():   # their places moved by one
                    if other["fail_at"] is not None and other["fail_at"] >= at:
                        other["fail_at"] += 1
            self._module(r.ts_ns, c["module"], "refused")
        if not self.comings:
            self._flush()

    def _on_module_going(self, r: rw.Raw) -> None:
        self.pending_mod[r.pid] = (r.module, "going", r.ts_ns)

    def _on_module_going_ret(self, r: rw.Raw) -> None:
        pass        # feed() has placed its pending `going` record: nothing else to do

    def _which_cb(self, o: rw.Obj, ip: int) -> int | None:
        for i in range(4):
            if o.cb[i] and 0 <= ip - o.cb[i] <= DIRECT_SLACK:
                return i
        return None

    def _on_direct(self, r: rw.Raw) -> None:
        o = r.objs[0]
        i = self._which_cb(o, r.ip)
        if i is None:
            self.unmatched_direct += 1
        elif i != 0:          # pre_patch is reported at its return, with the code
            self._callback(r.ts_ns, r.patch, o.name, i, "direct")

    def _on_direct_ret(self, r: rw.Raw) -> None:
        o = r.objs[0]
        if self._which_cb(o, r.ip) == 0:
            self._callback(r.ts_ns, r.patch, o.name, 0, "direct", ret=int(r.arg))

    def _on_core(self, r: rw.Raw) -> None:
        o, i = r.objs[0], int(r.arg)
        if not o.cb[i] or (i == 3 and not o.post_unpatch_enabled):
            return              # the helper runs, the callback does not
        self._callback(r.ts_ns, r.patch, o.name, i, "core", armed=o.armed[i])

    _HANDLERS = {
        rw.INIT_TRANSITION: _on_init,
        rw.PATCH_OBJECT: _on_patch_object,
        rw.PATCH_OBJECT_RET: _on_patch_object_ret,
        rw.START_TRANSITION: _on_start,
        rw.CANCEL: _on_cancel,
        rw.COMPLETE: _on_complete,
        rw.REVERSE: _on_reverse,
        rw.FORCE: _on_force,
        rw.ENABLE_RET: _on_enable_ret,
        rw.MODULE_COMING: _on_module_coming,
        rw.MODULE_COMING_RET: _on_module_coming_ret,
        rw.MODULE_GOING: _on_module_going,
        rw.MODULE_GOING_RET: _on_module_going_ret,
        rw.UNPATCH_OBJECT: _on_unpatch_object,
        rw.DIRECT: _on_direct,
        rw.DIRECT_RET: _on_direct_ret,
        rw.CORE: _on_core,
    }
    # events of the transition in progress (klp_transition_patch)
    _TRANSITION_KINDS = frozenset((rw.START_TRANSITION, rw.CANCEL, rw.COMPLETE, rw.REVERSE,
                                   rw.FORCE))
