"""From raw probe events (tracer/observe/rawevents.py) to trace format v1 records.

(over 450 lines: one state machine. Its handlers share the open step, its
slots and the pending module records, and each keeps the invariants stated
below; split across modules, an invariant would live apart from the code
that keeps it. A tenth of it is this explanation.)

This is where klptrace decides which callbacks ran, and how it knows:

* ``direct``: a probe on the livepatch module's callback function fired.
* ``core``: an out-of-line klp_*_callback helper fired (only where the kernel
  has one that attaches; never on Debian's 6.1/6.12, see docs/probes.md).
* ``inferred``: reconstructed from the snapshot of struct klp_patch /
  klp_object that the probes on the livepatch core's out-of-line functions
  took, following the call order of kernel/livepatch/core.c and transition.c.
  Each handler below names the kernel code it mirrors.

Identity. Every record names the patch and object the kernel's own data
names: a snapshot reads patch->mod->name and obj->name; a direct probe reads
the struct klp_object its callback was called with and its patch
(obj->kobj.parent), and tells the callback by the probed address among that
object's callback pointers, read at the same moment. Nothing here keeps a
kernel address beyond the event that carried it; which direct probes are live
is the business of ``Coverage`` (tracer/observe/directprobes.py), which forgets a
module's probes when the module goes.

Steps. The kernel runs the callbacks of one step for each object in object
order, under klp_mutex, so at most one step is open at a time:

* pre_unpatch: between klp_init_transition(UNPATCHED) and klp_start_transition;
* completion: inside klp_complete_transition (post_patch or post_unpatch);
* a module's post_patch right after klp_patch_object returned in
  klp_module_coming, and its post_unpatch right after klp_unpatch_object in
  klp_cleanup_module_patches_limited.

A step is a hold in the output queue (tracer/observe/holds.py) with one slot per
callback the kernel's code says it runs. Direct events fill slots; when the
step is over (the next event of the thread that runs it, any event that needs
klp_mutex from another thread, or the hold's deadline) each slot becomes the
direct record, nothing (a live direct probe stayed silent: the kernel did not
run it), or an inferred record (no live probe). So the trace is in the
kernel's order whatever mix of evidence it has.

Other callbacks are reported as their evidence arrives; the one place that
writes callback records is ``_callback``, which drops a second report of the
same callback in its window (until the next transition record of its patch
or module record of its object).

Gaps. Where the probes show that part of an operation was not observed (a
snapshot cut short, a return without its entry because the daemon started
mid-operation, a hold that expired), a ``loss`` record with a reason goes
where the gap is: the engine then judges what it touches `unknown`.

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

import enum
from dataclasses import dataclass, field
from typing import Callable, Protocol

from klptrace.tracer.model import events as ev
from klptrace.tracer.model.livestate import LivepatchState
from klptrace.tracer.observe import rawevents as rw
from klptrace.tracer.observe.holds import HOLD_NS, MAX_QUEUE, Hold, HoldReason, OutputQueue
from klptrace.tracer.observe.snapshots import Assembler, Snapshot

CB_NAMES = ev.CALLBACKS      # index = struct klp_callbacks order


class Gap(str, enum.Enum):
    """Why part of an operation was not observed (a `loss` record with a
    reason; the `reason` label of klptrace_observation_gaps_total)."""
    MID_OPERATION = "mid-operation"             # a return or a call without the start the daemon missed
    SNAPSHOT_TRUNCATED = "snapshot-truncated"   # objects beyond the snapshot bound
    SNAPSHOT_INCOMPLETE = "snapshot-incomplete" # a snapshot cut short
    COMING_NO_RETURN = "coming-no-return"       # klp_module_coming's return never came
    COMING_UNPLACED = "coming-unplaced"         # nothing placed a coming record in time
    GOING_UNPLACED = "going-unplaced"           # ... a going record
PRE, POST, PRE_UN, POST_UN = range(4)


class Coverage(Protocol):
    """Which direct probes are live (tracer/observe/directprobes.py)."""

    def covers(self, patch: str, obj: str, cb: int, addr: int, since_ns: int) -> bool:
        """A probe of ours sat on callback ``cb`` (at ``addr``) of patch/obj
        from before ``since_ns`` on: if it did not fire, the callback did not run."""

    def on_enable(self, patch: str, objs: list[rw.Obj], ts_ns: int) -> None:
        """Patch ``patch`` is being enabled with these objects (addresses live now)."""

    def on_module_going(self, module: str, ts_ns: int) -> None:
        """Module ``module`` is being unloaded: its probes and addresses are gone."""


class NoCoverage:
    def covers(self, patch, obj, cb, addr, since_ns) -> bool:
        return False

    def on_enable(self, patch, objs, ts_ns) -> None:
        pass

    def on_module_going(self, module, ts_ns) -> None:
        pass


@dataclass
class _Slot:
    patch: str
    obj: str
    cb: int
    addr: int
    ts_ns: int                       # when the step predicted it
    direct: dict | None = None       # the direct record, once its probe fired


@dataclass
class _Step:
    """A klp_mutex step whose callbacks are predicted (see the module docstring)."""
    what: HoldReason                 # the hold's reason and metric label
    pid: int
    opened_ns: int
    hold: Hold
    slots: list[_Slot] = field(default_factory=list)


@dataclass
class _Coming:
    """A klp_module_coming in flight on one thread."""
    module: str
    ts_ns: int
    patched: set = field(default_factory=set)     # patches klp_patch_object saw
    failed: bool = False                          # a failing pre_patch was reported
    fail_hold: Hold | None = None                 # place of the failing pre_patch


class Inference:
    def __init__(self, sink: Callable[[dict], None], *, first_seq: int = 1,
                 core_kinds: frozenset[int] = frozenset(),
                 coverage: Coverage | None = None,
                 start: LivepatchState | None = None,
                 hold_ns: int = HOLD_NS, max_queue: int = MAX_QUEUE):
        self.out = OutputQueue(sink, first_seq=first_seq, hold_ns=hold_ns, max_queue=max_queue)
        self.hold_ns = hold_ns
        self.core_kinds = core_kinds                 # callback indexes a core probe reports
        self.coverage = coverage if coverage is not None else NoCoverage()
        self.snapshots = Assembler()
        self.lost_seen = 0                           # the BPF `lost` counter so far
        # The decoder's view of the kernel as of the newest raw event: ahead of
        # the trace (and of the kernel state tracker the engine applies the
        # records to, tracer/model/livestate.py) by what the output queue holds,
        # which is what decoding the next event needs. It starts from the
        # tracker's start state: the header's sysfs view.
        start = start if start is not None else LivepatchState()
        # klp_patches as far as we know it, in list order: name -> {obj: registered cbs}
        self.active: dict[str, dict[str, frozenset[str] | None]] = {
            p.name: dict(p.objects) for p in start.patches.values()}
        t = start.transition
        # klp_transition_patch and klp_target_state. Started mid-transition, the
        # BPF side never saw its init, so the events that finish it carry no
        # patch name; sysfs has it.
        self.transition_patch: str | None = t.patch if t is not None else None
        self.target: str | None = t.target if t is not None else None
        self.enabling: str | None = None             # between init(patched) and start/cancel
        # the dedup window: (patch, object, callback) -> the evidence it was reported by
        self.reported: dict[tuple[str, str, str], str] = {}
        self.step: _Step | None = None
        self.enable_fail: tuple[int, Hold] | None = None    # (pid, hold) awaiting its ret
        self.comings: dict[int, _Coming] = {}        # tid -> the klp_module_coming it is in
        self.goings: dict[int, tuple[str, int]] = {}        # tid -> (module, entry ts)
        self.pending_mod: dict[int, tuple[str, str, int]] = {}   # tid -> (module, event, entry ts)
        self.gaps: dict[Gap, int] = {}               # reason -> gaps written (a metric)
        self.unattributed = 0                        # direct hits naming no patch (a metric)

    # --- output -----------------------------------------------------------------

    def _emit(self, rec: dict) -> None:
        self.out.emit(rec)

    def _gap(self, ts: int, reason: str, key: Gap) -> None:
        """Part of an operation was not observed: a loss record right here."""
        self.gaps[key] = self.gaps.get(key, 0) + 1
        self._emit(ev.loss(0, ts, 0, reason=reason))

    def flush(self) -> None:
        """At exit: whatever is held goes out as far as it is known."""
        self._close_step()
        for snap in self.snapshots.flush():
            self._dispatch(snap)
        self._place_all_pending()
        self.out.flush()

    def holding(self) -> bool:
        """Whether anything here waits for a deadline that only ``tick`` can
        see pass (a held step, a module section without its return, a record
        in the output queue): the daemon's wait is short then, and may be long
        otherwise (tracer/daemon/runloop.py)."""
        return bool(self.step is not None or self.comings or self.pending_mod or len(self.out))

    def tick(self, now_ns: int) -> None:
        """The poll loop's clock: holds and in-flight sections past their deadline
        expire even when no event comes."""
        if self.step is not None and now_ns >= self.step.hold.deadline_ns:
            self._close_step(expired=True)
        for tid, (mod, e, ts) in list(self.pending_mod.items()):
            if now_ns >= ts + self.hold_ns:
                del self.pending_mod[tid]
                self._module(ts, mod, e)
                self._gap(ts, f"no further event of the thread in klp_module_{e} of {mod}",
                          Gap.COMING_UNPLACED if e == "coming" else Gap.GOING_UNPLACED)
        for tid, c in list(self.comings.items()):
            if now_ns >= c.ts_ns + self.hold_ns:
                del self.comings[tid]
                if self._targeted(c.module):
                    self._gap(c.ts_ns, f"no return from klp_module_coming of {c.module}",
                              Gap.COMING_NO_RETURN)
        self.out.pump(now_ns)

    def loss(self, ts_ns: int, count: int, reason: str | None = None) -> None:
        """Records were lost right here (the ring buffer was full, or
        ``reason``). What was held back goes out first, as it is: what it
        waits for may be lost."""
        self._close_step()
        for snap in self.snapshots.flush():
            self._dispatch(snap)
        self._place_all_pending()
        self.out.flush(HoldReason.RECORDS_LOST, gap=False)   # the loss record below says it
        self.comings, self.goings, self.enable_fail = {}, {}, None
        self._emit(ev.loss(0, ts_ns, count, reason=reason))

    # --- the one place callbacks are reported -------------------------------------

    def _callback(self, ts: int, patch: str, obj: str, idx: int, evidence: str, *,
                  ret: int | None = None) -> dict | None:
        """The window drops a second *source* of one callback (an inferred or
        core record of what a direct probe reported, or the reverse); two
        reports by the same probe are two runs, and both are written: the
        kernel calls each callback once per object per step, so a second
        call is for the engine to judge (KLP-ONCE-001)."""
        key = (patch, obj, CB_NAMES[idx])
        if evidence == "inferred" and idx in self.core_kinds:
            return None                 # the core probe reports it
        seen = self.reported.get(key)
        if seen is not None and not (seen == evidence and evidence != "inferred"):
            return None                 # already reported in this window, by another source
        self.reported[key] = evidence
        rec = ev.callback(0, ts, patch, obj, CB_NAMES[idx], ret=ret, evidence=evidence)
        self._emit(rec)
        return rec

    def _clear_window(self, *, patch: str | None = None, obj: str | None = None) -> None:
        self.reported = {k: v for k, v in self.reported.items()
                         if not ((patch is not None and k[0] == patch)
                                 or (obj is not None and k[1] == obj))}

    def _transition(self, ts: int, patch: str, event: str, target: str) -> None:
        self._clear_window(patch=patch)
        self._emit(ev.transition(0, ts, patch, event, target))

    def _module(self, ts: int, name: str, event: str) -> None:
        self._clear_window(obj=name)
        self._emit(ev.module(0, ts, name, event))

    # --- steps ----------------------------------------------------------------------

    def _open_step(self, what: HoldReason, r: rw.Raw) -> _Step:
        self._close_step()
        self.step = _Step(what, r.pid, r.ts_ns, self.out.hold(what, r.ts_ns))
        return self.step

    def _predict(self, step: _Step, r: rw.Raw, o: rw.Obj, idx: int) -> None:
        if idx in self.core_kinds:
            return                      # the core probe reports it
        step.slots.append(_Slot(r.patch, o.name, idx, o.cb[idx], r.ts_ns))

    def _close_step(self, expired: bool = False) -> None:
        """The step is over: each slot becomes its direct record, nothing (a live
        probe stayed silent), or an inferred record."""
        step, self.step = self.step, None
        if step is None:
            return
        recs = []
        for s in step.slots:
            key = (s.patch, s.obj, CB_NAMES[s.cb])
            if s.direct is not None:
                recs.append(s.direct)
                self.reported[key] = "direct"
            elif key in self.reported:
                continue
            elif not self.coverage.covers(s.patch, s.obj, s.cb, s.addr, step.opened_ns):
                recs.append(ev.callback(0, s.ts_ns, s.patch, s.obj, CB_NAMES[s.cb],
                                        evidence="inferred"))
                self.reported[key] = "inferred"
        if expired:
            # out as far as known, with a loss record after it (tracer/observe/holds.py)
            step.hold.records = recs
            self.out.pump(step.hold.deadline_ns)
        else:
            step.hold.resolve(recs)
            self.out.pump()

    def _fill_slot(self, patch: str, obj: str, idx: int, rec: dict) -> bool:
        step = self.step
        if step is None:
            return False
        for s in step.slots:
            if s.direct is None and (s.patch, s.obj, s.cb) == (patch, obj, idx):
                s.direct = rec
                return True
        return False

    # --- raw events -----------------------------------------------------------------

    def feed(self, r: rw.Raw) -> None:
        """One decoded ring-buffer event. Its `lost` counter says whether events
        were lost right before it (bpf/klptrace.h)."""
        if r.lost > self.lost_seen:
            self.loss(r.ts_ns, r.lost - self.lost_seen)
            self.lost_seen = r.lost
        for snap in self.snapshots.feed(r):
            self._dispatch(snap)

    def check_lost(self, lost: int, now_ns: int) -> None:
        """Losses after the last event read (no later event carries them)."""
        if lost > self.lost_seen:
            self.loss(now_ns, lost - self.lost_seen)
            self.lost_seen = lost

    def _dispatch(self, snap: Snapshot) -> None:
        r = snap.raw
        step = self.step
        if step is not None and (r.pid != step.pid or r.kind not in self._DIRECT_KINDS):
            if r.pid == step.pid or r.kind in self._MUTEX_KINDS:
                self._close_step()      # its thread moved on, or klp_mutex changed hands
            elif r.ts_ns >= step.hold.deadline_ns:
                self._close_step(expired=True)
        if self.pending_mod:
            self._place_pending(r)
        handler = self._HANDLERS.get(r.kind)
        if handler is not None:
            if not r.patch and self.transition_patch and r.kind in self._TRANSITION_KINDS:
                r.patch = self.transition_patch
            handler(self, r)
        if snap.truncated or snap.incomplete:
            # after what the snapshot did say (the enable record, ...): the
            # patch it names is then judged unknown from here on
            why = ("objects beyond the snapshot bound (256 per patch)" if snap.truncated
                   else "a snapshot cut short")
            self._gap(r.ts_ns, f"{why} of '{r.patch or '?'}'",
                      Gap.SNAPSHOT_TRUNCATED if snap.truncated else Gap.SNAPSHOT_INCOMPLETE)
        self.out.pump(r.ts_ns)

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

    def _targeted(self, module: str) -> bool:
        return any(module in objs for objs in self.active.values())

    @staticmethod
    def _registered(o: rw.Obj) -> list[str]:
        return [CB_NAMES[i] for i in range(4) if o.cb[i]]

    @staticmethod
    def _static_objs(r: rw.Raw) -> list[rw.Obj]:
        """The patch's own objects; the nop objects of atomic replace have no callbacks."""
        return [o for o in r.objs if not o.dynamic]

    # --- transitions ------------------------------------------------------------------

    def _on_init(self, r: rw.Raw) -> None:
        # klp_init_transition(patch, state): from __klp_enable_patch (state
        # KLP_PATCHED) or __klp_disable_patch (KLP_UNPATCHED), nothing else.
        p = r.patch
        self.transition_patch = p
        if r.arg == rw.KLP_PATCHED:
            objs = [{"name": o.name, "callbacks": self._registered(o)} for o in self._static_objs(r)]
            self._emit(ev.patch_enable(0, r.ts_ns, p, objs, replace=r.replace))
            self.active.pop(p, None)
            self.active[p] = {o["name"]: o["callbacks"] for o in objs}
            self.target = "patched"
            self.enabling = p
            self._transition(r.ts_ns, p, "init", self.target)
            self.coverage.on_enable(p, self._static_objs(r), r.ts_ns)
        else:
            self._emit(ev.patch_event(0, r.ts_ns, p, "disable"))
            self.target = "unpatched"
            self._transition(r.ts_ns, p, "init", self.target)
            # __klp_disable_patch: klp_pre_unpatch_callback for each patched
            # object, in object order, before klp_start_transition
            step = self._open_step(HoldReason.PRE_UNPATCH, r)
            for o in self._static_objs(r):
                if o.patched and o.cb[PRE_UN]:
                    self._predict(step, r, o, PRE_UN)

    def _on_patch_object(self, r: rw.Raw) -> None:
        # klp_patch_object(obj) runs right after klp_pre_patch_callback(obj)
        # succeeded (core.c __klp_enable_patch, klp_module_coming), and that
        # helper set post_unpatch_enabled = !ret. So: pre_patch ran and
        # returned 0 iff it is registered and post_unpatch_enabled is set.
        o = r.objs[0]
        c = self.comings.get(r.pid) if r.ctx == rw.CTX_COMING else None
        if c is not None:
            c.patched.add(r.patch)
        elif self.enabling != r.patch:
            # klp_patch_object is called from nowhere else: we missed the start
            # of this enable or module load (the daemon started inside it)
            self._gap(r.ts_ns, f"klp_patch_object of '{r.patch}'/{o.name} outside any "
                      "observed enable or module load", Gap.MID_OPERATION)
            return
        if o.dynamic or not o.cb[PRE] or not o.post_unpatch_enabled:
            return
        self._callback(r.ts_ns, r.patch, o.name, PRE, "inferred", ret=0)

    def _on_patch_object_ret(self, r: rw.Raw) -> None:
        # klp_module_coming: after a successful klp_patch_object,
        # klp_post_patch_callback runs unless the patch is in transition.
        o = r.objs[0]
        if r.arg != 0 or o.dynamic or not o.cb[POST] or r.patch == self.transition_patch:
            return
        self._predict(self._open_step(HoldReason.MODULE_POST_PATCH, r), r, o, POST)

    def _on_start(self, r: rw.Raw) -> None:
        # The pre_unpatch step (if any) ended at this klp_start_transition (the
        # dispatcher closed it: same thread). A start that follows
        # klp_reverse_transition runs no callback.
        self.enabling = None
        self._transition(r.ts_ns, r.patch, "start", self.target or "patched")

    def _on_cancel(self, r: rw.Raw) -> None:
        # __klp_enable_patch's error path: the object whose pre_patch failed is
        # the first loaded one that is not patched and has post_unpatch_enabled
        # clear (klp_pre_patch_callback stored !ret). Its ret is what
        # klp_enable_patch returns: the record holds its place until then.
        self.enabling = None
        for o in self._static_objs(r):
            if o.loaded and not o.patched and not o.post_unpatch_enabled:
                key = (r.patch, o.name, CB_NAMES[PRE])
                if o.cb[PRE] and key not in self.reported:
                    self.reported[key] = "inferred"
                    rec = ev.callback(0, r.ts_ns, r.patch, o.name, CB_NAMES[PRE],
                                      evidence="inferred")
                    self.enable_fail = (r.pid, self.out.hold(
                        HoldReason.ENABLE_RETURN, r.ts_ns, [rec]))
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
        step = self._open_step(HoldReason.COMPLETION, r)
        for o in self._static_objs(r):
            if not o.loaded:
                continue
            if target == "patched" and o.cb[POST]:
                self._predict(step, r, o, POST)
            elif target == "unpatched" and o.cb[POST_UN] and o.post_unpatch_enabled:
                self._predict(step, r, o, POST_UN)
        if target == "unpatched":
            self.active.pop(p, None)      # klp_free_patch_async: gone from klp_patches
        self.transition_patch, self.target = None, None

    def _on_complete_ret(self, r: rw.Raw) -> None:
        pass        # the dispatcher closed the completion step: same thread

    def _on_reverse(self, r: rw.Raw) -> None:
        self.target = "unpatched" if self.target == "patched" else "patched"
        self._transition(r.ts_ns, r.patch, "reverse", self.target)

    def _on_force(self, r: rw.Raw) -> None:
        self._transition(r.ts_ns, r.patch, "force", self.target or "patched")

    def _on_enable_ret(self, r: rw.Raw) -> None:
        if self.enable_fail is not None and self.enable_fail[0] == r.pid:
            hold = self.enable_fail[1]
            self.enable_fail = None
            if hold.records:
                hold.records[0]["ret"] = int(r.arg)
            hold.resolve()
        self.enabling = None
        if r.arg != 0:
            self._emit(ev.patch_event(0, r.ts_ns, r.patch or "?", "enable_failed", ret=int(r.arg)))
            self.active.pop(r.patch, None)

    # --- modules ----------------------------------------------------------------------

    def _on_module_coming(self, r: rw.Raw) -> None:
        self.pending_mod[r.pid] = (r.module, "coming", r.ts_ns)
        self.comings[r.pid] = _Coming(r.module, r.ts_ns)

    def _on_unpatch_object(self, r: rw.Raw) -> None:
        # klp_cleanup_module_patches_limited (module going, or a refused load):
        # pre_unpatch unless the patch is in transition, klp_unpatch_object,
        # then post_unpatch where post_unpatch_enabled.
        o = r.objs[0]
        c = self.comings.get(r.pid)
        if c is not None and not c.failed and c.fail_hold is None:
            # a refused load: the failing pre_patch came before this cleanup;
            # its patch and code are known at klp_module_coming's return
            c.fail_hold = self.out.hold(HoldReason.MODULE_COMING_RETURN, r.ts_ns)
        if o.dynamic:
            return
        if o.cb[PRE_UN] and r.patch != self.transition_patch:
            self._callback(r.ts_ns, r.patch, o.name, PRE_UN, "inferred")
        if o.cb[POST_UN] and o.post_unpatch_enabled:
            self._predict(self._open_step(HoldReason.MODULE_POST_UNPATCH, r), r, o, POST_UN)

    def _on_module_coming_ret(self, r: rw.Raw) -> None:
        c = self.comings.pop(r.pid, None)
        if c is None:
            # its entry was not seen (the daemon started inside it): what ran
            # for a module a patch targets is not known
            if self._targeted(r.module):
                self._gap(r.ts_ns, f"klp_module_coming of {r.module} began before the "
                          "probes", Gap.MID_OPERATION)
            if r.arg != 0:
                self._module(r.ts_ns, r.module, "refused")
            return
        fail = None
        if r.arg != 0 and not c.failed:
            # The failing patch: the first in klp_patches with an object for this
            # module that klp_patch_object never saw in this load.
            for pname, objs in self.active.items():
                if c.module in objs and pname not in c.patched:
                    cbs = objs[c.module]
                    if cbs is None or CB_NAMES[PRE] in cbs:
                        fail = ev.callback(0, r.ts_ns, pname, c.module, CB_NAMES[PRE],
                                           ret=int(r.arg), evidence="inferred")
                        self.reported[(pname, c.module, CB_NAMES[PRE])] = "inferred"
                    break
        if c.fail_hold is not None:
            c.fail_hold.resolve([fail] if fail else [])
        elif fail is not None:
            self._emit(fail)
        # klp_module_coming returned: the module is refused, or accepted by the
        # livepatch core (trace format: `live`)
        self._module(r.ts_ns, c.module, "refused" if r.arg != 0 else "live")

    def _on_module_going(self, r: rw.Raw) -> None:
        self.pending_mod[r.pid] = (r.module, "going", r.ts_ns)
        self.goings[r.pid] = (r.module, r.ts_ns)
        # from here on nothing of this module runs: its direct probes and the
        # addresses of its callbacks are gone with it
        self.coverage.on_module_going(r.module, r.ts_ns)

    def _on_module_going_ret(self, r: rw.Raw) -> None:
        # feed() has placed its pending `going` record
        if self.goings.pop(r.pid, None) is None and self._targeted(r.module):
            self._gap(r.ts_ns, f"klp_module_going of {r.module} began before the probes",
                      Gap.MID_OPERATION)

    # --- callbacks themselves -----------------------------------------------------

    @staticmethod
    def _which_cbs(o: rw.Obj, ip: int) -> list[int]:
        """The callbacks of o at the probed address: usually one, but one
        function may serve several callbacks of an object."""
        return [i for i in range(4) if o.cb[i] and 0 <= ip - o.cb[i] <= rw.PROBE_IP_SLACK]

    def _expects_pre_patch(self, r: rw.Raw) -> bool:
        """A pre_patch runs now: in an enable of this patch, or in a module's
        coming section on this thread."""
        return self.enabling == r.patch or r.pid in self.comings

    def _pick(self, r: rw.Raw, cands: list[int]) -> int:
        """Of several callbacks one function serves: the one the open step
        waits for, else the first not yet reported in its window."""
        o = r.objs[0]
        step = self.step
        if step is not None:
            for s in step.slots:
                if s.direct is None and s.patch == r.patch and s.obj == o.name and s.cb in cands:
                    return s.cb
        for i in cands:
            if (r.patch, o.name, CB_NAMES[i]) not in self.reported:
                return i
        return cands[0]

    def _direct(self, r: rw.Raw, idx: int, ret: int | None) -> None:
        o = r.objs[0]
        if not r.patch:
            # the object's patch could not be read (obj->kobj.parent): a probe
            # that fired outside a callback call; nothing to attribute
            self.unattributed += 1
            return
        rec = ev.callback(0, r.ts_ns, r.patch, o.name, CB_NAMES[idx], ret=ret,
                          evidence="direct")
        if self._fill_slot(r.patch, o.name, idx, rec):
            return
        if idx == PRE:
            c = self.comings.get(r.pid)
            if c is not None and ret:
                c.failed = True
        self._callback(r.ts_ns, r.patch, o.name, idx, "direct", ret=ret)

    def _on_direct(self, r: rw.Raw) -> None:
        cands = self._which_cbs(r.objs[0], r.ip) if r.objs else []
        if PRE in cands and (len(cands) == 1 or self._expects_pre_patch(r)):
            return                      # pre_patch is reported at its return, with the code
        cands = [i for i in cands if i != PRE]
        if cands:
            self._direct(r, self._pick(r, cands), None)

    def _on_direct_ret(self, r: rw.Raw) -> None:
        cands = self._which_cbs(r.objs[0], r.ip) if r.objs else []
        if PRE in cands and (len(cands) == 1 or self._expects_pre_patch(r)):
            self._direct(r, PRE, int(r.arg))

    def _on_core(self, r: rw.Raw) -> None:
        o, i = r.objs[0], int(r.arg)
        if not o.cb[i] or (i == POST_UN and not o.post_unpatch_enabled):
            return              # the helper runs, the callback does not
        self._callback(r.ts_ns, r.patch, o.name, i, "core")

    _HANDLERS = {
        rw.INIT_TRANSITION: _on_init,
        rw.PATCH_OBJECT: _on_patch_object,
        rw.PATCH_OBJECT_RET: _on_patch_object_ret,
        rw.START_TRANSITION: _on_start,
        rw.CANCEL: _on_cancel,
        rw.COMPLETE: _on_complete,
        rw.COMPLETE_RET: _on_complete_ret,
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
    # events that fire under klp_mutex: one from another thread ends the open step
    _MUTEX_KINDS = frozenset((rw.INIT_TRANSITION, rw.PATCH_OBJECT, rw.PATCH_OBJECT_RET,
                              rw.START_TRANSITION, rw.COMPLETE, rw.CANCEL, rw.REVERSE,
                              rw.FORCE, rw.UNPATCH_OBJECT, rw.DIRECT, rw.DIRECT_RET, rw.CORE))
    # a callback of the open step itself
    _DIRECT_KINDS = frozenset((rw.DIRECT, rw.DIRECT_RET, rw.CORE))
