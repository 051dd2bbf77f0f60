"""Direct probes on livepatch callback functions, before the module loads.

* ``Preload``: reads a livepatch ``.ko``'s ELF symbols and relocations to find
  its callbacks: a struct klp_object is {name, funcs, callbacks{pre_patch,
  post_patch, pre_unpatch, post_unpatch}, ...} (include/linux/livepatch.h,
  unchanged since 4.15), so a function pointer relocated at object+16+8*i is
  callback i of the object whose name pointer is relocated at object+0
  (none: vmlinux) and whose funcs pointer at object+8 points into writable
  data (the klp_func array). Replacement functions (klp_func.new_func) are
  therefore never probed: they run outside livepatch operations.
* ``TracefsProbes``: registers them as tracefs kprobe events
  ``p:klptrace/NAME MODULE:SYMBOL`` (and ``r:`` for pre_patch, for its return
  code). The kernel accepts such an event for a module that is not loaded yet
  and arms it when the module comes, before its init runs, so even the first
  pre_patch (inside the module's own init) is seen. Every event of the
  ``klptrace`` group is ours: stale ones of a crashed run are removed at start,
  our own at exit.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from .probeplan import tracefs_dir

GROUP = "klptrace"
CALLBACKS = ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")
OBJ_CALLBACKS_OFF = 16          # offsetof(struct klp_object, callbacks) on 64-bit
SHT_SYMTAB, SHT_RELA = 2, 4
SHF_WRITE, SHF_EXECINSTR = 0x1, 0x4
SHF_RELA_LIVEPATCH = 0x00100000
R_X86_64_64 = 1


class ElfError(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    module: str
    symbol: str
    ret: bool            # a return probe (pre_patch's return code)
    paired: bool = False # an entry probe whose function's return is probed too


@dataclass(frozen=True)
class Callback:
    module: str          # the livepatch module = patch name
    object: str          # "vmlinux" or the target module
    callback: str
    symbol: str


def _sections(data: bytes) -> list[dict]:
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
    return secs


def _cstr(data: bytes, off: int) -> str:
    end = data.find(b"\0", off)
    return data[off:end if end >= 0 else len(data)].decode("utf-8", "replace")


def read_callbacks(path: str) -> tuple[str, list[Callback]]:
    """(module name, its callbacks) of a livepatch .ko. Raises ElfError."""
    with open(path, "rb") as f:
        data = f.read()
    secs = _sections(data)
    modinfo = {}
    for s in secs:
        if s["name"] == ".modinfo":
            for kv in data[s["off"]:s["off"] + s["size"]].split(b"\0"):
                if b"=" in kv:
                    k, v = kv.split(b"=", 1)
                    modinfo[k.decode()] = v.decode("utf-8", "replace")
    name = modinfo.get("name") or os.path.basename(path).rsplit(".", 1)[0].replace("-", "_")
    if modinfo.get("livepatch") != "Y":
        raise ElfError(f"{path}: not a livepatch module (no MODULE_INFO(livepatch, \"Y\"))")
    symtab = next((s for s in secs if s["type"] == SHT_SYMTAB), None)
    if symtab is None:
        raise ElfError(f"{path}: no symbol table")
    strs = secs[symtab["link"]]
    syms = []
    for i in range(symtab["size"] // 24):
        st_name, info, _other, shndx, value, _size = \
            struct.unpack_from("<IBBHQQ", data, symtab["off"] + i * 24)
        syms.append((st_name, info, shndx, value))
    funcs = {}      # (section, offset) -> function name
    for st_name, info, shndx, value in syms:
        if info & 0xf == 2 and 0 < shndx < len(secs):     # STT_FUNC
            funcs[(shndx, value)] = _cstr(data, strs["off"] + st_name)

    out: list[Callback] = []
    for rs in secs:
        if rs["type"] != SHT_RELA or rs["flags"] & SHF_RELA_LIVEPATCH:
            continue
        tgt = rs["info"]
        if not 0 < tgt < len(secs) or secs[tgt]["flags"] & SHF_EXECINSTR:
            continue
        relocs = {}     # offset in target data section -> (section, offset) pointed to
        for i in range(rs["size"] // 24):
            r_off, r_info, addend = struct.unpack_from("<QQq", data, rs["off"] + i * 24)
            if r_info & 0xffffffff != R_X86_64_64:
                continue
            st_name, info, shndx, value = syms[r_info >> 32]
            if 0 < shndx < len(secs):
                relocs[r_off] = (shndx, value + addend)
        for off, (sec, where) in sorted(relocs.items()):
            fn = funcs.get((sec, where))
            if fn is None or not secs[sec]["flags"] & SHF_EXECINSTR:
                continue
            for i in range(4):
                base = off - OBJ_CALLBACKS_OFF - 8 * i
                fptr = relocs.get(base + 8)
                if fptr is None or not secs[fptr[0]]["flags"] & SHF_WRITE:
                    continue
                nptr = relocs.get(base)
                if nptr is not None and secs[nptr[0]]["flags"] & (SHF_WRITE | SHF_EXECINSTR):
                    continue        # not a name string: not a klp_object
                obj = "vmlinux" if nptr is None else \
                    _cstr(data, secs[nptr[0]]["off"] + nptr[1])
                out.append(Callback(name, obj, CALLBACKS[i], fn))
                break
    return name, out


class Preload:
    """The ``--preload PATH`` files and directories."""

    def __init__(self, paths: list[str]):
        self.callbacks: list[Callback] = []
        self.warnings: list[str] = []
        self._modules: set[str] = set()
        for p in paths:
            files = [os.path.join(p, f) for f in sorted(os.listdir(p)) if f.endswith(".ko")] \
                if os.path.isdir(p) else [p]
            for f in files:
                try:
                    name, cbs = read_callbacks(f)
                except (OSError, ElfError, struct.error) as e:
                    if os.path.isdir(p) and isinstance(e, ElfError) and "not a livepatch" in str(e):
                        continue        # a target module next to the livepatches
                    self.warnings.append(f"--preload {f}: {e}")
                    continue
                self._modules.add(name)
                self.callbacks.extend(cbs)

    def modules(self) -> set[str]:
        return set(self._modules)

    def targets(self) -> list[Target]:
        seen, out = set(), []
        # a function can serve several callbacks; its return is probed if any is a pre_patch
        pre = {(c.module, c.symbol) for c in self.callbacks if c.callback == "pre_patch"}
        for c in self.callbacks:
            paired = (c.module, c.symbol) in pre
            for t in (Target(c.module, c.symbol, False, paired),
                      Target(c.module, c.symbol, True) if paired else None):
                if t is not None and t not in seen:
                    seen.add(t)
                    out.append(t)
        return out

    def cover(self) -> set[tuple[str, str, str]]:
        return {(c.module, c.object, c.callback) for c in self.callbacks}


def kallsyms_lookup(addrs: set[int], path: str = "/proc/kallsyms") -> dict[int, tuple[str, str]]:
    """address -> (module, symbol) for module text symbols at those addresses."""
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 4 and parts[1] in "tT":
                a = int(parts[0], 16)
                if a in addrs:
                    out[a] = (parts[3].strip("[]"), parts[2])
    return out


class TracefsProbes:
    def __init__(self):
        self.dir = tracefs_dir()
        self.mine: list[str] = []
        self._n = 0

    def _write(self, line: str) -> None:
        if self.dir is None:
            raise OSError("tracefs not mounted (mount -t tracefs nodev /sys/kernel/tracing)")
        # os.open, not open(..., "a"): Python seeks to the end of a file opened
        # for appending, and tracefs' seq_file refuses SEEK_END with EINVAL.
        fd = os.open(os.path.join(self.dir, "kprobe_events"), os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def ours(self) -> list[str]:
        if self.dir is None:
            return []
        # "p:GROUP/NAME ..." but also "r10:GROUP/NAME ..." (a return probe's
        # maxactive): split at the colon, never at a fixed offset
        out = []
        with open(os.path.join(self.dir, "kprobe_events")) as f:
            for line in f:
                if line.split():
                    event = line.split()[0].partition(":")[2]
                    if event.startswith(GROUP + "/"):
                        out.append(event)
        return out

    def error_log(self) -> str:
        """The kernel's reason for the last refused probe definition."""
        try:
            with open(os.path.join(self.dir or "", "error_log")) as f:
                lines = [l.strip() for l in f if l.strip()]
            return " / ".join(lines[-3:])
        except OSError:
            return "no error_log"

    def remove_stale(self) -> int:
        n = 0
        for ev in self.ours():
            try:
                self._write(f"-:{ev}")
                n += 1
            except OSError:
                pass
        return n

    def add(self, t: Target, loader) -> str | None:
        name = f"d{os.getpid()}_{self._n}"
        self._n += 1
        try:
            self._write(f"{'r' if t.ret else 'p'}:{GROUP}/{name} {t.module}:{t.symbol}")
        except OSError as e:
            return f"kprobe_events refused it: {e.strerror or e} ({self.error_log()})"
        self.mine.append(f"{GROUP}/{name}")
        return loader.attach_tracefs(GROUP, name, t.ret, paired=t.paired)

    def remove_all(self) -> None:
        for ev in self.mine:
            try:
                self._write(f"-:{ev}")
            except OSError:
                pass
        self.mine = []
