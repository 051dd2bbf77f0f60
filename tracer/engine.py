"""The rule engine: a per-(patch, object) state machine that judges a stream of
trace records against the rules in tracer.rules.

It runs the same way online (the daemon feeds each record as the BPF probes
produce it) and offline (``klptrace validate`` feeds a file): ``feed(record)``
returns the findings that record settles, ``finish()`` those the end of the
trace settles. Memory grows with live patches, objects and modules, never
with the length of the trace.

The model is the kernel's own (kernel/livepatch/core.c, transition.c):

* One transition at a time (klp_mutex). ``init`` opens it; for patching, the
  loaded objects' pre_patch callbacks run in object order before ``start``; a
  failing one cancels (``cancel``) and the objects that did patch get
  post_unpatch only. For unpatching, pre_unpatch runs for patched objects
  before ``start``. ``complete`` begins klp_complete_transition, which runs
  post_patch (target patched) or post_unpatch (target unpatched) for every
  loaded object; the completion window closes at the next record that needs
  klp_mutex. ``reverse`` flips the target: no pre_unpatch runs.
* A module coming (klp_module_coming) runs pre_patch, then post_patch unless
  that patch is the one in transition; a module going runs pre_unpatch unless
  the patch is in transition, then post_unpatch. A refused load cleans up the
  patches processed before the failing one the same way.
* Per object the kernel keeps ``post_unpatch_enabled`` (pre_patch succeeded);
  we keep that as ``armed`` and add ``post_patched`` for the other pair.

Three verdicts: ``violation`` (the trace shows what the specification
forbids), ``unknown`` (the engine cannot judge: lost records, a cycle that
began before the trace; never a violation) and ``warning``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import events as ev
from .rules import RULES

VIOLATION, UNKNOWN, WARNING = "violation", "unknown", "warning"

# Transition outcomes, as exported.
OUTCOMES = ("completed", "reversed", "cancelled", "forced")

# Callback results, as exported: pre_patch returns a code, the others are void.
RESULTS = ("ok", "error", "unknown", "void")


@dataclass
class Finding:
    kind: str                     # violation | unknown | warning
    message: str
    rule: str | None = None
    patch: str | None = None
    object: str | None = None
    records: list[tuple[int, int]] = field(default_factory=list)  # (seq, ts_ns)

    def to_json(self) -> dict:
        d = {"kind": self.kind, "rule": self.rule, "patch": self.patch,
             "object": self.object, "message": self.message,
             "records": [{"seq": s, "ts_ns": t} for s, t in self.records]}
        if self.rule:
            d["spec"] = RULES[self.rule].quote
        return d


def _ref(rec: dict) -> tuple[int, int]:
    return (rec["seq"], rec["ts_ns"])


@dataclass
class ObjState:
    name: str
    callbacks: frozenset[str] | None     # registered callbacks; None = not known
    armed: bool = False                  # kernel: callbacks.post_unpatch_enabled
    post_patched: bool = False           # post_patch ran, pre_unpatch now owed
    failed: bool = False                 # pre_patch failed in this cycle
    ran: dict = field(default_factory=dict)  # callback -> (seq, ts) in this cycle
    unsure: bool = False                 # a step passed while its module's state was unknown

    def registers(self, cb: str) -> bool:
        return self.callbacks is None or cb in self.callbacks

    def reset(self) -> None:
        self.armed = self.post_patched = self.failed = self.unsure = False
        self.ran = {}


@dataclass
class PatchState:
    name: str
    objects: dict[str, ObjState]
    replace: bool = False
    enabled: bool = True          # in the kernel's klp_patches list
    uncertain: str | None = None  # why this patch's history cannot be judged
    phase: str = "enabling"       # enabling|patching_init|patching|patched|
                                  # unpatching_init|unpatching|completing
    target: str | None = None     # target of the open transition, if any
    reversed_: bool = False       # the patching transition of this cycle reversed
    reversed_now: bool = False    # the open transition was reversed (either way)
    cancelled: bool = False       # patching cancelled before start
    forced: bool = False
    init_ref: tuple[int, int] | None = None        # `init` of the open transition
    completion_ref: tuple[int, int] | None = None  # `complete`/`cancel` opening the window
    failed_ref: tuple[int, int] | None = None   # failing pre_patch of this enable
    start_ts: int | None = None
    replaced: bool = False


@dataclass
class Stats:
    """Counters both exporters read: the live daemon at scrape time and
    ``validate --textfile`` at the end, so they agree on the same trace."""
    records: int = 0
    callbacks: dict = field(default_factory=dict)     # (patch,obj,cb,result,evidence) -> n
    violations: dict = field(default_factory=dict)    # (rule, patch) -> n
    transitions: dict = field(default_factory=dict)   # (patch, target, outcome) -> n
    lost_records: int = 0
    unknown: int = 0
    warnings: int = 0

    def bump(self, table: dict, key: tuple, n: int = 1) -> None:
        table[key] = table.get(key, 0) + n

    def merge(self, other: "Stats") -> None:
        """Add another trace's counts (validate over several files)."""
        self.records += other.records
        self.lost_records += other.lost_records
        self.unknown += other.unknown
        self.warnings += other.warnings
        for mine, theirs in ((self.callbacks, other.callbacks),
                             (self.violations, other.violations),
                             (self.transitions, other.transitions)):
            for k, n in theirs.items():
                self.bump(mine, k, n)


class Engine:
    def __init__(self, header: dict | None = None, *, on_transition_done=None):
        header = header or {}
        self.stats = Stats()
        self.patches: dict[str, PatchState] = {}
        # module name -> "loaded" | "unloaded"; absent = not known
        self.modules: dict[str, str] = {}
        self.modules_known = False           # header listed the loaded modules
        self.windows: dict[str, dict] = {}   # module -> {"event", "ref", "failed"}
        self.completion: PatchState | None = None   # completion window open
        self.transition: PatchState | None = None   # patch in transition
        self.observes = frozenset(header.get("observes") or ev.CALLBACKS)
        self._on_transition_done = on_transition_done
        self._unknown_said: set = set()
        self._last_ref = (0, 0)
        self._cancel_ref = None
        self.gap = False                     # records were lost somewhere before
        self._by_callback = {ev.PRE_PATCH: self._cb_pre_patch, ev.POST_PATCH: self._cb_post_patch,
                             ev.PRE_UNPATCH: self._cb_pre_unpatch,
                             ev.POST_UNPATCH: self._cb_post_unpatch}
        self._load_state(header.get("state"))

    # --- start state ----------------------------------------------------------

    def _load_state(self, state: dict | None) -> None:
        """The writer's view at start. A patch already enabled has cycles that
        began before the trace: its history is unknown until they end."""
        if not isinstance(state, dict):
            return
        mods = state.get("modules")
        if isinstance(mods, list):
            self.modules_known = True
            for m in mods:
                if isinstance(m, str):
                    self.modules[m] = "loaded"
        for p in state.get("patches") or []:
            if not isinstance(p, dict) or not isinstance(p.get("name"), str):
                continue
            ps = self._new_patch(p["name"], p.get("objects") or [], bool(p.get("replace")))
            ps.phase = "patched" if p.get("enabled", True) else "unpatched"
            ps.uncertain = "its cycle began before the trace started"
            if p.get("transition"):
                ps.phase = "patching" if p.get("enabled", True) else "unpatching"
                ps.target = "patched" if p.get("enabled", True) else "unpatched"
                self.transition = ps
            for o in ps.objects.values():
                o.armed = o.post_patched = True   # assume patched; judged unknown
            self.patches[ps.name] = ps

    def _new_patch(self, name: str, objects: list, replace: bool) -> PatchState:
        objs = {}
        for o in objects:
            if isinstance(o, dict) and isinstance(o.get("name"), str):
                cbs = o.get("callbacks")
                objs[o["name"]] = ObjState(o["name"], frozenset(cbs) if isinstance(cbs, list) else None)
        return PatchState(name, objs, replace=replace)

    # --- findings -------------------------------------------------------------

    def _judge(self, out: list, ps: PatchState | None, rule: str, message: str,
               obj: str | None, refs: list) -> None:
        """A broken rule is a violation unless the patch's history is unknown
        (lost records, began before the trace): then it is `unknown`, once."""
        pname = ps.name if ps else None
        o = ps.objects.get(obj) if ps is not None and obj is not None else None
        if ps is not None and not ps.uncertain and o is not None and o.unsure:
            # only this object's history is in doubt (its module's state was
            # unknown, after lost records): unknown, once per rule
            key = (pname, obj, rule)
            if key not in self._unknown_said:
                self._unknown_said.add(key)
                self.stats.unknown += 1
                out.append(Finding(UNKNOWN, f"not judged (module '{obj}' state unknown): "
                                   f"{message}", rule, pname, obj, refs))
            return
        if ps is not None and ps.uncertain:
            key = (pname, obj, rule)
            if key in self._unknown_said:
                return
            self._unknown_said.add(key)
            self.stats.unknown += 1
            out.append(Finding(UNKNOWN, f"not judged ({ps.uncertain}): {message}",
                               rule, pname, obj, refs))
            return
        self.stats.bump(self.stats.violations, (rule, pname or ""))
        out.append(Finding(VIOLATION, message, rule, pname, obj, refs))

    def _warn(self, out: list, message: str, patch=None, obj=None, refs=()) -> None:
        self.stats.warnings += 1
        out.append(Finding(WARNING, message, None, patch, obj, list(refs)))

    # --- helpers --------------------------------------------------------------

    @staticmethod
    def _module_of(obj: str) -> str | None:
        return None if obj == ev.VMLINUX else obj

    def _loaded(self, obj: str) -> bool | None:
        """vmlinux always; a module if known loaded (or coming/going now)."""
        mod = self._module_of(obj)
        if mod is None:
            return True
        if mod in self.windows:
            return True
        st = self.modules.get(mod)
        if st is None:
            return None if not self.modules_known else False
        return st == "loaded"

    def _maybe_loaded(self, o: ObjState) -> bool:
        """For a step that patches (or not) o's module: False only if it is known
        not to be loaded. Taken as loaded when not known (after lost records),
        and then o's later findings are `unknown`, never violations."""
        loaded = self._loaded(o.name)
        if loaded is None:
            o.unsure = True
        return loaded is not False

    def _live_patches(self):
        return [p for p in self.patches.values() if p.enabled]

    # --- the record stream ----------------------------------------------------

    def feed(self, rec: dict) -> list[Finding]:
        # the validator's hot path (docs/benchmarks.md): no helper calls here
        self.stats.records += 1
        self._last_ref = (rec["seq"], rec["ts_ns"])
        out: list[Finding] = []
        t = rec["type"]
        if t == "callback":
            self._callback(rec, out)
        elif t == "transition":
            c = self.completion
            if (c is not None and c.cancelled and c.name == rec["patch"]
                    and rec["event"] == "complete" and c.phase == "completing"
                    and c.completion_ref == self._cancel_ref):
                return out   # klp_cancel_transition calls klp_complete_transition
            self._close_windows(out, rec)
            self._transition(rec, out)
        elif t == "patch":
            if rec["event"] != "replaced":   # replaced is emitted inside a completion
                self._close_windows(out, rec)
            self._patch(rec, out)
        elif t == "module":
            self._module(rec, out)
        elif t == "loss":
            self._loss(rec, out)
        return out

    def finish(self) -> list[Finding]:
        out: list[Finding] = []
        # The trace ended inside a window. If everything owed has run, close it
        # as usual; otherwise the rest may still have been running: a warning.
        c = self.completion
        if c is not None:
            cb = ev.POST_PATCH if c.target == "patched" else ev.POST_UNPATCH
            if self._missing(c, c.objects.values(), cb, c.completion_ref,
                             need=lambda o: o.armed):
                self._warn(out, f"trace ends while the {c.target} completion of "
                           f"'{c.name}' may still be running its callbacks", c.name)
                self.completion = None
            else:
                self._close_windows(out, {"seq": self._last_ref[0] + 1,
                                          "ts_ns": self._last_ref[1]})
        for mod, w in list(self.windows.items()):
            if any(ps.enabled and self._missing(ps, [o], cb, w["ref"])
                   and not (cb == ev.POST_PATCH and not o.armed)
                   for ps, o, cb in w["owed"]):
                self._warn(out, f"trace ends while module '{mod}' is {w['event']}", None,
                           mod, [w["ref"]])
                del self.windows[mod]
            else:
                self._close_module_window(mod, out, self._last_ref)
        for ps in self.patches.values():
            if not ps.enabled:
                continue
            if ps.target is not None:
                self._warn(out, f"trace ends with '{ps.name}' in transition to {ps.target} "
                           f"(phase {ps.phase}): that cycle is open", ps.name)
            else:
                n = sum(1 for o in ps.objects.values() if o.armed or o.post_patched)
                self._warn(out, f"'{ps.name}' still enabled at the end of the trace: "
                           f"{n} object cycle(s) open, not judged", ps.name)
        return out

    # --- callbacks ------------------------------------------------------------

    def _callback(self, rec: dict, out: list) -> None:
        pname, oname, cb = rec["patch"], rec["object"], rec["callback"]
        if cb == ev.PRE_PATCH:
            ret = rec.get("ret")
            result = "unknown" if ret is None else ("ok" if ret == 0 else "error")
        else:
            result = "void"
        counts = self.stats.callbacks
        key = (pname, oname, cb, result, rec.get("evidence") or "direct")
        counts[key] = counts.get(key, 0) + 1
        ref = self._last_ref
        ps = self.patches.get(pname)
        if ps is None:
            # Never enabled in this trace, and not enabled when it began.
            if self.gap:      # its enable may be among the lost records
                self._unknown_once(out, pname, "records were lost before it", ref)
            elif self.modules_known or self.patches:
                self._judge(out, None, "KLP-LOAD-002",
                            f"{cb} of '{pname}'/{oname}: that livepatch was never enabled "
                            "in this trace", oname, [ref])
            else:
                self._unknown_once(out, pname, "its enable is not in this trace", ref)
            return
        if ps.replaced:
            self._judge(out, ps, "KLP-REPLACE-001",
                        f"{cb} of '{pname}'/{oname} after '{pname}' was atomically replaced",
                        oname, [ref])
            return
        if not ps.enabled:
            self._judge(out, ps, "KLP-LOAD-002",
                        f"{cb} of '{pname}'/{oname} while '{pname}' is not enabled",
                        oname, [ref])
            return
        obj = ps.objects.get(oname)
        if obj is None:
            obj = ps.objects[oname] = ObjState(oname, None)
        if self._loaded(oname) is False:
            self._judge(out, ps, "KLP-LOAD-001",
                        f"{cb} of '{pname}'/{oname} while module '{oname}' is not loaded",
                        oname, [ref])
        window = self.windows.get(oname) if oname != ev.VMLINUX else None
        self._by_callback[cb](ps, obj, rec, ref, window, out)
        obj.ran[cb] = ref

    def _cb_pre_patch(self, ps, obj, rec, ref, window, out):
        ret = rec.get("ret")
        if obj.failed or obj.armed:
            first = obj.ran.get(ev.PRE_PATCH)
            self._judge(out, ps, "KLP-ONCE-001",
                        f"second pre_patch of '{ps.name}'/{obj.name} in one cycle",
                        obj.name, [r for r in (first, ref) if r])
        in_enable = self.transition is ps and ps.phase == "patching_init"
        in_coming = window is not None and window["event"] == "coming"
        if not (in_enable or in_coming):
            self._judge(out, ps, "KLP-ORD-001",
                        f"pre_patch of '{ps.name}'/{obj.name} outside the patching of its "
                        f"object (phase {ps.phase}, no module coming)", obj.name, [ref])
        if in_enable and ps.failed_ref is not None:
            self._judge(out, ps, "KLP-FAIL-002",
                        f"pre_patch of '{ps.name}'/{obj.name} after an earlier pre_patch of "
                        "the same enable failed", obj.name, [ps.failed_ref, ref])
        if ret is not None and ret != 0:
            obj.failed, obj.armed = True, False
            if in_coming:
                window["failed"] = ref
            else:
                ps.failed_ref = ref
        else:
            obj.failed, obj.armed = False, True

    def _cb_post_patch(self, ps, obj, rec, ref, window, out):
        if self._failed(ps, obj, ev.POST_PATCH, ref, out):
            return
        if obj.post_patched:
            self._judge(out, ps, "KLP-ONCE-001",
                        f"second post_patch of '{ps.name}'/{obj.name} before its pre_unpatch",
                        obj.name, [r for r in (obj.ran.get(ev.POST_PATCH), ref) if r])
        in_completion = self.completion is ps and ps.target == "patched"
        in_coming = (window is not None and window["event"] == "coming"
                     and self.transition is not ps)
        if ps.cancelled:
            self._judge(out, ps, "KLP-NOSTART-001",
                        f"post_patch of '{ps.name}'/{obj.name} although the transition "
                        "never started", obj.name, [ref])
        elif not (in_completion or in_coming):
            self._judge(out, ps, "KLP-ORD-002",
                        f"post_patch of '{ps.name}'/{obj.name} before its patching completed "
                        f"(phase {ps.phase})", obj.name, [ref])
        if not obj.armed and obj.registers(ev.PRE_PATCH) and not ps.uncertain:
            # patched objects all went through pre_patch (or have none)
            self._judge(out, ps, "KLP-ORD-001",
                        f"post_patch of '{ps.name}'/{obj.name} without its pre_patch",
                        obj.name, [ref])
        obj.post_patched = True

    def _cb_pre_unpatch(self, ps, obj, rec, ref, window, out):
        if self._failed(ps, obj, ev.PRE_UNPATCH, ref, out):
            return
        if not obj.post_patched:
            prev = obj.ran.get(ev.PRE_UNPATCH)
            if ps.reversed_:
                self._judge(out, ps, "KLP-REV-001",
                            f"pre_unpatch of '{ps.name}'/{obj.name} after its patching "
                            "transition was reversed", obj.name, [ref])
            elif ps.cancelled:
                self._judge(out, ps, "KLP-NOSTART-001",
                            f"pre_unpatch of '{ps.name}'/{obj.name} although the transition "
                            "never started", obj.name, [ref])
            elif prev is not None:
                self._judge(out, ps, "KLP-ONCE-001",
                            f"second pre_unpatch of '{ps.name}'/{obj.name} in one cycle",
                            obj.name, [prev, ref])
            else:
                self._judge(out, ps, "KLP-SYM-002",
                            f"pre_unpatch of '{ps.name}'/{obj.name} without its post_patch",
                            obj.name, [ref])
        in_disable = self.transition is ps and ps.phase == "unpatching_init"
        in_module = window is not None and self.transition is not ps
        if not (in_disable or in_module) and not (ps.reversed_ or ps.cancelled):
            self._judge(out, ps, "KLP-ORD-003",
                        f"pre_unpatch of '{ps.name}'/{obj.name} outside the start of its "
                        f"unpatching (phase {ps.phase})", obj.name, [ref])
        obj.post_patched = False

    def _cb_post_unpatch(self, ps, obj, rec, ref, window, out):
        if self._failed(ps, obj, ev.POST_UNPATCH, ref, out):
            return
        if not obj.armed:
            prev = obj.ran.get(ev.POST_UNPATCH)
            if prev is not None:
                self._judge(out, ps, "KLP-ONCE-001",
                            f"second post_unpatch of '{ps.name}'/{obj.name} in one cycle",
                            obj.name, [prev, ref])
            elif obj.registers(ev.PRE_PATCH):
                self._judge(out, ps, "KLP-SYM-001",
                            f"post_unpatch of '{ps.name}'/{obj.name} without a successful "
                            "pre_patch", obj.name, [ref])
        in_completion = self.completion is ps and ps.target == "unpatched"
        if not (in_completion or window is not None):
            self._judge(out, ps, "KLP-ORD-004",
                        f"post_unpatch of '{ps.name}'/{obj.name} before its unpatching "
                        f"completed (phase {ps.phase})", obj.name, [ref])
        obj.armed = obj.post_patched = False

    def _failed(self, ps, obj, cb, ref, out) -> bool:
        if obj.failed:
            self._judge(out, ps, "KLP-FAIL-001",
                        f"{cb} of '{ps.name}'/{obj.name} after its pre_patch failed",
                        obj.name, [obj.ran.get(ev.PRE_PATCH) or ref, ref])
            return True
        return False

    # --- expected callbacks (KLP-RUN-001) -------------------------------------

    def _expect(self, out, ps, objs, cb, why, refs, need=lambda o: True,
                rule: str = "KLP-RUN-001") -> None:
        """Each object in ``objs`` that is loaded, registers ``cb`` and satisfies
        ``need`` must have run ``cb`` in the window that just closed."""
        for o in self._missing(ps, objs, cb, refs[0], need):
            self._judge(out, ps, rule, f"{cb} of '{ps.name}'/{o.name} did not run {why}",
                        o.name, list(refs))

    def _missing(self, ps, objs, cb, since, need=lambda o: True) -> list[ObjState]:
        """Objects that owe ``cb`` and have not run it since ``since``."""
        if ps.uncertain or cb not in self.observes:
            return []
        miss = []
        for o in objs:
            if o.callbacks is None or cb not in o.callbacks or not need(o):
                continue
            if not self._loaded(o.name):      # not loaded, or not known
                continue
            if o.ran.get(cb) is None or o.ran[cb] < since:
                miss.append(o)
        return miss

    # --- windows --------------------------------------------------------------

    def _close_windows(self, out: list, rec: dict) -> None:
        """A record that needs klp_mutex closes the completion and module windows:
        what they owed must have run by now."""
        ref = (rec["seq"], rec["ts_ns"])
        if self.completion is not None:
            ps = self.completion
            self.completion = None
            self._end_completion(ps, out, ref)
        if self.windows:
            for mod in list(self.windows):
                self._close_module_window(mod, out, ref)

    def _end_completion(self, ps: PatchState, out: list, ref) -> None:
        start = ps.completion_ref
        if ps.target == "patched":
            self._expect(out, ps, ps.objects.values(), ev.POST_PATCH,
                         "when its patching transition completed", [start, ref],
                         need=lambda o: o.armed)
            for o in ps.objects.values():      # the post-patch step has passed
                if o.armed and self._maybe_loaded(o):
                    o.post_patched = True
            ps.phase, ps.target = "patched", None
        else:
            self._expect(out, ps, ps.objects.values(), ev.POST_UNPATCH,
                         "when its unpatching completed", [start, ref],
                         need=lambda o: o.armed or o.ran.get(ev.POST_UNPATCH, (0, 0)) >= start,
                         rule="KLP-NOSTART-001" if ps.cancelled else "KLP-RUN-001")
            self._end_cycle(ps, out)

    def _end_cycle(self, ps: PatchState, out: list) -> None:
        """Unpatching done: the patch leaves klp_patches; its next enable is a
        new cycle with a clean history."""
        if ps.uncertain:
            self.stats.unknown += 1
            out.append(Finding(UNKNOWN, f"cycle of '{ps.name}' ended; it was not judged "
                               f"because {ps.uncertain}", None, ps.name, None,
                               [self._last_ref]))
        ps.enabled = False
        ps.phase, ps.target = "unpatched", None
        ps.uncertain = None
        for o in ps.objects.values():
            o.reset()
        if self.transition is ps:
            self.transition = None

    def _open_module_window(self, mod: str, e: str, ref) -> None:
        """klp_module_coming / klp_module_going run under klp_mutex: what each
        enabled patch owes this module's object is fixed when they begin."""
        owed = []
        for ps in self._live_patches():
            o = ps.objects.get(mod)
            if o is None:
                continue
            in_transition = self.transition is ps
            if e == "coming":
                owed.append((ps, o, ev.PRE_PATCH))
                if not in_transition:
                    owed.append((ps, o, ev.POST_PATCH))   # if pre_patch succeeds
            else:
                if o.post_patched and not in_transition:
                    owed.append((ps, o, ev.PRE_UNPATCH))
                if o.armed:
                    owed.append((ps, o, ev.POST_UNPATCH))
        self.windows[mod] = {"event": e, "ref": ref, "owed": owed}

    def _close_module_window(self, mod: str, out: list, ref) -> None:
        w = self.windows.pop(mod)
        start = w["ref"]
        refused = w.get("refused") or w.get("failed")
        if w["event"] == "coming" and refused:
            # klp_module_coming failed: the load is refused, the patches before
            # the failing one cleaned up; the module never was loaded.
            self._module_gone(mod)
            return
        self.modules[mod] = "loaded"     # loaded while the owed callbacks ran
        coming = w["event"] == "coming"
        if coming:
            for ps, o, cb in w["owed"]:
                if cb == ev.PRE_PATCH and not o.failed and not o.registers(ev.PRE_PATCH):
                    o.armed = True   # patched without a pre_patch of its own
        for ps, o, cb in w["owed"]:
            if not ps.enabled:
                continue
            if cb == ev.POST_PATCH and not o.armed:
                continue        # its pre_patch did not succeed (or did not run)
            self._expect(out, ps, [o], cb, f"when module '{mod}' {w['event']}",
                         [start, ref])
        if coming:
            for ps, o, cb in w["owed"]:
                if cb == ev.POST_PATCH and o.armed:
                    o.post_patched = True   # the post-patch step has passed
        else:
            # The `going` record stands where klp_module_going held klp_mutex
            # (trace format: the writer places it there, not at the entry
            # probe): from here the module is gone for every later operation.
            self._module_gone(mod)

    def _module_gone(self, mod: str) -> None:
        self.modules[mod] = "unloaded"
        for ps in self.patches.values():
            o = ps.objects.get(mod)
            if o is not None:
                o.reset()

    # --- transitions ------------------------------------------------------------

    def _transition(self, rec: dict, out: list) -> None:
        pname, e, target = rec["patch"], rec["event"], rec["target"]
        ref = _ref(rec)
        ps = self.patches.get(pname)
        if ps is None:
            ps = self.patches[pname] = PatchState(pname, {})
            ps.uncertain = "its enable is not in this trace"
        if e == "init":
            if self.transition is not None and self.transition is not ps \
                    and self.transition.target is not None:
                self._warn(out, f"transition of '{pname}' begins while '"
                           f"{self.transition.name}' is still in transition", pname, None, [ref])
            self.transition = ps
            ps.target = target
            ps.enabled = True
            ps.init_ref = ref
            ps.forced = ps.reversed_now = False
            if target == "patched":
                ps.phase = "patching_init"
                ps.reversed_ = ps.cancelled = False
                ps.failed_ref = None
            else:
                ps.phase = "unpatching_init"
        elif e == "start":
            if ps.target != target and not ps.uncertain:
                self._warn(out, f"'{pname}' starts a transition to {target} but its init "
                           f"was to {ps.target}", pname, None, [ref])
            ps.target = target
            ps.start_ts = rec["ts_ns"]
            init = ps.init_ref or ref
            if target == "patched":
                if ps.failed_ref is not None:
                    self._judge(out, ps, "KLP-FAIL-002",
                                f"patching transition of '{pname}' started although a "
                                "pre_patch failed", None, [ps.failed_ref, ref])
                else:
                    self._expect(out, ps, ps.objects.values(), ev.PRE_PATCH,
                                 "before its patching transition started", [init, ref])
                for o in ps.objects.values():   # objects without pre_patch patch too
                    if not o.failed and not o.registers(ev.PRE_PATCH) and self._maybe_loaded(o):
                        o.armed = True
                ps.phase = "patching"
            else:
                self._expect(out, ps, ps.objects.values(), ev.PRE_UNPATCH,
                             "before its unpatching transition started", [init, ref],
                             need=lambda o: o.ran.get(ev.PRE_UNPATCH, (0, 0)) >= init
                             or o.post_patched)
                for o in ps.objects.values():   # the pre-unpatch step has passed
                    o.post_patched = False
                ps.phase = "unpatching"
        elif e == "reverse":
            # `target` is the new target. A reversed patching transition owes no
            # pre_unpatch (KLP-REV-001); a reversed unpatching one re-runs post_patch.
            if target == "unpatched":
                ps.reversed_ = True
            ps.reversed_now = True
            ps.target = target
            ps.phase = "patching" if target == "patched" else "unpatching"
        elif e == "cancel":
            if ps.failed_ref is not None:
                # objects run in order: those before the failing one ran pre_patch
                before = []
                for o in ps.objects.values():
                    if o.failed:
                        break
                    before.append(o)
                self._expect(out, ps, before, ev.PRE_PATCH,
                             "before the failing object's pre_patch",
                             [ps.init_ref or ref, ref])
                for o in before:     # patched without a pre_patch of their own
                    if not o.registers(ev.PRE_PATCH) and self._maybe_loaded(o):
                        o.armed = True
            ps.cancelled = True
            ps.target = "unpatched"
            self._cancel_ref = ref
            self._begin_completion(ps, ref, "cancelled")
        elif e == "force":
            ps.forced = True
        elif e == "complete":
            outcome = ("forced" if ps.forced else
                       "reversed" if ps.reversed_now else "completed")
            ps.target = target
            self._begin_completion(ps, ref, outcome)

    def _begin_completion(self, ps: PatchState, ref, outcome: str) -> None:
        self.stats.bump(self.stats.transitions, (ps.name, ps.target, outcome))
        if ps.start_ts is not None:
            dur = ref[1] - ps.start_ts
            if self._on_transition_done:
                self._on_transition_done(ps.name, ps.target, outcome, dur)
        ps.start_ts = None
        ps.phase = "completing"
        ps.completion_ref = ref
        self.completion = ps
        if self.transition is ps:
            self.transition = None
        if ps.target == "patched" and ps.replace:
            # klp_unpatch_replaced_patches: every other enabled patch is gone,
            # without any of its callbacks (selftest "atomic replace").
            for other in self._live_patches():
                if other is not ps:
                    self._mark_replaced(other)

    def _mark_replaced(self, ps: PatchState) -> None:
        ps.enabled = False
        ps.replaced = True
        ps.phase, ps.target = "replaced", None
        for o in ps.objects.values():
            o.reset()

    # --- patches and modules --------------------------------------------------

    def _patch(self, rec: dict, out: list) -> None:
        pname, e = rec["patch"], rec["event"]
        ps = self.patches.get(pname)
        if e == "enable":
            self.patches[pname] = self._new_patch(pname, rec.get("objects") or [],
                                                  bool(rec.get("replace")))
        elif e == "enable_failed":
            if ps is not None:
                if ps.enabled and ps.phase != "unpatched":
                    self._end_cycle(ps, out)
                ps.enabled = False
        elif e == "replaced":
            if ps is not None and not ps.replaced:
                self._mark_replaced(ps)
        elif e == "removed":
            # kept (disabled) so that a later callback of it is judged KLP-LOAD-002
            if ps is not None and ps.enabled and not ps.uncertain:
                self._warn(out, f"'{pname}' removed while still enabled", pname, None,
                           [_ref(rec)])
                self._end_cycle(ps, out)
        # "disable" is the request; its transition records carry the rules.

    def _module(self, rec: dict, out: list) -> None:
        mod, e = rec["module"], rec["event"]
        ref = _ref(rec)
        if e in ("coming", "going"):
            self._close_windows(out, rec)
            self._open_module_window(mod, e, ref)
        elif e == "refused":
            w = self.windows.get(mod)
            if w is not None:
                w["refused"] = ref
                self._close_module_window(mod, out, ref)
            else:
                self._module_gone(mod)
        elif e == "live":
            w = self.windows.get(mod)
            if w is not None and w.get("failed"):
                for ps in self._live_patches():
                    o = ps.objects.get(mod)
                    if o is not None and o.failed:
                        self._judge(out, ps, "KLP-FAIL-002",
                                    f"module '{mod}' went live although pre_patch of "
                                    f"'{ps.name}'/{mod} failed", mod, [w["failed"], ref])
                        break
            if w is not None:
                self._close_module_window(mod, out, ref)
            self.modules[mod] = "loaded"

    def _loss(self, rec: dict, out: list) -> None:
        """Records were lost: nothing in flight can be judged until its cycle
        ends. Reported as unknown, never as a violation."""
        n = rec["count"]
        self.stats.lost_records += n
        self.stats.unknown += 1
        out.append(Finding(UNKNOWN, f"{n} record(s) lost before this point: patches "
                           "enabled now are not judged until their cycles end",
                           None, None, None, [_ref(rec)]))
        # every patch: one not enabled now may have been enabled in the gap
        for ps in self.patches.values():
            ps.uncertain = "records were lost"
        self.gap = True
        # what modules did in the gap is unknown too
        self.windows.clear()
        self.modules = {}
        self.modules_known = False
        self.completion = None

    def _unknown_once(self, out, pname, why, ref) -> None:
        key = (pname, None, why)
        if key in self._unknown_said:
            return
        self._unknown_said.add(key)
        self.stats.unknown += 1
        out.append(Finding(UNKNOWN, f"'{pname}' not judged: {why}", None, pname, None, [ref]))
