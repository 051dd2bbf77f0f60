"""The lab's module list (tracer/lab/kmod.py) and the kbuild Makefile of
tests/kmod agree, and every scenario step names a module that is built."""

import re
from pathlib import Path

from klptrace.tracer.lab import kmod, scenarios

KMOD = Path(__file__).resolve().parents[1] / "kmod"


def test_makefile_builds_exactly_the_lab_modules():
    text = (KMOD / "Makefile").read_text()
    built = {m for line in re.findall(r"^obj-m\s*[:+]?=(.*)$", text, re.M)
             for m in re.findall(r"(\w+)\.o", line)}
    assert built == set(kmod.MODULES)
    assert set(kmod.LIVEPATCHES) <= set(kmod.MODULES)
    parts = dict(re.findall(r"^(\w+)-y\s*:=(.*)$", text, re.M))
    for m in kmod.MODULES:
        srcs = re.findall(r"(\w+)\.o", parts[m]) if m in parts else [m]   # composite or not
        assert all((KMOD / f"{s}.c").exists() for s in srcs), m


def test_scenario_steps_name_built_modules():
    for s in scenarios.SCENARIOS:
        for step in s.steps:
            parts = step.split()
            if parts[0] in ("load_mod", "load_lp", "load_lp_nowait", "unload_mod", "unload_lp",
                            "disable_lp", "load_failing_mod", "record_text"):
                assert parts[1] in kmod.MODULES, (s.name, step)
