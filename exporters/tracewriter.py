"""Writing trace files (format v1, JSON Lines), with size-based rotation.

``TraceWriter(path, header)`` writes the header, then one record per
``write()``, flushed at once (a reader tailing the file, or a crash, loses at
most the line being written). Files are mode 0640: traces name the host's
livepatches and modules, readable by root and the file's group (adm under
logrotate), nobody else.

Rotation (``max_bytes``): before a record would take the file past
``max_bytes``, the file is fsynced and shifted to ``PATH.1`` (``PATH.1`` to
``PATH.2``, ..., keeping ``keep`` old files), and a new ``PATH`` starts with a
header of its own. That header carries the state *now* (``state_provider()``,
the shape of tracer/observe/sysfs.py state()), so ``klptrace validate`` judges each file
alone: cycles that began in an earlier file are ``unknown``, never violated.

External rotation (logrotate without ``copytruncate``): logrotate renames the
file and sends SIGHUP; the signal handler calls ``request_reopen()`` (only
sets a flag, safe in a handler) and the writer reopens ``PATH`` before its
next record or at ``reopen_if_requested()``; ``reopen()`` does it at once.

fsync happens on rotation, reopen and ``close()``, not per record: the
records are flushed to the kernel at once, the disk sync is what a crash of
the machine costs, and a per-record fsync would cost more than the probes.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Callable

MODE = 0o640
DEFAULT_KEEP = 5


class TraceWriter:
    """Writes whole lines or nothing: a line that cannot be written completely
    (a full disk) is cut off again (ftruncate to where it began) and the
    OSError is raised, so the file stays a valid trace and a later write
    continues it."""

    def __init__(self, path: str | None, header: dict, *, max_bytes: int | None = None,
                 keep: int = DEFAULT_KEEP, state_provider: Callable[[], dict] | None = None,
                 mode: int = MODE):
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError("max_bytes must be positive (or None: no rotation)")
        if keep < 0:
            raise ValueError("keep must not be negative")
        self.path = path
        self._header = dict(header)
        self.max_bytes = max_bytes
        self.keep = keep
        self.mode = mode
        self._state_provider = state_provider
        self._reopen_requested = False
        self.segment = 1          # files this writer has started (1 = the first)
        self._size = 0            # bytes in the current file
        self._records = 0         # records in the current file
        self._stdout = path is None or path == "-"
        self._fd: int | None = None
        if self._stdout:
            self.max_bytes = None     # nothing to rotate on a pipe
        else:
            self._fd = self._open(truncate=True)
        self._line(self._header)

    # --- files ------------------------------------------------------------------

    def _open(self, truncate: bool) -> int:
        # O_APPEND always: after a line cut off again (ftruncate) the next one
        # must start at the cut, not at the offset past it (a hole of NULs)
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_APPEND | (os.O_TRUNC if truncate else 0)
        fd = os.open(self.path, flags, self.mode)
        try:
            os.fchmod(fd, self.mode)   # the mode we promise, whatever the umask
            self._size = os.fstat(fd).st_size
            self._records = 1 if self._size else 0   # a non-empty file is rotatable
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _close_file(self) -> None:
        """fsync and close the current file (never stdout)."""
        if self._stdout:
            sys.stdout.flush()
            return
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _sync_dir(self) -> None:
        """Make the renames themselves durable."""
        d = os.path.dirname(os.path.abspath(self.path))
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _next_header(self) -> dict:
        """The header of a file that starts mid-stream: the current state, so
        it can be judged alone."""
        h = dict(self._header)
        h.pop("state", None)
        if self._state_provider is not None:
            h["state"] = self._state_provider()
        h["segment"] = self.segment
        return h

    @staticmethod
    def _encode(obj: dict) -> bytes:
        return (json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")

    def _line(self, obj: dict, data: bytes | None = None) -> int:
        if data is None:
            data = self._encode(obj)
        if self._stdout:
            sys.stdout.write(data.decode("utf-8"))
            sys.stdout.flush()
            return len(data)
        if self._fd is None:
            # a rotation or reopen failed half-way: continue PATH
            self._fd = self._open(truncate=False)
        start, view = self._size, memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError:
            try:
                os.ftruncate(self._fd, start)     # no half line stays behind
            except OSError:
                pass
            raise
        self._size += len(data)
        return len(data)

    # --- rotation -----------------------------------------------------------------

    def rotate(self) -> None:
        """Shift PATH to PATH.1 (and older ones up, dropping beyond ``keep``)
        and start a new PATH with a current-state header."""
        if self._stdout:
            return
        self._close_file()
        if self.keep == 0:
            os.unlink(self.path)
        else:
            oldest = f"{self.path}.{self.keep}"
            if os.path.exists(oldest):
                os.unlink(oldest)
            for i in range(self.keep - 1, 0, -1):
                src = f"{self.path}.{i}"
                if os.path.exists(src):
                    os.rename(src, f"{self.path}.{i + 1}")
            os.rename(self.path, f"{self.path}.1")
        self.segment += 1
        self._fd = self._open(truncate=True)
        self._line(self._next_header())
        self._sync_dir()

    def request_reopen(self) -> None:
        """For a SIGHUP handler: only sets a flag; the reopen happens before
        the next record or at ``reopen_if_requested()``."""
        self._reopen_requested = True

    @property
    def reopen_requested(self) -> bool:
        """A SIGHUP asked for a reopen that has not happened yet."""
        return self._reopen_requested

    def reopen_if_requested(self) -> bool:
        if not self._reopen_requested:
            return False
        self.reopen()
        return True

    def reopen(self) -> None:
        """Reopen PATH after an external rotation (logrotate renamed it). If
        PATH is still our file, nothing changes; if it is new (or empty, as
        logrotate's ``create`` leaves it) it starts with a current-state header."""
        self._reopen_requested = False
        if self._stdout:
            sys.stdout.flush()
            return
        if self._fd is not None:
            ours = os.fstat(self._fd)
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino):
                    os.fsync(self._fd)
                    return
            except FileNotFoundError:
                pass
            self._close_file()
        self.segment += 1
        # O_APPEND, not O_TRUNC: whatever is at PATH now is not ours to destroy;
        # a non-empty file gets no header (a second header mid-file is invalid)
        self._fd = self._open(truncate=False)
        if self._size == 0:
            self._line(self._next_header())

    # --- the writer's interface ------------------------------------------------------

    def write(self, record: dict) -> None:
        if self._reopen_requested:
            self.reopen()
        if self._fd is None and not self._stdout:
            self._fd = self._open(truncate=False)
            if self._size == 0:
                self._line(self._next_header())
        data = self._encode(record)
        # a file holding only its header is never rotated: a record larger
        # than max_bytes gets a file of its own instead of rotating forever
        if self.max_bytes is not None and self._size + len(data) > self.max_bytes and self._records:
            self.rotate()
        self._line(record, data)
        self._records += 1

    def close(self) -> None:
        if self._stdout:
            sys.stdout.flush()
            return
        if self._fd is None:
            return
        self._close_file()
