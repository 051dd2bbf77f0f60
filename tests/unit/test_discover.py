"""tracer.discover: the producers' install directories, and a watch on them
that reports new .ko files without blocking (inotify, a real one), with no
timer: a directory that does not exist yet is found when it is made."""

import os
import select
import shutil

from klptrace.tracer.observe import discover


def test_default_dirs_name_the_producers_places_once():
    dirs = discover.default_dirs("6.1.0-57-amd64")
    assert "/var/lib/kpatch/6.1.0-57-amd64" in dirs
    assert "/usr/lib/kpatch/6.1.0-57-amd64" in dirs
    assert any(d.endswith("/modules/6.1.0-57-amd64/livepatch") for d in dirs)
    assert len({os.path.realpath(d) for d in dirs}) == len(dirs)


def _readable(w) -> bool:
    return bool(select.select([w.fileno()], [], [], 0)[0])


def test_watch_reports_new_modules_and_directories_that_appear(tmp_path):
    a, b = tmp_path / "a", tmp_path / "deep" / "er" / "b"
    a.mkdir()
    (a / "old.ko").write_bytes(b"x")
    w = discover.Watcher([str(a), str(b)])
    assert discover.existing_modules([str(a), str(b)]) == [str(a / "old.ko")]
    assert not _readable(w)                     # nothing to wake the daemon for
    assert w.poll() == []
    (a / "new.ko").write_bytes(b"x")          # closed after writing: IN_CLOSE_WRITE
    (a / "notes.txt").write_bytes(b"x")
    (a / "tmp").write_bytes(b"x")
    os.rename(a / "tmp", a / "moved.ko")        # IN_MOVED_TO
    assert _readable(w)
    assert sorted(w.poll()) == [str(a / "moved.ko"), str(a / "new.ko")]
    # b and two of its parents do not exist: made in steps, as mkdir -p does,
    # with a module in it before the watcher looks
    (tmp_path / "deep").mkdir()
    assert _readable(w)
    assert w.poll() == []
    (tmp_path / "deep" / "er").mkdir()
    b.mkdir()
    (b / "first.ko").write_bytes(b"x")
    assert w.poll() == [str(b / "first.ko")]
    (b / "second.ko").write_bytes(b"x")
    assert w.poll() == [str(b / "second.ko")]
    # removed and made again: watched again, its modules count as new
    shutil.rmtree(b)
    assert w.poll() == []
    b.mkdir()
    (b / "third.ko").write_bytes(b"x")
    assert w.poll() == [str(b / "third.ko")]
    w.close()
