"""The HTTP endpoint: ``/metrics`` for Prometheus and a small landing page at ``/``.

Served by the standard library's threaded WSGI server (wsgiref, as
prometheus_client's own ``start_http_server`` does), with our app (the
metrics, a landing page, a scrape counter) from the first request, TLS by
the ssl module, and a handle to stop it: nothing of prometheus_client beyond
``make_wsgi_app``, so Debian 12's python3-prometheus-client (0.16) serves it
as well as PyPI's newer releases.

Default: 127.0.0.1:19557. 9100-9999 is the block the Prometheus project's
"Default port allocations" wiki page hands out to exporters, and it is fully
allocated (9090-9094 are Prometheus, Pushgateway and Alertmanager), so any
port there collides with some exporter. 19557 is outside it, not an IANA
service in /etc/services, and below Linux's ephemeral range (32768-60999) so
an outgoing connection cannot be holding it when the daemon starts.

Everything the operator can get wrong (``--listen``, a port in use, an
unreadable certificate) raises ``ExporterError`` whose ``str()`` is one line;
the CLI prints it and exits 2 (tracer.exitcodes.BAD_INPUT).
"""

from __future__ import annotations

import errno
import html
import re
import socket
import ssl
import threading
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

DEFAULT_ADDR = "127.0.0.1"
DEFAULT_PORT = 19557
DEFAULT_LISTEN = f"{DEFAULT_ADDR}:{DEFAULT_PORT}"

_LISTEN_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.%\w]+)\]|(?P<host>[^\[\]:]*)):(?P<port>[0-9]+)$")


class ExporterError(Exception):
    """An unusable exporter setting. ``str()`` is the one line to print; the
    CLI exits with tracer.exitcodes.BAD_INPUT (2)."""


@dataclass(frozen=True)
class Listen:
    host: str       # "" = every interface
    port: int       # 0 = any free port (tests)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen(text: str) -> Listen:
    """``ADDR:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (every interface, as
    Prometheus exporters' ``--web.listen-address`` does)."""
    m = _LISTEN_RE.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ExporterError(f"--listen {text!r}: expected ADDR:PORT, e.g. {DEFAULT_LISTEN}, "
                            f"[::1]:{DEFAULT_PORT} or :{DEFAULT_PORT} for every interface")
    port = int(m["port"])
    if port > 65535:
        raise ExporterError(f"--listen {text!r}: port {port} is out of range (1-65535)")
    return Listen(m["v6"] if m["v6"] is not None else m["host"], port)


def check_tls(certfile: str | None, keyfile: str | None) -> None:
    """Fail early, in one line, on a certificate or key that cannot be used
    (before the port is bound, so nothing is left half-open)."""
    if not certfile and not keyfile:
        return
    if not certfile or not keyfile:
        raise ExporterError("TLS needs both a certificate and its key "
                            "(--tls-cert and --tls-key); got only the "
                            + ("certificate" if certfile else "key"))
    for what, path in (("certificate", certfile), ("key", keyfile)):
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise ExporterError(f"cannot read TLS {what} {path}: "
                                f"{e.strerror or e}") from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as e:
        reason = getattr(e, "reason", None) or str(e).splitlines()[0]
        raise ExporterError(f"TLS certificate {certfile} with key {keyfile} is unusable "
                            f"({reason}); expected PEM files of a matching pair") from None


_LANDING = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>klptrace exporter</title></head>
<body>
<h1>klptrace exporter</h1>
<p>Livepatch (un)patch callbacks observed on {host}, checked against the callback rules.</p>
<ul>
<li><a href="metrics">/metrics</a>: Prometheus metrics (docs/metrics.md)</li>
</ul>
<p>klptrace {version}</p>
</body></html>
"""


def _app(registry: CollectorRegistry, on_scrape: Callable[[], None] | None):
    from klptrace.tracer import __version__

    metrics_app = make_wsgi_app(registry)
    landing = _LANDING.format(host=html.escape(socket.gethostname()),
                              version=html.escape(__version__)).encode()

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            if on_scrape is not None and environ.get("REQUEST_METHOD") == "GET":
                on_scrape()
            return metrics_app(environ, start_response)
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [landing]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found; metrics are at /metrics\n"]

    return app


_BIND_HINTS = {
    errno.EADDRINUSE: "address already in use (another klptrace or exporter?); "
                      "choose another with --listen",
    errno.EACCES: "permission denied; ports below 1024 need CAP_NET_BIND_SERVICE",
    errno.EADDRNOTAVAIL: "no such address on this host",
}


class _Server(ThreadingMixIn, WSGIServer):
    """A request per thread; the threads die with the daemon."""
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args):     # noqa: A002 - the base class's name
        pass                                  # a scrape per 15 s is not news


def _serve(app, addr: str, port: int, certfile: str | None, keyfile: str | None):
    family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM,
                                flags=socket.AI_PASSIVE)[0][0]

    class Server(_Server):
        address_family = family

    httpd = make_server(addr, port, app, Server, handler_class=_Quiet)
    if certfile:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile, keyfile)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, name="klptrace-metrics", daemon=True)
    thread.start()
    return httpd, thread


class MetricsServer:
    """A running endpoint. ``close()`` stops it (idempotent)."""

    def __init__(self, httpd, thread, listen: Listen, tls: bool):
        self._httpd, self._thread = httpd, thread
        self.listen = listen
        self.port = httpd.server_address[1]     # the real one when port 0 was asked
        self.tls = tls

    @property
    def url(self) -> str:
        host = self.listen.host or DEFAULT_ADDR
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/metrics"

    def close(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self._httpd = None


def start(metrics, listen: str | Listen = DEFAULT_LISTEN, *, certfile: str | None = None,
          keyfile: str | None = None) -> MetricsServer:
    """Serve ``metrics`` (an exporters.metrics.DaemonMetrics, or any object
    with a ``registry``; a bare CollectorRegistry works too) in a daemon thread.
    Raises ExporterError for a bad listen address, a port that cannot be bound
    or an unusable certificate."""
    where = listen if isinstance(listen, Listen) else parse_listen(listen)
    check_tls(certfile, keyfile)
    registry = getattr(metrics, "registry", metrics)
    on_scrape = getattr(metrics, "count_scrape", None)
    # "" means every interface; getaddrinfo needs a concrete wildcard
    addr = where.host or "::"
    try:
        httpd, thread = _serve(_app(registry, on_scrape), addr, where.port, certfile, keyfile)
    except socket.gaierror as e:
        raise ExporterError(f"cannot listen on {where}: {e.strerror}") from None
    except OSError as e:
        if addr == "::" and e.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            return start(metrics, Listen("0.0.0.0", where.port), certfile=certfile,
                         keyfile=keyfile)   # host without IPv6
        hint = _BIND_HINTS.get(e.errno, e.strerror or str(e))
        raise ExporterError(f"cannot listen on {where}: {hint}") from None
    except ssl.SSLError as e:    # pragma: no cover - check_tls saw it first
        raise ExporterError(f"TLS setup failed: {e.reason or e}") from None
    return MetricsServer(httpd, thread, where, tls=bool(certfile))
