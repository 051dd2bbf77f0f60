"""The kernel's livepatch state as the trace tells it, tracked once.

One tracker, fed the records in trace order, read by every consumer that
needs to know what the kernel holds now: the rule engine (which patch is
klp_transition_patch, whether its transition was reversed or forced, how it
ended), the stall view (which transition is open, since when, in which
direction), the metrics and `klptrace status`. It mirrors what
kernel/livepatch/core.c and transition.c keep:

* ``patches``: klp_patches, in list order (a patch joins at its patching
  transition's init, leaves at the end of its unpatching or cancelled
  completion, or when an atomic replace removes it), with the callbacks each
  object registers;
* ``transition``: klp_transition_patch and klp_target_state while one is in
  progress: from `init` to `complete` or `cancel` (or the patch leaving);
  its direction changes at each `reverse`;
* ``modules``: the modules the trace shows loaded (None: not known, e.g.
  after lost records).

The start state is the trace header's `state` (the writer's view of sysfs at
start): a transition open then is marked ``before_trace``. This is the only
place that derives "the trace began inside a transition".

Invariant: ``apply`` changes the state only as the kernel's own order allows
a record to; a record that does not fit (a lost record's consequence, a
fuzzed trace) leaves the state as close to the kernel's as it can be, never
raises. What the records *should* have been is the engine's to judge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PATCHED, UNPATCHED = "patched", "unpatched"


@dataclass
class Transition:
    """klp_transition_patch and the transition it is in."""
    patch: str
    target: str                     # klp_target_state: patched | unpatched
    began_ns: int                   # its init, or its last reverse (0: before the trace)
    opened_ns: int | None = None    # its first start (sysfs `transition` = 1 since then)
    started_ns: int | None = None   # the last start (after a reverse: its own start)
    reversed: bool = False          # the current direction came from a reverse
    forced: bool = False
    cancelled: bool = False         # klp_cancel_transition: it completes unpatched, nothing ran
    before_trace: bool = False      # open when the trace began
    direction: int = 0              # bumped at init and at each reverse (trace-wide count)

    @property
    def outcome(self) -> str:
        """How it ends if it ends now (the `outcome` label): cancelled, forced,
        reversed or completed."""
        return ("cancelled" if self.cancelled else "forced" if self.forced else
                "reversed" if self.reversed else "completed")


@dataclass
class Ended:
    """The last transition that ended, and what ended it (a `complete`,
    `cancel`, or the next `init`)."""
    transition: Transition
    cause: str
    ts_ns: int


@dataclass
class PatchView:
    name: str
    replace: bool = False
    objects: dict[str, frozenset[str] | None] = field(default_factory=dict)   # obj -> callbacks


class LivepatchState:
    def __init__(self) -> None:
        self.patches: dict[str, PatchView] = {}       # klp_patches, in list order
        self.announced: dict[str, PatchView] = {}     # `enable` seen, init not yet
        self.transition: Transition | None = None
        self.ended: Ended | None = None
        self.modules: set[str] | None = None          # loaded modules; None: not known
        self._directions = 0

    @classmethod
    def from_state(cls, state: dict | None) -> "LivepatchState":
        """The header's `state`: sysfs at the trace's start."""
        s = cls()
        if not isinstance(state, dict):
            return s
        mods = state.get("modules")
        if isinstance(mods, list):
            s.modules = {m for m in mods if isinstance(m, str)}
        for p in state.get("patches") or []:
            if not isinstance(p, dict) or not isinstance(p.get("name"), str):
                continue
            view = _view(p["name"], p.get("objects"), p.get("replace"))
            enabled = p.get("enabled", True)
            if p.get("transition"):
                s.patches[view.name] = view
                s._directions += 1
                # its init and start are before the trace: not known
                s.transition = Transition(view.name, PATCHED if enabled else UNPATCHED, 0,
                                          before_trace=True, direction=s._directions)
            elif enabled:
                s.patches[view.name] = view
        return s

    # --- reading -------------------------------------------------------------------

    def in_transition(self, patch: str) -> bool:
        t = self.transition
        return t is not None and t.patch == patch

    def targeted(self, module: str) -> bool:
        """Whether a patch in klp_patches has an object for this module."""
        return any(module in p.objects for p in self.patches.values())

    # --- the records ----------------------------------------------------------------

    def apply(self, rec: dict) -> None:
        t = rec.get("type")
        if t == "transition":
            self._transition(rec)
        elif t == "patch":
            self._patch(rec)
        elif t == "module":
            self._module(rec)
        elif t == "loss":
            # what modules did in the gap is not known; a transition open
            # before it is taken as still open until a record ends it
            self.modules = None

    def _transition(self, rec: dict) -> None:
        pname, e, target, ts = rec["patch"], rec["event"], rec["target"], rec["ts_ns"]
        t = self.transition
        if e == "init":
            if t is not None:
                self._end(t, "init", ts)
            if target == PATCHED:
                view = self.announced.pop(pname, None) or self.patches.pop(pname, None) \
                    or PatchView(pname)
                self.patches.pop(pname, None)
                self.patches[pname] = view          # klp_init_patch: list_add_tail
            self._directions += 1
            self.transition = Transition(pname, target, ts, direction=self._directions)
            return
        if t is None or t.patch != pname:
            if e != "start":
                return
            # a start whose init is not in the trace (lost records): the
            # kernel is in this transition all the same
            self._directions += 1
            t = self.transition = Transition(pname, target, ts, direction=self._directions)
        if e == "start":
            t.target = target
            t.started_ns = ts
            if t.opened_ns is None:
                t.opened_ns = ts            # a start after a reverse keeps the first
        elif e == "reverse":
            # klp_reverse_transition then calls klp_start_transition: a
            # `start` follows, the current direction's
            self._directions += 1
            t.target, t.began_ns = target, ts
            t.reversed, t.direction = True, self._directions
        elif e == "force":
            t.forced = True
        elif e == "cancel":
            t.cancelled, t.target = True, UNPATCHED
            self._end(t, "cancel", ts)
            self._leave(pname, ts)
        elif e == "complete":
            t.target = target
            self._end(t, "complete", ts)
            if target == UNPATCHED:
                self._leave(pname, ts)      # klp_free_patch_async: out of klp_patches
            elif self.patches.get(pname) is not None and self.patches[pname].replace:
                for other in [n for n in self.patches if n != pname]:
                    self._leave(other, ts)  # klp_unpatch_replaced_patches

    def _end(self, t: Transition, cause: str, ts: int) -> None:
        self.ended = Ended(t, cause, ts)
        if self.transition is t:
            self.transition = None

    def _leave(self, pname: str, ts: int) -> None:
        self.patches.pop(pname, None)
        if self.transition is not None and self.transition.patch == pname:
            self._end(self.transition, "gone", ts)

    def _patch(self, rec: dict) -> None:
        pname, e = rec["patch"], rec["event"]
        if e == "enable":
            self.announced[pname] = _view(pname, rec.get("objects"), rec.get("replace"))
        elif e == "enable_failed":
            self.announced.pop(pname, None)
        elif e in ("replaced", "removed"):
            self.announced.pop(pname, None)
            self._leave(pname, rec["ts_ns"])

    def _module(self, rec: dict) -> None:
        name, e = rec["module"], rec["event"]
        if self.modules is None:
            return
        if e in ("coming", "live"):
            self.modules.add(name)
        elif e in ("going", "refused"):
            self.modules.discard(name)


def _view(name: str, objects, replace) -> PatchView:
    objs: dict[str, frozenset[str] | None] = {}
    for o in objects or []:
        if isinstance(o, dict) and isinstance(o.get("name"), str):
            cbs = o.get("callbacks")
            objs[o["name"]] = frozenset(cbs) if isinstance(cbs, list) else None
    return PatchView(name, bool(replace), objs)

