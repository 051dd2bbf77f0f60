"""The rule catalogue: every rule the engine enforces, with a stable ID, a
one-line statement and the sentence of the specification it comes from.

The specification is the kernel's Documentation/livepatch/callbacks.rst
(../shared/reference/livepatch-callbacks.rst). Where a rule pins down kernel
behaviour the document only implies, ``source`` names the kernel code or the
selftest that shows it and ``quote`` is the nearest sentence of the document.
docs/rules.md is generated from this table (``python -m klptrace.tracer.commands.docgen``) and a
test fails when they drift or when a quote is no longer in the specification.
IDs are stable: never renumber, only add.

Code names a rule by its constant (``KLP_RUN_001``), never by a string, so a
mistyped ID fails at import. Each rule is judged in exactly one function of
the engine, named by ``where``; tests/unit/test_placement.py checks that the
constant appears nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

SPEC = "Documentation/livepatch/callbacks.rst"

KLP_SYM_001 = "KLP-SYM-001"
KLP_SYM_002 = "KLP-SYM-002"
KLP_ONCE_001 = "KLP-ONCE-001"
KLP_FAIL_001 = "KLP-FAIL-001"
KLP_FAIL_002 = "KLP-FAIL-002"
KLP_REV_001 = "KLP-REV-001"
KLP_NOSTART_001 = "KLP-NOSTART-001"
KLP_LOAD_001 = "KLP-LOAD-001"
KLP_LOAD_002 = "KLP-LOAD-002"
KLP_REPLACE_001 = "KLP-REPLACE-001"
KLP_RUN_001 = "KLP-RUN-001"
KLP_ORD_001 = "KLP-ORD-001"
KLP_ORD_002 = "KLP-ORD-002"
KLP_ORD_003 = "KLP-ORD-003"
KLP_ORD_004 = "KLP-ORD-004"

# What a verdict may need to know, besides the record it is about.
HISTORY = "history"    # the patch's callbacks earlier in its cycle
PRESENCE = "presence"  # whether the object's module is loaded


@dataclass(frozen=True)
class Rule:
    id: str
    statement: str      # one line, what the trace must show
    quote: str          # verbatim sentence(s) of the specification
    source: str = SPEC  # where the rule comes from, when it is more than the quote
    where: str = ""     # the one engine function that judges it (module.Class.function)
    # what judging it needs: a cycle that began before the trace (HISTORY) or
    # a module whose load state is not known (PRESENCE) makes it `unknown`
    needs: frozenset = frozenset({HISTORY})


CB = "tracer/judge/callbacks.py CallbackJudge."
OB = "tracer/judge/obligations.py Obligations."
ST = "tracer/judge/steps.py StepJudge."
NO_HISTORY = frozenset()

_RULES = (
    Rule(KLP_SYM_001,
         "post_unpatch runs for an object only after its pre_patch succeeded in the same cycle.",
         "However, the livepatching core executes the handlers in symmetry: pre-patch "
         "callbacks have a post-unpatch counterpart and post-patch callbacks have a "
         "pre-unpatch counterpart.  An unpatch callback will only be executed if its "
         "corresponding patch callback was executed.",
         where=CB + "_pairing"),
    Rule(KLP_SYM_002,
         "pre_unpatch runs for an object only after its post_patch ran in the same cycle.",
         "An unpatch callback will only be executed if its corresponding patch callback "
         "was executed.",
         where=CB + "_pairing"),
    Rule(KLP_ONCE_001,
         "A callback runs at most once per object per cycle: no second pre_patch before "
         "post_unpatch, no second post_patch before pre_unpatch.",
         "the livepatching core executes the handlers in symmetry",
         SPEC + "; kernel/livepatch/core.h (post_unpatch_enabled)",
         where=CB + "_pairing"),
    Rule(KLP_FAIL_001,
         "After an object's pre_patch fails, none of its post_patch, pre_unpatch or "
         "post_unpatch runs.",
         "No post-patch, pre-unpatch, or post-unpatch callbacks will be executed for a "
         "given klp_object if the object failed to patch, due to a failed pre_patch "
         "callback or for any other reason.",
         where=CB + "_after_failure", needs=NO_HISTORY),
    Rule(KLP_FAIL_002,
         "A failing pre_patch stops the patching request: no later pre_patch of that "
         "enable or module load, no transition start, and a target module being loaded is "
         "refused (no `live` or `going` record for it, none of its callbacks, until it "
         "comes again).",
         "An error status code indicates to the livepatching core that patching of the "
         "current klp_object is not safe and to stop the current patching request.",
         SPEC + "; kernel/livepatch/core.c (__klp_enable_patch, klp_module_coming); "
         "kernel/module/main.c (prepare_coming_module: klp_module_going is not called when "
         "klp_module_coming failed)",
         where=OB + "request_stopped", needs=NO_HISTORY),
    Rule(KLP_REV_001,
         "A reversed patching transition runs no pre_unpatch.",
         "If a patch transition is reversed, no pre-unpatch handlers will be run",
         SPEC + "; kernel/livepatch/transition.c (klp_reverse_transition runs no callback)",
         where=CB + "_pairing"),
    Rule(KLP_NOSTART_001,
         "When patching was cancelled before the transition started, an object that "
         "patched gets post_unpatch only (no post_patch, no pre_unpatch).",
         "If the object did successfully patch, but the patch transition never started "
         "for some reason (e.g., if another object failed to patch), only the "
         "post-unpatch callback will be called.",
         where=ST + "_cancelled_completion"),
    Rule(KLP_LOAD_001,
         "A module object's callbacks run only while that module is loaded.",
         "A callback is only executed if its host klp_object is loaded.",
         where=CB + "_module_presence", needs=frozenset({PRESENCE})),
    Rule(KLP_LOAD_002,
         "Callbacks run only for an enabled livepatch (from its enable until its "
         "unpatching completes).",
         "When a module target is (un)loaded, its callbacks will execute only if the "
         "livepatch module is enabled.",
         where=CB + "_patch_admits", needs=NO_HISTORY),
    Rule(KLP_REPLACE_001,
         "Atomic replace runs none of the replaced patch's callbacks.",
         "When a module target is (un)loaded, its callbacks will execute only if the "
         "livepatch module is enabled.",
         "kernel/livepatch/transition.c klp_complete_transition (klp_unpatch_replaced_patches); "
         "tools/testing/selftests/livepatch/test-callbacks.sh (atomic replace)",
         where=CB + "_patch_admits", needs=NO_HISTORY),
    Rule(KLP_RUN_001,
         "When a patch is enabled or disabled, every loaded object's registered callbacks "
         "run at their step: pre_patch before the transition starts, post_patch when it "
         "completes, pre_unpatch before unpatching starts, post_unpatch when it completes; "
         "a module loading or unloading under an enabled patch gets its own; and a refused "
         "load unwinds the patches that patched it before the failing one (pre_unpatch "
         "unless in transition, then post_unpatch) before its section ends.",
         "For in-kernel vmlinux targets, this means that callbacks will always execute "
         "when a livepatch is enabled/disabled.",
         SPEC + "; kernel/livepatch/core.c (__klp_enable_patch, __klp_disable_patch, "
         "klp_module_coming, klp_cleanup_module_patches_limited), transition.c",
         where=OB + "owed"),
    Rule(KLP_ORD_001,
         "pre_patch runs before its object is patched: after the patching transition's "
         "init and before its start, or while its module is coming.",
         "before a klp_object is patched",
         where=CB + "_ordering"),
    Rule(KLP_ORD_002,
         "post_patch runs after the patching transition completes (or, outside a "
         "transition, when its module comes).",
         "after a klp_object has been patched and is active across all tasks",
         where=CB + "_ordering"),
    Rule(KLP_ORD_003,
         "pre_unpatch runs before unpatching: after the unpatching transition's init and "
         "before its start, or while its module is going (or its load is being refused).",
         "before a klp_object is unpatched (ie, patched code is active), used to clean up "
         "post-patch callback resources",
         where=CB + "_ordering"),
    Rule(KLP_ORD_004,
         "post_unpatch runs after the unpatching transition completes (or is cancelled), "
         "or while its module is going (or its load is being refused).",
         "after a klp_object has been patched, all code has been restored and no tasks "
         "are running patched code, used to cleanup pre-patch callback resources",
         where=CB + "_ordering"),
)

RULES: dict[str, Rule] = {r.id: r for r in _RULES}
del CB, ST
