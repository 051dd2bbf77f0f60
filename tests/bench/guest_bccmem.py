"""Guest-side experiment (issue 7): how much of the daemon's resident memory after
the BPF compile can be given back, without tearing down the bcc module (its
destructor closes the map fds the daemon keeps using). Compiles bpf/klptrace.bpf.c
the way tracer/observe/loader.py does, then prints VmRSS/RssAnon/RssFile after each step:
glibc malloc_trim(0) (clang's freed heap), bcc's BPF.free_bcc_memory() (madvise
DONTNEED of libbcc.so's text only), and the same madvise on the r-xp mappings of
libLLVM/libclang-cpp (Debian links LLVM dynamically, so bcc's call misses them).

    python3 tests/bench/guest_bccmem.py        # as root, in the lab guest
"""

import ctypes
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def mem(step: str) -> None:
    f = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            f[k] = int(v.split()[0]) // 1024
    print(f"@@mem_{step}=" + " ".join(f"{k}={v}" for k, v in f.items()), flush=True)


def madvise_libs(names: tuple[str, ...]) -> int:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    freed = 0
    for line in open("/proc/self/maps"):
        parts = line.split()
        if len(parts) < 6 or "x" not in parts[1] or not any(n in parts[5] for n in names):
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if libc.madvise(lo, hi - lo, 4) == 0:        # MADV_DONTNEED
            freed += hi - lo
    return freed


def main() -> None:
    mem("start")
    from bcc import BPF
    mem("import")
    # the guest's python3 has no klptrace installed: the repository's folders
    # are the parts of the `klptrace` namespace (pyproject.toml)
    import types
    pkg = types.ModuleType("klptrace")
    pkg.__path__ = [str(ROOT)]
    sys.modules["klptrace"] = pkg
    from klptrace.tracer.observe.loader import struct_cflags   # the daemon's struct offsets (BTF or headers)
    b = BPF(src_file=str(ROOT / "bpf" / "klptrace.bpf.c").encode(),
            cflags=[f"-I{ROOT / 'bpf'}", "-Wno-unused-function"] + struct_cflags()[0])
    for name in ("do_snap_patch", "do_snap_obj", "on_direct", "on_direct_pre", "on_direct_ret"):
        b.load_func(name, BPF.KPROBE)
    mem("compiled")
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    mem("malloc_trim")
    b.free_bcc_memory()
    mem("free_bcc_memory")
    n = madvise_libs(("libLLVM", "libclang"))
    mem("madvise_llvm")
    print(f"@@llvm_text_mb={n // (1 << 20)}")
    # the module and its maps still work afterwards
    print(f"@@tables_ok={int(b['hits'] is not None)}")
    b.cleanup()


if __name__ == "__main__":
    sys.exit(main())
