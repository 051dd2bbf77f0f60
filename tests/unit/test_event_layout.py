"""bpf/klptrace.h is the one definition of what the BPF programs write and
the daemon reads; tracer/observe/rawevents.py mirrors it with ctypes. The C
compiler is the judge of the C side: a program built from the header prints
every member's offset and size, every enum value and macro, and each ctypes
mirror must agree member by member (name, offset, size), not just in total.
Also here: one name per probe point, from the plan to the BPF program and its
hit counter."""

from __future__ import annotations

import ctypes
import re
import subprocess
from pathlib import Path

import pytest

from klptrace.tracer.model import events as ev
from klptrace.tracer.observe import probeplan as pp
from klptrace.tracer.observe import rawevents as rw

REPO = Path(__file__).resolve().parents[2]
HEADER = REPO / "bpf" / "klptrace.h"
BPF_C = REPO / "bpf" / "klptrace.bpf.c"

MIRRORS = {"klpt_event": rw.CEvent, "klpt_obj": rw.CObj, "klpt_blocker": rw.CBlocker,
           "klpt_sweeps": rw.CSweeps}


def _header_names() -> tuple[dict[str, list[str]], list[str]]:
    """The members of each mirrored struct and every KLPT_* constant (enum
    member or numeric macro) the header defines, read from its text."""
    h = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)
    members = {}
    for name in MIRRORS:
        body = re.search(r"struct %s \{(.*?)\};" % name, h, re.S).group(1)
        members[name] = [re.search(r"(\w+)\s*(?:\[\w+\])?\s*$", d.strip()).group(1)
                         for d in body.split(";") if d.strip()]
    consts = re.findall(r"#define (KLPT_\w+)\s+\d+", h)
    for body in re.findall(r"enum \w+ \{(.*?)\};", h, re.S):
        consts += [item.split("=")[0].strip() for item in body.split(",") if item.strip()]
    return members, consts


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, int]:
    """What gcc makes of the header: "struct.member.offset|size", "sizeof.struct",
    and each constant's value."""
    members, consts = _header_names()
    lines = ['#include <stddef.h>', '#include <stdio.h>', '#include "klptrace.h"',
             "int main(void) {"]
    for s, ms in members.items():
        lines.append(f'printf("sizeof.{s} %zu\\n", sizeof(struct {s}));')
        for m in ms:
            lines.append(f'printf("{s}.{m}.offset %zu\\n", offsetof(struct {s}, {m}));')
            lines.append(f'printf("{s}.{m}.size %zu\\n", sizeof(((struct {s} *)0)->{m}));')
    for c in consts:
        lines.append(f'printf("{c} %lld\\n", (long long)({c}));')
    lines.append("return 0; }")
    d = tmp_path_factory.mktemp("layout")
    (d / "layout.c").write_text("\n".join(lines) + "\n")
    subprocess.run(["gcc", "-Wall", "-Werror", f"-I{HEADER.parent}", "-o", str(d / "layout"),
                    str(d / "layout.c")], check=True)
    out = subprocess.run([str(d / "layout")], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


@pytest.mark.parametrize("struct", sorted(MIRRORS))
def test_ctypes_mirror_agrees_member_by_member(compiled, struct):
    cls = MIRRORS[struct]
    members, _ = _header_names()
    assert [f for f, _ in cls._fields_] == members[struct], "same members, same order"
    for f, _ in cls._fields_:
        desc = getattr(cls, f)
        assert (desc.offset, desc.size) == (compiled[f"{struct}.{f}.offset"],
                                            compiled[f"{struct}.{f}.size"]), f"{struct}.{f}"
    assert ctypes.sizeof(cls) == compiled[f"sizeof.{struct}"]
    if struct == "klpt_event":
        assert rw.EVENT_SIZE == compiled["sizeof.klpt_event"]


def test_every_constant_the_decoder_uses_is_the_headers(compiled):
    py = {"NAME_LEN": rw.NAME_LEN, "CHUNK_OBJS": rw.CHUNK_OBJS, "MAX_CHUNKS": rw.MAX_CHUNKS,
          "HIT_SLOTS": rw.HIT_SLOTS, "CTX_NONE": rw.CTX_NONE, "CTX_COMING": rw.CTX_COMING,
          "CTX_GOING": rw.CTX_GOING, "SNAP_LAST": rw.SNAP_LAST, "SNAP_MORE": rw.SNAP_MORE,
          "SNAP_TRUNCATED": rw.SNAP_TRUNCATED, "EADDRINUSE": rw.EADDRINUSE,
          "STALL_FROM_CHECK": rw.STALL_FROM_CHECK, "STALL_FROM_SWITCH": rw.STALL_FROM_SWITCH}
    kinds = [k for k in compiled if k.startswith("KLPT_") and not k.startswith(
        ("KLPT_HIT_", "KLPT_CTX_", "KLPT_SNAP_", "KLPT_CB_", "KLPT_STALL_"))]
    for k in kinds:                 # the event kinds: rawevents names each one the same
        name = k[len("KLPT_"):]
        if hasattr(rw, name):
            py[name] = getattr(rw, name)
    assert {"INIT_TRANSITION", "MODULE_GOING_RET", "COMPLETE_RET"} <= set(py)
    for name, v in py.items():
        assert compiled[f"KLPT_{name}"] == v, name
    hits = sorted((v, k[len("KLPT_HIT_"):].lower()) for k, v in compiled.items()
                  if k.startswith("KLPT_HIT_") and k != "KLPT_HIT_SLOTS")
    assert [h for _, h in hits] == list(rw.HIT_PROGRAMS)
    # the callback index (struct klp_callbacks order) is the events' order
    assert [compiled[f"KLPT_CB_{cb.upper()}"] for cb in ev.CALLBACKS] == [0, 1, 2, 3]


def test_one_name_per_probe_point():
    """A point's name gives its BPF program (on_<name>) and its hit counter;
    the program counts its own hits; the core points pass their callback's
    KLPT_CB_* index."""
    src = BPF_C.read_text()
    for p in pp.POINTS:
        m = re.search(r"^int %s\(struct pt_regs \*ctx[^)]*\)\s*(\{.*?^\}|\{[^\n]*\})" % p.prog,
                      src, re.S | re.M)
        assert m, f"{p.name}: no program {p.prog} in bpf/klptrace.bpf.c"
        assert p.hit in rw.HIT_PROGRAMS, p.name
        body = m.group(1)
        if p.name.startswith("core-"):
            cb = p.name[len("core-"):].replace("-", "_")
            assert f"KLPT_CB_{cb.upper()}" in body and pp.CORE_INDEX[p.name] == \
                ev.CALLBACKS.index(cb)
        else:
            assert f"KLPT_HIT_{p.hit.upper()}" in body, (p.name, body)
    assert len({p.name for p in pp.POINTS}) == len(pp.POINTS)
