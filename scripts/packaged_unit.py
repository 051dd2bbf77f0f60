#!/usr/bin/env python3
"""Write the Debian package's klptrace.service from the one source of truth,
deploy/systemd/klptrace.service (the /opt checkout's unit): the same unit, with
  - ExecStart's program /opt/klptrace/.venv/bin/klptrace -> /usr/bin/klptrace,
  - Documentation= -> the installed man pages and operations.md,
  - the leading comment (how to install from /opt) -> how the package ships it.
Every other line is copied as it is. Each substitution must match exactly
once and no "/opt/klptrace" may remain, else this fails: a changed source unit
stops the package build instead of shipping a wrong path.

    python3 scripts/packaged_unit.py [SRC] DEST
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "deploy" / "systemd" / "klptrace.service"
OPT_PROGRAM = "/opt/klptrace/.venv/bin/klptrace"
PROGRAM = "/usr/bin/klptrace"
DOCUMENTATION = ("Documentation=man:klptrace-run(1) man:klptrace(1) "
                 "file:///usr/share/doc/klptrace/operations.md "
                 "file:///usr/share/doc/klptrace/packaging.md")
HEADER = """\
# klptrace: observe livepatch (un)patch callbacks and export Prometheus metrics.
# Debian package klptrace: generated at build time from the repository's
# deploy/systemd/klptrace.service by scripts/packaged_unit.py (the program is
# /usr/bin/klptrace); enabled on install, restarted on upgrade, stopped on
# removal. Change options with `systemctl edit klptrace` (a [Service] drop-in
# that clears ExecStart= and sets a new one), not by editing this file.
"""


class UnitError(Exception):
    pass


def packaged(text: str) -> str:
    head, sep, body = text.partition("[Unit]\n")
    if not sep or any(l.strip() and not l.startswith("#") for l in head.splitlines()):
        raise UnitError("expected only comments before [Unit]")
    out = HEADER + sep + body

    def once(pattern: str, repl: str, what: str) -> None:
        nonlocal out
        out, n = re.subn(pattern, repl, out, flags=re.M)
        if n != 1:
            raise UnitError(f"{what}: {n} matches of {pattern!r}, expected 1")

    once(r"^Documentation=.*$", DOCUMENTATION.replace("\\", "\\\\"), "Documentation=")
    once(r"^ExecStart=" + re.escape(OPT_PROGRAM) + r"(?= )", "ExecStart=" + PROGRAM, "ExecStart=")
    if "/opt/klptrace" in out:
        line = next(l for l in out.splitlines() if "/opt/klptrace" in l)
        raise UnitError(f"a path under /opt/klptrace is left: {line.strip()!r}")
    return out


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    src, dest = (SOURCE, argv[0]) if len(argv) == 1 else argv
    try:
        text = packaged(Path(src).read_text())
    except UnitError as e:
        print(f"packaged_unit: {src}: {e}", file=sys.stderr)
        return 1
    Path(dest).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
