"""The raw events the BPF programs write (bpf/klptrace.h), decoded.

A ctypes mirror of ``struct klpt_event`` and its decoding into plain
dataclasses. No bcc here, so the inference (tracer/observe/infer.py) and its unit
tests can build raw events without a kernel. Keep in step with klptrace.h
(tests/unit/test_event_layout.py compiles the header and compares member by member).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

NAME_LEN = 56
CHUNK_OBJS = 8              # objects per snapshot event
MAX_CHUNKS = 32             # events per patch snapshot: at most 256 objects

# event kinds (klptrace.h enum klpt_kind)
ENABLE_RET = 1
INIT_TRANSITION = 2
PATCH_OBJECT = 3
PATCH_OBJECT_RET = 4
START_TRANSITION = 5
COMPLETE = 6
CANCEL = 7
REVERSE = 8
FORCE = 9
MODULE_COMING = 10
MODULE_COMING_RET = 11
MODULE_GOING = 12
UNPATCH_OBJECT = 13
DIRECT = 14
DIRECT_RET = 15
CORE = 16
MODULE_GOING_RET = 17
COMPLETE_RET = 18

# enum klpt_ctx
CTX_NONE, CTX_COMING, CTX_GOING = 0, 1, 2

# enum klpt_snap
SNAP_LAST, SNAP_MORE, SNAP_TRUNCATED = 0, 1, 2

# enum klpt_hit, in order: the label values of klptrace_probe_hits_total{program}
HIT_PROGRAMS = ("enable", "enable_ret", "init", "start", "complete", "cancel", "reverse",
                "force", "patch_object", "patch_object_ret", "unpatch_object",
                "module_coming", "module_coming_ret", "module_going", "module_going_ret",
                "core", "direct", "direct_ret", "complete_ret",
                # the stall section (appended)
                "stall_check", "stall_check_ret", "stall_switch", "stall_switch_ret",
                "stall_sweep", "stall_sweep_ret")
HIT_SLOTS = len(HIT_PROGRAMS)

# A kprobe on a function reports an ip a little past the function's address:
# + 1 past the int3, or past an endbr64 (arch_adjust_kprobe_addr moves the
# probe there). A direct probe's hit, and a probed address in the kernel's
# kprobe list, is taken as the callback's within this many bytes.
PROBE_IP_SLACK = 16

# kernel klp_target_state values
KLP_UNPATCHED, KLP_PATCHED = 0, 1


class CObj(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char * NAME_LEN),
                ("cb", ctypes.c_uint64 * 4),
                ("loaded", ctypes.c_uint8),
                ("patched", ctypes.c_uint8),
                ("post_unpatch_enabled", ctypes.c_uint8),
                ("dynamic", ctypes.c_uint8),
                ("pad", ctypes.c_uint8 * 4)]


class CEvent(ctypes.Structure):
    _fields_ = [("ts_ns", ctypes.c_uint64),
                ("ip", ctypes.c_uint64),
                ("arg", ctypes.c_int64),
                ("lost", ctypes.c_uint64),
                ("kind", ctypes.c_uint32),
                ("pid", ctypes.c_uint32),
                ("ctx", ctypes.c_uint32),
                ("nobjs", ctypes.c_uint32),
                ("chunk", ctypes.c_uint32),
                ("snap", ctypes.c_uint32),
                ("replace", ctypes.c_uint32),
                ("pad", ctypes.c_uint32),
                ("patch", ctypes.c_char * NAME_LEN),
                ("module", ctypes.c_char * NAME_LEN),
                ("objs", CObj * CHUNK_OBJS)]


@dataclass
class Obj:
    """A struct klp_object as a probe saw it."""
    name: str                         # "vmlinux" for obj->name == NULL
    cb: tuple[int, int, int, int]     # callback addresses, 0 = not registered
    loaded: bool = True
    patched: bool = False
    post_unpatch_enabled: bool = False
    dynamic: bool = False


@dataclass
class Raw:
    kind: int
    ts_ns: int
    patch: str = ""
    module: str = ""
    arg: int = 0
    ip: int = 0
    pid: int = 0
    ctx: int = CTX_NONE
    replace: bool = False
    objs: list[Obj] = field(default_factory=list)
    lost: int = 0                    # BPF `lost` counter when the event was reserved
    chunk: int = 0                   # snapshot events: index in the chain (tracer/observe/snapshots.py)
    snap: int = SNAP_LAST            # snapshot events: SNAP_*


def _s(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


EVENT_SIZE = ctypes.sizeof(CEvent)


class BadRecord(ValueError):
    """A ring-buffer record that is not a struct klpt_event."""


def decode(data, size: int | None = None) -> Raw:
    """``data``: the ctypes pointer (or bytes) bcc's ring buffer callback gets,
    ``size`` its length: a record of another size is refused (BadRecord; the
    daemon counts it as a decode error, a gap), never read past."""
    if size is None and isinstance(data, (bytes, bytearray)):
        size = len(data)
    if size is not None and size != EVENT_SIZE:
        raise BadRecord(f"a ring-buffer record of {size} bytes, not {EVENT_SIZE} "
                        "(struct klpt_event): BPF programs and decoder disagree")
    if isinstance(data, (bytes, bytearray)):
        ev = CEvent.from_buffer_copy(data)
    else:
        ev = ctypes.cast(data, ctypes.POINTER(CEvent)).contents
    objs = []
    for i in range(min(ev.nobjs, CHUNK_OBJS)):
        o = ev.objs[i]
        objs.append(Obj(name=_s(o.name) or "vmlinux", cb=tuple(o.cb),
                        loaded=bool(o.loaded), patched=bool(o.patched),
                        post_unpatch_enabled=bool(o.post_unpatch_enabled),
                        dynamic=bool(o.dynamic)))
    return Raw(kind=ev.kind, ts_ns=ev.ts_ns, patch=_s(ev.patch), module=_s(ev.module),
               arg=int(ev.arg), ip=ev.ip, pid=ev.pid, ctx=ev.ctx, replace=bool(ev.replace),
               objs=objs, lost=ev.lost, chunk=ev.chunk, snap=ev.snap)


# --- stalls: the tables of the "stalls" section (klptrace.h struct klpt_blocker,
# struct klpt_sweeps), read by the daemon on its tick (tracer/observe/stalls.py) ---

COMM_LEN = 16
FUNC_LEN = 128
STALL_SLOTS = 4096           # entries of the BPF table stall_tasks
SIGNALS_TIMEOUT = 15         # the kernel signals on every 15th sweep that left tasks behind
EADDRINUSE = 98              # klp_check_and_switch_task: a patched function is on the stack

# enum klpt_stall_source
STALL_FROM_CHECK, STALL_FROM_SWITCH = 1, 2

PF_KTHREAD = 0x00200000      # include/linux/sched.h


class CBlocker(ctypes.Structure):
    _fields_ = [("first_ns", ctypes.c_uint64),
                ("last_ns", ctypes.c_uint64),
                ("checks", ctypes.c_uint64),
                ("gen", ctypes.c_uint64),
                ("ret", ctypes.c_int32),
                ("source", ctypes.c_uint32),
                ("pid", ctypes.c_uint32),
                ("tgid", ctypes.c_uint32),
                ("flags", ctypes.c_uint32),
                ("first_window", ctypes.c_uint32),
                ("last_window", ctypes.c_uint32),
                ("pad", ctypes.c_uint32),
                ("comm", ctypes.c_char * COMM_LEN),
                ("func", ctypes.c_char * FUNC_LEN)]


class CSweeps(ctypes.Structure):
    _fields_ = [("gen", ctypes.c_uint64),
                ("gen_ns", ctypes.c_uint64),
                ("start_ns", ctypes.c_uint64),
                ("done_start_ns", ctypes.c_uint64),
                ("done_end_ns", ctypes.c_uint64),
                ("signal_ns", ctypes.c_uint64),
                ("overflow", ctypes.c_uint64),
                ("complete_mark", ctypes.c_uint64),
                ("started", ctypes.c_uint32),
                ("incomplete", ctypes.c_uint32),
                ("signals", ctypes.c_uint32),
                ("pad", ctypes.c_uint32)]


@dataclass
class Blocker:
    """One task the kernel's checks found not switched (struct klpt_blocker)."""
    key: int                  # the task_struct pointer (the table's key)
    pid: int                  # thread id (0: an idle task)
    tgid: int
    comm: str
    kthread: bool
    ret: int                  # the last check's return (0 with STALL_FROM_SWITCH)
    source: int               # STALL_FROM_*
    function: str             # "" unless ret == -EADDRINUSE
    first_ns: int
    last_ns: int
    checks: int
    gen: int
    first_window: int
    last_window: int


@dataclass
class Sweeps:
    """The sweeps of the transition in progress (struct klpt_sweeps)."""
    gen: int = 0
    gen_ns: int = 0
    start_ns: int = 0
    done_start_ns: int = 0
    done_end_ns: int = 0
    signal_ns: int = 0
    overflow: int = 0
    started: int = 0
    incomplete: int = 0
    signals: int = 0


def _buf(data) -> bytes:
    return bytes(data)    # a ctypes struct (bcc's leaf) or bytes


def decode_blocker(key: int, data) -> Blocker:
    """``data``: the table's leaf (a ctypes struct of bcc's) or its bytes."""
    b = CBlocker.from_buffer_copy(_buf(data)[:ctypes.sizeof(CBlocker)])
    return Blocker(key=int(key), pid=b.pid, tgid=b.tgid, comm=_s(b.comm),
                   kthread=bool(b.flags & PF_KTHREAD), ret=b.ret, source=b.source,
                   function=_s(b.func), first_ns=b.first_ns, last_ns=b.last_ns,
                   checks=b.checks, gen=b.gen, first_window=b.first_window,
                   last_window=b.last_window)


def decode_sweeps(data) -> Sweeps:
    s = CSweeps.from_buffer_copy(_buf(data)[:ctypes.sizeof(CSweeps)])
    return Sweeps(gen=s.gen, gen_ns=s.gen_ns, start_ns=s.start_ns, done_start_ns=s.done_start_ns,
                  done_end_ns=s.done_end_ns, signal_ns=s.signal_ns, overflow=s.overflow,
                  started=s.started, incomplete=s.incomplete, signals=s.signals)
