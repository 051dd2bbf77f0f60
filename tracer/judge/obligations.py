"""What a step owes, and what a failing pre_patch stops: the two rules every
kind of step closes with, judged here and nowhere else.

KLP-RUN-001: when a step closes (tracer/judge/steps.py for the enable and
disable steps and the completions, tracer/judge/sections.py for the module
sections), every object it owes a callback ran it inside the step.
KLP-FAIL-002: a failing pre_patch stops the request it belongs to.
"""

from __future__ import annotations

from klptrace.tracer.judge.findings import Verdicts
from klptrace.tracer.judge.state import NEVER, EngineState, ObjState, PatchState, Presence
from klptrace.tracer.model.rules import KLP_FAIL_002, KLP_RUN_001

LOADED, UNKNOWN = Presence.LOADED, Presence.UNKNOWN


class Obligations:
    def __init__(self, state: EngineState, verdicts: Verdicts):
        self.state, self.verdicts = state, verdicts

    def missing(self, ps: PatchState, objs, cb: str, since, need=None,
                own_section: bool = False) -> list[ObjState]:
        """Objects among ``objs`` that owe ``cb`` in a step that began at
        ``since`` and have not run it since. Not owed: a callback the object
        does not register (or whose registration is not known), one the
        writer cannot observe, an object the step does not reach, or one whose
        history was in doubt when the step began (also if a free record has
        ended that cycle since)."""
        if ps.doubt is not None or cb not in self.state.observes or (
                ps.doubt_ended is not None and since <= ps.doubt_ended):
            return []
        miss = []
        for o in objs:
            if o.callbacks is None or cb not in o.callbacks or o.unsure:
                continue
            if need is not None and not need(o):
                continue
            if not own_section:
                p = self.state.presence(o.name)
                if p is not LOADED:
                    if p is UNKNOWN:
                        o.unsure = True
                    continue
            if o.ran.get(cb, NEVER) < since:
                miss.append(o)
        return miss

    def owed(self, report, ps: PatchState, objs, cb: str, since, why: str, refs,
             need=None, own_section: bool = False) -> None:
        """KLP-RUN-001: every object the closing step owes ``cb`` ran it
        inside the step. ``report(patch, rule, message, object, refs)`` is
        Verdicts.judge, or collects (a step whose outcome is not known yet,
        the end of the trace)."""
        for o in self.missing(ps, objs, cb, since, need, own_section):
            report(ps, KLP_RUN_001, f"{cb} of '{ps.name}'/{o.name} did not run {why}", o.name,
                   list(refs))

    def request_stopped(self, out: list, ps: PatchState | None, obj: str | None,
                        failed_ref, ref, message: str) -> None:
        """KLP-FAIL-002: a failing pre_patch stops the patching request.
        __klp_enable_patch goes to its error path (klp_cancel_transition): no
        later object's pre_patch, no klp_start_transition. klp_module_coming
        goes to its error path and returns the error: no later patch's
        pre_patch for that module, and load_module refuses the module
        (prepare_coming_module fails, so neither its init nor
        klp_module_going runs: no `live`, no `going`, no callbacks)."""
        self.verdicts.judge(out, ps, KLP_FAIL_002, message, obj, [failed_ref, ref])
