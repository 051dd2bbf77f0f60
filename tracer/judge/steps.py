"""The steps of the kernel's livepatch operations, and what each step owes.

A step is a stretch of the kernel's work under klp_mutex in which callbacks
run (kernel/livepatch/core.c, transition.c):

* the enable step: ``init`` (target patched) .. ``start`` or ``cancel``:
  pre_patch of every loaded object, in object order (__klp_enable_patch);
* the disable step: ``init`` (target unpatched) .. ``start``: pre_unpatch of
  every patched object (__klp_disable_patch);
* a completion: ``complete`` (or ``cancel``) .. the next record that needs
  klp_mutex: post_patch or post_unpatch of every loaded object
  (klp_complete_transition; klp_cancel_transition calls it);
* a module section: ``coming`` / ``going`` .. the next record that needs
  klp_mutex: per patch in klp_patches order, pre_patch then post_patch
  (klp_module_coming), or pre_unpatch then post_unpatch
  (klp_cleanup_module_patches_limited from klp_module_going); a coming whose
  pre_patch fails unwinds the patches before the failing one the same way
  and refuses the module.

The placement principle (docs/trace-format.md, "Where each record may
stand"): steps are opened and closed by pinned records only, the ones the
kernel's order fixes (``init``, ``start``, ``cancel``, ``complete``,
``reverse``, ``force``, ``coming``, ``going``, and the end of the trace). A
record the kernel leaves free (``enable``, ``enable_failed``, ``disable``,
``replaced``, ``removed``, ``live``, ``refused``, a ``complete`` after
``cancel``) never opens or closes a step: what it says is a fact about a
step, judged with that step wherever the record stands.

When a step closes, what it owes is compared with what ran: that is
KLP-RUN-001, judged in ``_owed`` and nowhere else.
"""

from __future__ import annotations

from klptrace.tracer.model import events as ev
from klptrace.tracer.judge.state import NEVER, NO_ENABLE, ModuleState, ObjState, PatchState, Phase, Presence
from klptrace.tracer.model.rules import KLP_FAIL_002, KLP_NOSTART_001, KLP_RUN_001

PRE_PATCH, POST_PATCH, PRE_UNPATCH, POST_UNPATCH = ev.CALLBACKS
PATCHING_INIT, PATCHING = Phase.PATCHING_INIT, Phase.PATCHING
UNPATCHING_INIT, UNPATCHING = Phase.UNPATCHING_INIT, Phase.UNPATCHING
COMPLETING, PATCHED, GONE, REPLACED = Phase.COMPLETING, Phase.PATCHED, Phase.GONE, Phase.REPLACED
LOADED, UNLOADED, REFUSED, UNKNOWN = (Presence.LOADED, Presence.UNLOADED, Presence.REFUSED,
                                      Presence.UNKNOWN)


class Completion:
    """klp_complete_transition of one patch, from ``complete`` or ``cancel``
    to the next record that needs klp_mutex."""
    module = None       # not a module section

    def __init__(self, patch: PatchState, target: str, ref, cancelled: bool):
        self.patch, self.target, self.ref = patch, target, ref
        self.cancelled = cancelled      # opened by `cancel`: a `complete` may follow, same step
        self.complete_seen = False


class Section:
    """klp_module_coming's or klp_module_going's section under klp_mutex."""

    def __init__(self, module: str, event: str, ref, owed: list):
        self.module, self.event, self.ref = module, event, ref
        # coming: (patch, object, patch is klp_transition_patch), klp_patches order;
        # going: (patch, object, owes pre_unpatch, owes post_unpatch)
        self.owed = owed
        self.failed: tuple[PatchState, tuple] | None = None   # failing pre_patch (coming)
        self.refused = None   # a `refused` record for this load
        self.cleanup = None   # an unwinding callback ran in this coming section
        self.live = None      # a `live` record for this load
        self.held: list | None = None   # RUN-001 findings waiting for the load's outcome
        self.closed = None    # the record that closed the section


class Steps:
    """Mixin of the Engine: transitions, completions and module sections.
    Expects the Engine's state (patches, modules, open, transition, ...)."""

    # --- presence of modules --------------------------------------------------

    def _module_state(self, mod: str) -> ModuleState:
        ms = self.modules.get(mod)
        if ms is None:
            ms = self.modules[mod] = ModuleState(UNLOADED if self.modules_known else UNKNOWN)
        return ms

    def _presence(self, name: str) -> Presence:
        if name == ev.VMLINUX:
            return LOADED
        s = self.open
        if s is not None and s.module == name:
            return LOADED           # its own section is running
        ms = self.modules.get(name)
        if ms is None:
            return UNLOADED if self.modules_known else UNKNOWN
        return ms.presence

    def _reaches(self, o: ObjState) -> bool:
        """Whether a step that runs o's callbacks only when o is loaded
        (klp_is_object_loaded) reaches o. When its module's state is not known
        (after lost records) it is taken as reached and o's later history is
        in doubt: judged `unknown`, never a violation."""
        p = self._presence(o.name)
        if p is UNKNOWN:
            o.unsure = True
            return True
        return p is LOADED

    def _module_gone(self, ms: ModuleState, mod: str) -> None:
        ms.presence, ms.refusal, ms.load = UNLOADED, None, None
        self._reset_module_objects(mod)

    def _reset_module_objects(self, mod: str) -> None:
        for ps in self.patches.values():
            o = ps.objects.get(mod)
            if o is not None:
                o.reset()

    # --- what a step owes -------------------------------------------------------

    def _missing(self, ps: PatchState, objs, cb: str, since, need=None,
                 own_section: bool = False) -> list[ObjState]:
        """Objects among ``objs`` that owe ``cb`` in a step that began at
        ``since`` and have not run it since. Not owed: a callback the object
        does not register (or whose registration is not known), one the
        writer cannot observe, an object the step does not reach, or one whose
        history is in doubt."""
        if ps.doubt is not None or cb not in self.observes:
            return []
        miss = []
        for o in objs:
            if o.callbacks is None or cb not in o.callbacks or o.unsure:
                continue
            if need is not None and not need(o):
                continue
            if not own_section:
                p = self._presence(o.name)
                if p is not LOADED:
                    if p is UNKNOWN:
                        o.unsure = True
                    continue
            if o.ran.get(cb, NEVER) < since:
                miss.append(o)
        return miss

    def _owed(self, report, ps: PatchState, objs, cb: str, since, why: str, refs,
              need=None, own_section: bool = False) -> None:
        """KLP-RUN-001: every object the closing step owes ``cb`` ran it
        inside the step. ``report(patch, rule, message, object, refs)`` is
        the Engine's _judge, or collects (a step whose outcome is not known
        yet, the end of the trace)."""
        for o in self._missing(ps, objs, cb, since, need, own_section):
            report(ps, KLP_RUN_001, f"{cb} of '{ps.name}'/{o.name} did not run {why}", o.name,
                   list(refs))

    def _reporter(self, out: list):
        return lambda *finding: self._judge(out, *finding)

    # --- what a failing pre_patch stops -----------------------------------------

    def _request_stopped(self, out: list, ps: PatchState | None, obj: str | None,
                         failed_ref, ref, message: str) -> None:
        """KLP-FAIL-002: a failing pre_patch stops the patching request.
        __klp_enable_patch goes to its error path (klp_cancel_transition): no
        later object's pre_patch, no klp_start_transition. klp_module_coming
        goes to its error path and returns the error: no later patch's
        pre_patch for that module, and load_module refuses the module
        (prepare_coming_module fails, so neither its init nor
        klp_module_going runs: no `live`, no `going`, no callbacks)."""
        self._judge(out, ps, KLP_FAIL_002, message, obj, [failed_ref, ref])

    def _shows_loaded(self, ms: ModuleState, mod: str, what: str, ref, out: list) -> None:
        """The trace shows a refused module loaded after all (a `live`, a
        `going`, a callback). From here it is taken as loaded, with the
        objects as its coming section left them, so that what follows is
        judged as the kernel would run it."""
        if ms.refusal is not None:
            ps, failed_ref = ms.refusal
            self._request_stopped(out, ps, mod, failed_ref, ref,
                                  f"module '{mod}' {what} although pre_patch of "
                                  f"'{ps.name}'/{mod} failed in its coming section: "
                                  "the kernel refuses that load")
        else:
            self._warn(out, f"module '{mod}' {what} after its load was refused", None, mod,
                       [ref])
        ms.presence, ms.refusal = LOADED, None

    # --- transitions --------------------------------------------------------------

    def _transition(self, rec: dict, ref, out: list) -> None:
        pname, e, target = rec["patch"], rec["event"], rec["target"]
        ps = self.patches.get(pname)
        if ps is None:
            ps = self.patches[pname] = PatchState(pname, {}, phase=GONE, doubt=NO_ENABLE)
        if e == "init":
            self._init(ps, target, ref, out)
        elif e == "start":
            self._start(ps, target, ref, out)
        elif e == "complete":
            self._open_completion(ps, target, ref, cancelled=False)
        elif e == "cancel":
            self._cancel(ps, ref, out)
        elif e == "reverse":
            # klp_reverse_transition: `target` is the new target; it runs no
            # callback and then calls klp_start_transition (that `start` owes
            # nothing, see _start). A reversed patching transition owes no
            # pre_unpatch (KLP-REV-001).
            if target == "unpatched":
                ps.reversed_ = True
            ps.target = target
            ps.phase = PATCHING if target == "patched" else UNPATCHING
        # a force changes no step: the kernel state tracker notes it

    def _init(self, ps: PatchState, target: str, ref, out: list) -> None:
        t = self.transition
        if t is not None and t is not ps and t.target is not None:
            self._warn(out, f"transition of '{ps.name}' begins while '{t.name}' is still in "
                       "transition", ps.name, None, [ref])
        ps.target, ps.init_ref = target, ref
        if target == "patched":
            if not ps.phase.in_klp_patches:
                # klp_init_patch: list_add_tail(&patch->list, &klp_patches),
                # in the same klp_mutex hold as this init
                self.patches.pop(ps.name, None)
                self.patches[ps.name] = ps
                ps.new_cycle()
            ps.reversed_ = ps.cancelled = False
            ps.failed_ref = None
            ps.phase = PATCHING_INIT
        else:
            ps.phase = UNPATCHING_INIT

    def _start(self, ps: PatchState, target: str, ref, out: list) -> None:
        if ps.target != target and ps.doubt is None:
            self._warn(out, f"'{ps.name}' starts a transition to {target} but its init was to "
                       f"{ps.target}", ps.name, None, [ref])
        ps.target = target
        init = ps.init_ref or ref
        objs = ps.objects.values()
        if ps.phase is PATCHING_INIT:
            # the enable step ends: every loaded object ran pre_patch
            if ps.failed_ref is not None:
                self._request_stopped(out, ps, None, ps.failed_ref, ref,
                                      f"patching transition of '{ps.name}' started although "
                                      "a pre_patch failed")
            else:
                self._owed(self._reporter(out), ps, objs, PRE_PATCH, init,
                           "before its patching transition started", [init, ref])
            for o in objs:   # klp_pre_patch_callback arms objects without a pre_patch too
                if not o.failed and not o.registers(PRE_PATCH) and self._reaches(o):
                    o.armed = True
        elif ps.phase is UNPATCHING_INIT:
            # the disable step ends: every patched object ran pre_unpatch
            self._owed(self._reporter(out), ps, objs, PRE_UNPATCH, init,
                       "before its unpatching transition started", [init, ref],
                       need=lambda o: o.post_patched)
            for o in objs:
                o.post_patched = False
        # else: the start klp_reverse_transition calls, which owes nothing
        ps.phase = PATCHING if target == "patched" else UNPATCHING

    def _cancel(self, ps: PatchState, ref, out: list) -> None:
        """klp_cancel_transition ends the enable step early: the objects
        before the failing one ran pre_patch; it then calls
        klp_complete_transition (target unpatched)."""
        if ps.phase is PATCHING_INIT and ps.failed_ref is not None:
            before = []
            for o in ps.objects.values():
                if o.failed:
                    break
                before.append(o)
            init = ps.init_ref or ref
            self._owed(self._reporter(out), ps, before, PRE_PATCH, init,
                       "before the failing object's pre_patch", [init, ref])
            for o in before:
                if not o.registers(PRE_PATCH) and self._reaches(o):
                    o.armed = True
        ps.cancelled = True
        self._open_completion(ps, "unpatched", ref, cancelled=True)

    # --- completions --------------------------------------------------------------

    def _open_completion(self, ps: PatchState, target: str, ref, cancelled: bool) -> None:
        # how the transition ended, from the kernel state tracker (before
        # this record: it applies each record after it is judged)
        t = self.kstate.transition
        t = t if t is not None and t.patch == ps.name else None
        outcome = "cancelled" if cancelled else t.outcome if t is not None else "completed"
        ps.target = target
        self.stats.bump(self.stats.transitions, (ps.name, target, outcome))
        ps.phase = COMPLETING
        self.open = Completion(ps, target, ref, cancelled)
        if target == "patched" and ps.replace:
            # klp_complete_transition -> klp_unpatch_replaced_patches: every
            # other patch in klp_patches is gone, without any of its callbacks
            for other in self.patches.values():
                if other is not ps and other.phase.in_klp_patches:
                    self._mark_replaced(other)

    def _mark_replaced(self, ps: PatchState) -> None:
        ps.phase, ps.target = REPLACED, None
        for o in ps.objects.values():
            o.reset()

    def _close_open(self, out: list, ref, report=None) -> None:
        """A record that needs klp_mutex (or the end of the trace) closes the
        open completion or module section."""
        s, self.open = self.open, None
        s.closed = ref
        if s.module is None:
            self._close_completion(s, out, ref, report or self._reporter(out))
        else:
            self._close_section(s, out, ref, report)

    def _close_completion(self, c: Completion, out: list, ref, report) -> None:
        ps = c.patch
        objs = ps.objects.values()
        if c.target == "patched":
            self._owed(report, ps, objs, POST_PATCH, c.ref,
                       "when its patching transition completed", [c.ref, ref],
                       need=lambda o: o.armed)
            for o in objs:      # the post-patch step has passed: pre_unpatch is owed from here
                if o.armed and self._reaches(o):
                    o.post_patched = True
            if ps.phase is COMPLETING:
                ps.phase, ps.target = PATCHED, None
            return
        if c.cancelled:
            self._cancelled_completion(out, c, ref, report)
        else:
            self._owed(report, ps, objs, POST_UNPATCH, c.ref, "when its unpatching completed",
                       [c.ref, ref], need=lambda o: o.armed)
        self._end_cycle(ps, out)

    def _cancelled_completion(self, out: list, c: Completion, ref, report) -> None:
        """KLP-NOSTART-001: after klp_cancel_transition the objects that
        patched get post_unpatch (klp_complete_transition, target unpatched)
        and nothing else: no post_patch, no pre_unpatch in that cycle."""
        ps = c.patch
        since = ps.init_ref or c.ref
        for o in ps.objects.values():
            for cb in (POST_PATCH, PRE_UNPATCH):
                r = o.ran.get(cb)
                if r is not None and r >= since:
                    self._judge(out, ps, KLP_NOSTART_001, f"{cb} of '{ps.name}'/{o.name} "
                                "although the transition never started", o.name, [r])
        for o in self._missing(ps, ps.objects.values(), POST_UNPATCH, c.ref,
                               need=lambda o: o.armed):
            report(ps, KLP_NOSTART_001, f"post_unpatch of '{ps.name}'/{o.name} did not run "
                   "when its patching was cancelled", o.name, [c.ref, ref])

    def _end_cycle(self, ps: PatchState, out: list) -> None:
        """Unpatching done (or the enable cancelled): the patch leaves
        klp_patches; its next enable is a new cycle with a clean history."""
        if ps.doubt is not None:
            self._unknown(out, f"cycle of '{ps.name}' ended; it was not judged because "
                          f"{ps.doubt}", ps.name, [self._last_ref])
        ps.phase, ps.target, ps.doubt = GONE, None, None
        for o in ps.objects.values():
            o.reset()

    # --- module sections --------------------------------------------------------------

    def _open_section(self, mod: str, e: str, ref, out: list) -> None:
        ms = self._module_state(mod)
        if ms.load is not None:
            self._settle(ms, out, refused=False)
        live = [ps for ps in self.patches.values() if ps.phase.in_klp_patches]
        owed = []
        if e == "coming":
            # a new load: in every patch this module's object starts a new cycle
            self._reset_module_objects(mod)
            ms.refusal = None
            for ps in live:
                o = ps.objects.get(mod)
                if o is not None:
                    owed.append((ps, o, ps is self.transition))
        else:
            if ms.presence is REFUSED:
                self._shows_loaded(ms, mod, "is going", ref, out)
            ms.presence = LOADED
            for ps in live:
                o = ps.objects.get(mod)
                if o is not None:
                    mine = ps is self.transition
                    owed.append((ps, o, o.post_patched and not mine, o.armed))
        self.open = Section(mod, e, ref, owed)

    def _close_section(self, s: Section, out: list, ref, report=None) -> None:
        ms = self._module_state(s.module)
        mod = s.module
        if s.event == "going":
            report = report or self._reporter(out)
            for ps, o, owes_pre, owes_post in s.owed:
                if owes_pre:
                    self._owed(report, ps, [o], PRE_UNPATCH, s.ref,
                               f"when module '{mod}' went", [s.ref, ref], own_section=True)
                if owes_post:
                    self._owed(report, ps, [o], POST_UNPATCH, s.ref,
                               f"when module '{mod}' went", [s.ref, ref], own_section=True)
            # the `going` record stands where klp_module_going held klp_mutex:
            # from here the module is gone for every later operation
            self._module_gone(ms, mod)
        elif s.failed is None and s.refused is None and s.cleanup is None:
            self._load_accepted(s, ms, out, ref, report)
        else:
            self._load_refused(s, ms, out, ref, report or self._reporter(out))

    def _load_accepted(self, s: Section, ms: ModuleState, out: list, ref, report) -> None:
        """klp_module_coming returned 0: each patch ran pre_patch, then
        post_patch unless it is klp_transition_patch. Until a `live` record
        (or anything else that shows the module loaded) settles it, the load
        might still turn out refused for a reason that left no callback
        record: what is missing is held until then."""
        if report is None:
            if s.live is None:
                held = s.held = []
                report = lambda *finding: held.append(finding)   # noqa: E731
            else:
                report = self._reporter(out)
        mod = s.module
        for ps, o, mine in s.owed:
            self._owed(report, ps, [o], PRE_PATCH, s.ref, f"when module '{mod}' came",
                       [s.ref, ref], own_section=True)
            if not o.failed and not o.registers(PRE_PATCH):
                o.armed = True          # patched without a pre_patch of its own
            if o.armed and not mine:
                self._owed(report, ps, [o], POST_PATCH, s.ref, f"when module '{mod}' came",
                           [s.ref, ref], own_section=True)
                o.post_patched = True   # the post-patch step has passed
        ms.presence = LOADED
        ms.load = s if s.live is None else None

    def _load_refused(self, s: Section, ms: ModuleState, out: list, ref, report) -> None:
        """klp_module_coming failed: the patches before the failing one
        patched the module and klp_cleanup_module_patches_limited unwound
        them (pre_unpatch unless klp_transition_patch, then post_unpatch),
        all before the section ended; the module is refused."""
        mod = s.module
        since = s.ref
        if s.failed is not None:
            failing = s.failed[0]
            for ps, o, mine in s.owed:
                if ps is failing:
                    break
                self._owed(report, ps, [o], PRE_PATCH, since, f"when module '{mod}' came",
                           [since, ref], own_section=True)
                if o.registers(PRE_PATCH) and o.ran.get(PRE_PATCH, NEVER) < since:
                    continue            # not patched (already a violation): nothing to unwind
                why = f"to unwind it when module '{mod}' was refused"
                if not mine:
                    self._owed(report, ps, [o], POST_PATCH, since, f"when module '{mod}' came",
                               [since, ref], own_section=True)
                    self._owed(report, ps, [o], PRE_UNPATCH, since, why, [since, ref],
                               own_section=True)
                self._owed(report, ps, [o], POST_UNPATCH, since, why, [since, ref],
                           own_section=True)
            ms.refusal = (failing, s.failed[1])
        else:
            # the failing step left no callback record (a failure "for any
            # other reason"): what the section shows patched must be unwound
            for ps, o, mine in s.owed:
                if o.failed or o.ran.get(PRE_PATCH, NEVER) < since:
                    continue
                why = f"to unwind it when module '{mod}' was refused"
                if not mine and o.ran.get(POST_PATCH, NEVER) >= since:
                    self._owed(report, ps, [o], PRE_UNPATCH, since, why, [since, ref],
                               own_section=True)
                self._owed(report, ps, [o], POST_UNPATCH, since, why, [since, ref],
                           own_section=True)
            ms.refusal = None
        ms.presence, ms.load = REFUSED, None
        if s.live is not None:
            self._shows_loaded(ms, mod, "went live", s.live, out)
        elif ms.refusal is None:
            self._reset_module_objects(mod)     # the module is gone

    def _settle(self, ms: ModuleState, out: list, refused: bool, ref=None) -> None:
        """The outcome of the last load, accepted or refused, is known now."""
        s, ms.load = ms.load, None
        if not refused:
            for finding in s.held or ():
                self._judge(out, *finding)
            return
        s.refused = ref
        self._load_refused(s, ms, out, s.closed, self._reporter(out))

    def _open_coming(self, mod: str) -> Section | None:
        s = self.open
        return s if s is not None and s.module == mod and s.event == "coming" else None

    def _live(self, mod: str, ref, out: list) -> None:
        s = self._open_coming(mod)
        if s is not None:
            s.live = ref                # judged with its section
            return
        ms = self._module_state(mod)
        if ms.presence is REFUSED:
            self._shows_loaded(ms, mod, "went live", ref, out)
        elif ms.load is not None:
            ms.load.live = ref
            self._settle(ms, out, refused=False)
        ms.presence = LOADED

    def _refused(self, mod: str, ref, out: list) -> None:
        s = self._open_coming(mod)
        if s is not None:
            s.refused = ref             # judged with its section
            return
        ms = self._module_state(mod)
        if ms.load is not None:
            self._settle(ms, out, refused=True, ref=ref)
        elif ms.presence is not REFUSED:
            ms.presence, ms.refusal = REFUSED, None
            self._reset_module_objects(mod)

