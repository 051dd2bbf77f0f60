"""Which direct probes a --preload asks for (tracer/observe/modsyms.py Preload.targets):
one entry probe per callback function; a function serving a pre_patch gets a
return probe too, listed first (a return is armed before its entry), and its
entry probe is `paired` (on_direct_pre keeps the argument for the return); the
entries of the void callbacks keep nothing (the BPF per-thread table would
fill up). A callback with no unambiguous probe definition gets none."""

from klptrace.tracer.observe.modsyms import Callback, Preload, Target


def _preload(cbs):
    p = Preload([])
    p.callbacks = cbs
    return p


def cb(obj, kind, spec):
    return Callback("lp", obj, kind, spec or "?", spec=spec)


def test_pre_patch_entry_is_paired_with_its_return_void_callbacks_are_not():
    p = _preload([cb("vmlinux", "pre_patch", "pre"), cb("mod", "pre_patch", "pre"),
                  cb("vmlinux", "post_patch", "post"), cb("vmlinux", "post_unpatch", "unpost")])
    pre = frozenset({("vmlinux", "pre_patch"), ("mod", "pre_patch")})
    assert p.targets() == [Target("lp", "pre", True, covers=pre),
                           Target("lp", "pre", False, True, covers=pre),
                           Target("lp", "post", False, False,
                                  covers=frozenset({("vmlinux", "post_patch")})),
                           Target("lp", "unpost", False, False,
                                  covers=frozenset({("vmlinux", "post_unpatch")}))]


def test_a_function_that_is_also_a_pre_patch_is_paired_whatever_the_order():
    p = _preload([cb("vmlinux", "post_patch", "both"), cb("mod", "pre_patch", "both")])
    both = frozenset({("vmlinux", "post_patch"), ("mod", "pre_patch")})
    assert p.targets() == [Target("lp", "both", True, covers=both),
                           Target("lp", "both", False, True, covers=both)]


def test_no_definition_no_probe_and_not_counted_as_covered():
    p = _preload([cb("vmlinux", "pre_patch", None), cb("vmlinux", "post_patch", "post")])
    assert [t.spec for t in p.targets()] == ["post"]
    assert p.cover() == {("lp", "vmlinux", "post_patch")}
