"""A kprobe at SYMBOL+OFFSET with a BPF program, through the perf_kprobe PMU
(perf_event_open, Linux 4.17+), with the kernel's own errno.

Used for exit kprobes (tracer/observe/probeplan.py): the candidates of a function's
exits are tried one by one and the kernel refuses those off an instruction
boundary with EILSEQ. bcc's attach_kprobe() would retry each refusal through
tracefs and print a line on stderr for it, and names its events by symbol
only, so several offsets of one function would collide. A probe made here
is the kernel's for as long as the fd is open: it goes with the process,
also after kill -9, and nothing is left in kprobe_events.
"""

from __future__ import annotations

import ctypes
import os

PMU_TYPE = "/sys/bus/event_source/devices/kprobe/type"
_NR_PERF_EVENT_OPEN = 298          # x86_64
_PERF_FLAG_FD_CLOEXEC = 1 << 3
_IOC_ENABLE = 0x2400               # _IO('$', 0)
_IOC_SET_BPF = 0x40042408          # _IOW('$', 8, __u32)
_ATTR_SIZE = 112                   # PERF_ATTR_SIZE_VER5


class _Attr(ctypes.Structure):
    """struct perf_event_attr up to config2 (the rest stays zero)."""
    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32),
                ("config", ctypes.c_uint64), ("sample_period", ctypes.c_uint64),
                ("sample_type", ctypes.c_uint64), ("read_format", ctypes.c_uint64),
                ("flags", ctypes.c_uint64), ("wakeup_events", ctypes.c_uint32),
                ("bp_type", ctypes.c_uint32), ("config1", ctypes.c_uint64),
                ("config2", ctypes.c_uint64), ("_rest", ctypes.c_uint8 * 48)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def pmu_type() -> int | None:
    try:
        with open(PMU_TYPE) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def attach(prog_fd: int, symbol: str, offset: int) -> tuple[int, int]:
    """(perf fd, 0) with prog_fd running at symbol+offset, or (-1, errno).
    Close the fd (os.close) to remove the probe."""
    t = pmu_type()
    if t is None:
        return -1, 95       # EOPNOTSUPP: no perf_kprobe PMU (before 4.17)
    name = ctypes.create_string_buffer(symbol.encode())
    attr = _Attr()
    attr.type = t
    attr.size = _ATTR_SIZE
    attr.sample_period = 1
    attr.wakeup_events = 1
    attr.config1 = ctypes.addressof(name)
    attr.config2 = offset
    fd = _libc.syscall(_NR_PERF_EVENT_OPEN, ctypes.byref(attr), -1, 0, -1,
                       _PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        return -1, ctypes.get_errno()
    for req, arg in ((_IOC_SET_BPF, prog_fd), (_IOC_ENABLE, 0)):
        if _libc.ioctl(fd, ctypes.c_ulong(req), ctypes.c_int(arg)) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            return -1, err
    return fd, 0
