"""The engine's state: what the kernel's livepatch core holds, as far as the
trace shows it (kernel/livepatch/core.c, transition.c).

One ``PatchState`` per livepatch and one ``ObjState`` per (patch, object)
mirror struct klp_patch and struct klp_object; one ``ModuleState`` per module
says whether it is loaded; ``EngineState`` holds them all, with the step that
is open and what the engine cannot know. Nothing here judges: the judges
(tracer/judge/callbacks.py, steps.py, sections.py) read and change this state
as records arrive.

The kernel's livepatch state as such (the transition in progress, its target
and outcome) is tracer/model/livestate.py's, shared with the daemon's other
sinks; this state is what judging needs on top of it: each object's history in
its cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from klptrace.tracer.model import events as ev
from klptrace.tracer.model.livestate import LivepatchState

NEVER = (-1, -1)   # a (seq, ts_ns) reference older than every record


class Phase(Enum):
    """Where a patch stands in its cycle. A cycle runs from the patching
    transition's init to the end of the unpatching completion (or of the
    cancel's completion when the enable failed)."""
    ANNOUNCED = "announced"              # `enable` seen; klp_init_patch has not put it in klp_patches yet
    PATCHING_INIT = "patching_init"      # klp_init_transition(PATCHED) .. start/cancel: pre_patch runs
    PATCHING = "patching"                # klp_start_transition(PATCHED) .. complete
    UNPATCHING_INIT = "unpatching_init"  # klp_init_transition(UNPATCHED) .. start: pre_unpatch runs
    UNPATCHING = "unpatching"            # klp_start_transition(UNPATCHED) .. complete
    COMPLETING = "completing"            # klp_complete_transition runs the post callbacks
    PATCHED = "patched"                  # enabled, no transition
    GONE = "gone"                        # not in klp_patches: never enabled here, disabled, failed, removed
    REPLACED = "replaced"                # atomically replaced (klp_unpatch_replaced_patches)


# In klp_patches: the patch is processed by klp_module_coming / going. It is
# added by klp_init_patch right before the init record (same klp_mutex hold)
# and leaves at the end of its unpatching (or cancel) completion.
IN_KLP_PATCHES = frozenset({Phase.PATCHING_INIT, Phase.PATCHING, Phase.PATCHED,
                            Phase.UNPATCHING_INIT, Phase.UNPATCHING, Phase.COMPLETING})
# Callbacks of a patch in these phases are judged by the callback rules; in
# the others the patch is not enabled at all (KLP-LOAD-002, KLP-REPLACE-001).
ADMITS_CALLBACKS = IN_KLP_PATCHES | {Phase.ANNOUNCED}
# The same as attributes of the members: the hot path reads them instead of
# hashing an enum member (Enum.__hash__ is Python code).
for _p in Phase:
    _p.in_klp_patches = _p in IN_KLP_PATCHES
    _p.admits_callbacks = _p in ADMITS_CALLBACKS
del _p

# Why a patch's history cannot be judged (PatchState.doubt).
BEFORE_TRACE = "its cycle began before the trace started"
NO_ENABLE = "its enable is not in this trace"
LOST = "records were lost"


class Presence(Enum):
    LOADED = "loaded"
    UNLOADED = "unloaded"
    REFUSED = "refused"      # its last load was refused by the livepatch core
    UNKNOWN = "unknown"


@dataclass
class ObjState:
    name: str
    callbacks: frozenset[str] | None     # registered callbacks; None = not known
    armed: bool = False                  # kernel: callbacks.post_unpatch_enabled
    post_patched: bool = False           # post_patch's step passed; pre_unpatch now owed
    failed: bool = False                 # pre_patch failed in this cycle
    ran: dict = field(default_factory=dict)   # callback -> (seq, ts) of its last run this cycle
    unsure: bool = False                 # a step passed while its module's state was unknown

    def registers(self, cb: str) -> bool:
        return self.callbacks is None or cb in self.callbacks

    def reset(self) -> None:
        """A new cycle for this object: its module (re)loads or its patch's cycle ends."""
        self.armed = self.post_patched = self.failed = self.unsure = False
        self.ran = {}


@dataclass
class PatchState:
    name: str
    objects: dict[str, ObjState]          # in the patch's object order (klp_for_each_object)
    replace: bool = False
    phase: Phase = Phase.ANNOUNCED
    target: str | None = None             # target of the open transition, if any
    doubt: str | None = None              # why this patch's history cannot be judged
    # the record that ended a cycle in doubt: a step that began before it
    # (still open when a free record such as `removed` ended the cycle) owes
    # this patch nothing that can be judged
    doubt_ended: tuple[int, int] | None = None
    reversed_: bool = False               # this cycle's patching transition was reversed
    cancelled: bool = False               # patching cancelled before start
    init_ref: tuple[int, int] | None = None      # `init` of the open transition
    failed_ref: tuple[int, int] | None = None    # failing pre_patch of this enable

    @classmethod
    def from_objects(cls, name: str, objects: list, replace: bool) -> "PatchState":
        objs = {}
        for o in objects:
            if isinstance(o, dict) and isinstance(o.get("name"), str):
                cbs = o.get("callbacks")
                objs[o["name"]] = ObjState(o["name"],
                                           frozenset(cbs) if isinstance(cbs, list) else None)
        return cls(name, objs, replace=replace)

    def new_cycle(self) -> None:
        self.reversed_ = self.cancelled = False
        self.failed_ref = None
        for o in self.objects.values():
            o.reset()


@dataclass
class ModuleState:
    presence: Presence
    # the failing pre_patch of the coming section that refused this load: the
    # kernel then never lets the module run (KLP-FAIL-002 if the trace shows
    # it loaded), and the objects keep what that section left in them
    refusal: tuple[int, int] | None = None
    # the last coming section while its outcome is not settled (tracer/judge/sections.py)
    load: object | None = None


class EngineState:
    """What the engine knows, shared by its judges. ``open`` is the step
    under klp_mutex that the last pinned record opened and no record has
    closed yet: a Completion (tracer/judge/steps.py) or a Section
    (tracer/judge/sections.py); at most one is open, as klp_mutex allows."""

    def __init__(self, header: dict, kstate: LivepatchState | None):
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
        self.gap = False                     # records were lost somewhere before
        self.last_ref = (0, 0)               # (seq, ts_ns) of the last record
        self._load(header.get("state"))

    def _load(self, state: dict | None) -> None:
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
                if self.presence(o.name) is not Presence.UNLOADED:
                    o.armed = o.post_patched = True
            self.patches[ps.name] = ps

    @property
    def transition(self) -> PatchState | None:
        """klp_transition_patch, as the kernel state tracker knows it."""
        t = self.kstate.transition
        return self.patches.get(t.patch) if t is not None else None

    # --- presence of modules ----------------------------------------------------

    def module_state(self, mod: str) -> ModuleState:
        ms = self.modules.get(mod)
        if ms is None:
            ms = self.modules[mod] = ModuleState(
                Presence.UNLOADED if self.modules_known else Presence.UNKNOWN)
        return ms

    def presence(self, name: str) -> Presence:
        if name == ev.VMLINUX:
            return Presence.LOADED
        s = self.open
        if s is not None and s.module == name:
            return Presence.LOADED      # its own section is running
        ms = self.modules.get(name)
        if ms is None:
            return Presence.UNLOADED if self.modules_known else Presence.UNKNOWN
        return ms.presence

    def reaches(self, o: ObjState) -> bool:
        """Whether a step that runs o's callbacks only when o is loaded
        (klp_is_object_loaded) reaches o. When its module's state is not known
        (after lost records) it is taken as reached and o's later history is
        in doubt: judged `unknown`, never a violation."""
        p = self.presence(o.name)
        if p is Presence.UNKNOWN:
            o.unsure = True
            return True
        return p is Presence.LOADED

    def module_gone(self, ms: ModuleState, mod: str) -> None:
        ms.presence, ms.refusal, ms.load = Presence.UNLOADED, None, None
        self.reset_module_objects(mod)

    def reset_module_objects(self, mod: str) -> None:
        for ps in self.patches.values():
            o = ps.objects.get(mod)
            if o is not None:
                o.reset()

    def forget_modules(self) -> None:
        """Records were lost: what modules did in the gap is unknown."""
        self.open = None
        self.modules = {}
        self.modules_known = False
