"""A transition's blockers as user space sees them: /sys/kernel/livepatch and
/proc, the files Documentation/livepatch/livepatch.rst points an administrator
at ("/proc/<pid>/patch_state ... can be used to determine which tasks are
blocking", "/proc/<pid>/stack may help here").

Used by `klptrace status` when no daemon runs, and by the daemon where no
stall probe attached (tracer/observe/stalls.py) or the probe gives no function.

What this view cannot give (docs/probes.md "Stalled transitions"): the
kernel's reason (running, unreliable stack, sleeping on a function), idle
tasks (swapper/N are not in /proc), and a "since" earlier than the first
look. /proc/TID/stack is the non-reliable walker, 64 frames, racy for a task
on a CPU. Reading patch_state and stack needs root (0400, and CAP_SYS_ADMIN
for the stack).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PROC = "/proc"
PF_KTHREAD = 0x00200000
# task->patch_state: KLP_UNPATCHED 0, KLP_PATCHED 1 (-1 outside a transition)
STATE_OF_TARGET = {"patched": 1, "unpatched": 0}


class ProcAccessError(Exception):
    """/proc/*/task/*/patch_state could not be read: not root."""


@dataclass(frozen=True)
class ProcTask:
    tid: int
    tgid: int
    comm: str
    kthread: bool
    function: str | None       # a patched function on its stack, if one was found
    state: str = "?"           # /proc/TID/stat: R running, S sleeping, D uninterruptible, ...


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def function_on_stack(tid: int, names: set[str], module: str | None,
                      proc: str = PROC) -> str | None:
    """The first frame of /proc/TID/stack that the kernel's check would stop
    at: patching, one of the patch's functions (``names``); unpatching, a
    function of the livepatch module itself (``module``: the kernel looks for
    the replacement functions then). Lines look like
    ``[<0>] klpt_busy_work_func+0x2c/0x60 [klpt_busy]``."""
    text = _read(os.path.join(proc, str(tid), "stack"))
    if not text:
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        sym = parts[1].split("+", 1)[0]
        mod = parts[2].strip("[]") if len(parts) > 2 else None
        if sym in names or (module is not None and mod == module):
            return sym
    return None


def _stat(stat: str | None) -> tuple[str, bool]:
    """(state letter, is a kthread) from /proc/TID/stat."""
    if not stat:
        return "?", False
    fields = stat.rsplit(")", 1)[-1].split()
    # after "pid (comm)": state ppid pgrp session tty_nr tpgid flags
    try:
        return fields[0], bool(int(fields[6]) & PF_KTHREAD)
    except (IndexError, ValueError):
        return "?", False


def blockers(target: str, names: set[str], module: str | None, *,
             proc: str = PROC) -> list[ProcTask]:
    """Every thread whose patch_state is neither the target nor -1 (no
    transition), with the patched function on its stack where one is found.
    Raises ProcAccessError when patch_state is not readable (not root)."""
    want = STATE_OF_TARGET[target]
    out = []
    denied = False
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return out
    for pid in pids:
        try:
            tids = [t for t in os.listdir(os.path.join(proc, pid, "task")) if t.isdigit()]
        except OSError:
            continue            # exited
        for tid in tids:
            base = os.path.join(proc, pid, "task", tid)
            try:
                with open(os.path.join(base, "patch_state")) as f:
                    state = int(f.read().strip())
            except PermissionError:
                denied = True
                continue
            except (OSError, ValueError):
                continue
            if state == -1 or state == want:
                continue
            comm = (_read(os.path.join(base, "comm")) or "").strip()
            letter, kthread = _stat(_read(os.path.join(base, "stat")))
            out.append(ProcTask(int(tid), int(pid), comm, kthread,
                                function_on_stack(int(tid), names, module, proc), letter))
    if denied and not out:
        raise ProcAccessError("/proc/*/task/*/patch_state is readable by root only")
    return out
