"""The lab's scenarios: the situations of the kernel's livepatch callback
selftests (tools/testing/selftests/livepatch/test-callbacks.sh), each a short
script of guest steps (helpers of guest_helpers.sh) with the callback sequence
expected from Documentation/livepatch/callbacks.rst and the kernel's
behaviour beside it.

Expected entries are (patch, object, callback, pre_patch return or None).

Objects of klpt_lp, in callback order: vmlinux, klpt_mod, klpt_busy.
klpt_lp2 has one object, vmlinux.
"""

from __future__ import annotations

from dataclasses import dataclass

LP, LP2 = "klpt_lp", "klpt_lp2"
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
)

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
