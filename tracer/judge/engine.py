"""The rule engine: judges a stream of trace records against the rules in
tracer.rules.

It runs the same way online (the daemon feeds each record as the BPF probes
produce it) and offline (``klptrace validate`` feeds a file): ``feed(record)``
returns the findings that record settles, ``finish()`` those the end of the
trace settles. Memory grows with patches, objects and modules, never with the
length of the trace.

The model is the kernel's own (kernel/livepatch/core.c, transition.c), in
four parts:

* tracer/judge/state.py: the state, per patch (an enum phase), per (patch,
  object) and per module, mirroring struct klp_patch and struct klp_object;
* tracer/judge/callbacks.py: judging one callback record;
* tracer/judge/steps.py: the steps (the enable and disable steps,
  completions, module sections), what each owes when it closes, and the
  placement principle: only records the kernel's order pins open and close
  a step; a free record's fact is judged with its step wherever it stands;
* tracer/judge/findings.py: findings, counters, and when a broken rule is
  ``unknown`` rather than a violation.

This module is the entry: the header's start state, the dispatch of each
record, the free patch records, losses and the end of the trace.
"""

from __future__ import annotations

from klptrace.tracer.model import events as ev
from klptrace.tracer.judge.callbacks import CallbackJudge
from klptrace.tracer.judge.findings import (OUTCOMES, RESULTS, UNKNOWN, VIOLATION, WARNING, Finding,
                              Findings, Stats)
from klptrace.tracer.judge.state import BEFORE_TRACE, LOST, ModuleState, PatchState, Phase, Presence
from klptrace.tracer.judge.steps import Completion, Steps
from klptrace.tracer.model.livestate import LivepatchState

__all__ = ["Engine", "Finding", "Stats", "VIOLATION", "UNKNOWN", "WARNING", "OUTCOMES",
           "RESULTS"]


class Engine(CallbackJudge, Steps, Findings):
    def __init__(self, header: dict | None = None, *, kstate: LivepatchState | None = None):
        header = header or {}
        self.stats = Stats()
        # the kernel's livepatch state (tracer/model/livestate.py): read here,
        # applied after each record is judged, so that judging sees the state
        # the record found; shared with the daemon's other sinks
        self.kstate = kstate if kstate is not None else LivepatchState.from_state(
            header.get("state"))
        self.patches: dict[str, PatchState] = {}     # in klp_patches order
        self.modules: dict[str, ModuleState] = {}
        self.modules_known = False           # the header listed the loaded modules
        self.open = None                     # the open Completion or Section
        self.observes = frozenset(header.get("observes") or ev.CALLBACKS)
        self._unknown_said: set = set()
        self._last_ref = (0, 0)
        self.gap = False                     # records were lost somewhere before
        self._load_state(header.get("state"))

    # --- start state ----------------------------------------------------------

    def _load_state(self, state: dict | None) -> None:
        """The writer's view at start. A patch already enabled has a cycle
        that began before the trace: the rules that need its history are
        `unknown` until that cycle ends; the others are judged."""
        if not isinstance(state, dict):
            return
        mods = state.get("modules")
        if isinstance(mods, list):
            self.modules_known = True
            for m in mods:
                if isinstance(m, str):
                    self.modules[m] = ModuleState(Presence.LOADED)
        for p in state.get("patches") or []:
            if not isinstance(p, dict) or not isinstance(p.get("name"), str):
                continue
            ps = PatchState.from_objects(p["name"], p.get("objects") or [],
                                         bool(p.get("replace")))
            enabled = p.get("enabled", True)
            if p.get("transition"):
                ps.phase = Phase.PATCHING if enabled else Phase.UNPATCHING
                ps.target = "patched" if enabled else "unpatched"
            else:
                # enabled = 0 and no transition: on its way out of sysfs, or
                # an enable that has not reached its init yet
                ps.phase = Phase.PATCHED if enabled else Phase.ANNOUNCED
            ps.doubt = BEFORE_TRACE
            for o in ps.objects.values():     # taken as patched where loaded
                if self._presence(o.name) is not Presence.UNLOADED:
                    o.armed = o.post_patched = True
            self.patches[ps.name] = ps

    @property
    def transition(self) -> PatchState | None:
        """klp_transition_patch, as the kernel state tracker knows it."""
        t = self.kstate.transition
        return self.patches.get(t.patch) if t is not None else None

    # --- the record stream ----------------------------------------------------

    def feed(self, rec: dict) -> list[Finding]:
        try:
            return self._judge_record(rec)
        finally:
            self.kstate.apply(rec)

    def _judge_record(self, rec: dict) -> list[Finding]:
        # the validator's hot path (docs/benchmarks.md): few calls here
        self.stats.records += 1
        ref = self._last_ref = (rec["seq"], rec["ts_ns"])
        out: list[Finding] = []
        t = rec["type"]
        if t == "callback":
            self._callback(rec, ref, out)
        elif t == "transition":
            s = self.open
            if s is not None:
                if (s.module is None and s.cancelled and not s.complete_seen
                        and rec["event"] == "complete" and s.patch.name == rec["patch"]):
                    # klp_cancel_transition calls klp_complete_transition: the same step
                    s.complete_seen = True
                    return out
                self._close_open(out, ref)
            self._transition(rec, ref, out)
        elif t == "module":
            e, mod = rec["event"], rec["module"]
            if e == "coming" or e == "going":
                if self.open is not None:
                    self._close_open(out, ref)
                self._open_section(mod, e, ref, out)
            elif e == "live":
                self._live(mod, ref, out)
            else:
                self._refused(mod, ref, out)
        elif t == "patch":
            self._patch_record(rec, ref, out)
        elif t == "loss":
            self._loss(rec, ref, out)
        return out

    def finish(self) -> list[Finding]:
        out: list[Finding] = []
        end = (self._last_ref[0] + 1, self._last_ref[1])
        s = self.open
        if s is not None:
            # The trace ended inside a step. If everything it owes has run,
            # it closes as usual; otherwise the rest may still have been
            # running: a warning.
            owed: list = []
            self._close_open(out, end, report=lambda *finding: owed.append(finding))
            if owed:
                if isinstance(s, Completion):
                    self._warn(out, f"trace ends while the {s.target} completion of "
                               f"'{s.patch.name}' may still be running its callbacks",
                               s.patch.name)
                else:
                    self._warn(out, f"trace ends while module '{s.module}' is {s.event}",
                               None, s.module, [s.ref])
        for ms in self.modules.values():
            if ms.load is not None:     # no refusal came: the load went through
                self._settle(ms, out, refused=False)
        for ps in self.patches.values():
            if not ps.phase.in_klp_patches:
                continue
            if ps.target is not None:
                self._warn(out, f"trace ends with '{ps.name}' in transition to {ps.target} "
                           f"(phase {ps.phase.value}): that cycle is open", ps.name)
            else:
                n = sum(1 for o in ps.objects.values() if o.armed or o.post_patched)
                self._warn(out, f"'{ps.name}' still enabled at the end of the trace: "
                           f"{n} object cycle(s) open, not judged", ps.name)
        return out

    # --- free patch records: facts, never steps -------------------------------

    def _patch_record(self, rec: dict, ref, out: list) -> None:
        pname, e = rec["patch"], rec["event"]
        ps = self.patches.get(pname)
        if e == "enable":
            # klp_enable_patch begins; the patch joins klp_patches at its init
            self.patches.pop(pname, None)
            self.patches[pname] = PatchState.from_objects(pname, rec.get("objects") or [],
                                                          bool(rec.get("replace")))
        elif e == "enable_failed":
            if ps is None:
                return
            if ps.phase is Phase.ANNOUNCED:
                ps.phase = Phase.GONE   # failed before its init: never in klp_patches
            elif ps.phase in (Phase.PATCHING, Phase.PATCHED) and ps.doubt is None:
                self._warn(out, f"'{pname}' enable_failed after its patching transition "
                           "started (klp_enable_patch returns 0 once it starts)", pname,
                           None, [ref])
            # otherwise the cancel and its completion, pinned, end the cycle
        elif e == "replaced":
            if ps is None:
                self.patches[pname] = PatchState(pname, {}, phase=Phase.REPLACED)
            elif ps.phase.in_klp_patches:
                self._mark_replaced(ps)
        elif e == "removed":
            # the livepatch module is unloaded; kept (gone) so that a later
            # callback of it is judged KLP-LOAD-002
            if ps is None or ps.phase is Phase.REPLACED:
                return
            if ps.phase.in_klp_patches and not (ps.phase is Phase.COMPLETING
                                                   and ps.target == "unpatched"):
                if ps.doubt is None:
                    self._warn(out, f"'{pname}' removed while still enabled", pname, None,
                               [ref])
                self._end_cycle(ps, out)
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
        self._unknown(out, f"{what} before this point: patches enabled now are not judged "
                      "until their cycles end", None, [ref])
        # every patch: one not enabled now may have been enabled in the gap
        for ps in self.patches.values():
            ps.doubt = LOST
        self.gap = True
        # what modules did in the gap is unknown too
        self.open = None
        self.modules = {}
        self.modules_known = False
