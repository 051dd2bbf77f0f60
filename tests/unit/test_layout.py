"""The code's layout, as docs/architecture.md draws it: layers that import
only downwards, no import cycle (function-level imports included), the lab
outside the daemon's import graph, and modules of a readable size."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PARTS = {"tracer": "klptrace.tracer", "exporters": "klptrace.exporters"}
MAX_LINES = 450
# a module over MAX_LINES says why at its top, with these words
OVER = "over 450 lines:"


def modules() -> dict[str, Path]:
    out = {}
    for d, pkg in PARTS.items():
        for f in (REPO / d).rglob("*.py"):
            rel = f.relative_to(REPO / d).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = f
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every klptrace module this one imports, anywhere in it."""
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            for a in node.names:
                full = f"{mod}.{a.name}"
                out.add(full if full in known else mod)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {n: imports(n, p, set(mods)) for n, p in mods.items()}


def test_no_import_cycle():
    g = graph()
    seen, stack, cycles = set(), [], []

    def visit(n):
        if n in stack:
            cycles.append(stack[stack.index(n):] + [n])
            return
        if n in seen:
            return
        seen.add(n)
        stack.append(n)
        for m in sorted(g[n]):
            if not m.endswith(".__init__"):
                visit(m)
        stack.pop()

    for n in sorted(g):
        visit(n)
    # a package's __init__ importing its own modules is not a cycle of code
    cycles = [c for c in cycles if len({m.rsplit(".", 1)[0] for m in c}) > 1
              or not any(c[0] == m for m in c[1:-1])]
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def reachable(g, start: str) -> set[str]:
    out, todo = set(), [start]
    while todo:
        n = todo.pop()
        for m in g.get(n, ()):
            if m not in out:
                out.add(m)
                todo.append(m)
    return out


def test_layers_import_downwards_only():
    """model <- observe, judge <- daemon <- commands; the lab outside the daemon."""
    g = graph()
    below = {"model": set(), "observe": {"model"}, "judge": {"model"}}
    bad = []
    for n, deps in g.items():
        parts = n.split(".")
        if len(parts) < 3 or parts[1] != "tracer" or parts[2] not in below:
            continue
        for m in deps:
            mp = m.split(".")
            if mp[1] == "tracer" and len(mp) > 2 and mp[2] in below | {"daemon": 0, "commands": 0,
                                                                       "lab": 0} \
                    and mp[2] != parts[2] and mp[2] not in below[parts[2]]:
                bad.append(f"{n} imports {m}")
    assert not bad, "\n".join(bad)
    daemon = reachable(g, "klptrace.tracer.daemon.daemon")
    assert not [m for m in daemon if ".tracer.lab" in m], sorted(daemon)


def test_modules_are_of_a_readable_size():
    big = []
    for n, p in modules().items():
        text = p.read_text()
        lines = text.count("\n")
        if lines > MAX_LINES and OVER not in text[:3000]:
            big.append(f"{p.relative_to(REPO)}: {lines} lines, and no '{OVER} why' at its top")
    assert not big, "\n".join(big)
