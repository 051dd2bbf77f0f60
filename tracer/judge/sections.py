"""The module sections: klp_module_coming's and klp_module_going's work
under klp_mutex (kernel/livepatch/core.c), what each owes when it closes, and
how a load's outcome (accepted or refused) is settled.

A section opens at a pinned ``coming`` or ``going`` record and closes at the
next record that needs klp_mutex (tracer/judge/steps.py states the placement
principle). Per patch in klp_patches order it runs pre_patch then post_patch
(coming; post_patch not for klp_transition_patch), or pre_unpatch then
post_unpatch (klp_cleanup_module_patches_limited from klp_module_going); a
coming whose pre_patch fails unwinds the patches before the failing one the
same way and refuses the module. The free records ``live`` and ``refused``
settle a load wherever they stand.
"""

from __future__ import annotations

from klptrace.tracer.judge.findings import Verdicts
from klptrace.tracer.judge.obligations import Obligations
from klptrace.tracer.judge.state import NEVER, EngineState, ModuleState, PatchState, Presence
from klptrace.tracer.model import events as ev

PRE_PATCH, POST_PATCH, PRE_UNPATCH, POST_UNPATCH = ev.CALLBACKS
LOADED, REFUSED = Presence.LOADED, Presence.REFUSED


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



class SectionJudge:
    def __init__(self, state: EngineState, verdicts: Verdicts, obligations: Obligations):
        self.state, self.verdicts, self.obligations = state, verdicts, obligations

    def shows_loaded(self, ms: ModuleState, mod: str, what: str, ref, out: list) -> None:
        """The trace shows a refused module loaded after all (a `live`, a
        `going`, a callback). From here it is taken as loaded, with the
        objects as its coming section left them, so that what follows is
        judged as the kernel would run it."""
        if ms.refusal is not None:
            ps, failed_ref = ms.refusal
            self.obligations.request_stopped(out, ps, mod, failed_ref, ref,
                                             f"module '{mod}' {what} although pre_patch of "
                                             f"'{ps.name}'/{mod} failed in its coming section: "
                                             "the kernel refuses that load")
        else:
            self.verdicts.warn(out, f"module '{mod}' {what} after its load was refused", None, mod,
                               [ref])
        ms.presence, ms.refusal = LOADED, None


    def open_section(self, mod: str, e: str, ref, out: list) -> None:
        ms = self.state.module_state(mod)
        if ms.load is not None:
            self.settle(ms, out, refused=False)
        live = [ps for ps in self.state.patches.values() if ps.phase.in_klp_patches]
        owed = []
        if e == "coming":
            # a new load: in every patch this module's object starts a new cycle
            self.state.reset_module_objects(mod)
            ms.refusal = None
            for ps in live:
                o = ps.objects.get(mod)
                if o is not None:
                    owed.append((ps, o, ps is self.state.transition))
        else:
            if ms.presence is REFUSED:
                self.shows_loaded(ms, mod, "is going", ref, out)
            ms.presence = LOADED
            for ps in live:
                o = ps.objects.get(mod)
                if o is not None:
                    mine = ps is self.state.transition
                    owed.append((ps, o, o.post_patched and not mine, o.armed))
        self.state.open = Section(mod, e, ref, owed)

    def close_section(self, s: Section, out: list, ref, report=None) -> None:
        ms = self.state.module_state(s.module)
        mod = s.module
        if s.event == "going":
            report = report or self.verdicts.reporter(out)
            for ps, o, owes_pre, owes_post in s.owed:
                if owes_pre:
                    self.obligations.owed(report, ps, [o], PRE_UNPATCH, s.ref,
                                          f"when module '{mod}' went", [s.ref, ref],
                                          own_section=True)
                if owes_post:
                    self.obligations.owed(report, ps, [o], POST_UNPATCH, s.ref,
                                          f"when module '{mod}' went", [s.ref, ref],
                                          own_section=True)
            # the `going` record stands where klp_module_going held klp_mutex:
            # from here the module is gone for every later operation
            self.state.module_gone(ms, mod)
        elif s.failed is None and s.refused is None and s.cleanup is None:
            self._load_accepted(s, ms, out, ref, report)
        else:
            self._load_refused(s, ms, out, ref, report or self.verdicts.reporter(out))

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
                report = self.verdicts.reporter(out)
        mod = s.module
        for ps, o, mine in s.owed:
            self.obligations.owed(report, ps, [o], PRE_PATCH, s.ref, f"when module '{mod}' came",
                                  [s.ref, ref], own_section=True)
            if not o.failed and not o.registers(PRE_PATCH):
                o.armed = True          # patched without a pre_patch of its own
            if o.armed and not mine:
                self.obligations.owed(report, ps, [o], POST_PATCH, s.ref,
                                      f"when module '{mod}' came", [s.ref, ref], own_section=True)
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
                self.obligations.owed(report, ps, [o], PRE_PATCH, since,
                                      f"when module '{mod}' came", [since, ref], own_section=True)
                if o.registers(PRE_PATCH) and o.ran.get(PRE_PATCH, NEVER) < since:
                    continue            # not patched (already a violation): nothing to unwind
                why = f"to unwind it when module '{mod}' was refused"
                if not mine:
                    self.obligations.owed(report, ps, [o], POST_PATCH, since,
                                          f"when module '{mod}' came", [since, ref],
                                          own_section=True)
                    self.obligations.owed(report, ps, [o], PRE_UNPATCH, since, why, [since, ref],
                                          own_section=True)
                self.obligations.owed(report, ps, [o], POST_UNPATCH, since, why, [since, ref],
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
                    self.obligations.owed(report, ps, [o], PRE_UNPATCH, since, why, [since, ref],
                                          own_section=True)
                self.obligations.owed(report, ps, [o], POST_UNPATCH, since, why, [since, ref],
                                      own_section=True)
            ms.refusal = None
        ms.presence, ms.load = REFUSED, None
        if s.live is not None:
            self.shows_loaded(ms, mod, "went live", s.live, out)
        elif ms.refusal is None:
            self.state.reset_module_objects(mod)     # the module is gone

    def settle(self, ms: ModuleState, out: list, refused: bool, ref=None) -> None:
        """The outcome of the last load, accepted or refused, is known now."""
        s, ms.load = ms.load, None
        if not refused:
            for finding in s.held or ():
                self.verdicts.judge(out, *finding)
            return
        s.refused = ref
        self._load_refused(s, ms, out, s.closed, self.verdicts.reporter(out))

    def _open_coming(self, mod: str) -> Section | None:
        s = self.state.open
        return s if s is not None and s.module == mod and s.event == "coming" else None

    def live(self, mod: str, ref, out: list) -> None:
        s = self._open_coming(mod)
        if s is not None:
            s.live = ref                # judged with its section
            return
        ms = self.state.module_state(mod)
        if ms.presence is REFUSED:
            self.shows_loaded(ms, mod, "went live", ref, out)
        elif ms.load is not None:
            ms.load.live = ref
            self.settle(ms, out, refused=False)
        ms.presence = LOADED

    def refused(self, mod: str, ref, out: list) -> None:
        s = self._open_coming(mod)
        if s is not None:
            s.refused = ref             # judged with its section
            return
        ms = self.state.module_state(mod)
        if ms.load is not None:
            self.settle(ms, out, refused=True, ref=ref)
        elif ms.presence is not REFUSED:
            ms.presence, ms.refusal = REFUSED, None
            self.state.reset_module_objects(mod)

