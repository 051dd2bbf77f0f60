"""The engine's state: what the kernel's livepatch core holds, as far as the
trace shows it (kernel/livepatch/core.c, transition.c).

One ``PatchState`` per livepatch and one ``ObjState`` per (patch, object)
mirror struct klp_patch and struct klp_object; one ``ModuleState`` per module
says whether it is loaded. Nothing here judges: tracer/judge/callbacks.py and
tracer/judge/steps.py read and change this state as records arrive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

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
    # the last coming section while its outcome is not settled (tracer/judge/steps.py)
    load: object | None = None
