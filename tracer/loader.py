"""bcc: compile bpf/klptrace.bpf.c, attach the plan's points, poll the ring
buffer, read the loss and hit counters, attach BPF to tracefs kprobe events
(direct probes on livepatch callbacks). bcc is imported here and only here,
when the daemon starts."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from . import rawevents as rw
from .probeplan import Point

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
SOURCE = BPF_DIR / "klptrace.bpf.c"
# ring buffer size in pages (a power of two). An event is about 1 KiB, so the
# default holds ~270 events: a livepatch operation writes tens.
DEFAULT_RING_PAGES = 64


class Loader:
    def free_compiler_memory(self) -> None:
        """Once every program is loaded and attached: give back clang's freed
        heap (malloc_trim) and drop LLVM/clang's file-backed code pages
        (MADV_DONTNEED; they fault back in from the file if ever run again).
        bcc's own free_bcc_memory() does not reach Debian's separately linked
        LLVM, and destroying the BPF module would close the maps we read.
        Measured in the lab guest: 130 MB after compile -> 75 -> 32 MB
        (docs/benchmarks.md)."""
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        # Without this, khugepaged (THP "always") collapses the trimmed heap's
        # holes back into huge pages within a minute: measured 55 -> 110 MB
        # idle, growing 15 MB per 10 s (its default scan rate). The daemon
        # gains nothing from huge pages.
        PR_SET_THP_DISABLE = 41
        libc.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)
        libc.malloc_trim(0)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        MADV_DONTNEED = 4
        with open("/proc/self/maps") as f:
            for line in f:
                p = line.split()
                if len(p) >= 6 and "x" in p[1] and any(
                        n in p[5] for n in ("libLLVM", "libclang", "libbcc")):
                    lo, hi = (int(x, 16) for x in p[0].split("-"))
                    libc.madvise(lo, hi - lo, MADV_DONTNEED)

    def __init__(self, on_event, ring_pages: int = DEFAULT_RING_PAGES):
        from bcc import BPF  # the one bcc import; tracer.runcmd maps ImportError to NO_BCC
        self._BPF = BPF
        self.bpf = BPF(src_file=str(SOURCE).encode(),
                       cflags=[f"-I{BPF_DIR}", "-Wno-unused-function",
                               f"-DKLPT_RING_PAGES={int(ring_pages)}"])
        self._on_event = on_event
        snap = self.bpf["snap"]   # the tail-called snapshot programs (see klptrace.bpf.c)
        for i, name in enumerate(("do_snap_patch", "do_snap_obj")):
            snap[ctypes.c_int(i)] = ctypes.c_int(self.bpf.load_func(name, BPF.KPROBE).fd)
        self.bpf["events"].open_ring_buffer(self._cb)
        self._tp_fds: list[int] = []

    def _cb(self, _ctx, data, _size):
        self._on_event(rw.decode(data))

    def kfunc_support(self) -> bool:
        try:
            return bool(self._BPF.support_kfunc())
        except Exception:
            return False

    def attach(self, p: Point) -> str | None:
        try:
            if p.ret:
                self.bpf.attach_kretprobe(event=p.func, fn_name=p.prog)
            else:
                self.bpf.attach_kprobe(event=p.func, fn_name=p.prog)
        except Exception as e:          # bcc raises a bare Exception with the reason
            return str(e).splitlines()[0] if str(e) else type(e).__name__
        return None

    def attach_tracefs(self, group: str, event: str, ret: bool, *,
                       paired: bool = False) -> str | None:
        """Attach on_direct (on_direct_pre if the function's return is probed
        too, so that on_direct_ret finds its argument; on_direct_ret for the
        return) to a tracefs kprobe event (one created in kprobe_events, possibly
        for a module not loaded yet). A kprobe event takes a
        BPF_PROG_TYPE_KPROBE program through perf_event_open on its id."""
        from bcc.libbcc import lib
        prog = "on_direct_ret" if ret else "on_direct_pre" if paired else "on_direct"
        fn = self.bpf.load_func(prog, self._BPF.KPROBE)
        fd = lib.bpf_attach_tracepoint(fn.fd, group.encode(), event.encode())
        if fd < 0:
            return f"perf attach to {group}/{event} failed: {os.strerror(ctypes.get_errno() or 22)}"
        self._tp_fds.append(fd)
        return None

    def detach_tracefs(self) -> None:
        from bcc.libbcc import lib
        for fd in self._tp_fds:
            lib.bpf_close_perf_event_fd(fd)
        self._tp_fds = []

    def set_armed(self, addr: int) -> None:
        t = self.bpf["armed"]
        t[t.Key(addr)] = t.Leaf(1)

    def poll(self, timeout_ms: int) -> None:
        self.bpf.ring_buffer_poll(timeout_ms)

    def drain(self) -> None:
        self.bpf.ring_buffer_consume()

    def lost(self) -> int:
        t = self.bpf["lost"]
        return int(t[t.Key(0)].value)

    def hits(self) -> list[int]:
        t = self.bpf["hits"]
        return [int(t[t.Key(i)].value) for i in range(rw.HIT_SLOTS)]

    def close(self) -> None:
        self.detach_tracefs()
        self.bpf.cleanup()
