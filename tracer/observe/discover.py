"""Where fleets' livepatch packages put their modules, and watching there.

A daemon started at boot does not know where a host's livepatches are, so by
default it preloads (probes directly from their first callback on) the .ko
files it finds where the producers install them, and watches those
directories for new files (``klptrace run --no-discover`` turns it off;
``--preload`` adds others):

* ``/var/lib/kpatch/RELEASE/``: ``kpatch install`` copies a module here;
  kpatch.service runs ``kpatch load --all`` from here at boot (dynup/kpatch,
  kpatch/kpatch; contrib/kpatch.service). RHEL's kpatch-patch packages ship
  to /usr/lib/kpatch/RELEASE/ and their scriptlet copies into this directory.
* ``/usr/lib/kpatch/RELEASE/``, ``/usr/local/lib/kpatch/RELEASE/``: the
  packaged copies and the core module's search path of the kpatch script.
* ``/lib/modules/RELEASE/livepatch/``: SUSE's kernel-livepatch packages
  (INSTALL_MOD_DIR=livepatch), /usr/lib/modules on usr-merged systems.

A directory that does not exist yet is waited for by a watch on its nearest
existing ancestor (a directory created there makes the watcher look again), so
nothing is looked for on a timer: an idle daemon is not woken by discovery.
Watching is inotify (IN_CLOSE_WRITE, IN_MOVED_TO for modules; IN_CREATE for
directories on the way) through libc, no extra package; the watch's fd is in
the daemon's wait set (tracer/daemon/runloop.py) and reading it never blocks.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_IGNORED = 0x00008000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
# one mask for every watch: a module written or moved into a watched
# directory, or a directory created (or moved) on the way to one
WATCH_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE


def default_dirs(release: str | None = None) -> list[str]:
    rel = release or os.uname().release
    dirs = [f"/var/lib/kpatch/{rel}", f"/usr/lib/kpatch/{rel}", f"/usr/local/lib/kpatch/{rel}",
            f"/lib/modules/{rel}/livepatch", f"/usr/lib/modules/{rel}/livepatch"]
    out, seen = [], set()
    for d in dirs:                  # /lib is /usr/lib on usr-merged systems: once
        key = os.path.realpath(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def existing_modules(dirs: list[str]) -> list[str]:
    """The .ko files in those directories now, sorted by directory then name."""
    out = []
    for d in dirs:
        try:
            out += [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".ko")]
        except OSError:
            continue
    return out


class Watcher:
    """New .ko files in ``dirs``; ``poll()`` returns their paths (never blocks).

    Invariant: every directory of ``dirs`` is watched itself if it exists, else
    its nearest existing ancestor is watched, so its creation is an event.
    """

    def __init__(self, dirs: list[str]):
        self.dirs = list(dirs)
        self._libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self._fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._wd: dict[int, str] = {}        # watch descriptor -> the directory it is on
        self._watched: set[str] = set()      # directories of ``dirs`` watched themselves
        self._add_watches()

    def fileno(self) -> int:
        """Readable when something happened (the daemon's wait set)."""
        return self._fd

    def _watch(self, d: str) -> bool:
        wd = self._libc.inotify_add_watch(self._fd, d.encode(), WATCH_MASK)
        if wd < 0:
            return False
        self._wd[wd] = d
        return True

    def _add_watches(self) -> list[str]:
        """Watch what exists of each directory; returns the ones of ``dirs``
        newly watched themselves. A directory made between looking and
        watching is seen by the look after the watch (the loop)."""
        added = []
        for d in self.dirs:
            if d in self._watched:
                continue
            while True:
                if os.path.isdir(d):
                    if self._watch(d):
                        self._watched.add(d)
                        added.append(d)
                    break
                anc = _existing_ancestor(d)
                if anc is None or not self._watch(anc) or not os.path.isdir(d):
                    break
                # d appeared while its ancestor's watch was being added: once more
        return added

    def poll(self) -> list[str]:
        found, look_again = [], False
        while True:
            data = _read_nonblocking(self._fd)
            if not data:
                break
            off = 0
            while off + 16 <= len(data):     # struct inotify_event
                wd, mask, _cookie, length = struct.unpack_from("iIII", data, off)
                name = data[off + 16:off + 16 + length].split(b"\0", 1)[0].decode(
                    "utf-8", "replace")
                off += 16 + length
                d = self._wd.get(wd)
                if mask & IN_IGNORED:
                    # the directory went (removed, unmounted): wait for it again
                    self._wd.pop(wd, None)
                    self._watched.discard(d)
                    look_again = True
                elif mask & IN_ISDIR:
                    look_again = True        # a directory on the way to one of ours
                elif (d in self._watched and mask & (IN_CLOSE_WRITE | IN_MOVED_TO)
                      and name.endswith(".ko")):
                    found.append(os.path.join(d, name))
        if look_again and len(self._watched) < len(self.dirs):
            # a directory that appeared: what is already in it counts as new
            for d in self._add_watches():
                found += existing_modules([d])
        return found

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _existing_ancestor(d: str) -> str | None:
    p = os.path.dirname(os.path.abspath(d))
    while not os.path.isdir(p):
        if p == os.path.dirname(p):
            return None
        p = os.path.dirname(p)
    return p


def _read_nonblocking(fd: int) -> bytes:
    try:
        return os.read(fd, 16384)
    except BlockingIOError:
        return b""
    except OSError as e:
        if e.errno == errno.EAGAIN:
            return b""
        raise
