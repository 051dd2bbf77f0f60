"""Writing trace files (format v1, JSON Lines). Minimal for now: the exporter
issue adds size-based rotation, fsync on rotate/exit and SIGHUP reopen here."""

from __future__ import annotations

import json
import os
import sys


class TraceWriter:
    def __init__(self, path: str | None, header: dict):
        self.path = path
        self._header = header
        if path is None or path == "-":
            self._f = sys.stdout
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            self._f = os.fdopen(fd, "w", encoding="utf-8")
        self._line(header)

    def _line(self, obj: dict) -> None:
        self._f.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def write(self, record: dict) -> None:
        self._line(record)
        self._f.flush()

    def close(self) -> None:
        self._f.flush()
        if self._f is not sys.stdout:
            os.fsync(self._f.fileno())
            self._f.close()
