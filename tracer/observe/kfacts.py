"""Kernel facts: what the running kernel says about the functions klptrace
may probe, read from its files (kallsyms, ftrace's filter functions, the
kprobe blacklist, tracefs, BTF). Facts only: tracer/observe/probeplan.py
decides, and then tries, because a fact is not proof (on 6.1
klp_post_unpatch_callback is in kallsyms but refuses kprobes).
"""

from __future__ import annotations

import os

from klptrace.tracer.observe import kerneltext


def tracefs_dir() -> str | None:
    for d in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if os.path.exists(os.path.join(d, "kprobe_events")):
            return d
    return None


def read_kallsyms_text(funcs: set[str]) -> set[str]:
    """The text symbols named in ``funcs``, and their ``.part.N`` clones."""
    found = set()
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] in "tT":
                    name = parts[2]
                    if name in funcs or (".part." in name and name.split(".", 1)[0] in funcs):
                        found.add(name)
    except OSError:
        pass
    return found


def part_clone(func: str, kallsyms: set[str]) -> str | None:
    clones = sorted(n for n in kallsyms if n.startswith(func + ".part."))
    return clones[0] if clones else None


def read_filter_functions(funcs: set[str]) -> set[str]:
    d = tracefs_dir()
    found = set()
    if d is None:
        return found
    try:
        with open(os.path.join(d, "available_filter_functions")) as f:
            for line in f:
                name = line.split(" ", 1)[0].strip()
                if name in funcs:
                    found.add(name)
    except OSError:
        pass
    return found


def read_blacklist(funcs: set[str]) -> set[str]:
    found = set()
    for p in ("/sys/kernel/debug/kprobes/blacklist",):
        try:
            with open(p) as f:
                for line in f:
                    parts = line.split()
                    if parts and parts[-1] in funcs:
                        found.add(parts[-1])
        except OSError:
            pass
    return found


def kernel_facts(funcs: set[str]) -> tuple[set[str], set[str], set[str], bool]:
    """The text symbols (of funcs and of the return trampolines), the
    ftrace-able and the blacklisted functions among funcs, and BTF."""
    return (read_kallsyms_text(funcs | set(kerneltext.TRAMPOLINES)),
            read_filter_functions(funcs), read_blacklist(funcs),
            os.path.exists("/sys/kernel/btf/vmlinux"))
