"""tracer/observe/modsyms.py on ELF files built to the layouts of the three producers
(tests/elfbuild.py): a static struct klp_object (include/linux/livepatch.h),
kpatch-build's .kpatch.callbacks.* sections (kmod/patch/kpatch-macros.h) and
klp-build's struct klp_object_ext records (include/linux/livepatch_external.h).
The lab reads the real .ko files (tests/kernel/test_inspect.py)."""

from __future__ import annotations

import struct

from elfbuild import (SHF_ALLOC, SHF_WRITE, STT_FUNC, STT_OBJECT, function,
                      livepatch_skeleton)
from klptrace.tracer.observe.modsyms import KLP_BUILD, KLP_OBJECT, KPATCH, Preload, read_callbacks

Q = struct.Struct("<Q")


def _klp_object_module(e, text, data, rodata, *, debug_info: bool):
    """klpt-style: objects vmlinux (pre_patch, post_unpatch) and 'mod' (post_patch),
    funcs arrays with replacement functions, and (optionally) debug info whose
    relocations point at the replacement function next to a data address."""
    pre = function(e, text, "lp_pre_patch")
    post = function(e, text, "lp_post_patch")
    unpost = function(e, text, "lp_post_unpatch")
    new_fn = function(e, text, "patched_work_func")
    sec_text = e.symbol("", 3, text, 0)
    sec_data = e.symbol("", 3, data, 0)
    sec_ro = e.symbol("", 3, rodata, 0)
    old_name = e.string(rodata, "cmdline_proc_show")
    mod_name = e.string(rodata, "mod")
    # struct klp_func funcs[] = {{ .old_name, .new_func }, {}}: 2 x 64 bytes
    funcs = e.put(data, b"\0" * 128)
    e.reloc(".data", funcs + 0, sec_ro, old_name)
    e.reloc(".data", funcs + 8, new_fn)
    # struct klp_object objs[] = {{NULL, funcs, {pre,0,0,unpost}}, {"mod", funcs, {0,post}}, {}}
    objs = e.put(data, b"\0" * 168 * 3)
    e.reloc(".data", objs + 8, sec_data, funcs)
    e.reloc(".data", objs + 16, pre)
    e.reloc(".data", objs + 40, unpost)
    o2 = objs + 168
    e.reloc(".data", o2 + 0, sec_ro, mod_name)
    e.reloc(".data", o2 + 8, sec_data, funcs)
    e.reloc(".data", o2 + 24, post)
    if debug_info:
        # DW_AT_low_pc of patched_work_func's DIE at 0x40, a DW_OP_addr of the
        # funcs array 16 bytes before it: the shape of a klp_object's funcs
        # pointer and its second callback, in a section no code reads
        dbg = e.section(".debug_info", 0, b"\0" * 0x100)
        e.reloc(".debug_info", 0x40, new_fn)
        e.reloc(".debug_info", 0x40 - 24 + 8, sec_data, funcs)
        assert dbg


def test_static_klp_objects_and_nothing_from_debug_info(tmp_path):
    """Before: relocations of .debug_info counted, and the replacement
    function patched_work_func was reported (and probed, on the host's hot
    path) as a vmlinux post_patch callback."""
    e, text, data, rodata = livepatch_skeleton("lp")
    _klp_object_module(e, text, data, rodata, debug_info=True)
    p = tmp_path / "lp.ko"
    p.write_bytes(e.build())
    name, cbs = read_callbacks(str(p))
    assert name == "lp"
    assert [(c.object, c.callback, c.symbol, c.how) for c in cbs] == [
        ("vmlinux", "pre_patch", "lp_pre_patch", KLP_OBJECT),
        ("vmlinux", "post_unpatch", "lp_post_unpatch", KLP_OBJECT),
        ("mod", "post_patch", "lp_post_patch", KLP_OBJECT)]
    assert all(c.symbol != "patched_work_func" for c in cbs)
    assert [c.spec for c in cbs] == ["lp_pre_patch", "lp_post_unpatch", "lp_post_patch"]


def _kpatch_module(*, anchor: bool):
    """kpatch-build: per object file a static pre_patch_callback (same name),
    merged into one .text.livepatch section; {fn, objname} entries."""
    e, _text, _data, rodata = livepatch_skeleton("kp")
    text = e.section(".text.livepatch", SHF_ALLOC | 0x4)
    if anchor:
        function(e, text, "kpatch_fix_one")            # a unique function before them
    a = function(e, text, "pre_patch_callback")
    b = function(e, text, "pre_patch_callback")
    c = function(e, text, "post_unpatch_callback")
    sec_ro = e.symbol("", 3, rodata, 0)
    vm = e.string(rodata, "vmlinux")
    mod = e.string(rodata, "klpt_mod")
    pre = e.section(".kpatch.callbacks.pre_patch", SHF_ALLOC | SHF_WRITE, b"\0" * 48)
    post_un = e.section(".kpatch.callbacks.post_unpatch", SHF_ALLOC | SHF_WRITE, b"\0" * 32)
    assert pre and post_un
    e.reloc(".kpatch.callbacks.pre_patch", 0, a)
    e.reloc(".kpatch.callbacks.pre_patch", 8, sec_ro, vm)
    e.reloc(".kpatch.callbacks.pre_patch", 16, b)
    e.reloc(".kpatch.callbacks.pre_patch", 24, sec_ro, mod)
    e.reloc(".kpatch.callbacks.post_unpatch", 0, c)
    e.reloc(".kpatch.callbacks.post_unpatch", 8, sec_ro, mod)
    return e


def test_kpatch_sections_and_callbacks_that_share_one_name(tmp_path):
    """Before: only static klp_object initialisers were read (kpatch-build
    modules have none), and a probe on MODULE:pre_patch_callback resolves to
    the first of two same-named functions (Linux 6.11+ refuses it)."""
    p = tmp_path / "kp.ko"
    p.write_bytes(_kpatch_module(anchor=True).build())
    _, cbs = read_callbacks(str(p))
    assert [(c.object, c.callback, c.how, c.spec) for c in cbs] == [
        ("vmlinux", "pre_patch", KPATCH, "kpatch_fix_one+0x10"),
        ("klpt_mod", "pre_patch", KPATCH, "kpatch_fix_one+0x20"),
        ("klpt_mod", "post_unpatch", KPATCH, "post_unpatch_callback")]


def test_a_callback_without_a_unique_symbol_is_probed_by_address_and_said_so(tmp_path):
    p = tmp_path / "kp.ko"
    p.write_bytes(_kpatch_module(anchor=False).build())
    _, cbs = read_callbacks(str(p))
    by = {(c.object, c.callback): c.spec for c in cbs}
    assert by[("vmlinux", "pre_patch")] is None and by[("klpt_mod", "pre_patch")] is None
    pre = Preload([str(p)])
    assert any("no unique symbol" in w for w in pre.warnings)
    assert {t.spec for t in pre.targets()} == {"post_unpatch_callback"}


def test_klp_build_object_records(tmp_path):
    e, text, _data, rodata = livepatch_skeleton("livepatch_fix")
    pre = function(e, text, "fix_pre_patch")
    post = function(e, text, "fix_post_patch")
    sec_ro = e.symbol("", 3, rodata, 0)
    mod = e.string(rodata, "klpt_mod")
    for secname in ("__klp_objects", ".init.klp_objects"):
        e2 = e
        objs = e2.section(secname, SHF_ALLOC | SHF_WRITE, b"\0" * 128)
        assert objs
        # record 0: vmlinux (no name relocation), pre_patch at +16
        e2.reloc(secname, 16, pre)
        # record 1: klpt_mod, post_patch at +24
        e2.reloc(secname, 64, sec_ro, mod)
        e2.reloc(secname, 64 + 24, post)
        break
    p = tmp_path / "kb.ko"
    p.write_bytes(e.build())
    _, cbs = read_callbacks(str(p))
    assert [(c.object, c.callback, c.how) for c in cbs] == [
        ("vmlinux", "pre_patch", KLP_BUILD), ("klpt_mod", "post_patch", KLP_BUILD)]


def test_a_later_kernels_init_section_name_too(tmp_path):
    e, text, _data, _rodata = livepatch_skeleton("lp7")
    unpre = function(e, text, "fix_pre_unpatch")
    e.section(".init.klp_objects", SHF_ALLOC | SHF_WRITE, b"\0" * 64)
    e.reloc(".init.klp_objects", 32, unpre)
    p = tmp_path / "lp7.ko"
    p.write_bytes(e.build())
    _, cbs = read_callbacks(str(p))
    assert [(c.object, c.callback, c.how) for c in cbs] == [("vmlinux", "pre_unpatch", KLP_BUILD)]


def test_not_a_livepatch_and_not_an_elf(tmp_path):
    import pytest
    from klptrace.tracer.observe.modsyms import ElfError
    e, _t, _d, _r = livepatch_skeleton("x")
    e.sections[-1]["data"] = bytearray(b"name=x\0")        # no livepatch=Y
    p = tmp_path / "x.ko"
    p.write_bytes(e.build())
    with pytest.raises(ElfError, match="not a livepatch"):
        read_callbacks(str(p))
    p.write_bytes(b"garbage")
    with pytest.raises(ElfError, match="not a 64-bit"):
        read_callbacks(str(p))
    p.write_bytes(b"\x7fELF\x02\x01" + b"\xff" * 100)
    with pytest.raises(ElfError):
        read_callbacks(str(p))
    assert STT_OBJECT and STT_FUNC
