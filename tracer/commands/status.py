"""`klptrace status`: for a person on the host, the livepatches, their state,
an open transition's age and the tasks blocking it.

Where the blockers come from, in this order:

1. the running daemon's status file (tracer/daemon/statusfile.py): the kernel's own
   reason for each task and the function, since when, the sweeps and the
   signals (tracer/observe/stalls.py);
2. else (or with --direct) /proc/*/task/*/patch_state and /proc/TID/stack
   (tracer/observe/procstall.py): which tasks and the function on their stack, but
   no reason and no "since"; root only (the files are 0400).

The livepatches themselves always come from /sys/kernel/livepatch, which
anyone may read. Errors are one line with an exit code of tracer/exitcodes.py.
"""

from __future__ import annotations

import json
import os
import sys
import time

import click

from klptrace.tracer import exitcodes as xc
from klptrace.tracer.observe import sysfs as livepatch_sysfs
from klptrace.tracer.observe import procstall
from klptrace.tracer.daemon import statusfile

RUNBOOK = "docs/operations.md, \"Stalled transitions: the runbook\""
SHOWN = 50              # blockers listed in text (all of them in --format json)


def _fail(code: int, msg: str):
    click.echo(f"klptrace status: {msg}", err=True)
    sys.exit(code)


def _age(ns: int | None, now: int) -> str:
    if ns is None:
        return "-"
    s = max(0, now - ns) / 1e9
    if s < 120:
        return f"{s:.1f}s"
    if s < 7200:
        return f"{s / 60:.1f}m"
    return f"{s / 3600:.1f}h"


def from_daemon(path: str, lock: str) -> dict | None:
    """The daemon's view, if a daemon runs and has written one."""
    if not statusfile.daemon_running(lock):
        return None
    doc = statusfile.read(path)
    if doc is None:
        return None
    return {**doc["stall"], "from": "daemon", "daemon_pid": doc.get("pid")}


def from_proc(sysfs: str, proc: str) -> dict:
    """A direct read; raises procstall.ProcAccessError without root."""
    open_ = livepatch_sysfs.open_transition(sysfs)
    if open_ is None:
        return {"from": "proc", "patch": None, "target": None, "blockers": []}
    patch, target = open_
    names = livepatch_sysfs.patch_functions(patch, sysfs) if target == "patched" else set()
    found = procstall.blockers(target, names, patch if target == "unpatched" else None, proc=proc)
    return {"from": "proc", "source": "proc", "patch": patch, "target": target, "opened_ns": None,
            "blockers": [{"pid": t.tid, "tgid": t.tgid, "comm": t.comm, "kthread": t.kthread,
                          "reason": "not_switched", "state": t.state,
                          **({"function": t.function} if t.function else {})}
                         for t in sorted(found, key=lambda t: t.tid)],
            "blockers_total": len(found)}


def gather(*, direct: bool, sysfs: str, proc: str, status_path: str, lock: str) -> dict:
    if not os.path.isdir(sysfs):
        _fail(xc.NO_LIVEPATCH, f"kernel {os.uname().release} has no livepatch ({sysfs} missing: "
              "CONFIG_LIVEPATCH not set)")
    patches = livepatch_sysfs.patches(sysfs)
    view = None if direct else from_daemon(status_path, lock)
    open_now = livepatch_sysfs.open_transition(sysfs)
    if view is not None and open_now is not None and view.get("patch") != open_now[0]:
        view = None             # the daemon has not caught up (or missed it): read it here
    if view is None:
        if open_now is None:
            view = {"from": "proc", "patch": None, "target": None, "blockers": []}
        else:
            try:
                view = from_proc(sysfs, proc)
            except procstall.ProcAccessError:
                _fail(xc.NOT_ROOT, f"livepatch {open_now[0]} is in transition and no klptrace "
                      "daemon is running: reading its blockers (/proc/*/task/*/patch_state, "
                      "mode 0400) needs root; run with sudo")
    return {"livepatches": patches, "now_ns": time.monotonic_ns(), **view}


def format_text(doc: dict) -> str:
    now = doc["now_ns"]
    lines = []
    if not doc["livepatches"]:
        lines.append("no livepatch loaded")
    else:
        lines.append("livepatches:")
        w = max(len(p["name"]) for p in doc["livepatches"])
        for p in doc["livepatches"]:
            state = "enabled" if p["enabled"] else "disabled"
            if p["transition"]:
                state += f", in transition to {'patched' if p['enabled'] else 'unpatched'}"
            extra = " (replace)" if p.get("replace") else ""
            objs = ", ".join(o["name"] for o in p.get("objects", []))
            lines.append(f"  {p['name']:<{w}}  {state}{extra}  [{objs}]")
    if doc.get("patch") is None:
        lines.append("no transition open")
        return "\n".join(lines)
    where = ("from the klptrace daemon" + (f" (pid {doc['daemon_pid']})" if doc.get("daemon_pid") else "")
             + f" as of {_age(doc.get('as_of_ns'), now)} ago" if doc["from"] == "daemon"
             else "read from /proc now (without the daemon: no reason, no since)")
    if doc.get("opened_ns") is not None:
        at_least = "at least " if doc.get("before_daemon") else ""
        head = (f"transition of {doc['patch']} to {doc['target']}: open for "
                f"{at_least}{_age(doc['opened_ns'], now)}")
    else:
        head = f"transition of {doc['patch']} to {doc['target']}: open (since when: the daemon knows)"
    if doc["from"] == "daemon":
        head += f", {doc.get('sweeps', 0)} sweep(s), signalled {doc.get('signals', 0)} time(s)"
        if doc.get("reversed"):
            head += ", reversed"
        if doc.get("forced"):
            head += ", FORCED"
    lines.append(head)
    blockers = doc.get("blockers") or []
    total = doc.get("blockers_total", len(blockers))
    if not total:
        lines.append(f"blockers: none known, {where}")
        return "\n".join(lines)
    lines.append(f"blockers: {total}, {where}:")
    rows = [("PID", "TGID", "COMM", "KIND", "REASON", "FUNCTION", "SINCE")]
    for b in blockers[:SHOWN]:
        kind = "kthread" if b.get("kthread") else "user"
        if b.get("state") and b["state"] != "?":
            kind += f"/{b['state']}"
        rows.append((str(b["pid"]), str(b.get("tgid", "")), b["comm"], kind, b["reason"],
                     b.get("function") or "-", _age(b.get("since_ns"), now)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    if total > min(len(blockers), SHOWN):
        lines.append(f"  ... and {total - min(len(blockers), SHOWN)} more")
    lines.append(f"what to do, by reason: {RUNBOOK}")
    return "\n".join(lines)


@click.command()
@click.option("--direct", is_flag=True,
              help="Read /proc and sysfs here even when a daemon runs (root).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--status-file", default=statusfile.PATH, show_default=True, hidden=True)
@click.option("--lock", default=statusfile.LOCK, hidden=True)
@click.option("--sysfs", default=livepatch_sysfs.LIVEPATCH, hidden=True)
@click.option("--proc", default=procstall.PROC, hidden=True)
def status(direct, fmt, status_file, lock, sysfs, proc):
    """The livepatches, their state, and what blocks an open transition
    (which tasks, why, on which function, since when): from the running
    daemon, else from /proc (root)."""
    doc = gather(direct=direct, sysfs=sysfs, proc=proc, status_path=status_file, lock=lock)
    if fmt == "json":
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(format_text(doc))
    sys.exit(xc.OK)
