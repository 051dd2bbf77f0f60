"""A minimal ELF64 relocatable-object writer for tracer/observe/modsyms.py's unit
tests: sections, symbols and R_X86_64_64 relocations laid out the way a
kernel module's .ko has them, small enough to state each case exactly. The
real .ko files of the lab are read in tests/kernel/."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA = 1, 2, 3, 4
SHF_WRITE, SHF_ALLOC, SHF_EXEC = 0x1, 0x2, 0x4
STB_LOCAL, STB_GLOBAL = 0, 1
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION = 0, 1, 2, 3


@dataclass
class Elf:
    sections: list[dict] = field(default_factory=list)       # name, type, flags, data
    symbols: list[tuple[str, int, int, int]] = field(default_factory=list)  # name, type, sec, value
    relocs: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)  # sec -> (off, sym, addend)

    def section(self, name: str, flags: int, data: bytes = b"", typ: int = SHT_PROGBITS) -> int:
        self.sections.append({"name": name, "type": typ, "flags": flags, "data": bytearray(data)})
        return len(self.sections)          # index: 0 is the null section

    def put(self, sec: int, data: bytes) -> int:
        d = self.sections[sec - 1]["data"]
        off = len(d)
        d.extend(data)
        return off

    def symbol(self, name: str, typ: int, sec: int, value: int) -> int:
        self.symbols.append((name, typ, sec, value))
        return len(self.symbols)           # index: 0 is the null symbol

    def reloc(self, sec_name: str, off: int, sym: int, addend: int = 0) -> None:
        self.relocs.setdefault(sec_name, []).append((off, sym, addend))

    def string(self, sec: int, s: str) -> int:
        return self.put(sec, s.encode() + b"\0")

    def build(self) -> bytes:
        secs = [dict(s) for s in self.sections]
        names = {s["name"]: i + 1 for i, s in enumerate(secs)}
        for target, rels in self.relocs.items():
            data = b"".join(struct.pack("<QQq", off, (sym << 32) | 1, add) for off, sym, add in rels)
            secs.append({"name": ".rela" + target, "type": SHT_RELA, "flags": 0, "data": data,
                         "info": names[target], "link": "symtab", "entsize": 24})
        strtab = bytearray(b"\0")
        syms = bytearray(b"\0" * 24)
        for name, typ, sec, value in self.symbols:
            off = len(strtab)
            strtab += name.encode() + b"\0"
            syms += struct.pack("<IBBHQQ", off, (STB_LOCAL << 4) | typ, 0, sec, value, 0)
        secs.append({"name": ".symtab", "type": SHT_SYMTAB, "flags": 0, "data": bytes(syms),
                     "link": "strtab", "entsize": 24, "info": len(self.symbols) + 1})
        secs.append({"name": ".strtab", "type": SHT_STRTAB, "flags": 0, "data": bytes(strtab)})
        shstr = bytearray(b"\0")
        for s in secs:
            s["name_off"] = len(shstr)
            shstr += s["name"].encode() + b"\0"
        shstr_name = len(shstr)
        shstr += b".shstrtab\0"
        secs.append({"name": ".shstrtab", "type": SHT_STRTAB, "flags": 0, "data": bytes(shstr),
                     "name_off": shstr_name})
        index = {s["name"]: i + 1 for i, s in enumerate(secs)}
        body = bytearray(b"\0" * 64)
        for s in secs:
            while len(body) % 8:
                body.append(0)
            s["off"] = len(body)
            body += s["data"]
        while len(body) % 8:
            body.append(0)
        shoff = len(body)
        body += b"\0" * 64
        for s in secs:
            link = index[".symtab"] if s.get("link") == "symtab" else \
                index[".strtab"] if s.get("link") == "strtab" else 0
            body += struct.pack("<IIQQQQIIQQ", s["name_off"], s["type"], s["flags"], 0, s["off"],
                                len(s["data"]), link, s.get("info", 0), 8, s.get("entsize", 0))
        hdr = bytearray(64)
        hdr[:16] = b"\x7fELF\x02\x01\x01" + b"\0" * 9
        struct.pack_into("<HHIQQQIHHHHHH", hdr, 16, 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64,
                         len(secs) + 1, len(secs))
        body[:64] = hdr
        return bytes(body)


def livepatch_skeleton(name: str = "lp"):
    """An Elf with .text, .data, .rodata.str1.1 and a .modinfo naming a livepatch."""
    e = Elf()
    text = e.section(".text", SHF_ALLOC | SHF_EXEC)
    data = e.section(".data", SHF_ALLOC | SHF_WRITE)
    rodata = e.section(".rodata.str1.1", SHF_ALLOC)
    e.section(".modinfo", SHF_ALLOC, f"livepatch=Y\0name={name}\0".encode())
    return e, text, data, rodata


def function(e: Elf, text: int, name: str, size: int = 16) -> int:
    off = e.put(text, b"\xcc" * size)
    return e.symbol(name, STT_FUNC, text, off)
