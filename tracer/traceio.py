"""Reading trace files (format v1) as a stream: `.jsonl`, `.jsonl.gz`, `-`.

``read_trace(path)`` yields the header first, then each record, checked by
tracer.events. Anything that makes the file unusable raises TraceInputError
with the file and line, so the CLI can print one clear line. A final line cut
short (a writer that died mid-write) is not an error: it is reported through
``on_warning`` and the stream ends there.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import sys
from typing import Callable, Iterator

from . import events as ev


class TraceInputError(Exception):
    """Unusable input. ``str()`` is the one line to print: what, where, what to do."""


def _open(path: str):
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="strict")
    if os.path.isdir(path):
        raise TraceInputError(f"{path}: is a directory; give trace files (.jsonl, .jsonl.gz)")
    try:
        with open(path, "rb") as probe:
            magic = probe.read(2)
    except FileNotFoundError:
        raise TraceInputError(f"{path}: no such file; check the path") from None
    except PermissionError:
        raise TraceInputError(f"{path}: permission denied; run as a user who can read it") from None
    except OSError as e:
        raise TraceInputError(f"{path}: cannot read: {e.strerror}") from None
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, "r", encoding="utf-8")


def read_trace(path: str, on_warning: Callable[[str], None] = lambda msg: None
               ) -> Iterator[dict]:
    """Yield the checked header, then every checked record of one trace."""
    try:
        f = _open(path)
    except TraceInputError:
        raise
    with f:
        try:
            yield from _records(path, f, on_warning)
        except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, OSError) as e:
            what = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else \
                f"damaged compressed data ({e})"
            raise TraceInputError(f"{path}: {what}; is this a klptrace trace?") from None


def _records(path: str, f, on_warning) -> Iterator[dict]:
    lineno = 0
    last_seq = None
    pending = f.readline()      # one line of look-ahead: is this the last line?
    if not pending:
        raise TraceInputError(f"{path}: empty file; a trace starts with a klptrace header line")
    loads, check = json.loads, ev.check_record
    while pending:
        line = pending
        pending = f.readline()
        lineno += 1
        is_last = not pending
        if not line.strip():
            if is_last:
                break
            raise TraceInputError(f"{path}:{lineno}: empty line inside the trace")
        try:
            obj = loads(line)
        except ValueError:
            if lineno == 1:
                raise TraceInputError(f"{path}:1: not JSON; expected a klptrace header line") from None
            if is_last:
                on_warning(f"{path}:{lineno}: final line is truncated (writer stopped "
                           "mid-write); ignored")
                return
            raise TraceInputError(f"{path}:{lineno}: not JSON; the trace is corrupt "
                                  "(only the last line may be cut short)") from None
        if lineno == 1:
            try:
                yield ev.check_header(obj)
            except ev.RecordError as e:
                raise TraceInputError(f"{path}:1: {e}") from None
            continue
        try:
            known = check(obj)
            seq = obj["seq"]
            if last_seq is not None and seq <= last_seq:
                raise ev.RecordError(f"seq {seq} does not increase (previous {last_seq})")
        except ev.RecordError as e:
            if is_last and not line.endswith("\n"):
                on_warning(f"{path}:{lineno}: final line is truncated ({e}); ignored")
                return
            raise TraceInputError(f"{path}:{lineno}: malformed record: {e}") from None
        last_seq = seq
        if not known:
            on_warning(f"{path}:{lineno}: unknown record type {obj.get('type')!r} skipped")
            continue
        yield obj
    if lineno == 1:
        return  # a header alone: a valid, empty trace
