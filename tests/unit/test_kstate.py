"""tracer.observe.sysfs reads /sys/kernel/livepatch's layout (here: a copy of its
shape in a temporary directory) into the trace header's state."""

from klptrace.tracer.observe import sysfs as kstate


def test_patches_from_sysfs_layout(tmp_path):
    p = tmp_path / "klpt_lp"
    for d in ("vmlinux", "klpt_mod"):
        (p / d).mkdir(parents=True)
    (p / "enabled").write_text("1\n")
    (p / "transition").write_text("0\n")
    (tmp_path / "stray_file").write_text("")
    got = kstate.patches(str(tmp_path))
    assert got == [{"name": "klpt_lp", "enabled": True, "transition": False, "replace": False,
                    "objects": [{"name": "klpt_mod"}, {"name": "vmlinux"}]}]


def test_modules_list(tmp_path):
    f = tmp_path / "modules"
    f.write_text("klpt_mod 16384 0 - Live 0x0000000000000000\nsr_mod 28672 0 - Live 0x0\n")
    assert kstate.modules(str(f)) == ["klpt_mod", "sr_mod"]
    assert kstate.modules(str(tmp_path / "none")) == []
