"""Reading trace files (format v1) as a stream: `.jsonl`, `.jsonl.gz`, `-`.

``read_trace(path)`` yields the header first, then each record, checked by
tracer/model/events.py. Anything that makes the file unusable raises TraceInputError
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

from klptrace.tracer.model import events as ev


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
    f = _open(path)
    with f:
        try:
            yield from _records(path, f, on_warning)
        except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, OSError) as e:
            what = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else \
                f"damaged compressed data ({e})"
            raise TraceInputError(f"{path}: {what}; is this a klptrace trace?") from None


def _records(path: str, f, on_warning) -> Iterator[dict]:
    """The hot loop of `klptrace validate` (see docs/benchmarks.md): a valid
    line costs one call of the C JSON scanner, one check and one comparison.
    Anything unusual (blank line, bad JSON, a bad record) takes _slow_line,
    which gives the exact verdict and message."""
    first = f.readline()
    if not first:
        raise TraceInputError(f"{path}: empty file; a trace starts with a klptrace header line")
    try:
        header = json.loads(first)
    except ValueError:
        raise TraceInputError(f"{path}:1: not JSON; expected a klptrace header line") from None
    try:
        yield ev.check_header(header)
    except ev.RecordError as e:
        raise TraceInputError(f"{path}:1: {e}") from None
    # json.loads() wraps this scanner in two Python calls and two regex
    # matches per line; calling it directly halves the parse cost. The
    # scanner returns the end of the value: a line must end right there.
    scan = json.JSONDecoder().scan_once
    check = ev.check_record
    lineno = 1
    last_seq = float("-inf")
    for line in f:
        lineno += 1
        try:
            obj, end = scan(line, 0)
            rest = len(line) - end      # 1: the newline; 0: a last line without one
            ok = (rest == 0 or rest == 1 and line[end] == "\n") and check(obj) \
                and obj["seq"] > last_seq
        except (ValueError, StopIteration, ev.RecordError, KeyError, TypeError):
            ok = False
        if not ok:
            # the slow path: decide exactly, with the message to print
            verdict = _slow_line(path, f, line, lineno, last_seq, on_warning)
            if verdict is _END:
                return
            seq, obj = verdict
            if seq is not None:
                last_seq = seq
            if obj is None:
                continue
        last_seq = obj["seq"]
        yield obj


_END = object()


def _slow_line(path: str, f, line: str, lineno: int, last_seq: int, on_warning):
    """A line the fast path did not accept: return (seq, record), where the
    record is None for a line to skip (a blank final line, an unknown record
    type), or _END (a cut final line), or raise
    TraceInputError. Only the last line may be cut short: a line without its
    newline is the last one; otherwise look one line ahead."""
    def is_last() -> bool:
        return not line.endswith("\n") or f.readline() == ""

    if not line.strip():
        if is_last():
            return None, None
        raise TraceInputError(f"{path}:{lineno}: empty line inside the trace")
    try:
        obj = json.loads(line)
    except ValueError:
        if is_last():
            on_warning(f"{path}:{lineno}: final line is truncated (writer stopped "
                       "mid-write); ignored")
            return _END
        raise TraceInputError(f"{path}:{lineno}: not JSON; the trace is corrupt "
                              "(only the last line may be cut short)") from None
    try:
        known = ev.check_record(obj)
        seq = obj["seq"]
        if seq <= last_seq:
            raise ev.RecordError(f"seq {seq} does not increase (previous {last_seq})")
    except ev.RecordError as e:
        if not line.endswith("\n"):
            on_warning(f"{path}:{lineno}: final line is truncated ({e}); ignored")
            return _END
        raise TraceInputError(f"{path}:{lineno}: malformed record: {e}") from None
    if not known:
        on_warning(f"{path}:{lineno}: unknown record type {obj.get('type')!r} skipped")
        return seq, None
    return seq, obj
