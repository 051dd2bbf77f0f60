"""The daemon's status file: the open transition and its blockers as the
daemon last saw them (tracer/observe/stalls.py ``StallState``), for `klptrace status`
(tracer/commands/status.py) on the same host.

/run/klptrace/status.json (the unit's RuntimeDirectory), replaced atomically
(a temporary file, then rename) whenever the state changes: at most about
once a second while a transition is open, once per transition boundary
otherwise. Mode 0644: it names the blocking tasks' pids and comms, which ps
shows anyone. The file says nothing about whether its writer still runs:
the daemon's lock (tracer/commands/run.py LOCK) does.
"""

from __future__ import annotations

import fcntl
import json
import os

DIR = "/run/klptrace"
PATH = os.path.join(DIR, "status.json")
LOCK = "/run/klptrace.lock"          # the daemon's: tracer/commands/run.py takes it, exclusively
FORMAT = 1


def write(state, path: str = PATH, *, pid: int | None = None) -> None:
    """``state``: a StallState (anything with ``to_json()``)."""
    doc = {"format": FORMAT, "pid": pid if pid is not None else os.getpid(),
           "stall": state.to_json(),
           "untracked_checks": state.untracked_checks,
           "records_suppressed": state.records_suppressed}
    d = os.path.dirname(path)
    os.makedirs(d, mode=0o755, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.fchmod(fd, 0o644)            # whatever the umask (the unit's is 0027)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
    except BaseException:
        os.unlink(tmp)
        raise
    os.replace(tmp, path)


def read(path: str = PATH) -> dict | None:
    """The document, or None when there is none (or it is not one of ours)."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("stall"), dict):
        return None
    return doc


def remove(path: str = PATH) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def daemon_running(lock: str = LOCK) -> bool:
    """A daemon holds the lock exclusively while it runs: if a shared lock
    can be had, none does."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False
