"""The one exception the lab raises: what failed (a short kind the CLI and CI
logs can grep for) and a one-line message saying why."""

from __future__ import annotations


class LabError(Exception):
    """kind: "apt", "build", "boot timeout", "step timeout", "guest",
    "bad input", "no means" (machine lacks root/qemu)."""

    def __init__(self, kind: str, message: str, detail: str = ""):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.detail = detail   # longer text (build output, console tail) for logs

    def one_line(self) -> str:
        return f"lab failed ({self.kind}): {self.message}"
