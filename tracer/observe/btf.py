"""Field offsets of the kernel structs the BPF programs read, from the running
kernel's BTF (/sys/kernel/btf/vmlinux).

Why: bcc compiles bpf/klptrace.bpf.c at every start, and including
<linux/module.h> and <linux/livepatch.h> for these few offsets was two thirds
of the compile (docs/benchmarks.md, start-up). BTF describes the kernel as it
was built (whatever its configuration moved), so the offsets passed to the
compiler as -D macros are the running kernel's own. A kernel without BTF
gets the header-based build instead (bpf/klptrace.bpf.c, KLPT_USE_HEADERS),
with the same macros as offsetof() expressions (``header_expressions``):
WANTED is the one list of the offsets the programs read.

A small reader of the BTF format (include/uapi/linux/btf.h): a header, the
type section, the string section. Only the structs named in WANTED are
decoded; every type is walked once to find them.
"""

from __future__ import annotations

import struct

BTF_PATH = "/sys/kernel/btf/vmlinux"
BTF_MAGIC = 0xEB9F
KIND_STRUCT, KIND_UNION = 4, 5

# extra bytes after the 12-byte type header, per kind (vlen = members, params, ...)
_EXTRA = {1: lambda v: 4, 2: lambda v: 0, 3: lambda v: 12, 4: lambda v: 12 * v,
          5: lambda v: 12 * v, 6: lambda v: 8 * v, 7: lambda v: 0, 8: lambda v: 0,
          9: lambda v: 0, 10: lambda v: 0, 11: lambda v: 0, 12: lambda v: 0,
          13: lambda v: 8 * v, 14: lambda v: 4, 15: lambda v: 12 * v, 16: lambda v: 0,
          17: lambda v: 4, 18: lambda v: 0, 19: lambda v: 12 * v}

# macro -> (struct, dotted member path); a path may go through nested structs
WANTED = {
    "KLPT_OFF_PATCH_MOD": ("klp_patch", "mod"),
    "KLPT_OFF_PATCH_OBJ_LIST": ("klp_patch", "obj_list"),
    "KLPT_OFF_PATCH_REPLACE": ("klp_patch", "replace"),
    "KLPT_OFF_PATCH_KOBJ": ("klp_patch", "kobj"),
    "KLPT_OFF_OBJ_NAME": ("klp_object", "name"),
    "KLPT_OFF_OBJ_CALLBACKS": ("klp_object", "callbacks"),
    "KLPT_OFF_OBJ_KOBJ_PARENT": ("klp_object", "kobj.parent"),
    "KLPT_OFF_OBJ_NODE": ("klp_object", "node"),
    "KLPT_OFF_OBJ_MOD": ("klp_object", "mod"),
    "KLPT_OFF_OBJ_DYNAMIC": ("klp_object", "dynamic"),
    "KLPT_OFF_OBJ_PATCHED": ("klp_object", "patched"),
    "KLPT_OFF_CB_PUE": ("klp_callbacks", "post_unpatch_enabled"),
    "KLPT_OFF_MOD_NAME": ("module", "name"),
    # the stall probes (bpf/klptrace.bpf.c "stalls") name the task that blocks
    "KLPT_OFF_TASK_PID": ("task_struct", "pid"),
    "KLPT_OFF_TASK_TGID": ("task_struct", "tgid"),
    "KLPT_OFF_TASK_FLAGS": ("task_struct", "flags"),
    "KLPT_OFF_TASK_COMM": ("task_struct", "comm"),
}
# struct members that are themselves structs, for dotted paths: (struct, member) -> struct
_NESTED = {("klp_object", "kobj"): "kobject", ("klp_patch", "kobj"): "kobject",
           ("klp_object", "callbacks"): "klp_callbacks"}


class BtfError(Exception):
    pass


def _structs(data: bytes, names: set[str]) -> dict[str, dict[str, int]]:
    """name -> {member: byte offset} for the structs named."""
    if len(data) < 24:
        raise BtfError("BTF too short")
    magic, _ver, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
    if magic != BTF_MAGIC:
        raise BtfError(f"not BTF (magic {magic:#x})")
    type_off, type_len, str_off, _str_len = struct.unpack_from("<IIII", data, 8)
    types = hdr_len + type_off
    strs = hdr_len + str_off

    def name(off: int) -> str:
        end = data.index(b"\0", strs + off)
        return data[strs + off:end].decode()

    want = {n.encode() for n in names}
    out: dict[str, dict[str, int]] = {}
    pos, end = types, types + type_len
    unpack = struct.unpack_from
    while pos < end:
        name_off, info, _size = unpack("<III", data, pos)
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        extra = _EXTRA.get(kind)
        if extra is None:
            raise BtfError(f"unknown BTF kind {kind}")
        if kind in (KIND_STRUCT, KIND_UNION) and name_off:
            raw = data[strs + name_off:data.index(b"\0", strs + name_off)]
            if raw in want and raw.decode() not in out:
                bitfields = bool(info >> 31)
                members = {}
                for i in range(vlen):
                    m_name, _m_type, m_off = unpack("<III", data, pos + 12 + 12 * i)
                    bits = m_off & 0xFFFFFF if bitfields else m_off
                    if m_name:
                        members[name(m_name)] = bits // 8
                out[raw.decode()] = members
        pos += 12 + extra(vlen)
    return out


def header_expressions() -> dict[str, str]:
    """The same KLPT_OFF_* macros as C offsetof() expressions, for the build
    that includes the kernel's headers (no BTF): one table, two sources."""
    out = {}
    for macro, (sname, path_) in WANTED.items():
        terms, cur = [], sname
        for member in path_.split("."):
            terms.append(f"offsetof(struct {cur}, {member})")
            cur = _NESTED.get((cur, member), "")
        out[macro] = "(" + " + ".join(terms) + ")"
    return out


def offsets(path: str = BTF_PATH) -> dict[str, int]:
    """The KLPT_OFF_* macros for the running kernel. Raises BtfError (or
    OSError) when BTF is missing or lacks a field: then build with headers."""
    with open(path, "rb") as f:
        data = f.read()
    names = {s for s, _ in WANTED.values()} | set(_NESTED.values())
    structs = _structs(data, names)
    out = {}
    for macro, (sname, path_) in WANTED.items():
        off, cur = 0, sname
        for member in path_.split("."):
            members = structs.get(cur)
            if members is None or member not in members:
                raise BtfError(f"struct {cur} has no member {member} in this kernel's BTF")
            off += members[member]
            cur = _NESTED.get((cur, member), "")
        out[macro] = off
    return out
