"""bcc: compile bpf/klptrace.bpf.c, attach the plan's points, poll the ring
buffer, read the loss and hit counters, attach BPF to tracefs kprobe events
(direct probes on livepatch callbacks). bcc is imported here and only here,
when the daemon starts."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

from klptrace.tracer.observe import rawevents as rw
from klptrace.tracer.observe.probeplan import Point


def _bpf_dir() -> Path:
    """bpf/ is installed as the package ``klptrace.bpf`` (pyproject.toml), so
    an installed klptrace finds its C sources through the package, wherever
    pip put it; a source checkout has the same directory beside tracer/."""
    try:
        from importlib.resources import files
        d = Path(str(files("klptrace.bpf")))
        if (d / "klptrace.bpf.c").exists():
            return d
    except (ImportError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "bpf"


BPF_DIR = _bpf_dir()
SOURCE = BPF_DIR / "klptrace.bpf.c"
DIRECT_PROGRAMS = ("on_direct", "on_direct_pre", "on_direct_ret")
# ring buffer size in pages (a power of two). An event is about 1 KiB, so the
# default holds ~270 events: a livepatch operation writes tens.
DEFAULT_RING_PAGES = 64


def struct_cflags(btf_path: str | None = None) -> tuple[list[str], str]:
    """-D macros with the kernel struct offsets the BPF programs read, from the
    running kernel's BTF (tracer/observe/btf.py), and where they came from; without
    BTF, the build that includes the kernel's headers (slower to compile)."""
    from klptrace.tracer.observe import btf
    try:
        offs = btf.offsets(btf_path or btf.BTF_PATH)
    except (OSError, btf.BtfError) as e:
        return (["-DKLPT_USE_HEADERS"] + [f"-D{k}={v}" for k, v in
                                          sorted(btf.header_expressions().items())],
                f"kernel headers (no usable BTF: {e})")
    return [f"-D{k}={v}" for k, v in sorted(offs.items())], "BTF"


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
        import time
        t0 = time.monotonic()
        from bcc import BPF  # the one bcc import; tracer.runcmd maps ImportError to NO_BCC
        t1 = time.monotonic()
        self._BPF = BPF
        self.cflags, self.layout = struct_cflags()   # layout: where the offsets came from
        self.bpf = BPF(src_file=str(SOURCE).encode(),
                       cflags=[f"-I{BPF_DIR}", "-Wno-unused-function",
                               f"-DKLPT_RING_PAGES={int(ring_pages)}"] + self.cflags)
        # where start-up goes (docs/benchmarks.md): importing bcc (loading
        # libbcc and LLVM), compiling, then loading programs into the kernel
        self.timing = {"import_s": t1 - t0, "compile_s": time.monotonic() - t1}
        self._on_event = on_event
        snap = self.bpf["snap"]   # the tail-called snapshot programs (see klptrace.bpf.c)
        for i, name in enumerate(("do_snap_patch", "do_snap_obj")):
            snap[ctypes.c_int(i)] = ctypes.c_int(self.bpf.load_func(name, BPF.KPROBE).fd)
        self.bpf["events"].open_ring_buffer(self._cb)
        self._tp_fds: set[int] = set()
        self._exit_fds: dict[str, list[int]] = {}      # point -> perf fds of its exit kprobes
        # loaded here, in the main thread: the direct-probe worker only attaches
        self._direct_fds = {p: self.bpf.load_func(p, BPF.KPROBE).fd for p in DIRECT_PROGRAMS}

    def _cb(self, _ctx, data, size):
        # ctypes would print and swallow an exception raised here: the
        # pipeline's guards catch, count and report every one
        # (tracer/daemon/pipeline.py); the size is checked there, at decoding
        self._on_event(data, size)

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

    def detach(self, p: Point) -> None:
        """Undoes attach(p)."""
        if p.ret:
            self.bpf.detach_kretprobe(event=p.func, fn_name=p.prog)
        else:
            self.bpf.detach_kprobe(event=p.func, fn_name=p.prog)

    def attach_exits(self, p: Point, sites: list[tuple[str, int]]
                     ) -> tuple[list[tuple[str, int]], str | None]:
        """Exit kprobes (tracer/observe/probeplan.py ExitProbes): p.prog at each
        (symbol, offset); a site the kernel refuses with EILSEQ is not an
        instruction, left out. Another refusal stops here with its reason."""
        from klptrace.tracer.observe import perfkprobe
        prog = self.bpf.load_func(p.prog, self._BPF.KPROBE).fd
        fds = self._exit_fds.setdefault(p.name, [])
        attached = []
        for sym, off in sites:
            fd, err = perfkprobe.attach(prog, sym, off)
            if fd >= 0:
                fds.append(fd)
                attached.append((sym, off))
            elif err != errno.EILSEQ:
                return attached, f"{sym}+{off:#x}: {os.strerror(err)}"
        return attached, None

    def detach_exits(self, p: Point) -> None:
        for fd in self._exit_fds.pop(p.name, []):
            os.close(fd)

    def attach_tracefs(self, group: str, event: str, ret: bool, *,
                       paired: bool = False) -> tuple[int | None, str | None]:
        """Attach on_direct (on_direct_pre if the function's return is probed
        too, so that on_direct_ret finds its argument; on_direct_ret for the
        return) to a tracefs kprobe event (one created in kprobe_events, possibly
        for a module not loaded yet). A kprobe event takes a
        BPF_PROG_TYPE_KPROBE program through perf_event_open on its id."""
        from bcc.libbcc import lib
        prog = "on_direct_ret" if ret else "on_direct_pre" if paired else "on_direct"
        fd = lib.bpf_attach_tracepoint(self._direct_fds[prog], group.encode(), event.encode())
        if fd < 0:
            return None, (f"perf attach to {group}/{event} failed: "
                          f"{os.strerror(ctypes.get_errno() or 22)}")
        self._tp_fds.add(fd)
        return fd, None

    def detach_fd(self, fd: int) -> None:
        """Detach one direct probe (before its tracefs event can be removed:
        the kernel refuses to remove an event that is in use, EBUSY)."""
        from bcc.libbcc import lib
        if fd in self._tp_fds:
            self._tp_fds.discard(fd)
            lib.bpf_close_perf_event_fd(fd)

    def detach_tracefs(self) -> None:
        for fd in list(self._tp_fds):
            self.detach_fd(fd)

    @property
    def ring_fd(self) -> int:
        """The ring buffer map's fd: readable once the BPF side woke it (the
        daemon's wait set, tracer/daemon/runloop.py)."""
        return self.bpf["events"].map_fd

    def read(self) -> None:
        """Read everything in the ring buffer, woken or not: most events are
        submitted without a wake-up (bpf/klptrace.bpf.c submit()); the count
        of those since the last read starts again."""
        self.bpf.ring_buffer_consume()
        t = self.bpf["pending"]
        t[t.Key(0)] = t.Leaf(0)

    def drain(self) -> None:
        self.bpf.ring_buffer_consume()

    def lost(self) -> int:
        t = self.bpf["lost"]
        return int(t[t.Key(0)].value)

    def hits(self) -> list[int]:
        t = self.bpf["hits"]
        return [int(t[t.Key(i)].value) for i in range(rw.HIT_SLOTS)]

    def stall_table(self) -> "BpfStallTable":
        return BpfStallTable(self.bpf)

    def close(self) -> None:
        self.detach_tracefs()
        for fds in self._exit_fds.values():
            for fd in fds:
                os.close(fd)
        self._exit_fds.clear()
        self.bpf.cleanup()


class OnDemandProbes:
    """The plan's on-demand points (probeplan.Point.on_demand: the per-task
    stall checks), armed and disarmed as the plan attached them (kprobe,
    kretprobe or exit kprobes). make_plan leaves them attached; the daemon
    disarms them before it is ready. Return probes are armed before entry
    probes and disarmed after them: an entry is never seen without its return
    being watched."""

    def __init__(self, loader: "Loader", results: list, log=lambda msg: None):
        self._loader = loader
        self._results = sorted(results, key=lambda r: not r.point.ret)    # returns first
        self._log = log
        self.armed = bool(self._results)
        self.errors = 0          # arm/disarm calls the kernel refused (never fatal)

    def set(self, on: bool) -> None:
        if on == self.armed or not self._results:
            return
        for r in (self._results if on else list(reversed(self._results))):
            err = None
            try:
                if r.how == "exit-kprobes":
                    if on:
                        _, err = self._loader.attach_exits(r.point, r.sites)
                    else:
                        self._loader.detach_exits(r.point)
                elif on:
                    err = self._loader.attach(r.point)
                else:
                    self._loader.detach(r.point)
            except Exception as e:
                err = str(e) or type(e).__name__
            if err is not None:
                self.errors += 1
                self._log(f"cannot {'arm' if on else 'disarm'} {r.point.name}: {err}")
        self.armed = on


class BpfStallTable:
    """The stall section's tables (bpf/klptrace.bpf.c "stalls"), for
    tracer/observe/stalls.py: read only while a transition is open."""

    def __init__(self, bpf):
        self._tasks = bpf["stall_tasks"]
        self._sweep = bpf["stall_sweep"]

    def sweeps(self) -> rw.Sweeps:
        t = self._sweep
        return rw.decode_sweeps(t[t.Key(0)])

    def blockers(self) -> list[rw.Blocker]:
        # get_next_key + lookup per entry (bcc's items()); the table holds
        # the tasks that have not switched, 4096 at most
        return [rw.decode_blocker(k.value, v) for k, v in self._tasks.items()]

    def forget(self, keys: list[int]) -> None:
        t = self._tasks
        for k in keys:
            try:
                del t[t.Key(k)]
            except KeyError:
                pass            # gone already (switched meanwhile)

