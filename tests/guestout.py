"""Reading what a guest script printed for the host: `@@key=value` lines and
`@@key<<` ... `@@>>` blocks (used by the stress suite and the lab benchmark)."""

from __future__ import annotations

import re

_KV = re.compile(r"^@@(\w+)=(.*)$")
_BLOCK = re.compile(r"^@@(\w+)<<$")


def parse(out: str) -> dict[str, str]:
    got: dict[str, str] = {}
    lines = out.splitlines()
    i = 0
    while i < len(lines):
        m = _BLOCK.match(lines[i])
        if m:
            body = []
            i += 1
            while i < len(lines) and lines[i] != "@@>>":
                # an @@key=value line inside a block (the rc after a json report)
                kv = _KV.match(lines[i])
                if kv:
                    got[kv.group(1)] = kv.group(2)
                else:
                    body.append(lines[i])
                i += 1
            got[m.group(1)] = "\n".join(body)
        else:
            kv = _KV.match(lines[i])
            if kv:
                got[kv.group(1)] = kv.group(2)
        i += 1
    return got
