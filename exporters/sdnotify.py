"""sd_notify(3) with the standard library only: tell systemd (Type=notify) that
the daemon is ready, after every probe is attached, and when it stops.

Outside systemd ($NOTIFY_SOCKET unset) every call is a no-op returning False,
so the daemon calls these unconditionally.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to $NOTIFY_SOCKET. True if sent."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):            # abstract namespace socket
        addr = "\0" + addr[1:]
    elif not addr.startswith("/"):      # only path and abstract sockets exist
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError:
        return False                    # systemd gone: nothing useful to do
    return True


def ready(status: str | None = None) -> bool:
    """READY=1: probes attached, records flowing. systemd starts dependants now."""
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def stopping(status: str | None = None) -> bool:
    """STOPPING=1: draining and closing the trace after SIGTERM."""
    return notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))


def status(text: str) -> bool:
    """A free-form line shown by `systemctl status`."""
    return notify(f"STATUS={text}")
