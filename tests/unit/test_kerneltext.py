"""tracer.kerneltext without a kernel: the exits a function's bytes show
(the kernel then keeps the candidates that are instructions), and when a
kretprobe is safe for livepatch transitions."""

import struct

from klptrace.tracer.observe import kerneltext as kt


def ksyms(*syms: tuple[int, str]) -> kt.Kallsyms:
    k = kt.Kallsyms.__new__(kt.Kallsyms)
    k._syms = sorted((kt.Symbol(a, n) for a, n in syms), key=lambda s: s.addr)
    k._addrs = [s.addr for s in k._syms]
    k._by_name = {}
    for s in k._syms:
        k._by_name.setdefault(s.name, []).append(s)
    return k


F, COLD, OTHER, THUNK = 0x1000, 0x3000, 0x5000, 0x6000
K = ksyms((F, "f"), (F + 0x100, "g"), (COLD, "f.cold"), (COLD + 0x40, "h"),
          (OTHER, "other"), (THUNK, "__x86_return_thunk"))


def jmp(frm: int, to: int) -> bytes:
    return b"\xe9" + struct.pack("<i", to - (frm + 5))


def test_rets_thunks_and_tail_calls_are_exits_jumps_inside_are_not():
    code = bytearray(b"\x90" * 0x40)
    code[0x02] = 0xC3                                   # ret
    code[0x10:0x15] = jmp(F + 0x10, THUNK)              # a return through the thunk
    code[0x20:0x25] = jmp(F + 0x20, OTHER)              # a tail call
    code[0x30:0x35] = jmp(F + 0x30, F + 0x3a)           # a jump inside f
    code[0x35:0x3a] = jmp(F + 0x35, COLD + 0x8)         # into its own cold part
    ex = kt.scan_exits(K, [(kt.Symbol(F, "f"), bytes(code))])
    got = {(x.offset, x.kind, x.callee) for x in ex.sites}
    assert got == {(0x02, "ret", ""), (0x10, "thunk", ""), (0x20, "tail", "other")}
    assert [x.offset for x in ex.tail_calls] == [0x20]


def test_a_cold_part_is_the_same_function():
    body = bytearray(b"\x90" * 0x20)
    body[0x00:0x05] = jmp(F, COLD)                      # to the cold part: inside
    cold = bytearray(b"\x90" * 0x20)
    cold[0x04:0x09] = jmp(COLD + 4, F + 0x10)           # back into the body: inside
    cold[0x10] = 0xC3                                   # a return from the cold part
    ex = kt.scan_exits(K, [(kt.Symbol(F, "f"), bytes(body)), (kt.Symbol(COLD, "f.cold"), bytes(cold))])
    assert [(x.part, x.offset, x.kind) for x in ex.sites] == [("f.cold", 0x10, "ret")]
    assert ex.describe() == "f.cold+0x10 (ret)"


def test_a_conditional_exit_is_marked():
    code = bytearray(b"\x90" * 0x20)
    code[0x04:0x0a] = b"\x0f\x85" + struct.pack("<i", THUNK - (F + 0x0a))   # jne thunk
    ex = kt.scan_exits(K, [(kt.Symbol(F, "f"), bytes(code))])
    assert [(x.offset, x.kind, x.conditional) for x in ex.sites] == [(0x04, "thunk", True)]


def test_function_exits_reads_the_function_and_its_cold_parts(tmp_path):
    class Core:
        def read(self, addr, size):
            return {F: b"\x90\xc3" + b"\x90" * (size - 2),
                    COLD: b"\xc3" + b"\x90" * (size - 1)}[addr]

    ex = kt.function_exits("f", K, Core())
    assert ex.parts == [("f", 0x100), ("f.cold", 0x40)]
    assert [(x.part, x.offset) for x in ex.sites] == [("f", 1), ("f.cold", 0)]


def test_kretprobes_are_safe_from_the_hinted_trampoline_on():
    assert kt.return_probes({"arch_rethook_trampoline"}, "6.1.0-57-amd64").kretprobe_safe
    assert kt.return_probes({"__kretprobe_trampoline"}, "5.15.0").kretprobe_safe
    old = kt.return_probes({"kretprobe_trampoline"}, "5.10.0-46-amd64")
    assert not old.kretprobe_safe and old.mechanism == "exit-kprobes"
    assert "kretprobe_trampoline" in old.evidence
    # no trampoline symbol at all: the release decides
    assert not kt.return_probes(set(), "4.18.0-553.el8.x86_64").kretprobe_safe
    assert kt.return_probes(set(), "6.12.0").kretprobe_safe
