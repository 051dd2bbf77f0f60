"""The kernel lab for pytest: ONE guest boot runs every scenario three times
(session fixture `lab_run`: without the tracer, with it inferring, with it
probing the preloaded callbacks directly; tracer/lab/runner.py
TRACER_PHASES); tests then compare each scenario's kernel-log ground truth
with its expected callback sequence (test_scenarios.py), the tracer's
records with the kernel log (test_tracer.py) and the transitions with and
without the tracer (test_transitions.py).

KLPT_KERNEL selects the kernel: unset or `stable` (Debian stable's), `6.12`
(bookworm-backports), `5.10` (bullseye), `sid` (sid's current kernel, booted
over a sid root the lab makes once with debootstrap), or an installed release;
`make lab-6.12`, `make lab-5.10`, `make lab-sid`, `make lab-all` (all four).
Logs go to lab-out/kernel-tests-KERNEL/ (and lab-out/tracer-hook-KERNEL/) in
the repository (git-ignored; KLPT_LAB_OUT overrides lab-out/), so a failing
CI run leaves them on disk.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from klptrace.tracer.lab import LabError, LabRun, run_scenarios

REPO = Path(__file__).resolve().parents[2]
_RUN: dict[str, LabRun] = {}


def _lacks_means() -> str | None:
    """Only a machine that truly cannot run the lab skips it."""
    if os.geteuid() != 0:
        return "the kernel lab needs root (apt, qemu, module builds)"
    if shutil.which("apt-get") is None or shutil.which("dpkg-query") is None:
        return "the kernel lab needs a Debian host (apt-get, dpkg) to install qemu and kernels"
    return None


@pytest.fixture(scope="session")
def lab_means() -> None:
    """Skips (with the reason) on a machine that cannot run the lab."""
    reason = _lacks_means()
    if reason:
        pytest.skip(reason)


def lab_out(what: str) -> Path:
    kernel = os.environ.get("KLPT_KERNEL") or "stable"
    return Path(os.environ.get("KLPT_LAB_OUT", REPO / "lab-out")) / f"{what}-{kernel}"


@pytest.fixture(scope="session")
def lab_out_dir():
    """lab_out_dir(what) -> where a kernel test leaves its lab logs."""
    return lab_out


@pytest.fixture(scope="session")
def lab_run(request: pytest.FixtureRequest, lab_means: None) -> LabRun:
    tr = request.config.pluginmanager.getplugin("terminalreporter")
    capman = request.config.pluginmanager.getplugin("capturemanager")

    def progress(msg: str) -> None:
        # Live progress even under -q and output capture (boots take a while).
        if tr is None or capman is None:
            print(msg, flush=True)
            return
        with capman.global_and_fixture_disabled():
            tr.write_line(msg)

    from klptrace.tracer.lab.runner import TRACER_PHASES
    kernel = os.environ.get("KLPT_KERNEL") or None
    klptrace = REPO / ".venv" / "bin" / "klptrace"
    try:
        run = run_scenarios(kernel=kernel, out_dir=lab_out("kernel-tests"), progress=progress,
                            tracer_cmd=f"{klptrace} run", phases=TRACER_PHASES)
    except LabError as e:
        from linechecks import fail_lab
        fail_lab(e)
    _RUN["run"] = run
    return run


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    run = _RUN.get("run")
    if run is not None:
        terminalreporter.write_sep("-", "kernel lab")
        terminalreporter.write_line(run.summary())
