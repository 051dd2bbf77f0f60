"""The exporter's command-line options, for ``klptrace run`` to add with one
decorator. Values are passed through raw: ``--listen`` and the TLS files are
checked by exporters.server (ExporterError, one line, exit 2), not by click,
whose usage errors span several lines."""

from __future__ import annotations

import click

from .metrics import DEFAULT_MAX_PATCHES
from .server import DEFAULT_LISTEN
from .tracewriter import DEFAULT_KEEP

_OPTIONS = (
    click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="ADDR:PORT",
                 help="Serve Prometheus metrics here (/metrics, landing page at /); "
                      ":PORT for every interface."),
    click.option("--no-metrics", is_flag=True, help="Do not serve metrics at all."),
    click.option("--tls-cert", metavar="PEM", default=None,
                 help="Serve HTTPS with this certificate (needs --tls-key)."),
    click.option("--tls-key", metavar="PEM", default=None, help="Private key of --tls-cert."),
    click.option("--metrics-max-patches", type=click.IntRange(min=1),
                 default=DEFAULT_MAX_PATCHES, show_default=True,
                 help="Distinct patch label values before later ones become \"_overflow\"."),
    click.option("--trace-max-bytes", type=click.IntRange(min=4096), default=None,
                 help="Rotate the trace file before it grows past this size (default: never)."),
    click.option("--trace-keep", type=click.IntRange(min=0), default=DEFAULT_KEEP,
                 show_default=True, help="Rotated trace files to keep (TRACE.1 ... TRACE.N)."),
)


def exporter_options(f):
    """Adds --listen, --no-metrics, --tls-cert, --tls-key, --metrics-max-patches,
    --trace-max-bytes and --trace-keep (keyword arguments of the same names,
    dashes as underscores)."""
    for opt in reversed(_OPTIONS):
        f = opt(f)
    return f
