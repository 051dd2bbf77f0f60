"""Parses the test modules' callback lines out of a guest kernel log.

Each callback of klpt_lp / klpt_lp2 prints exactly one line
(tests/kmod/klpt_callbacks.h):

    klpt: patch=klpt_lp object=klpt_mod callback=pre_patch ret=0 state=COMING

ret is the pre_patch return value ("-" for the void callbacks), state the
target module's state ("-" for vmlinux). dmesg's "[   12.345678] " prefix (or
none) is accepted."""

from __future__ import annotations

import re
from dataclasses import dataclass

from klptrace.tracer.model.events import CALLBACKS  # noqa: F401 (the lab reads it here)

LINE_RE = re.compile(
    r"klpt: patch=(?P<patch>\S+) object=(?P<object>\S+) callback=(?P<callback>\S+)"
    r" ret=(?P<ret>-?\d+|-) state=(?P<state>\S+)$")



@dataclass(frozen=True)
class CallbackRecord:
    patch: str
    object: str
    callback: str
    ret: int | None          # pre_patch's return value; None for the others
    state: str | None        # target module state; None for vmlinux

    def key(self) -> tuple[str, str, str, int | None]:
        """What a scenario's expected sequence lists."""
        return (self.patch, self.object, self.callback, self.ret)

    def __str__(self) -> str:
        ret = "-" if self.ret is None else str(self.ret)
        return (f"{self.patch:9} {self.object:9} {self.callback:13} ret={ret:4}"
                f" state={self.state or '-'}")


def parse_line(line: str) -> CallbackRecord | None:
    m = LINE_RE.search(line.rstrip())
    if not m:
        return None
    ret = None if m["ret"] == "-" else int(m["ret"])
    state = None if m["state"] == "-" else m["state"]
    return CallbackRecord(m["patch"], m["object"], m["callback"], ret, state)


def parse_log(text: str) -> list[CallbackRecord]:
    """Every callback record in a kernel log, in log order."""
    return [r for r in map(parse_line, text.splitlines()) if r is not None]
