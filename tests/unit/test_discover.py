"""tracer.discover: the producers' install directories, and a watch on them
that reports new .ko files without blocking (inotify, a real one)."""

import os

from tracer import discover


def test_default_dirs_name_the_producers_places_once():
    dirs = discover.default_dirs("6.1.0-57-amd64")
    assert "/var/lib/kpatch/6.1.0-57-amd64" in dirs
    assert "/usr/lib/kpatch/6.1.0-57-amd64" in dirs
    assert any(d.endswith("/modules/6.1.0-57-amd64/livepatch") for d in dirs)
    assert len({os.path.realpath(d) for d in dirs}) == len(dirs)


def test_watch_reports_new_modules_and_directories_that_appear(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "old.ko").write_bytes(b"x")
    now = [0.0]
    w = discover.Watcher([str(a), str(b)], clock=lambda: now[0])
    assert discover.existing_modules([str(a), str(b)]) == [str(a / "old.ko")]
    assert w.poll() == []
    (a / "new.ko").write_bytes(b"x")          # closed after writing: IN_CLOSE_WRITE
    (a / "notes.txt").write_bytes(b"x")
    (a / "tmp").write_bytes(b"x")
    os.rename(a / "tmp", a / "moved.ko")        # IN_MOVED_TO
    assert sorted(w.poll()) == [str(a / "moved.ko"), str(a / "new.ko")]
    b.mkdir()
    (b / "first.ko").write_bytes(b"x")
    assert w.poll() == []                       # not looked for again yet
    now[0] += discover.RECHECK_S + 1
    assert w.poll() == [str(b / "first.ko")]
    (b / "second.ko").write_bytes(b"x")
    assert w.poll() == [str(b / "second.ko")]
    w.close()
