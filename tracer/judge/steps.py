"""The steps of the kernel's livepatch operations: transitions and their
completions (this module) and module sections (tracer/judge/sections.py).

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
KLP-RUN-001, judged in tracer/judge/obligations.py and nowhere else.
"""

from __future__ import annotations

from klptrace.tracer.judge.findings import Verdicts
from klptrace.tracer.judge.obligations import Obligations
from klptrace.tracer.judge.state import NO_ENABLE, EngineState, PatchState, Phase
from klptrace.tracer.model import events as ev
from klptrace.tracer.model.rules import KLP_NOSTART_001

PRE_PATCH, POST_PATCH, PRE_UNPATCH, POST_UNPATCH = ev.CALLBACKS
PATCHING_INIT, PATCHING = Phase.PATCHING_INIT, Phase.PATCHING
UNPATCHING_INIT, UNPATCHING = Phase.UNPATCHING_INIT, Phase.UNPATCHING
COMPLETING, PATCHED, GONE, REPLACED = Phase.COMPLETING, Phase.PATCHED, Phase.GONE, Phase.REPLACED


class Completion:
    """klp_complete_transition of one patch, from ``complete`` or ``cancel``
    to the next record that needs klp_mutex."""
    module = None       # not a module section

    def __init__(self, patch: PatchState, target: str, ref, cancelled: bool):
        self.patch, self.target, self.ref = patch, target, ref
        self.cancelled = cancelled      # opened by `cancel`: a `complete` may follow, same step
        self.complete_seen = False




class StepJudge:
    """The transition records and the completions they open."""

    def __init__(self, state: EngineState, verdicts: Verdicts, obligations: Obligations):
        self.state, self.verdicts, self.obligations = state, verdicts, obligations

    # --- transitions --------------------------------------------------------------

    def transition(self, rec: dict, ref, out: list) -> None:
        pname, e, target = rec["patch"], rec["event"], rec["target"]
        ps = self.state.patches.get(pname)
        if ps is None:
            ps = self.state.patches[pname] = PatchState(pname, {}, phase=GONE, doubt=NO_ENABLE)
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
        t = self.state.transition
        if t is not None and t is not ps and t.target is not None:
            self.verdicts.warn(out, f"transition of '{ps.name}' begins while '{t.name}' is "
                               "still in transition", ps.name, None, [ref])
        ps.target, ps.init_ref = target, ref
        if target == "patched":
            if not ps.phase.in_klp_patches:
                # klp_init_patch: list_add_tail(&patch->list, &klp_patches),
                # in the same klp_mutex hold as this init
                self.state.patches.pop(ps.name, None)
                self.state.patches[ps.name] = ps
                ps.new_cycle()
            ps.reversed_ = ps.cancelled = False
            ps.failed_ref = None
            ps.phase = PATCHING_INIT
        else:
            ps.phase = UNPATCHING_INIT

    def _start(self, ps: PatchState, target: str, ref, out: list) -> None:
        if ps.target != target and ps.doubt is None:
            self.verdicts.warn(out, f"'{ps.name}' starts a transition to {target} but its init "
                               f"was to {ps.target}", ps.name, None, [ref])
        ps.target = target
        init = ps.init_ref or ref
        objs = ps.objects.values()
        if ps.phase is PATCHING_INIT:
            # the enable step ends: every loaded object ran pre_patch
            if ps.failed_ref is not None:
                self.obligations.request_stopped(
                    out, ps, None, ps.failed_ref, ref,
                    f"patching transition of '{ps.name}' started although a pre_patch failed")
            else:
                self.obligations.owed(self.verdicts.reporter(out), ps, objs, PRE_PATCH, init,
                                      "before its patching transition started", [init, ref])
            for o in objs:   # klp_pre_patch_callback arms objects without a pre_patch too
                if not o.failed and not o.registers(PRE_PATCH) and self.state.reaches(o):
                    o.armed = True
        elif ps.phase is UNPATCHING_INIT:
            # the disable step ends: every patched object ran pre_unpatch
            self.obligations.owed(self.verdicts.reporter(out), ps, objs, PRE_UNPATCH, init,
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
            self.obligations.owed(self.verdicts.reporter(out), ps, before, PRE_PATCH, init,
                                  "before the failing object's pre_patch", [init, ref])
            for o in before:
                if not o.registers(PRE_PATCH) and self.state.reaches(o):
                    o.armed = True
        ps.cancelled = True
        self._open_completion(ps, "unpatched", ref, cancelled=True)

    # --- completions --------------------------------------------------------------

    def _open_completion(self, ps: PatchState, target: str, ref, cancelled: bool) -> None:
        # how the transition ended, from the kernel state tracker (before
        # this record: it applies each record after it is judged)
        t = self.state.kstate.transition
        t = t if t is not None and t.patch == ps.name else None
        outcome = "cancelled" if cancelled else t.outcome if t is not None else "completed"
        ps.target = target
        self.verdicts.stats.bump(self.verdicts.stats.transitions, (ps.name, target, outcome))
        ps.phase = COMPLETING
        self.state.open = Completion(ps, target, ref, cancelled)
        if target == "patched" and ps.replace:
            # klp_complete_transition -> klp_unpatch_replaced_patches: every
            # other patch in klp_patches is gone, without any of its callbacks
            for other in self.state.patches.values():
                if other is not ps and other.phase.in_klp_patches:
                    self.mark_replaced(other)

    def mark_replaced(self, ps: PatchState) -> None:
        ps.phase, ps.target = REPLACED, None
        for o in ps.objects.values():
            o.reset()

    def close_completion(self, c: Completion, out: list, ref, report) -> None:
        ps = c.patch
        objs = ps.objects.values()
        if c.target == "patched":
            self.obligations.owed(report, ps, objs, POST_PATCH, c.ref,
                                  "when its patching transition completed", [c.ref, ref],
                                  need=lambda o: o.armed)
            for o in objs:      # the post-patch step has passed: pre_unpatch is owed from here
                if o.armed and self.state.reaches(o):
                    o.post_patched = True
            if ps.phase is COMPLETING:
                ps.phase, ps.target = PATCHED, None
            return
        if c.cancelled:
            self._cancelled_completion(out, c, ref, report)
        else:
            self.obligations.owed(report, ps, objs, POST_UNPATCH, c.ref,
                                  "when its unpatching completed", [c.ref, ref],
                                  need=lambda o: o.armed)
        self.end_cycle(ps, out)

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
                    self.verdicts.judge(out, ps, KLP_NOSTART_001, f"{cb} of '{ps.name}'/{o.name} "
                                        "although the transition never started", o.name, [r])
        for o in self.obligations.missing(ps, ps.objects.values(), POST_UNPATCH, c.ref,
                                          need=lambda o: o.armed):
            report(ps, KLP_NOSTART_001, f"post_unpatch of '{ps.name}'/{o.name} did not run "
                   "when its patching was cancelled", o.name, [c.ref, ref])

    def end_cycle(self, ps: PatchState, out: list) -> None:
        """Unpatching done (or the enable cancelled): the patch leaves
        klp_patches; its next enable is a new cycle with a clean history."""
        if ps.doubt is not None:
            self.verdicts.unknown(out, f"cycle of '{ps.name}' ended; it was not judged because "
                                  f"{ps.doubt}", ps.name, [self.state.last_ref])
            ps.doubt_ended = self.state.last_ref
        ps.phase, ps.target, ps.doubt = GONE, None, None
        for o in ps.objects.values():
            o.reset()
