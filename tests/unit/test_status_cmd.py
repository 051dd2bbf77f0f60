"""`klptrace status` on a fake host (sysfs, /proc, the daemon's status file
and lock in a temporary directory): from the daemon when one runs, else
read directly; one-line errors with their exit codes."""

from __future__ import annotations

import fcntl
import json
import os
import time

from click.testing import CliRunner

from klptrace.tracer import exitcodes as xc
from klptrace.tracer.observe import procstall
from klptrace.tracer.daemon import statusfile
from klptrace.tracer.observe.stallstate import StallState, Task
from klptrace.tracer.commands.status import status

from test_stalls import STACK, fake_host


def run(tmp, *args):
    return CliRunner().invoke(status, ["--sysfs", str(tmp / "livepatch"), "--proc", str(tmp / "proc"),
                                       "--status-file", str(tmp / "run" / "status.json"),
                                       "--lock", str(tmp / "klptrace.lock"), *args])


def held_lock(tmp):
    fd = os.open(tmp / "klptrace.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_direct_read_names_the_blocker_and_its_function(tmp_path):
    fake_host(tmp_path, {50: (50, "kworker/1:2", 0, STACK, True), 60: (60, "bash", 1, "", False)})
    r = run(tmp_path)
    assert r.exit_code == 0, r.output
    assert "lp  enabled, in transition to patched" in r.output
    assert "transition of lp to patched: open (since when: the daemon knows)" in r.output
    assert "blockers: 1, read from /proc now" in r.output
    row = next(l for l in r.output.splitlines() if l.strip().startswith("50 "))
    assert "kworker/1:2" in row and "kthread/S" in row and "klpt_busy_work_func" in row
    assert "bash" not in r.output                    # switched already (patch_state 1)
    doc = json.loads(run(tmp_path, "--format", "json").output)
    assert doc["from"] == "proc" and doc["blockers"][0]["function"] == "klpt_busy_work_func"


def test_from_the_daemon_when_one_runs(tmp_path):
    fake_host(tmp_path, {50: (50, "kworker/1:2", 0, STACK, True)})
    now = time.monotonic_ns()
    st = StallState(patch="lp", target="patched", opened_ns=now - 30 * 10**9, source="check",
                    sweeps=31, signals=2, as_of_ns=now,
                    blockers=(Task(1, 50, 50, "kworker/1:2", True, "sleeping_on_function",
                                   "klpt_busy_work_func", now - 29 * 10**9, 31),))
    statusfile.write(st, str(tmp_path / "run" / "status.json"), pid=4242)
    fd = held_lock(tmp_path)
    try:
        r = run(tmp_path)
    finally:
        os.close(fd)
    assert r.exit_code == 0, r.output
    assert "open for 30." in r.output and "31 sweep(s), signalled 2 time(s)" in r.output
    assert "from the klptrace daemon (pid 4242)" in r.output
    row = next(l for l in r.output.splitlines() if l.strip().startswith("50 "))
    assert "sleeping_on_function" in row and "klpt_busy_work_func" in row and "29." in row
    # the daemon gone: its file is not believed, the host is read directly
    r = run(tmp_path)
    assert "read from /proc now" in r.output and "not_switched" in r.output


def test_a_stale_daemon_view_of_another_patch_is_not_shown(tmp_path):
    fake_host(tmp_path, {50: (50, "kworker/1:2", 0, STACK, True)})
    statusfile.write(StallState(patch="other", target="patched", opened_ns=0,
                                blockers=(Task(1, 9, 9, "x", False, "running", None, 0),)),
                     str(tmp_path / "run" / "status.json"))
    fd = held_lock(tmp_path)
    try:
        r = run(tmp_path)
    finally:
        os.close(fd)
    assert "read from /proc now" in r.output and "other" not in r.output


def test_no_transition_and_no_livepatch(tmp_path):
    (tmp_path / "livepatch").mkdir()
    r = run(tmp_path)
    assert r.exit_code == 0 and "no livepatch loaded" in r.output and "no transition open" in r.output


def test_without_livepatch_support_exit_4(tmp_path):
    r = run(tmp_path)
    assert r.exit_code == xc.NO_LIVEPATCH
    assert r.output.count("\n") == 1 and "has no livepatch" in r.output


def test_a_transition_without_root_or_daemon_exit_3(tmp_path, monkeypatch):
    fake_host(tmp_path, {50: (50, "kworker/1:2", 0, STACK, True)})

    def denied(*a, **k):
        raise procstall.ProcAccessError("root only")
    monkeypatch.setattr(procstall, "blockers", denied)
    r = run(tmp_path)
    assert r.exit_code == xc.NOT_ROOT
    assert r.output.count("\n") == 1 and "needs root" in r.output
