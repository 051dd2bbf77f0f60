"""The callbacks of a livepatch ``.ko``, read from its ELF file before it loads.

Livepatches come in three shapes, and each keeps its callbacks somewhere else
(docs/probes.md, "Producers"):

* ``klp_object``: written by hand (the kernel's samples and selftests, this
  project's lab modules): a static ``struct klp_object`` initialiser,
  ``{name, funcs, callbacks{pre_patch, post_patch, pre_unpatch, post_unpatch},
  ...}`` (include/linux/livepatch.h, unchanged since 4.15): a function pointer
  relocated at object+16+8*i is callback i of the object whose name pointer is
  relocated at object+0 (none: vmlinux) and whose funcs pointer at object+8
  points at a ``struct klp_func`` array (old_name string at +0, new_func
  function at +8).
* ``kpatch``: kpatch-build (kmod/patch/kpatch-macros.h): 16-byte entries
  ``{callback, objname}`` in ``.kpatch.callbacks.{pre_patch,post_patch,
  pre_unpatch,post_unpatch}``; livepatch-patch-hook.c builds the objects with
  kzalloc at init and copies the callbacks in.
* ``klp-build``: Linux 6.19+ scripts/livepatch (include/linux/livepatch_external.h):
  64-byte ``struct klp_object_ext`` entries ``{name, funcs, callbacks at
  16/24/32/40, nr_funcs}`` in ``__klp_objects`` (later ``.init.klp_objects``);
  scripts/livepatch/init.c copies them into kzalloc'd objects at init.

Only relocations of allocated data sections count: the relocations of debug
information (``.debug_*``) point at every function and variable of the
module and once made a replacement function look like a callback.

Each callback function gets a probe definition that names it unambiguously
for the kernel's symbol lookup (``MODULE:SYMBOL[+OFFSET]``, resolved to the
first symbol of that name in the module's symbol table; Linux 6.11+ refuses a
name that is not unique): its own name if unique in the module, else a unique
symbol before it in the same section plus the distance. A function with
neither has no definition: it is probed by address once the module is loaded
(tracer/observe/directprobes.py), and ``klptrace inspect`` says so.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from klptrace.tracer.model import events as ev

CALLBACKS = ev.CALLBACKS      # struct klp_callbacks' order (tracer/model/events.py)
SHT_SYMTAB, SHT_RELA = 2, 4
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
SHF_RELA_LIVEPATCH = 0x00100000
SHN_UNDEF, SHN_LORESERVE = 0, 0xff00
STT_SECTION, STT_FILE = 3, 4
R_X86_64_64 = 1

KLP_OBJECT = "klp_object"        # how a callback was found (Callback.how)
KPATCH = "kpatch"
KLP_BUILD = "klp-build"

KPATCH_SECTIONS = {f".kpatch.callbacks.{cb}": i for i, cb in enumerate(CALLBACKS)}
KLP_BUILD_SECTIONS = ("__klp_objects", ".init.klp_objects")
KLP_OBJECT_EXT_SIZE = 64
OBJ_CALLBACKS_OFF = 16           # offsetof(struct klp_object{,_ext}, callbacks) on 64-bit


class ElfError(ValueError):
    pass


@dataclass(frozen=True)
class Callback:
    module: str          # the livepatch module = patch name
    object: str          # "vmlinux" or the target module
    callback: str
    symbol: str          # the function's name (maybe not unique in the module)
    how: str = KLP_OBJECT
    spec: str | None = None   # its probe definition SYMBOL[+0xOFF], None: by address only


@dataclass(frozen=True)
class Target:
    """One tracefs kprobe event to define: ``MODULE:SPEC``."""
    module: str
    spec: str
    ret: bool            # a return probe (pre_patch's return code)
    paired: bool = False # an entry probe whose function's return is probed too
    covers: frozenset = frozenset()   # (object, callback) it observes


@dataclass
class _Elf:
    data: bytes
    secs: list[dict]
    syms: list[tuple[str, int, int, int]]      # (name, type, shndx, value)

    def sec(self, i: int) -> dict | None:
        return self.secs[i] if 0 < i < len(self.secs) else None

    def flags(self, i: int) -> int:
        s = self.sec(i)
        return s["flags"] if s else 0

    def cstr(self, shndx: int, off: int) -> str | None:
        s = self.sec(shndx)
        if s is None or not s["flags"] & SHF_ALLOC or s["flags"] & (SHF_WRITE | SHF_EXECINSTR):
            return None         # a name lives in read-only allocated data
        if s["type"] == 8:      # SHT_NOBITS
            return None
        return _cstr(self.data, s["off"] + off)


def _cstr(data: bytes, off: int) -> str:
    end = data.find(b"\0", off)
    return data[off:end if end >= 0 else len(data)].decode("utf-8", "replace")


def _parse(data: bytes) -> _Elf:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ElfError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    secs = []
    for i in range(shnum):
        (name, typ, flags, _addr, off, size, link, info, _al, entsize) = \
            struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
        secs.append({"name_off": name, "type": typ, "flags": flags, "off": off,
                     "size": size, "link": link, "info": info, "entsize": entsize})
    strtab = secs[shstrndx]
    for s in secs:
        s["name"] = _cstr(data, strtab["off"] + s["name_off"])
    symtab = next((s for s in secs if s["type"] == SHT_SYMTAB), None)
    if symtab is None:
        raise ElfError("no symbol table")
    strs = secs[symtab["link"]]
    syms = []
    for i in range(symtab["size"] // 24):
        st_name, info, _other, shndx, value, _size = \
            struct.unpack_from("<IBBHQQ", data, symtab["off"] + i * 24)
        syms.append((_cstr(data, strs["off"] + st_name), info & 0xf, shndx, value))
    return _Elf(data, secs, syms)


def _relocs(elf: _Elf) -> dict[int, dict[int, tuple[int, int]]]:
    """Target section -> {offset: (section, offset) it points at}, for the
    absolute 64-bit relocations of allocated, non-executable sections only."""
    out: dict[int, dict[int, tuple[int, int]]] = {}
    for rs in elf.secs:
        if rs["type"] != SHT_RELA or rs["flags"] & SHF_RELA_LIVEPATCH:
            continue
        tgt = rs["info"]
        tflags = elf.flags(tgt)
        if not tflags & SHF_ALLOC or tflags & SHF_EXECINSTR:
            continue            # debug info, notes: not where a callback pointer lives
        table = out.setdefault(tgt, {})
        for i in range(rs["size"] // 24):
            r_off, r_info, addend = struct.unpack_from("<QQq", elf.data, rs["off"] + i * 24)
            if r_info & 0xffffffff != R_X86_64_64:
                continue
            _name, _typ, shndx, value = elf.syms[r_info >> 32]
            if 0 < shndx < SHN_LORESERVE:
                table[r_off] = (shndx, value + addend)
    return out


class _Reader:
    def __init__(self, elf: _Elf, module: str):
        self.elf, self.module = elf, module
        self.relocs = _relocs(elf)
        self.funcs: dict[tuple[int, int], str] = {}
        for name, typ, shndx, value in elf.syms:
            if typ == 2 and 0 < shndx < SHN_LORESERVE:      # STT_FUNC
                self.funcs.setdefault((shndx, value), name)
        # (obj, cb) -> (fn section, fn offset, how, where it was found: object order)
        self.found: dict[tuple[str, str], tuple[int, int, str, tuple]] = {}
        # how often each name is defined: the kernel resolves MODULE:NAME to the first
        self.counts: dict[str, int] = {}
        for name, typ, sh, _v in elf.syms:
            if name and sh != SHN_UNDEF and typ not in (STT_SECTION, STT_FILE):
                self.counts[name] = self.counts.get(name, 0) + 1

    def function(self, target: tuple[int, int] | None) -> str | None:
        if target is None or not self.elf.flags(target[0]) & SHF_EXECINSTR:
            return None
        return self.funcs.get(target)

    def add(self, obj: str, i: int, fn_at: tuple[int, int], how: str, where: tuple) -> None:
        self.found.setdefault((obj, CALLBACKS[i]), (fn_at[0], fn_at[1], how, where))

    # --- the three layouts --------------------------------------------------------

    def klp_objects(self) -> None:
        """Static struct klp_object initialisers in writable data."""
        for sec, rel in self.relocs.items():
            name = self.elf.secs[sec]["name"]
            if (not self.elf.flags(sec) & SHF_WRITE or name in KPATCH_SECTIONS
                    or name in KLP_BUILD_SECTIONS):
                continue
            for off, where in rel.items():
                if self.function(where) is None:
                    continue
                for i in range(4):
                    base = off - OBJ_CALLBACKS_OFF - 8 * i
                    if not self._is_klp_func_array(rel.get(base + 8)):
                        continue
                    nptr = rel.get(base)
                    obj = "vmlinux" if nptr is None else self.elf.cstr(*nptr)
                    if obj is None:
                        continue    # the name is not a string: not a klp_object
                    self.add(obj, i, where, KLP_OBJECT, (sec, base))
                    break

    def _is_klp_func_array(self, ptr: tuple[int, int] | None) -> bool:
        """struct klp_func: old_name (a string) at +0, new_func (a function) at +8."""
        if ptr is None or not self.elf.flags(ptr[0]) & SHF_WRITE:
            return False
        rel = self.relocs.get(ptr[0], {})
        name = rel.get(ptr[1])
        return (name is not None and self.elf.cstr(*name) is not None
                and self.function(rel.get(ptr[1] + 8)) is not None)

    def kpatch_sections(self) -> None:
        """kpatch-macros.h: {callback, objname} entries, one section per kind."""
        for idx, s in enumerate(self.elf.secs):
            i = KPATCH_SECTIONS.get(s["name"])
            if i is None:
                continue
            rel = self.relocs.get(idx, {})
            for off in range(0, s["size"], 16):
                fn = rel.get(off)
                if self.function(fn) is None:
                    continue        # the terminating QUAD(0) of kpatch.lds, or padding
                name = rel.get(off + 8)
                obj = self.elf.cstr(*name) if name else None
                obj = obj if obj and obj != "vmlinux" else "vmlinux"
                first = min((w for (o, _c), (_s, _v, _h, w) in self.found.items() if o == obj),
                            default=(idx, off))
                self.add(obj, i, fn, KPATCH, first)

    def klp_build_objects(self) -> None:
        """livepatch_external.h: struct klp_object_ext entries."""
        for idx, s in enumerate(self.elf.secs):
            if s["name"] not in KLP_BUILD_SECTIONS:
                continue
            rel = self.relocs.get(idx, {})
            for base in range(0, s["size"] - KLP_OBJECT_EXT_SIZE + 1, KLP_OBJECT_EXT_SIZE):
                name = rel.get(base)
                obj = "vmlinux" if name is None else self.elf.cstr(*name)
                if obj is None:
                    continue
                for i in range(4):
                    fn = rel.get(base + OBJ_CALLBACKS_OFF + 8 * i)
                    if self.function(fn) is not None:
                        self.add(obj, i, fn, KLP_BUILD, (idx, base))

    # --- probe definitions ----------------------------------------------------------

    def spec(self, shndx: int, value: int) -> str | None:
        """SYMBOL[+0xOFF] naming this address unambiguously, or None."""
        counts = self.counts
        fn = self.funcs.get((shndx, value))
        if fn is not None and counts.get(fn) == 1:
            return fn
        best = None
        for name, typ, sh, v in self.elf.syms:
            if (sh == shndx and v <= value and name and counts.get(name) == 1
                    and typ not in (STT_SECTION, STT_FILE)
                    and (best is None or v > best[1])):
                best = (name, v)
        if best is None:
            return None
        return best[0] if best[1] == value else f"{best[0]}+{value - best[1]:#x}"

    def callbacks(self) -> list[Callback]:
        """In the module's object order (where each object was found), then
        callback order."""
        first: dict[str, tuple] = {}
        for (obj, _cb), (_s, _v, _h, where) in self.found.items():
            first[obj] = min(first.get(obj, where), where)
        order = {c: i for i, c in enumerate(CALLBACKS)}
        keyed = sorted(self.found.items(), key=lambda kv: (first[kv[0][0]], order[kv[0][1]]))
        return [Callback(self.module, obj, cb, self.funcs.get((sh, v), "?"), how, self.spec(sh, v))
                for (obj, cb), (sh, v, how, _w) in keyed]


def modinfo(data: bytes, secs: list[dict]) -> dict[str, str]:
    out = {}
    for s in secs:
        if s["name"] == ".modinfo":
            for kv in data[s["off"]:s["off"] + s["size"]].split(b"\0"):
                if b"=" in kv:
                    k, v = kv.split(b"=", 1)
                    out[k.decode()] = v.decode("utf-8", "replace")
    return out


def read_callbacks(path: str) -> tuple[str, list[Callback]]:
    """(module name, its callbacks) of a livepatch .ko. Raises ElfError."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        elf = _parse(data)
    except ElfError as e:
        raise ElfError(f"{path}: {e}") from None
    except (struct.error, IndexError, OverflowError, ValueError) as e:
        raise ElfError(f"{path}: malformed ELF ({e})") from None
    info = modinfo(data, elf.secs)
    name = info.get("name") or os.path.basename(path).rsplit(".", 1)[0].replace("-", "_")
    if info.get("livepatch") != "Y":
        raise ElfError(f"{path}: not a livepatch module (no MODULE_INFO(livepatch, \"Y\"))")
    try:
        r = _Reader(elf, name)
        # the producers' own sections first: a klp_object_ext record also has
        # the shape of a klp_object initialiser
        r.klp_build_objects()
        r.kpatch_sections()
        r.klp_objects()
        return name, r.callbacks()
    except (struct.error, IndexError, OverflowError, ValueError) as e:
        raise ElfError(f"{path}: malformed ELF ({e})") from None


@dataclass
class Preload:
    """The ``--preload PATH`` files and directories (and the discovered ones)."""
    paths: list[str]
    callbacks: list[Callback] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)      # module -> .ko path

    def __post_init__(self) -> None:
        for p in self.paths:
            self.add_path(p)

    def add_path(self, p: str, *, discovered: bool = False) -> list[str]:
        """Read a file or a directory of them; returns the modules read. A
        discovered file (tracer/observe/discover.py) that is not a livepatch is
        passed over without a warning."""
        try:
            files = ([os.path.join(p, f) for f in sorted(os.listdir(p)) if f.endswith(".ko")]
                     if os.path.isdir(p) else [p])
        except OSError as e:
            self.warnings.append(f"--preload {p}: {e.strerror}")
            return []
        read = []
        for f in files:
            try:
                name, cbs = read_callbacks(f)
            except OSError as e:
                self.warnings.append(f"--preload {f}: {e.strerror}")
                continue
            except ElfError as e:
                if (os.path.isdir(p) or discovered) and "not a livepatch" in str(e):
                    continue        # a target module next to the livepatches
                self.warnings.append(f"--preload {e}")
                continue
            if name in self.files:
                continue
            self.files[name] = f
            self.callbacks.extend(cbs)
            read.append(name)
            for c in cbs:
                if c.spec is None:
                    self.warnings.append(
                        f"--preload {f}: {c.callback} of {c.object} ({c.symbol}) has no unique "
                        "symbol to define a probe on before the module loads; it is probed "
                        "by address once loaded (its first run may be inferred)")
        return read

    def modules(self) -> set[str]:
        return set(self.files)

    def targets(self, modules: set[str] | None = None) -> list[Target]:
        """One entry probe per callback function (and a return probe for a
        function that serves a pre_patch: its code); the return first."""
        by_fn: dict[tuple[str, str], set] = {}
        for c in list(self.callbacks):      # the daemon may add while the worker reads
            if c.spec is not None and (modules is None or c.module in modules):
                by_fn.setdefault((c.module, c.spec), set()).add((c.object, c.callback))
        out = []
        for (mod, spec), covers in by_fn.items():
            paired = any(cb == "pre_patch" for _o, cb in covers)
            cov = frozenset(covers)
            if paired:
                out.append(Target(mod, spec, True, covers=cov))
            out.append(Target(mod, spec, False, paired, covers=cov))
        return out

    def cover(self) -> set[tuple[str, str, str]]:
        return {(c.module, c.object, c.callback) for c in list(self.callbacks)
                if c.spec is not None}
