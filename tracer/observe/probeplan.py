"""The probe plan: which observation point is attached how on this kernel.

The one module that probes kernel features and decides fallbacks. For every
observation point it gathers what the kernel says (kallsyms,
available_filter_functions, the kprobe blacklist, BTF, bcc's kfunc support)
and then *tries*: a symbol in kallsyms is not proof (on 6.1
klp_post_unpatch_callback is listed but refuses kprobes). The chain per point
is fentry -> kprobe -> none; fentry is only reported (see FENTRY_NOTE), every
point here is attached as a kprobe.

Return points ("...-ret") are kretprobes only where a kretprobe cannot stall
a livepatch transition (tracer/observe/kerneltext.py ``return_probes``: the kernel's
reliable unwinder walks through the return trampoline, 5.15 and later). On an
older kernel a task with a kretprobe'd function on its stack has an
unreliable stack, and the livepatch core never switches it: the
transition's own kworker, whose sweep runs under klptrace's kretprobe on
klp_try_complete_transition, kept a reversed transition open for good on
5.10. There every return point is taken by kprobes on the function's own
exits (its `ret`s and tail calls, read from the live kernel text), which trap
and resume and are never on a stack (docs/probes.md, "Effect on transitions").

``klptrace probes`` prints the plan; the daemon writes it into the trace
header (``probes``) so a trace says how it was observed.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Protocol

from klptrace.tracer.model import events as ev
from klptrace.tracer.observe import kerneltext
from klptrace.tracer.observe.kfacts import kernel_facts, part_clone
from klptrace.tracer.observe.stallstate import StallSource

# Why fentry is not attached even where the kernel could: bcc binds an fentry
# program to its function when the C is compiled, so each fallback attempt
# would be another 10-20 s compile under TCG, and these functions run a few
# times per livepatch operation, where a kprobe costs nothing measurable.
FENTRY_NOTE = ("fentry not used: bcc binds fentry programs at compile time "
               "(a compile per attempt); kprobes on these rarely-run functions cost the same")


@dataclass(frozen=True)
class Point:
    name: str           # what we observe: the one name of the point (see prog, hit)
    func: str           # kernel function
    ret: bool = False   # kretprobe
    required: bool = True
    gives: str = ""     # what the point contributes to the evidence
    # GCC may split a function into an inline test and a ".part.N" clone with
    # the body, and a caller may jump straight into the clone (Debian 6.1:
    # klp_reverse_transition ends in `jmp klp_start_transition.part.0`). A
    # point marked here is attached at the clone when the kernel has one: every
    # path that does the work goes through it.
    part_clone: bool = False
    # attached only where one of these points is not (a fallback for them)
    fallback_for: tuple[str, ...] = ()
    # a return point whose program reads the return value (PT_REGS_RC): taken
    # at the function's exits, a tail call's value would be the callee's
    rc: bool = False
    # attached (to learn that it can be) and then armed only while needed:
    # the per-task stall checks, hit for every task at every sweep, are armed
    # once a transition's sweep has left tasks behind and disarmed when it
    # ends (tracer/observe/stalls.py); a transition that completes at once never
    # runs them
    on_demand: bool = False

    @property
    def prog(self) -> str:
        """Its BPF program in bpf/klptrace.bpf.c: on_<name>."""
        return "on_" + self.name.replace("-", "_")

    @property
    def hit(self) -> str:
        """Its hit counter (bpf/klptrace.h enum klpt_hit, the `program` label
        of klptrace_probe_hits_total): the name, except that the four core
        points share one."""
        return "core" if self.name.startswith("core-") else self.name.replace("-", "_")


_CHECK = ("stall-check", "stall-check-ret")
STALL_POINTS = (
    Point("stall-check", "klp_check_and_switch_task", required=False,
          on_demand=True, gives="stalls: the task each failed check names (5.16+)"),
    Point("stall-check-ret", "klp_check_and_switch_task", ret=True,
          required=False, rc=True, on_demand=True,
          gives="stalls: why a task has not switched (running, unreliable stack, the function)"),
    Point("stall-switch", "klp_try_switch_task", required=False,
          fallback_for=_CHECK, on_demand=True, gives="stalls, fallback: the task (no reason)"),
    Point("stall-switch-ret", "klp_try_switch_task", ret=True,
          required=False, fallback_for=_CHECK, rc=True, on_demand=True,
          gives="stalls, fallback: whether the task switched (no reason, no function)"),
    Point("stall-sweep", "klp_try_complete_transition", required=False,
          gives="stalls: sweeps (which tasks still block; the 15th-sweep signals)"),
    Point("stall-sweep-ret", "klp_try_complete_transition", ret=True,
          required=False, gives="stalls: a sweep's end, and whether it left tasks behind"),
)

POINTS = (
    Point("enable", "klp_enable_patch", gives="patch being enabled (for its return)"),
    Point("enable-ret", "klp_enable_patch", ret=True, rc=True,
          gives="enable_failed and the ret of a failing pre_patch (inferred)"),
    Point("init", "klp_init_transition",
          gives="patch enable/disable, objects and registered callbacks, transition init"),
    Point("patch-object", "klp_patch_object",
          gives="pre_patch ran and returned 0 (post_unpatch_enabled set): inferred pre_patch"),
    Point("patch-object-ret", "klp_patch_object", ret=True, rc=True,
          gives="post_patch of a module coming while its patch is not in transition"),
    Point("start", "klp_start_transition", part_clone=True,
          gives="transition start; pre_unpatch of patched objects when disabling"),
    Point("complete", "klp_complete_transition",
          gives="transition complete; post_patch / post_unpatch (post_unpatch_enabled); replaced"),
    Point("complete-ret", "klp_complete_transition", ret=True,
          required=False,
          gives="end of the completion's callbacks (else: the next event of that thread)"),
    Point("cancel", "klp_cancel_transition",
          gives="transition cancel; which object's pre_patch failed"),
    Point("reverse", "klp_reverse_transition",
          gives="transition reverse (no pre_unpatch follows)"),
    Point("force", "klp_force_transition", required=False,
          gives="transition force"),
    Point("module-coming", "klp_module_coming", gives="module coming"),
    Point("module-coming-ret", "klp_module_coming", ret=True, rc=True,
          gives="module refused; ret of a pre_patch that failed for a loading module"),
    Point("module-going", "klp_module_going", gives="module going"),
    Point("module-going-ret", "klp_module_going", ret=True,
          gives="end of a module-going cleanup"),
    Point("unpatch-object", "klp_unpatch_object",
          gives="pre_unpatch / post_unpatch of a module going or a refused load"),
    Point("core-pre-patch", "klp_pre_patch_callback", required=False,
          gives="core evidence for pre_patch"),
    Point("core-post-patch", "klp_post_patch_callback", required=False,
          gives="core evidence for post_patch"),
    Point("core-pre-unpatch", "klp_pre_unpatch_callback", required=False,
          gives="core evidence for pre_unpatch"),
    Point("core-post-unpatch", "klp_post_unpatch_callback", required=False,
          gives="core evidence for post_unpatch"),
    # Stalls (bpf/klptrace.bpf.c "stalls", tracer/observe/stalls.py): which tasks keep a
    # transition open and why. Optional: without them the trace has no `stall`
    # records and `klptrace status` reads /proc instead; callbacks are unaffected.
    *STALL_POINTS,
)

# core-<callback> -> the callback's index in struct klp_callbacks (KLPT_CB_*)
CORE_INDEX = {"core-" + cb.replace("_", "-"): i for i, cb in enumerate(ev.CALLBACKS)}


@dataclass
class PointResult:
    point: Point
    in_kallsyms: bool = False
    symbol: str = ""                # what is attached: the function, or its .part clone
    ftrace_ok: bool = False         # in available_filter_functions
    blacklisted: bool = False
    how: str = "none"               # kprobe | kretprobe | exit-kprobes | none
    why: str = ""                   # why not attached, or fallback notes
    sites: list[tuple[str, int]] = field(default_factory=list)   # exit-kprobes: (symbol, offset)

    def to_json(self) -> dict:
        d = {"point": self.point.name, "function": self.point.func,
             "symbol": self.symbol or self.point.func, "how": self.how,
             "kallsyms": self.in_kallsyms, "ftrace": self.ftrace_ok,
             "blacklisted": self.blacklisted, "why": self.why}
        if self.sites:
            d["sites"] = [f"{sym}+{off:#x}" for sym, off in self.sites]
        return d


@dataclass
class Plan:
    kernel: str
    btf: bool
    kfunc: bool | None
    results: list[PointResult] = field(default_factory=list)
    returns: kerneltext.ReturnProbes | None = None     # how return points are taken here

    def attached(self, name: str) -> bool:
        return any(r.point.name == name and r.how != "none" for r in self.results)

    def core_kinds(self) -> frozenset[int]:
        return frozenset(i for n, i in CORE_INDEX.items() if self.attached(n))

    def stall_source(self) -> StallSource:
        """How this plan explains a stalled transition (tracer/observe/stalls.py):
        ``check`` (reason and function from klp_check_and_switch_task),
        ``switch`` (klp_try_switch_task: which tasks, no reason), or ``proc``
        (no stall probe: /proc/*/task/*/patch_state and /proc/TID/stack).
        The BPF sources need the sweep probes to tell current from stale."""
        sweeps = self.attached("stall-sweep") and self.attached("stall-sweep-ret")
        if sweeps and all(self.attached(p) for p in _CHECK):
            return StallSource.CHECK
        if sweeps and self.attached("stall-switch") and self.attached("stall-switch-ret"):
            return StallSource.SWITCH
        return StallSource.PROC

    def on_demand(self) -> list[PointResult]:
        """The attached points that are armed only while needed (Point.on_demand)."""
        return [r for r in self.results if r.point.on_demand and r.how != "none"]

    def missing_required(self) -> list[str]:
        return [r.point.name for r in self.results if r.point.required and r.how == "none"]

    def to_json(self) -> dict:
        d = {"kernel": self.kernel, "btf": self.btf, "kfunc": self.kfunc,
             "points": [r.to_json() for r in self.results],
             "evidence": self.evidence(), "stalls": self.stall_source()}
        if self.returns is not None:
            d["returns"] = {"how": self.returns.mechanism, "why": self.returns.evidence}
        return d

    def evidence(self) -> dict[str, str]:
        """Per callback kind: the best evidence this plan gives without --preload."""
        out = {}
        need = {"pre_patch": ("patch-object", "cancel", "module-coming-ret"),
                "post_patch": ("complete", "patch-object-ret"),
                "pre_unpatch": ("start", "unpatch-object"),
                "post_unpatch": ("complete", "unpatch-object")}
        for i, (cb, pts) in enumerate(need.items()):
            if i in self.core_kinds():
                out[cb] = "core"
            elif all(self.attached(p) for p in pts):
                out[cb] = "inferred"
            else:
                out[cb] = "partial: " + ", ".join(p for p in pts if not self.attached(p)) + " missing"
        return out


class ExitProbes(Protocol):
    """Attaches a return point as kprobes at a function's exits (the loader)."""

    def attach_exits(self, p: Point, sites: list[tuple[str, int]]
                     ) -> tuple[list[tuple[str, int]], str | None]:
        """kprobes running p.prog at each (SYMBOL, OFFSET): the sites attached,
        and an error for a refusal other than the kernel's EILSEQ (a candidate
        byte inside a longer instruction: not an exit, left out)."""

    def detach_exits(self, p: Point) -> None:
        """Detaches every exit kprobe of p."""


class _Text:
    """The kernel text, read once per plan and only if a point needs exits
    (kallsyms is read whole: about 80,000 symbols)."""

    def __init__(self):
        self._ksyms: kerneltext.Kallsyms | None = None
        self._kcore: kerneltext.Kcore | None = None

    def exits(self, func: str) -> kerneltext.Exits:
        if self._ksyms is None:
            self._ksyms = kerneltext.Kallsyms()
        if self._kcore is None:
            self._kcore = kerneltext.Kcore()
        return kerneltext.function_exits(func, self._ksyms, self._kcore)

    def close(self) -> None:
        if self._kcore is not None:
            self._kcore.close()
        self._ksyms = self._kcore = None


_text = _Text()


def function_exits(func: str) -> kerneltext.Exits:
    """The candidate exits of func in the live kernel text (tests replace it)."""
    return _text.exits(func)


NO_KRETPROBE = "no kretprobe here (it would keep tasks from switching)"


def _attach_at_exits(p: Point, r: PointResult, exit_probes: ExitProbes | None) -> None:
    """A return point on a kernel where a kretprobe would stall transitions:
    kprobes on every exit of the function, or not attached (and why)."""
    if exit_probes is None:
        r.why = f"{NO_KRETPROBE}; exit kprobes not available to this caller"
        return
    try:
        ex = function_exits(p.func)
    except kerneltext.TextError as e:
        r.why = f"{NO_KRETPROBE}, and its exits cannot be read: {e}"
        return
    # the kernel keeps the candidates that are instructions
    attached, err = exit_probes.attach_exits(p, [(x.part, x.offset) for x in ex.sites])
    kept = set(attached)
    real = [x for x in ex.sites if (x.part, x.offset) in kept]
    tails = [x for x in real if x.kind == "tail"]
    cond = [x for x in real if x.conditional]
    if err is not None:
        why = f"an exit kprobe was refused: {err}"
    elif cond:
        # a kprobe on a jcc fires whether or not the jump is taken
        why = f"it leaves by a conditional jump ({ex.describe(cond)})"
    elif p.rc and tails:
        why = (f"it leaves by a tail call ({ex.describe(tails)}): its return value "
               "is the callee's, not readable there")
    elif not real:
        why = "no exit of it could be probed"
    else:
        r.how = "exit-kprobes"
        r.sites = [(x.part, x.offset) for x in real]
        r.why = (f"kprobes on its {len(real)} exit(s): {ex.describe(real)} "
                 f"(a kretprobe would keep tasks from switching here)")
        return
    exit_probes.detach_exits(p)
    r.why = f"{NO_KRETPROBE}, and {why}"


def make_plan(attach, kfunc: bool | None = None, skip: frozenset[str] = frozenset(),
              exit_probes: ExitProbes | None = None) -> Plan:
    """``attach(point) -> None | str``: tries to attach the point as a kprobe
    (or kretprobe) and returns None on success, else the error text.
    ``exit_probes``: attaches a return point as kprobes at the function's
    exits, on a kernel where kretprobes are unsafe (see the module's doc).
    Return probes are attached before entry probes: an operation that begins
    while the probes are being attached then shows a return without its entry
    (reported as a gap), never an entry whose return nobody waits for.
    ``skip``: points not to attach (``klptrace run --skip-point``)."""
    unknown = skip - {p.name for p in POINTS}
    if unknown:
        raise ValueError(f"unknown point(s) {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(p.name for p in POINTS)})")
    funcs = {p.func for p in POINTS}
    kall, ftr, black, btf = kernel_facts(funcs)
    release = os.uname().release
    returns = kerneltext.return_probes(kall, release)
    plan = Plan(kernel=release, btf=btf, kfunc=kfunc, returns=returns)
    results = {}
    try:
        # fallbacks after the points they stand in for
        for p in sorted(POINTS, key=lambda p: (bool(p.fallback_for), not p.ret)):
            r = PointResult(p, in_kallsyms=p.func in kall, ftrace_ok=p.func in ftr,
                            blacklisted=p.func in black, symbol=p.func)
            clone = part_clone(p.func, kall) if p.part_clone else None
            if clone is not None:
                r.symbol = clone
                p = dataclasses.replace(p, func=clone)
            if p.fallback_for and all(results[f].how != "none" for f in p.fallback_for):
                r.why = f"not needed: {', '.join(p.fallback_for)} attached"
            elif p.name in skip:
                r.why = "skipped (--skip-point)"
            elif not r.in_kallsyms:
                r.why = "not in kallsyms (inlined or absent)"
            elif r.blacklisted:
                r.why = "in the kprobe blacklist"
            elif p.ret and not returns.kretprobe_safe:
                _attach_at_exits(p, r, exit_probes)
                if p.on_demand and r.how != "none":
                    r.why += "; " + ON_DEMAND_TEXT
            else:
                err = attach(p)
                if err is None:
                    r.how = "kretprobe" if p.ret else "kprobe"
                    r.why = "" if r.ftrace_ok else "not ftrace-able: int3 kprobe"
                    if p.on_demand:
                        r.why = ON_DEMAND_TEXT
                    if clone is not None:
                        r.why = (f"at {clone}: the body GCC split out, which every start "
                                 "(also after a reverse) runs")
                else:
                    r.why = f"kprobe refused: {err}"
            results[p.name] = r
    finally:
        _text.close()
    plan.results = [results[p.name] for p in POINTS]
    return plan


def format_plan(plan: Plan) -> str:
    lines = [f"kernel {plan.kernel}: BTF {'yes' if plan.btf else 'no'}, "
             f"bcc kfunc support {plan.kfunc}; {FENTRY_NOTE}"]
    if plan.returns is not None:
        lines.append(f"return points: {RETURNS_TEXT[plan.returns.mechanism]} "
                     f"({plan.returns.evidence})")
    lines.append("")
    w = max(len(r.point.name) for r in plan.results)
    fw = max(len(r.point.func) for r in plan.results)
    for r in plan.results:
        how = r.how if r.how != "none" else "NOT ATTACHED"
        lines.append(f"  {r.point.name:<{w}}  {r.point.func:<{fw}} {how:<12} "
                     f"{r.why or r.point.gives}")
    lines.append("")
    lines.append("evidence per callback without --preload (with --preload: direct for the "
                 "preloaded modules' callbacks):")
    for cb, e in plan.evidence().items():
        lines.append(f"  {cb:<13} {e}")
    lines.append("")
    lines.append("stalled transitions: " + STALL_SOURCE_TEXT[plan.stall_source()])
    return "\n".join(lines)


ON_DEMAND_TEXT = "armed on demand: while a transition's sweeps leave tasks behind"

RETURNS_TEXT = {
    "kretprobe": "kretprobes",
    "exit-kprobes": "kprobes on each function's exits, no kretprobe",
}

STALL_SOURCE_TEXT = {
    StallSource.CHECK: "each blocking task, why (running, unreliable stack, sleeping on a function) "
             "and the function, from klp_check_and_switch_task's return",
    StallSource.SWITCH: "each blocking task from klp_try_switch_task's return, without the reason; "
              "the function from /proc/TID/stack (this kernel has no klp_check_and_switch_task)",
    StallSource.PROC: "no stall probe attached: blocking tasks from /proc/*/task/*/patch_state and "
            "/proc/TID/stack, scanned while a transition is open (no reason)",
}
