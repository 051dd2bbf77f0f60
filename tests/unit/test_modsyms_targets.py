"""Which direct probes a --preload asks for (tracer/modsyms.py Preload.targets):
a function serving a pre_patch gets a return probe too, and its entry probe is
`paired` (on_direct_pre keeps the argument for the return); the entries of the
void callbacks keep nothing (the BPF per-thread table would fill up)."""

from tracer.modsyms import Callback, Preload, Target


def _preload(cbs):
    p = Preload([])
    p.callbacks = cbs
    return p


def test_pre_patch_entry_is_paired_with_its_return_void_callbacks_are_not():
    p = _preload([Callback("lp", "vmlinux", "pre_patch", "pre"),
                  Callback("lp", "mod", "pre_patch", "pre"),
                  Callback("lp", "vmlinux", "post_patch", "post"),
                  Callback("lp", "vmlinux", "post_unpatch", "unpost")])
    assert p.targets() == [Target("lp", "pre", False, True), Target("lp", "pre", True),
                           Target("lp", "post", False, False),
                           Target("lp", "unpost", False, False)]


def test_a_function_that_is_also_a_pre_patch_is_paired_whatever_the_order():
    p = _preload([Callback("lp", "vmlinux", "post_patch", "both"),
                  Callback("lp", "mod", "pre_patch", "both")])
    assert p.targets() == [Target("lp", "both", False, True), Target("lp", "both", True)]
