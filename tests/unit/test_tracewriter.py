"""exporters.tracewriter: the file format stays v1, rotation keeps `keep` old
files each judged alone, modes are 0640 whatever the umask, SIGHUP-style
reopen follows logrotate's rename."""

import json
import os
import stat

import pytest

from klptrace.exporters.tracewriter import TraceWriter
from klptrace.tracer.model import events as ev
from klptrace.tracer.commands.validate import validate_file

STATE = {"patches": [{"name": "lp", "enabled": True, "transition": False,
                      "replace": False, "objects": [{"name": "vmlinux"}]}],
         "modules": []}


def header():
    return ev.header("test", state={"patches": [], "modules": []})


def lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def rec(i, pad=0):
    r = ev.module(i, 1000 * i, "m" * (1 + pad), "coming" if i % 2 else "going")
    return r


def test_plain_file_header_then_records_mode_0640(tmp_path):
    p = tmp_path / "t.jsonl"
    old = os.umask(0o077)             # the promised mode, not the umask's
    try:
        w = TraceWriter(str(p), header())
    finally:
        os.umask(old)
    w.write(rec(1))
    w.close()
    got = lines(p)
    assert got[0]["type"] == "header" and got[1]["seq"] == 1
    assert mode(p) == 0o640


def test_rotation_keeps_count_and_each_file_has_current_state_header(tmp_path):
    p = tmp_path / "t.jsonl"
    calls = []

    def state():
        calls.append(1)
        return STATE

    w = TraceWriter(str(p), header(), max_bytes=400, keep=2, state_provider=state)
    for i in range(1, 60):
        w.write(rec(i, pad=20))
    w.close()
    files = sorted(os.listdir(tmp_path))
    assert files == ["t.jsonl", "t.jsonl.1", "t.jsonl.2"], files
    assert calls, "rotated files take their state from the provider"
    seqs = []
    for name in ("t.jsonl.2", "t.jsonl.1", "t.jsonl"):
        f = tmp_path / name
        assert mode(f) == 0o640
        assert os.path.getsize(f) <= 400
        got = lines(f)
        h = got[0]
        assert h["type"] == "header" and h["format"] == "klptrace" and h["version"] == 1
        assert h["state"] == STATE and h["segment"] >= 2
        seqs += [r["seq"] for r in got[1:]]
        # each file is judged alone: usable, no violation
        res = validate_file(str(f))
        assert res.error is None, res.error
        assert res.count("violation") == 0
    assert seqs == sorted(seqs) and seqs[-1] == 59   # newest records, in order


def test_without_state_provider_rotated_header_drops_stale_state(tmp_path):
    p = tmp_path / "t.jsonl"
    w = TraceWriter(str(p), ev.header("k", state=STATE), max_bytes=300, keep=1)
    for i in range(1, 20):
        w.write(rec(i, pad=20))
    w.close()
    assert "state" not in lines(p)[0]
    assert lines(tmp_path / "t.jsonl.1")[0]["type"] == "header"


def test_keep_zero_keeps_no_old_file(tmp_path):
    p = tmp_path / "t.jsonl"
    w = TraceWriter(str(p), header(), max_bytes=300, keep=0)
    for i in range(1, 20):
        w.write(rec(i, pad=20))
    w.close()
    assert os.listdir(tmp_path) == ["t.jsonl"]


def test_record_larger_than_max_bytes_does_not_loop(tmp_path):
    p = tmp_path / "t.jsonl"
    w = TraceWriter(str(p), header(), max_bytes=100, keep=3)
    w.write(rec(1, pad=300))
    w.write(rec(2, pad=300))
    w.close()
    assert [r["seq"] for r in lines(p)[1:]] == [2]
    assert [r["seq"] for r in lines(tmp_path / "t.jsonl.1")[1:]] == [1]


def test_reopen_after_logrotate_rename(tmp_path):
    p = tmp_path / "t.jsonl"
    w = TraceWriter(str(p), header(), state_provider=lambda: STATE)
    w.write(rec(1))
    os.rename(p, tmp_path / "t.jsonl.1")       # logrotate moves it
    w.write(rec(2))                            # still goes to the moved file
    w.request_reopen()                         # SIGHUP handler
    assert not p.exists()
    w.write(rec(3))                            # reopen happens before this record
    w.close()
    assert [r["seq"] for r in lines(tmp_path / "t.jsonl.1")[1:]] == [1, 2]
    new = lines(p)
    assert new[0]["type"] == "header" and new[0]["state"] == STATE
    assert [r["seq"] for r in new[1:]] == [3]
    assert mode(p) == 0o640
    assert validate_file(str(p)).error is None


def test_reopen_into_logrotate_created_empty_file(tmp_path):
    p = tmp_path / "t.jsonl"
    w = TraceWriter(str(p), header())
    w.write(rec(1))
    os.rename(p, tmp_path / "t.jsonl.1")
    p.write_text("")                           # logrotate `create`
    w.reopen()
    w.write(rec(2))
    w.close()
    got = lines(p)
    assert got[0]["type"] == "header" and [r["seq"] for r in got[1:]] == [2]


def test_reopen_when_file_not_moved_changes_nothing(tmp_path):
    p = tmp_path / "t.jsonl"
    w = TraceWriter(str(p), header())
    w.write(rec(1))
    w.request_reopen()
    assert w.reopen_if_requested() is True
    assert w.reopen_if_requested() is False
    w.write(rec(2))
    w.close()
    got = lines(p)
    assert [r["type"] for r in got] == ["header", "module", "module"]


def test_stdout_writer_ignores_rotation(capsys):
    w = TraceWriter("-", header(), max_bytes=10)
    w.write(rec(1))
    w.reopen()
    w.close()
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2


def test_bad_settings_rejected(tmp_path):
    with pytest.raises(ValueError):
        TraceWriter(str(tmp_path / "t"), header(), max_bytes=0)
    with pytest.raises(ValueError):
        TraceWriter(str(tmp_path / "t"), header(), keep=-1)


def test_a_line_cut_by_a_full_disk_leaves_no_hole_when_space_returns(tmp_path, monkeypatch):
    """A write that fails half-way is cut off again (ftruncate), and the next
    line starts where the cut one began. Before: the file was open without
    O_APPEND, its offset stayed past the cut, and the next write left a hole
    of NUL bytes (`validate`: not JSON), found by the lab's full-disk case."""
    path = tmp_path / "t.jsonl"
    w = TraceWriter(str(path), header())
    w.write(ev.module(1, 10, "a", "coming"))
    real_write = os.write
    state = {"full": True}

    def short_write(fd, data):
        if state["full"]:
            state["full"] = False
            real_write(fd, bytes(data[:7]))            # part of the line, then the disk is full
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", short_write)
    with pytest.raises(OSError):
        w.write(ev.module(2, 20, "b", "coming"))
    w.write(ev.module(3, 30, "c", "coming"))
    w.close()
    assert b"\0" not in path.read_bytes()
    assert [r.get("module") for r in lines(path)[1:]] == ["a", "c"]
