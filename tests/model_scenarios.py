"""The lab's eleven scenarios, played on the kernel model (tests/kmodel.py),
and a few more of the kernel's paths.

Each is a few readable steps, like the kernel's test-callbacks.sh; the real
ones run in the lab VM (tests/kernel/). Here they give the unit tests
honouring traces to start from; ``probes`` (tests/kraw.py) also collects the
raw events the BPF programs would write."""

from kmodel import ALL, KernelModel, PatchDef
from tracebuild import lp

ENODEV = -19


def target_before_livepatch(probes=None):
    m = KernelModel(["klpt_mod"], probes=probes)
    m.enable(lp()); m.complete()
    m.disable("klpt_lp"); m.complete(); m.remove("klpt_lp")
    m.unload_module("klpt_mod")
    return m


def module_coming(probes=None):
    m = KernelModel(probes=probes)
    m.enable(lp()); m.complete()
    m.load_module("klpt_mod")
    m.disable("klpt_lp"); m.complete(); m.remove("klpt_lp")
    m.unload_module("klpt_mod")
    return m


def module_going(probes=None):
    m = KernelModel(["klpt_mod"], probes=probes)
    m.enable(lp()); m.complete()
    m.unload_module("klpt_mod")
    m.disable("klpt_lp"); m.complete(); m.remove("klpt_lp")
    return m


def module_coming_and_going(probes=None):
    m = KernelModel(probes=probes)
    m.enable(lp()); m.complete()
    m.load_module("klpt_mod"); m.unload_module("klpt_mod")
    m.disable("klpt_lp"); m.complete(); m.remove("klpt_lp")
    return m


def target_not_present(probes=None):
    m = KernelModel(probes=probes)
    m.enable(lp()); m.complete()
    m.disable("klpt_lp"); m.complete(); m.remove("klpt_lp")
    return m


def pre_patch_enodev(probes=None):
    m = KernelModel(["klpt_mod"], probes=probes)
    m.enable(lp(pre_patch_ret={"klpt_mod": ENODEV}))   # refused: enable_failed
    m.remove("klpt_lp")
    m.unload_module("klpt_mod")
    return m


def module_coming_enodev(probes=None):
    m = KernelModel(probes=probes)
    m.enable(lp()); m.complete()
    m.set_ret("klpt_lp", "klpt_mod", ENODEV)
    m.load_module("klpt_mod")                         # refused
    m.disable("klpt_lp"); m.complete(); m.remove("klpt_lp")
    return m


def multiple_target_modules(probes=None):
    m = KernelModel(["klpt_busy"], probes=probes)
    m.enable(lp()); m.complete()
    m.load_module("klpt_mod")
    m.disable("klpt_lp"); m.complete(); m.remove("klpt_lp")
    m.unload_module("klpt_mod"); m.unload_module("klpt_busy")
    return m


def busy_target(probes=None):
    m = KernelModel(["klpt_busy"], probes=probes)
    m.enable(lp())                                    # transition stalls on klpt_busy
    m.load_module("klpt_mod"); m.unload_module("klpt_mod")
    m.complete()
    m.disable("klpt_lp"); m.complete(); m.remove("klpt_lp")
    m.unload_module("klpt_busy")
    return m


def multiple_livepatches(probes=None):
    m = KernelModel(probes=probes)
    m.enable(lp()); m.complete()
    m.enable(PatchDef("klpt_lp2", [("vmlinux", ALL)])); m.complete()
    m.disable("klpt_lp2"); m.complete(); m.remove("klpt_lp2")
    m.disable("klpt_lp"); m.complete(); m.remove("klpt_lp")
    return m


def atomic_replace(probes=None):
    m = KernelModel(probes=probes)
    m.enable(lp()); m.complete()
    m.enable(PatchDef("klpt_lp2", [("vmlinux", ALL)], replace=True)); m.complete()
    m.remove("klpt_lp")
    m.disable("klpt_lp2"); m.complete(); m.remove("klpt_lp2")
    return m


def reversed_patching(probes=None):
    m = KernelModel(["klpt_busy"], probes=probes)
    m.enable(lp())
    m.disable("klpt_lp")                              # during the transition: reverse
    m.complete(); m.remove("klpt_lp")
    return m


def reenabled_during_disable(probes=None):
    """enabled_store during a stalled disable: klp_reverse_transition
    (unpatching -> patching), then klp_start_transition, no callback."""
    m = KernelModel(["klpt_mod"], probes=probes)
    m.enable(lp()); m.complete()
    m.disable("klpt_lp")                              # the unpatching transition stalls
    m.write_enabled("klpt_lp", True)                  # reverse to patched
    m.complete()
    m.disable("klpt_lp"); m.complete(); m.remove("klpt_lp")
    m.unload_module("klpt_mod")
    return m


SCENARIOS = {f.__name__.replace("_", "-"): f for f in (
    target_before_livepatch, module_coming, module_going, module_coming_and_going,
    target_not_present, pre_patch_enodev, module_coming_enodev, multiple_target_modules,
    busy_target, multiple_livepatches, atomic_replace, reversed_patching,
    reenabled_during_disable)}
