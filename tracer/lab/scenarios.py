"""The lab's scenarios: the situations of the kernel's livepatch callback
selftests (tools/testing/selftests/livepatch/test-callbacks.sh), each a short
script of guest steps (helpers of guest_helpers.sh) with the callback sequence
expected from Documentation/livepatch/callbacks.rst and the kernel's
behaviour beside it.

Expected entries are (patch, object, callback, pre_patch return or None).

Objects of klpt_lp, in callback order: vmlinux, klpt_mod, klpt_busy.
klpt_lp2 has one object, vmlinux. The shapes fleets see beyond the selftests
(issue 12): klpt_up1/klpt_up2 (version 1 and 2 of one fix, same layout),
klpt_cum1..3 (releases of one cumulative `replace` patch) have the objects
vmlinux, klpt_mod; klpt_many has twelve: vmlinux, klpt_t01 ... klpt_t11.
klpt_kp (kpatch-build's layout) and klpt_kb (klp-build's) have the objects
vmlinux, klpt_mod, built at init, with callback functions that share names.
"""

from __future__ import annotations

from dataclasses import dataclass

LP, LP2 = "klpt_lp", "klpt_lp2"
UP1, UP2 = "klpt_up1", "klpt_up2"
CUM1, CUM2, CUM3 = "klpt_cum1", "klpt_cum2", "klpt_cum3"
MANY = "klpt_many"
KP, KB = "klpt_kp", "klpt_kb"
SYS = "klpt_sys"
VMLINUX, MOD, BUSY = "vmlinux", "klpt_mod", "klpt_busy"
PRE, POST, PRE_UN, POST_UN = "pre_patch", "post_patch", "pre_unpatch", "post_unpatch"
ENODEV = -19

Expected = tuple[str, str, str, "int | None"]


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    steps: tuple[str, ...]
    expected: tuple[Expected, ...]


def _pre(patch: str, obj: str, ret: int = 0) -> Expected:
    return (patch, obj, PRE, ret)


def _cb(patch: str, obj: str, callback: str) -> Expected:
    return (patch, obj, callback, None)


def _cycle(patch: str, objs: tuple[str, ...], *, unpatch: bool = True) -> tuple[Expected, ...]:
    """An enable of `patch` with `objs` loaded (in object order), then, if
    `unpatch`, its disable."""
    out = tuple(_pre(patch, o) for o in objs) + tuple(_cb(patch, o, POST) for o in objs)
    if unpatch:
        out += tuple(_cb(patch, o, PRE_UN) for o in objs) + \
            tuple(_cb(patch, o, POST_UN) for o in objs)
    return out


def _t(n: int) -> str:
    return f"klpt_t{n:02d}"


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "target-before-livepatch",
        "Target module loaded first: enabling runs pre/post-patch for vmlinux and "
        "klpt_mod; disabling runs pre/post-unpatch for both.",
        steps=("load_mod klpt_mod",
               "load_lp klpt_lp",
               "disable_lp klpt_lp",
               "unload_lp klpt_lp",
               "unload_mod klpt_mod"),
        expected=(_pre(LP, VMLINUX), _pre(LP, MOD),
                  _cb(LP, VMLINUX, POST), _cb(LP, MOD, POST),
                  _cb(LP, VMLINUX, PRE_UN), _cb(LP, MOD, PRE_UN),
                  _cb(LP, VMLINUX, POST_UN), _cb(LP, MOD, POST_UN)),
    ),
    Scenario(
        "module-coming",
        "Livepatch first: enabling runs vmlinux's callbacks only; the target's "
        "pre/post-patch run when it loads (state COMING); disabling unpatches both.",
        steps=("load_lp klpt_lp",
               "load_mod klpt_mod",
               "disable_lp klpt_lp",
               "unload_lp klpt_lp",
               "unload_mod klpt_mod"),
        expected=(_pre(LP, VMLINUX), _cb(LP, VMLINUX, POST),
                  _pre(LP, MOD), _cb(LP, MOD, POST),
                  _cb(LP, VMLINUX, PRE_UN), _cb(LP, MOD, PRE_UN),
                  _cb(LP, VMLINUX, POST_UN), _cb(LP, MOD, POST_UN)),
    ),
    Scenario(
        "module-going",
        "Target unloaded while patched: only its pre/post-unpatch run (state GOING); "
        "disabling later unpatches vmlinux only.",
        steps=("load_mod klpt_mod",
               "load_lp klpt_lp",
               "unload_mod klpt_mod",
               "disable_lp klpt_lp",
               "unload_lp klpt_lp"),
        expected=(_pre(LP, VMLINUX), _pre(LP, MOD),
                  _cb(LP, VMLINUX, POST), _cb(LP, MOD, POST),
                  _cb(LP, MOD, PRE_UN), _cb(LP, MOD, POST_UN),
                  _cb(LP, VMLINUX, PRE_UN), _cb(LP, VMLINUX, POST_UN)),
    ),
    Scenario(
        "module-coming-and-going",
        "Livepatch first, then the target comes and goes: its patch callbacks on "
        "load, its unpatch callbacks on unload; vmlinux's on enable/disable.",
        steps=("load_lp klpt_lp",
               "load_mod klpt_mod",
               "unload_mod klpt_mod",
               "disable_lp klpt_lp",
               "unload_lp klpt_lp"),
        expected=(_pre(LP, VMLINUX), _cb(LP, VMLINUX, POST),
                  _pre(LP, MOD), _cb(LP, MOD, POST),
                  _cb(LP, MOD, PRE_UN), _cb(LP, MOD, POST_UN),
                  _cb(LP, VMLINUX, PRE_UN), _cb(LP, VMLINUX, POST_UN)),
    ),
    Scenario(
        "target-not-present",
        "No target module ever loaded: only vmlinux's four callbacks run.",
        steps=("load_lp klpt_lp",
               "disable_lp klpt_lp",
               "unload_lp klpt_lp"),
        expected=(_pre(LP, VMLINUX), _cb(LP, VMLINUX, POST),
                  _cb(LP, VMLINUX, PRE_UN), _cb(LP, VMLINUX, POST_UN)),
    ),
    Scenario(
        "pre-patch-enodev",
        "vmlinux's pre-patch returns -ENODEV: the livepatch refuses to load; no "
        "other callback runs (not even klpt_mod's pre-patch, nor any unpatch).",
        steps=("load_mod klpt_mod",
               "load_failing_mod klpt_lp pre_patch_ret=-19",
               "unload_mod klpt_mod"),
        expected=(_pre(LP, VMLINUX, ENODEV),),
    ),
    Scenario(
        "module-coming-enodev",
        "Patch enabled, then pre-patch set to fail: the target module's load is "
        "refused after its pre-patch; only vmlinux is later unpatched.",
        steps=("load_lp klpt_lp",
               "set_pre_patch_ret klpt_lp -19",
               "load_failing_mod klpt_mod",
               "disable_lp klpt_lp",
               "unload_lp klpt_lp"),
        expected=(_pre(LP, VMLINUX), _cb(LP, VMLINUX, POST),
                  _pre(LP, MOD, ENODEV),
                  _cb(LP, VMLINUX, PRE_UN), _cb(LP, VMLINUX, POST_UN)),
    ),
    Scenario(
        "multiple-target-modules",
        "An idle busy module (sleep 0) and then klpt_mod: the transition completes "
        "at once; klpt_mod's callbacks run on its load and unload.",
        steps=("load_mod klpt_busy sleep_secs=0",
               "load_lp klpt_lp",
               "load_mod klpt_mod",
               "unload_mod klpt_mod",
               "disable_lp klpt_lp",
               "unload_lp klpt_lp",
               "unload_mod klpt_busy"),
        expected=(_pre(LP, VMLINUX), _pre(LP, BUSY),
                  _cb(LP, VMLINUX, POST), _cb(LP, BUSY, POST),
                  _pre(LP, MOD), _cb(LP, MOD, POST),
                  _cb(LP, MOD, PRE_UN), _cb(LP, MOD, POST_UN),
                  _cb(LP, VMLINUX, PRE_UN), _cb(LP, BUSY, PRE_UN),
                  _cb(LP, VMLINUX, POST_UN), _cb(LP, BUSY, POST_UN)),
    ),
    Scenario(
        "busy-target",
        "klpt_busy's worker sits in a patched function, stalling the transition: "
        "no post-patch runs; klpt_mod loads (pre-patch only) and unloads "
        "(post-unpatch only); disabling reverses the transition and runs only "
        "post-unpatch callbacks.",
        # The worker must still be in its function at disable_lp: sleep_secs is
        # a generous cap for a slow TCG host; rmmod klpt_busy ends it early.
        steps=("load_mod klpt_busy sleep_secs=60",
               "load_lp_nowait klpt_lp",
               "sleep 2",
               "load_mod klpt_mod",
               "unload_mod klpt_mod",
               "disable_lp klpt_lp",
               "unload_lp klpt_lp",
               "unload_mod klpt_busy"),
        expected=(_pre(LP, VMLINUX), _pre(LP, BUSY),
                  _pre(LP, MOD), _cb(LP, MOD, POST_UN),
                  _cb(LP, VMLINUX, POST_UN), _cb(LP, BUSY, POST_UN)),
    ),
    Scenario(
        "multiple-livepatches",
        "Two stacked livepatches: each runs its callbacks as it is enabled and "
        "disabled.",
        steps=("load_lp klpt_lp",
               "load_lp klpt_lp2",
               "disable_lp klpt_lp2",
               "disable_lp klpt_lp",
               "unload_lp klpt_lp2",
               "unload_lp klpt_lp"),
        expected=(_pre(LP, VMLINUX), _cb(LP, VMLINUX, POST),
                  _pre(LP2, VMLINUX), _cb(LP2, VMLINUX, POST),
                  _cb(LP2, VMLINUX, PRE_UN), _cb(LP2, VMLINUX, POST_UN),
                  _cb(LP, VMLINUX, PRE_UN), _cb(LP, VMLINUX, POST_UN)),
    ),
    Scenario(
        "atomic-replace",
        "klpt_lp2 with replace=1 replaces klpt_lp: none of klpt_lp's unpatch "
        "callbacks run; disabling klpt_lp2 runs its own.",
        steps=("load_lp klpt_lp",
               "load_lp klpt_lp2 replace=1",
               "disable_lp klpt_lp2",
               "unload_lp klpt_lp2",
               "unload_lp klpt_lp"),
        expected=(_pre(LP, VMLINUX), _cb(LP, VMLINUX, POST),
                  _pre(LP2, VMLINUX), _cb(LP2, VMLINUX, POST),
                  _cb(LP2, VMLINUX, PRE_UN), _cb(LP2, VMLINUX, POST_UN)),
    ),
    Scenario(
        "upgrade-address-reuse",
        "A fleet upgrade: version 1 of a fix is disabled and unloaded, version 2 "
        "(another module of the same layout) is loaded and lands at version 1's "
        "addresses; each runs its own callbacks.",
        steps=("load_mod klpt_mod",
               "load_lp klpt_up1",
               "record_text klpt_up1",
               "disable_lp klpt_up1",
               "unload_lp klpt_up1",
               "load_lp klpt_up2",
               "record_text klpt_up2",
               "disable_lp klpt_up2",
               "unload_lp klpt_up2",
               "unload_mod klpt_mod"),
        expected=_cycle(UP1, (VMLINUX, MOD)) + _cycle(UP2, (VMLINUX, MOD)),
    ),
    Scenario(
        "cumulative-upgrade-rollback",
        "Three releases of a cumulative (replace) livepatch: each replaces the one "
        "enabled (no callbacks of the replaced one), the replaced module is "
        "unloaded; then a rollback to release 2 and an upgrade to release 3 "
        "again; finally release 3 is disabled.",
        steps=("load_mod klpt_mod",
               "load_lp klpt_cum1",
               "load_lp klpt_cum2",
               "unload_lp klpt_cum1",
               "load_lp klpt_cum3",
               "unload_lp klpt_cum2",
               "load_lp klpt_cum2",
               "unload_lp klpt_cum3",
               "load_lp klpt_cum3",
               "unload_lp klpt_cum2",
               "disable_lp klpt_cum3",
               "unload_lp klpt_cum3",
               "unload_mod klpt_mod"),
        expected=(_cycle(CUM1, (VMLINUX, MOD), unpatch=False)
                  + _cycle(CUM2, (VMLINUX, MOD), unpatch=False)
                  + _cycle(CUM3, (VMLINUX, MOD), unpatch=False)
                  + _cycle(CUM2, (VMLINUX, MOD), unpatch=False)
                  + _cycle(CUM3, (VMLINUX, MOD))),
    ),
    Scenario(
        "many-objects",
        "A livepatch with twelve objects: four targets loaded before the enable "
        "(two of them beyond the eighth object), two after it, two unloaded while "
        "patched, five never loaded; every loaded object runs its callbacks.",
        steps=("load_mod klpt_t01",
               "load_mod klpt_t02",
               "load_mod klpt_t09",
               "load_mod klpt_t10",
               "load_lp klpt_many",
               "load_mod klpt_t03",
               "load_mod klpt_t11",
               "unload_mod klpt_t02",
               "unload_mod klpt_t10",
               "disable_lp klpt_many",
               "unload_lp klpt_many",
               "unload_mod klpt_t01",
               "unload_mod klpt_t03",
               "unload_mod klpt_t09",
               "unload_mod klpt_t11"),
        expected=(_cycle(MANY, (VMLINUX, _t(1), _t(2), _t(9), _t(10)), unpatch=False)
                  + (_pre(MANY, _t(3)), _cb(MANY, _t(3), POST),
                     _pre(MANY, _t(11)), _cb(MANY, _t(11), POST),
                     _cb(MANY, _t(2), PRE_UN), _cb(MANY, _t(2), POST_UN),
                     _cb(MANY, _t(10), PRE_UN), _cb(MANY, _t(10), POST_UN))
                  + tuple(_cb(MANY, o, PRE_UN) for o in (VMLINUX, _t(1), _t(3), _t(9), _t(11)))
                  + tuple(_cb(MANY, o, POST_UN) for o in (VMLINUX, _t(1), _t(3), _t(9), _t(11)))),
    ),
)


def _producer(name: str, patch: str, layout: str) -> Scenario:
    return Scenario(
        name,
        f"A livepatch in {layout}'s layout (objects built at init, two objects' "
        "callbacks sharing names): enabled with its target loaded, the target "
        "unloaded and loaded again while patched, then disabled.",
        steps=("load_mod klpt_mod",
               f"load_lp {patch}",
               "unload_mod klpt_mod",
               "load_mod klpt_mod",
               f"disable_lp {patch}",
               f"unload_lp {patch}",
               "unload_mod klpt_mod"),
        expected=(_cycle(patch, (VMLINUX, MOD), unpatch=False)
                  + (_cb(patch, MOD, PRE_UN), _cb(patch, MOD, POST_UN),
                     _pre(patch, MOD), _cb(patch, MOD, POST))
                  + tuple(_cb(patch, o, PRE_UN) for o in (VMLINUX, MOD))
                  + tuple(_cb(patch, o, POST_UN) for o in (VMLINUX, MOD))))


SCENARIOS += (_producer("producer-kpatch", KP, "kpatch-build"),
              _producer("producer-klp-build", KB, "klp-build"))

# Transitions under load (issue 21): the shapes whose duration the tracer
# must not change (tests/kernel/test_lines.py measures each waiting step with
# and without it). With target-before-livepatch (an enable and a disable) and
# busy-target (a stalled transition reversed), these are TRANSITION_SCENARIOS.
# The stalled ones wait 3 s before the worker is released: three sweeps, so
# that the tracer names the blocker first (tracer/observe/stalls.py MIN_WINDOWS).
SCENARIOS += (
    Scenario(
        "many-tasks-switching",
        "Eight processes call getpid in a loop while klpt_sys patches it and "
        "unpatches it: every one runs the patched function and switches as it "
        "returns to user space (the kernel's test-syscall.sh).",
        steps=("start_getpid_loops 8",
               "load_lp klpt_sys",
               "disable_lp klpt_sys",
               "unload_lp klpt_sys",
               "stop_getpid_loops"),
        expected=_cycle(SYS, (VMLINUX,)),
    ),
    Scenario(
        "second-livepatch-waits",
        "klpt_lp's transition stalls on klpt_busy's worker; loading klpt_lp2 meanwhile "
        "waits for klp_mutex and is refused (-EBUSY: a transition is in progress) "
        "without a callback; once the worker leaves, the transition completes.",
        steps=("load_mod klpt_busy sleep_secs=60",
               "load_lp_nowait klpt_lp",
               "sleep 3",
               "load_failing_mod klpt_lp2",
               "release_busy",
               "wait_transition klpt_lp",
               "disable_lp klpt_lp",
               "unload_lp klpt_lp",
               "unload_mod klpt_busy"),
        expected=_cycle(LP, (VMLINUX, BUSY)),
    ),
    Scenario(
        "target-loads-during-transition",
        "klpt_lp's transition stalls on klpt_busy's worker; klpt_mod loads meanwhile "
        "(pre-patch only: its object is patched into the transition); once the worker "
        "leaves, the transition completes with every object's post-patch.",
        steps=("load_mod klpt_busy sleep_secs=60",
               "load_lp_nowait klpt_lp",
               "sleep 3",
               "load_mod klpt_mod",
               "release_busy",
               "wait_transition klpt_lp",
               "disable_lp klpt_lp",
               "unload_lp klpt_lp",
               "unload_mod klpt_mod",
               "unload_mod klpt_busy"),
        expected=(_pre(LP, VMLINUX), _pre(LP, BUSY), _pre(LP, MOD))
        + tuple(_cb(LP, o, POST) for o in (VMLINUX, MOD, BUSY))
        + tuple(_cb(LP, o, PRE_UN) for o in (VMLINUX, MOD, BUSY))
        + tuple(_cb(LP, o, POST_UN) for o in (VMLINUX, MOD, BUSY)),
    ),
)

TRANSITION_SCENARIOS = ("target-before-livepatch", "busy-target", "many-tasks-switching",
                        "second-livepatch-waits", "target-loads-during-transition")
# the steps whose duration is a transition's (each waits for one to end)
WAITING_STEPS = ("load_lp ", "disable_lp ", "wait_transition ")

BY_NAME = {s.name: s for s in SCENARIOS}
NAMES = tuple(BY_NAME)


def select(only: str | list[str] | tuple[str, ...] | None) -> list[Scenario]:
    """Scenarios by name (comma-separated string or list); all when None."""
    if not only:
        return list(SCENARIOS)
    names = only.split(",") if isinstance(only, str) else list(only)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        from .errors import LabError
        raise LabError("bad input", f"unknown scenario {', '.join(unknown)} "
                                    f"(known: {', '.join(NAMES)})")
    return [BY_NAME[n] for n in names]
