"""The rule engine: judges a stream of trace records against the rules in
tracer/model/rules.py.

It runs the same way online (the daemon's JudgeSink feeds each record as the
BPF probes produce it) and offline (``klptrace validate`` feeds a file):
``feed(record)`` returns the findings that record settles, ``finish()`` those
the end of the trace settles. Memory grows with patches, objects and modules,
never with the length of the trace.

The model is the kernel's own (kernel/livepatch/core.c, transition.c). The
engine is a composition of judges over one state, each rule judged in one
of them (tracer/model/rules.py ``where``):

* tracer/judge/state.py: EngineState, per patch (an enum phase), per (patch,
  object) and per module, mirroring struct klp_patch and struct klp_object,
  beside the kernel's livepatch state (tracer/model/livestate.py);
* tracer/judge/findings.py: Verdicts, findings and the counters, and when a
  broken rule is ``unknown`` rather than a violation;
* tracer/judge/obligations.py: what a closing step owes (KLP-RUN-001) and
  what a failing pre_patch stops (KLP-FAIL-002);
* tracer/judge/steps.py: StepJudge, the transition records and completions,
  and the placement principle: only records the kernel's order pins open and
  close a step; a free record's fact is judged with its step wherever it
  stands;
* tracer/judge/sections.py: SectionJudge, the module sections and how a
  load is settled;
* tracer/judge/callbacks.py: CallbackJudge, one callback record.

This module is the entry: it dispatches each record to its judge, closes the
open step when a pinned record needs klp_mutex, and handles the free patch
records, losses and the end of the trace.
"""

from __future__ import annotations

from klptrace.tracer.judge.callbacks import CallbackJudge
from klptrace.tracer.judge.findings import (OUTCOMES, RESULTS, UNKNOWN, VIOLATION, WARNING, Finding,
                                            Stats, Verdicts)
from klptrace.tracer.judge.obligations import Obligations
from klptrace.tracer.judge.sections import SectionJudge
from klptrace.tracer.judge.state import LOST, EngineState, PatchState, Phase
from klptrace.tracer.judge.steps import Completion, StepJudge
from klptrace.tracer.model.livestate import LivepatchState

__all__ = ["Engine", "Finding", "Stats", "VIOLATION", "UNKNOWN", "WARNING", "OUTCOMES",
           "RESULTS"]


class Engine:
    def __init__(self, header: dict | None = None, *, kstate: LivepatchState | None = None):
        header = header or {}
        self.stats = Stats()
        self.state = EngineState(header, kstate)
        self.kstate = self.state.kstate
        self.verdicts = Verdicts(self.stats)
        owes = Obligations(self.state, self.verdicts)
        self.steps = StepJudge(self.state, self.verdicts, owes)
        self.sections = SectionJudge(self.state, self.verdicts, owes)
        self.callbacks = CallbackJudge(self.state, self.verdicts, owes, self.sections)

    @property
    def transition(self) -> PatchState | None:
        """klp_transition_patch, as the kernel state tracker knows it."""
        return self.state.transition

    # --- the record stream ----------------------------------------------------

    def feed(self, rec: dict) -> list[Finding]:
        # the validator's hot path (docs/benchmarks.md): about half the
        # records are callbacks, which change no kernel state
        self.stats.records += 1
        ref = self.state.last_ref = (rec["seq"], rec["ts_ns"])
        out: list[Finding] = []
        t = rec["type"]
        if t == "callback":
            self.callbacks.callback(rec, ref, out)
            return out
        try:
            self._step_record(t, rec, ref, out)
        finally:
            # after judging, so that judging saw the state the record found
            self.kstate.apply(rec)
        return out

    def _step_record(self, t: str, rec: dict, ref, out: list) -> None:
        st = self.state
        if t == "transition":
            s = st.open
            if s is not None:
                if (s.module is None and s.cancelled and not s.complete_seen
                    and rec["event"] == "complete" and s.patch.name == rec["patch"]):
                    # klp_cancel_transition calls klp_complete_transition: the same step
                    s.complete_seen = True
                    return
                self._close_open(out, ref)
            self.steps.transition(rec, ref, out)
        elif t == "module":
            e, mod = rec["event"], rec["module"]
            if e == "coming" or e == "going":
                if st.open is not None:
                    self._close_open(out, ref)
                self.sections.open_section(mod, e, ref, out)
            elif e == "live":
                self.sections.live(mod, ref, out)
            else:
                self.sections.refused(mod, ref, out)
        elif t == "patch":
            self._patch_record(rec, ref, out)
        elif t == "loss":
            self._loss(rec, ref, out)

    def _close_open(self, out: list, ref, report=None) -> None:
        """A record that needs klp_mutex (or the end of the trace) closes the
        open completion or module section."""
        st = self.state
        s, st.open = st.open, None
        s.closed = ref
        if s.module is None:
            self.steps.close_completion(s, out, ref, report or self.verdicts.reporter(out))
        else:
            self.sections.close_section(s, out, ref, report)

    def finish(self) -> list[Finding]:
        out: list[Finding] = []
        end = (self.state.last_ref[0] + 1, self.state.last_ref[1])
        s = self.state.open
        if s is not None:
            # The trace ended inside a step. If everything it owes has run,
            # it closes as usual; otherwise the rest may still have been
            # running: a warning.
            owed: list = []
            self._close_open(out, end, report=lambda *finding: owed.append(finding))
            if owed:
                if isinstance(s, Completion):
                    self.verdicts.warn(out, f"trace ends while the {s.target} completion of "
                                       f"'{s.patch.name}' may still be running its callbacks",
                                       s.patch.name)
                else:
                    self.verdicts.warn(out, f"trace ends while module '{s.module}' is {s.event}",
                                       None, s.module, [s.ref])
        for ms in self.state.modules.values():
            if ms.load is not None:     # no refusal came: the load went through
                self.sections.settle(ms, out, refused=False)
        for ps in self.state.patches.values():
            if not ps.phase.in_klp_patches:
                continue
            if ps.target is not None:
                self.verdicts.warn(out, f"trace ends with '{ps.name}' in transition to {ps.target} "
                                   f"(phase {ps.phase.value}): that cycle is open", ps.name)
            else:
                n = sum(1 for o in ps.objects.values() if o.armed or o.post_patched)
                self.verdicts.warn(out, f"'{ps.name}' still enabled at the end of the trace: "
                                   f"{n} object cycle(s) open, not judged", ps.name)
        return out

    # --- free patch records: facts, never steps -------------------------------

    def _patch_record(self, rec: dict, ref, out: list) -> None:
        pname, e = rec["patch"], rec["event"]
        ps = self.state.patches.get(pname)
        if e == "enable":
            # klp_enable_patch begins; the patch joins klp_patches at its init
            self.state.patches.pop(pname, None)
            self.state.patches[pname] = PatchState.from_objects(pname, rec.get("objects") or [],
                                                                bool(rec.get("replace")))
        elif e == "enable_failed":
            if ps is None:
                return
            if ps.phase is Phase.ANNOUNCED:
                ps.phase = Phase.GONE   # failed before its init: never in klp_patches
            elif ps.phase in (Phase.PATCHING, Phase.PATCHED) and ps.doubt is None:
                self.verdicts.warn(out, f"'{pname}' enable_failed after its patching transition "
                                   "started (klp_enable_patch returns 0 once it starts)", pname,
                                   None, [ref])
            # otherwise the cancel and its completion, pinned, end the cycle
        elif e == "replaced":
            if ps is None:
                self.state.patches[pname] = PatchState(pname, {}, phase=Phase.REPLACED)
            elif ps.phase.in_klp_patches:
                self.steps.mark_replaced(ps)
        elif e == "removed":
            # the livepatch module is unloaded; kept (gone) so that a later
            # callback of it is judged KLP-LOAD-002
            if ps is None or ps.phase is Phase.REPLACED:
                return
            if ps.phase.in_klp_patches and not (ps.phase is Phase.COMPLETING
                                                and ps.target == "unpatched"):
                if ps.doubt is None:
                    self.verdicts.warn(out, f"'{pname}' removed while still enabled", pname, None,
                                       [ref])
                self.steps.end_cycle(ps, out)
            ps.phase = Phase.GONE
        # "disable" is the request; the transition records carry the rules

    def _loss(self, rec: dict, ref, out: list) -> None:
        """Records were lost: nothing in flight can be judged until its cycle
        ends. Reported as unknown, never as a violation."""
        n = rec["count"]
        reason = rec.get("reason")
        self.stats.lost_records += n
        what = f"{n} record(s) lost" if n else "records lost"
        if isinstance(reason, str) and reason:
            what += f" ({reason})"
        self.verdicts.unknown(out, f"{what} before this point: patches enabled now are not judged "
                              "until their cycles end", None, [ref])
        # every patch: one not enabled now may have been enabled in the gap
        for ps in self.state.patches.values():
            ps.doubt = LOST
        self.state.gap = True
        self.state.forget_modules()   # what modules did in the gap is unknown too
