"""Judging one callback record against the state: is its patch enabled, is
its object's module loaded, does it answer its counterpart, does it run in
its step. Each rule is judged in one method here (tracer/model/rules.py ``where``);
what a step owes when it closes is tracer/judge/obligations.py's.

This is the validator's hot path (docs/benchmarks.md): about half the
records are callbacks, so the common case is a few attribute reads.
"""

from __future__ import annotations

from klptrace.tracer.model import events as ev
from klptrace.tracer.judge.findings import Verdicts
from klptrace.tracer.judge.obligations import Obligations
from klptrace.tracer.judge.sections import SectionJudge
from klptrace.tracer.judge.state import EngineState, ObjState, Phase, Presence
from klptrace.tracer.model.rules import (KLP_FAIL_001, KLP_LOAD_001, KLP_LOAD_002,
                                         KLP_ONCE_001, KLP_ORD_001, KLP_ORD_002, KLP_ORD_003,
                                         KLP_ORD_004, KLP_REPLACE_001, KLP_REV_001,
                                         KLP_SYM_001, KLP_SYM_002)

PRE_PATCH, POST_PATCH, PRE_UNPATCH, POST_UNPATCH = ev.CALLBACKS
VMLINUX = ev.VMLINUX
PATCHING_INIT, UNPATCHING_INIT, REPLACED = (Phase.PATCHING_INIT, Phase.UNPATCHING_INIT,
                                            Phase.REPLACED)
LOADED, REFUSED, UNKNOWN = Presence.LOADED, Presence.REFUSED, Presence.UNKNOWN


class CallbackJudge:
    """One callback record."""

    def __init__(self, state: EngineState, verdicts: Verdicts, obligations: Obligations,
                 sections: SectionJudge):
        self.state, self.verdicts = state, verdicts
        self.obligations, self.sections = obligations, sections
        self.stats = verdicts.stats

    def callback(self, rec: dict, ref, out: list) -> None:
        pname, oname, cb = rec["patch"], rec["object"], rec["callback"]
        if cb == PRE_PATCH:
            ret = rec.get("ret")
            result = "unknown" if ret is None else ("ok" if ret == 0 else "error")
        else:
            result = "void"
        counts = self.stats.callbacks
        key = (pname, oname, cb, result, rec.get("evidence") or "direct")
        counts[key] = counts.get(key, 0) + 1
        ps = self.state.patches.get(pname)
        if ps is None or not ps.phase.admits_callbacks:
            self._patch_admits(out, ps, pname, oname, cb, ref)
            return
        obj = ps.objects.get(oname)
        if obj is None:
            obj = ps.objects[oname] = ObjState(oname, None)
        section = None
        if oname != VMLINUX:
            s = self.state.open
            if s is not None and s.module == oname:
                section = s             # its module's own coming/going section
            else:
                self._module_presence(out, ps, obj, cb, ref)
        if section is not None and section.event == "coming":
            self._earlier_post_patch_steps(section, ps)
        if obj.failed and cb != PRE_PATCH:
            self._after_failure(out, ps, obj, cb, ref)
        else:
            self._pairing(out, ps, obj, cb, ref)
            self._ordering(out, ps, obj, cb, section, ref)
            self._apply(out, ps, obj, cb, rec, section, ref)
        obj.ran[cb] = ref

    @staticmethod
    def _earlier_post_patch_steps(section, ps) -> None:
        """klp_module_coming finishes each patch's object (pre_patch,
        klp_patch_object, then post_patch unless it is klp_transition_patch)
        before it turns to the next patch. So while the load is still patching
        (nothing failed or unwound yet), a record of a later patch shows that
        the post-patch step of every earlier one has passed, also where that
        object registers no post_patch callback whose record would say so; a
        refused load's unwinding then owes it its pre_unpatch (KLP-SYM-002).
        Objects that register post_patch wait for its record, as before."""
        if section.failed is not None or section.cleanup is not None:
            return
        for earlier, o, in_transition in section.owed:
            if earlier is ps:
                return
            if in_transition or o.post_patched or o.failed or o.registers(POST_PATCH):
                continue
            if o.armed or not o.registers(PRE_PATCH):
                o.armed = o.post_patched = True

    # --- the patch and the module ------------------------------------------------

    def _patch_admits(self, out: list, ps, pname: str, oname: str, cb: str, ref) -> None:
        """KLP-LOAD-002, KLP-REPLACE-001: callbacks run only for a patch in
        klp_patches, never for one atomic replace removed."""
        if ps is None:
            # never enabled in this trace, and not enabled when it began
            if self.state.gap:      # its enable may be among the lost records
                self.verdicts.unknown_once(
                    out, pname, None, "lost",
                    f"'{pname}' not judged: records were lost before it", [ref])
            elif self.state.modules_known or self.state.patches:
                self.verdicts.judge(out, None, KLP_LOAD_002, f"{cb} of '{pname}'/{oname}: that "
                                    "livepatch was never enabled in this trace", oname, [ref])
            else:
                self.verdicts.unknown_once(out, pname, None, "no enable",
                                           f"'{pname}' not judged: its enable is not in this trace",
                                           [ref])
        elif ps.phase is REPLACED:
            self.verdicts.judge(out, ps, KLP_REPLACE_001, f"{cb} of '{pname}'/{oname} after "
                                f"'{pname}' was atomically replaced", oname, [ref])
        else:
            self.verdicts.judge(out, ps, KLP_LOAD_002, f"{cb} of '{pname}'/{oname} while "
                                f"'{pname}' is not enabled", oname, [ref])

    def _module_presence(self, out: list, ps, obj: ObjState, cb: str, ref) -> None:
        """KLP-LOAD-001: a module object's callback runs only while its module
        is loaded (klp_is_object_loaded). Known from the header's `modules`
        and the module records, whatever the patch's own history."""
        ms = self.state.modules.get(obj.name)
        if ms is None:
            p = Presence.UNLOADED if self.state.modules_known else UNKNOWN
        else:
            p = ms.presence
            if p is LOADED:
                if ms.load is not None:     # the module runs: its load went through
                    self.sections.settle(ms, out, refused=False)
                return
            if p is REFUSED and ms.refusal is not None:
                self.sections.shows_loaded(ms, obj.name, f"runs {cb} of '{ps.name}'", ref, out)
                return
        msg = f"{cb} of '{ps.name}'/{obj.name} while module '{obj.name}' is not loaded"
        if p is UNKNOWN:
            self.verdicts.unknown_once(
                out, ps.name, obj.name, KLP_LOAD_001,
                f"not judged (module '{obj.name}' state unknown): {msg}", [ref])
        else:
            self.verdicts.judge(out, ps, KLP_LOAD_001, msg, obj.name, [ref])

    # --- the object's own history ----------------------------------------------------

    def _after_failure(self, out: list, ps, obj: ObjState, cb: str, ref) -> None:
        """KLP-FAIL-001: nothing but a new pre_patch after a failed one
        (klp_pre_patch_callback left post_unpatch_enabled clear and the
        object unpatched)."""
        self.verdicts.judge(out, ps, KLP_FAIL_001, f"{cb} of '{ps.name}'/{obj.name} after its "
                            "pre_patch failed", obj.name, [obj.ran.get(PRE_PATCH) or ref, ref])

    def _pairing(self, out: list, ps, obj: ObjState, cb: str, ref) -> None:
        """KLP-SYM-001, KLP-SYM-002, KLP-ONCE-001, KLP-REV-001: pre_patch
        opens what post_unpatch closes (post_unpatch_enabled), post_patch
        what pre_unpatch closes; each opens once and closes once."""
        if cb == PRE_PATCH:
            if obj.armed or obj.failed:
                self.verdicts.judge(out, ps, KLP_ONCE_001, f"second pre_patch of "
                                    f"'{ps.name}'/{obj.name} in one cycle", obj.name,
                                    [r for r in (obj.ran.get(PRE_PATCH), ref) if r])
        elif cb == POST_PATCH:
            if obj.post_patched:
                self.verdicts.judge(out, ps, KLP_ONCE_001, f"second post_patch of '{ps.name}'/"
                                    f"{obj.name} before its pre_unpatch", obj.name,
                                    [r for r in (obj.ran.get(POST_PATCH), ref) if r])
        elif cb == PRE_UNPATCH:
            # after a cancel, KLP-NOSTART-001 judges it when the completion ends
            if not obj.post_patched and not ps.cancelled:
                prev = obj.ran.get(PRE_UNPATCH)
                name = f"'{ps.name}'/{obj.name}"
                if ps.reversed_:
                    self.verdicts.judge(out, ps, KLP_REV_001, f"pre_unpatch of {name} after its "
                                        "patching transition was reversed", obj.name, [ref])
                elif prev is not None:
                    self.verdicts.judge(out, ps, KLP_ONCE_001, f"second pre_unpatch of {name} "
                                        "in one cycle", obj.name, [prev, ref])
                else:
                    self.verdicts.judge(out, ps, KLP_SYM_002, f"pre_unpatch of {name} without its "
                                        "post_patch", obj.name, [ref])
        elif not obj.armed:
            prev = obj.ran.get(POST_UNPATCH)
            if prev is not None:
                self.verdicts.judge(out, ps, KLP_ONCE_001, f"second post_unpatch of '{ps.name}'/"
                                    f"{obj.name} in one cycle", obj.name, [prev, ref])
            elif obj.registers(PRE_PATCH):
                self.verdicts.judge(out, ps, KLP_SYM_001, f"post_unpatch of '{ps.name}'/{obj.name} "
                                    "without a successful pre_patch", obj.name, [ref])

    # --- the step it runs in ----------------------------------------------------------

    def _ordering(self, out: list, ps, obj: ObjState, cb: str, section, ref) -> None:
        """KLP-ORD-001..004: each callback runs inside its step. pre_patch:
        the enable step or its module's coming; post_patch: the patching
        completion or a coming outside the patch's transition; pre_unpatch:
        the disable step, or its module's going (or a refused coming's
        unwinding) outside the transition; post_unpatch: the unpatching or
        cancel completion, or its module's section."""
        mine = self.state.transition is ps
        if cb == PRE_PATCH:
            if (mine and ps.phase is PATCHING_INIT) or \
                    (section is not None and section.event == "coming"):
                return
            rule, what = KLP_ORD_001, "outside the patching of its object"
        elif cb == POST_PATCH:
            c = self.state.open
            # after a cancel, KLP-NOSTART-001 judges it when the completion ends
            if ps.cancelled or (c is not None and c.module is None and c.patch is ps
                                and c.target == "patched") or \
                    (section is not None and section.event == "coming" and not mine):
                return
            rule, what = KLP_ORD_002, "before its patching completed"
        elif cb == PRE_UNPATCH:
            if ps.cancelled or ps.reversed_ or (mine and ps.phase is UNPATCHING_INIT) or \
                    (section is not None and not mine):
                return
            rule, what = KLP_ORD_003, "outside the start of its unpatching"
        else:
            c = self.state.open
            if section is not None or (c is not None and c.module is None and c.patch is ps
                                       and c.target == "unpatched"):
                return
            rule, what = KLP_ORD_004, "before its unpatching completed"
        self.verdicts.judge(out, ps, rule, f"{cb} of '{ps.name}'/{obj.name} {what} (phase "
                            f"{ps.phase.value}, no module section)", obj.name, [ref])

    def _apply(self, out: list, ps, obj: ObjState, cb: str, rec: dict, section, ref) -> None:
        """What the callback changes: post_unpatch_enabled (kernel), the
        owed pre_unpatch, a failure that stops the request, an unwinding
        that marks a coming section as refused."""
        coming = section is not None and section.event == "coming"
        if cb == PRE_PATCH:
            if coming:
                if section.failed is not None:
                    self.obligations.request_stopped(
                        out, ps, obj.name, section.failed[1], ref,
                        f"pre_patch of '{ps.name}'/{obj.name} after an "
                        "earlier pre_patch of the same module load failed")
            elif ps.failed_ref is not None and self.state.transition is ps and \
                    ps.phase is PATCHING_INIT:
                self.obligations.request_stopped(
                    out, ps, obj.name, ps.failed_ref, ref,
                    f"pre_patch of '{ps.name}'/{obj.name} after an earlier "
                    "pre_patch of the same enable failed")
            ret = rec.get("ret")
            if ret is not None and ret != 0:
                obj.failed, obj.armed = True, False
                if coming:
                    if section.failed is None:
                        section.failed = (ps, ref)
                else:
                    ps.failed_ref = ref
            else:
                obj.failed, obj.armed = False, True
        elif cb == POST_PATCH:
            obj.post_patched = True
        else:
            if cb == PRE_UNPATCH:
                obj.post_patched = False
            else:
                obj.armed = obj.post_patched = False
            if coming and section.cleanup is None:
                section.cleanup = ref   # only a refused load unwinds in its coming section

