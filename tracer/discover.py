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

Directories that do not exist yet are looked for again every few seconds.
Watching is inotify (IN_CLOSE_WRITE, IN_MOVED_TO) through libc, no extra
package; reading it never blocks the poll loop.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import time

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
RECHECK_S = 5.0


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
    """New .ko files in ``dirs``; ``poll()`` returns their paths (never blocks)."""

    def __init__(self, dirs: list[str], clock=time.monotonic):
        self.dirs = list(dirs)
        self.clock = clock
        self._libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self._fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._wd: dict[int, str] = {}
        self._next_check = 0.0
        self._add_watches()

    def _add_watches(self) -> list[str]:
        """Watch the directories that exist now; returns the ones newly watched."""
        added = []
        watched = set(self._wd.values())
        for d in self.dirs:
            if d in watched or not os.path.isdir(d):
                continue
            wd = self._libc.inotify_add_watch(self._fd, d.encode(), IN_CLOSE_WRITE | IN_MOVED_TO)
            if wd >= 0:
                self._wd[wd] = d
                added.append(d)
        self._next_check = self.clock() + RECHECK_S
        return added

    def poll(self) -> list[str]:
        found = []
        if self.clock() >= self._next_check and len(self._wd) < len(self.dirs):
            # a directory that appeared: what is already in it counts as new
            for d in self._add_watches():
                found += existing_modules([d])
        while True:
            data = _read_nonblocking(self._fd)
            if not data:
                break
            off = 0
            while off + 16 <= len(data):     # struct inotify_event
                wd, _mask, _cookie, length = struct.unpack_from("iIII", data, off)
                name = data[off + 16:off + 16 + length].split(b"\0", 1)[0].decode(
                    "utf-8", "replace")
                off += 16 + length
                d = self._wd.get(wd)
                if d and name.endswith(".ko"):
                    found.append(os.path.join(d, name))
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


def _read_nonblocking(fd: int) -> bytes:
    try:
        return os.read(fd, 16384)
    except BlockingIOError:
        return b""
    except OSError as e:
        if e.errno == errno.EAGAIN:
            return b""
        raise
