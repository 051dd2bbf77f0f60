"""The running kernel's own code: text symbols (/proc/kallsyms), the bytes of
a function as they are now (/proc/kcore, after the kernel patched its
alternatives, return thunks and ftrace sites), and where a function returns.

Why: on a kernel whose reliable unwinder cannot walk through the kretprobe
trampoline (x86 before the 5.15 series "kprobes: Fix stacktrace with
kretprobes on x86"), a task with a kretprobe'd function on its stack has an
unreliable stack, and the livepatch core never switches such a task. There
klptrace takes a return with plain kprobes on the function's own exits
instead: a kprobe traps and resumes, it never stays on a stack
(docs/probes.md, "Effect on transitions").

A function's exits are found by scanning its bytes for the encodings an exit
can have (`ret`, `jmp`/`jcc` to a return thunk, `jmp`/`jcc` to the start of
another function: a tail call). A byte pattern can also sit inside a longer
instruction; such a candidate is dropped by the kernel itself, which refuses
a kprobe off an instruction boundary (EILSEQ), so only real exits are probed.
Needs root (CAP_SYS_RAWIO for /proc/kcore).
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field

KALLSYMS = "/proc/kallsyms"
KCORE = "/proc/kcore"

# Return thunks: the targets of a `jmp` that is a return (retbleed/SRSO/ITS
# mitigations; the kernel patches `jmp __x86_return_thunk` into the chosen
# thunk, or into `ret; int3` where none is needed).
RETURN_THUNKS = frozenset({
    "__x86_return_thunk", "retbleed_return_thunk", "srso_return_thunk",
    "srso_alias_return_thunk", "its_return_thunk", "call_depth_return_thunk",
    "zen_untrain_ret", "entry_untrain_ret", "srso_untrain_ret", "retbleed_untrain_ret",
})


class TextError(Exception):
    """The kernel's text cannot be read (no /proc/kcore, not root, lockdown)."""


@dataclass(frozen=True)
class Symbol:
    addr: int
    name: str


class Kallsyms:
    """Text symbols ('t'/'T') of vmlinux, by address. Read only where a plan
    needs exits (kernels before 5.15), and dropped with the plan's making:
    about 80,000 symbols."""

    def __init__(self, path: str = KALLSYMS):
        syms: list[Symbol] = []
        try:
            with open(path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) < 3 or parts[1] not in "tT":
                        continue
                    addr = int(parts[0], 16)
                    if addr == 0:
                        continue        # addresses hidden (not root, kptr_restrict)
                    if len(parts) > 3:
                        continue        # a module's (or bpf, ftrace trampolines)
                    syms.append(Symbol(addr, parts[2]))
        except OSError as e:
            raise TextError(f"{path}: {e.strerror}") from None
        syms.sort(key=lambda s: s.addr)
        self._syms = syms
        self._addrs = [s.addr for s in syms]
        self._by_name: dict[str, list[Symbol]] = {}
        for s in syms:
            self._by_name.setdefault(s.name, []).append(s)

    def named(self, name: str) -> list[Symbol]:
        return self._by_name.get(name, [])

    def has(self, name: str) -> bool:
        return name in self._by_name

    def names_starting(self, prefix: str) -> list[str]:
        return sorted(n for n in self._by_name if n.startswith(prefix))

    def extent(self, sym: Symbol) -> int:
        """Bytes from sym to the next text symbol at a higher address (kallsyms
        has no sizes; the next symbol bounds the function)."""
        i = bisect.bisect_right(self._addrs, sym.addr)
        return (self._addrs[i] - sym.addr) if i < len(self._addrs) else 0

    def at(self, addr: int) -> Symbol | None:
        """The symbol that starts exactly at addr (the first, if aliases)."""
        i = bisect.bisect_left(self._addrs, addr)
        return self._syms[i] if i < len(self._addrs) and self._addrs[i] == addr else None


class Kcore:
    """Reads kernel virtual memory through /proc/kcore's PT_LOAD segments."""

    def __init__(self, path: str = KCORE):
        try:
            self._f = open(path, "rb")
            hdr = self._f.read(64)
        except OSError as e:
            raise TextError(f"{path}: {e.strerror}") from None
        if hdr[:4] != b"\x7fELF" or hdr[4] != 2:
            raise TextError(f"{path}: not a 64-bit ELF core")
        phoff, = struct.unpack_from("<Q", hdr, 32)
        phentsize, phnum = struct.unpack_from("<HH", hdr, 54)
        self._f.seek(phoff)
        ph = self._f.read(phentsize * phnum)
        self._segs = []
        for i in range(phnum):
            p_type, _flags, off, vaddr, _paddr, filesz, _memsz, _align = \
                struct.unpack_from("<IIQQQQQQ", ph, i * phentsize)
            if p_type == 1:     # PT_LOAD
                self._segs.append((vaddr, filesz, off))

    def read(self, addr: int, size: int) -> bytes:
        for vaddr, filesz, off in self._segs:
            if vaddr <= addr and addr + size <= vaddr + filesz:
                try:
                    self._f.seek(off + addr - vaddr)
                    data = self._f.read(size)
                except OSError as e:
                    raise TextError(f"{KCORE} at {addr:#x}: {e.strerror}") from None
                if len(data) != size:
                    raise TextError(f"{KCORE} at {addr:#x}: short read")
                return data
        raise TextError(f"{addr:#x} is in no segment of {KCORE}")

    def close(self) -> None:
        self._f.close()


@dataclass(frozen=True)
class Site:
    """One candidate exit: part (symbol) + offset, and what it is."""
    part: str
    offset: int
    kind: str               # "ret" | "thunk" (jmp to a return thunk) | "tail" (jmp to callee)
    conditional: bool = False   # a jcc: taken or not, a kprobe on it fires every time
    callee: str = ""

    def at(self, symbol: str) -> str:
        return f"+{self.offset:#x}" if self.part == symbol else f"{self.part}+{self.offset:#x}"


@dataclass
class Exits:
    """Where a function leaves. A function may come in parts: GCC moves its
    unlikely paths into `NAME.cold` (or `NAME.cold.N`), a symbol of its own
    that jumps back into the body or leaves the function itself. Jumps
    between the parts are not exits."""
    symbol: str
    parts: list[tuple[str, int]] = field(default_factory=list)     # (symbol, size)
    sites: list[Site] = field(default_factory=list)

    @property
    def tail_calls(self) -> list[Site]:
        return [x for x in self.sites if x.kind == "tail"]

    @property
    def conditional(self) -> list[Site]:
        return [x for x in self.sites if x.conditional]

    def describe(self, sites: list[Site] | None = None) -> str:
        out = []
        for x in (self.sites if sites is None else sites):
            what = {"ret": "ret", "thunk": "return thunk", "tail": f"tail call {x.callee}"}[x.kind]
            out.append(f"{x.at(self.symbol)} ({'conditional ' if x.conditional else ''}{what})")
        return ", ".join(out) or "none"


def _rel(code: bytes, at: int, width: int) -> int:
    fmt = "<b" if width == 1 else "<i"
    return struct.unpack_from(fmt, code, at)[0]


def scan_exits(ksyms: Kallsyms, parts: list[tuple[Symbol, bytes]]) -> Exits:
    """Candidate exits of a function given as its parts and their bytes.
    Candidates may sit inside a longer instruction: the kprobe registration
    (kernel-side instruction decoding) keeps only the real ones."""
    ex = Exits(parts[0][0].name, parts=[(s.name, len(c)) for s, c in parts])
    spans = [(s.addr, s.addr + len(c)) for s, c in parts]

    def leaves_to(target: int) -> tuple[str, str] | None:
        if any(lo <= target < hi for lo, hi in spans):
            return None                           # inside the function (or its parts)
        t = ksyms.at(target)
        if t is None:
            return None
        if t.name in RETURN_THUNKS:
            return ("thunk", "")
        if t.name.startswith("__x86_indirect_"):    # a retpoline: an indirect tail call
            return ("tail", f"(indirect, {t.name})")
        return ("tail", t.name)

    for sym, code in parts:
        n = len(code)
        for i in range(n):
            b = code[i]
            hit, cond = None, False
            if b in (0xC3, 0xC2):                     # ret, ret imm16
                hit = ("ret", "")
            elif b == 0xE9 and i + 5 <= n:            # jmp rel32
                hit = leaves_to(sym.addr + i + 5 + _rel(code, i + 1, 4))
            elif b == 0xEB and i + 2 <= n:            # jmp rel8
                hit = leaves_to(sym.addr + i + 2 + _rel(code, i + 1, 1))
            elif b == 0x0F and i + 6 <= n and 0x80 <= code[i + 1] <= 0x8F:   # jcc rel32
                hit, cond = leaves_to(sym.addr + i + 6 + _rel(code, i + 2, 4)), True
            elif 0x70 <= b <= 0x7F and i + 2 <= n:    # jcc rel8
                hit, cond = leaves_to(sym.addr + i + 2 + _rel(code, i + 1, 1)), True
            if hit is not None:
                ex.sites.append(Site(sym.name, i, hit[0], cond, hit[1]))
    return ex


def _cold_part(name: str, candidate: str) -> bool:
    rest = candidate[len(name):]
    return candidate.startswith(name) and (rest == ".cold" or
                                           (rest.startswith(".cold.") and rest[6:].isdigit()))


def function_exits(name: str, ksyms: Kallsyms | None = None,
                   kcore: Kcore | None = None) -> Exits:
    """The candidate exits of the vmlinux function `name` (with its .cold
    parts), read from the live kernel text. Raises TextError when the
    function or its text is not found."""
    ksyms = ksyms or Kallsyms()
    syms = ksyms.named(name)
    if len(syms) != 1:
        raise TextError(f"{name}: {'not in kallsyms' if not syms else 'ambiguous'}")
    cold = [s for n in ksyms.names_starting(name + ".cold") if _cold_part(name, n)
            for s in ksyms.named(n)]
    own = kcore is None
    kc = kcore or Kcore()
    try:
        parts = []
        for sym in [syms[0], *cold]:
            size = ksyms.extent(sym)
            if not 0 < size <= 64 * 1024:
                raise TextError(f"{sym.name}: cannot bound its text "
                                f"({size} bytes to the next symbol)")
            parts.append((sym, kc.read(sym.addr, size)))
        return scan_exits(ksyms, parts)
    finally:
        if own:
            kc.close()


@dataclass(frozen=True)
class ReturnProbes:
    """Whether this kernel's reliable unwinder walks through the kretprobe
    trampoline, i.e. whether a kretprobe leaves a task switchable."""
    kretprobe_safe: bool
    evidence: str       # what on the running kernel says so

    @property
    def mechanism(self) -> str:
        return "kretprobe" if self.kretprobe_safe else "exit-kprobes"


# The series "kprobes: Fix stacktrace with kretprobes on x86" (5.15) gave the
# trampoline unwind hints and the unwinders a way through it, and renamed it
# __kretprobe_trampoline; 6.0 replaced it with rethook's trampoline (also
# hinted). The old name is the old trampoline: STACK_FRAME_NON_STANDARD, no
# ORC entry, so arch_stack_walk_reliable() fails on any stack holding it.
FIXED_TRAMPOLINES = ("arch_rethook_trampoline", "__kretprobe_trampoline")
OLD_TRAMPOLINE = "kretprobe_trampoline"
FIXED_IN = (5, 15)


TRAMPOLINES = (*FIXED_TRAMPOLINES, OLD_TRAMPOLINE)


def return_probes(symbols: set[str] | frozenset[str], release: str) -> ReturnProbes:
    """From the text symbols of TRAMPOLINES the kernel has, and its release."""
    for name in FIXED_TRAMPOLINES:
        if name in symbols:
            return ReturnProbes(True, f"{name} in kallsyms: the return trampoline has unwind "
                                      "hints, a kretprobe leaves a task's stack reliable")
    if OLD_TRAMPOLINE in symbols:
        return ReturnProbes(False, f"{OLD_TRAMPOLINE} in kallsyms (before 5.15's unwind hints): "
                                   "a task with a kretprobe'd function on its stack has an "
                                   "unreliable stack and is never switched")
    try:
        version = tuple(int(x) for x in release.split("-")[0].split(".")[:2])
    except ValueError:
        version = (0, 0)
    safe = version >= FIXED_IN
    return ReturnProbes(safe, f"no return trampoline in kallsyms; kernel {release} is "
                              f"{'at or after' if safe else 'before'} 5.15 (the unwind hints)")
