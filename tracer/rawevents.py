"""The raw events the BPF programs write (bpf/klptrace.h), decoded.

A ctypes mirror of ``struct klpt_event`` and its decoding into plain
dataclasses. No bcc here, so the inference (tracer/infer.py) and its unit
tests can build raw events without a kernel. Keep in step with klptrace.h
(tests/unit/test_rawevents.py parses the header and compares).
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
                "core", "direct", "direct_ret", "complete_ret")
HIT_SLOTS = len(HIT_PROGRAMS)

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
    chunk: int = 0                   # snapshot events: index in the chain (tracer/snapshots.py)
    snap: int = SNAP_LAST            # snapshot events: SNAP_*


def _s(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def decode(data) -> Raw:
    """``data``: the ctypes pointer (or bytes) bcc's ring buffer callback gets."""
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
