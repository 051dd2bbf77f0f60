"""exporters.server: a real HTTP(S) scrape on 127.0.0.1 of the daemon's
registry, fed by an engine that consumed a model trace; the scraped values are
the engine's Stats and `promtool check metrics` accepts the exposition. Bad
settings raise ExporterError with one line."""

import shutil
import socket
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from klptrace.exporters import server
from klptrace.exporters.metrics import DaemonMetrics
from klptrace.exporters.server import ExporterError, Listen, parse_listen
from model_scenarios import SCENARIOS
from tracebuild import duplicate, is_cb, renumber
from klptrace.tracer.daemon.sinks import MetricsSink
from klptrace.tracer.judge.engine import Engine
from klptrace.tracer.model import events as ev

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def traced_engine(metrics_holder: dict):
    """multiple-livepatches with one duplicated callback (a violation) and a
    loss record at the end: every Stats table has something in it."""
    m = SCENARIOS["multiple-livepatches"]()
    records = duplicate(m.records, lambda r: is_cb(r, "klpt_lp2", "vmlinux", "post_unpatch"))
    records = renumber(records) + [ev.loss(10_000, 10_000_000, 4)]
    done = []

    class Histogram:
        """The daemon's metrics sink feeds the duration histogram: each
        transition's end, from the kernel state tracker the engine applies."""
        def observe_transition(self, *args):
            done.append(args)
            if "metrics" in metrics_holder:
                metrics_holder["metrics"].observe_transition(*args)

    e = Engine(m.header)
    sink = MetricsSink(e.kstate, Histogram())
    for r in records:
        e.feed(r)
        sink.record(r)
    e.finish()
    return e, done


@pytest.fixture
def live():
    holder = {}
    metrics = DaemonMetrics(lambda: holder["engine"].stats if "engine" in holder else None,
                            livepatch_state=lambda: [
                                {"name": "klpt_lp", "enabled": True, "transition": False},
                                {"name": "klpt_lp2", "enabled": False, "transition": True}],
                            probes=lambda: [("init", "kprobe", True), ("force", "kprobe", False, False)],
                            kernel_release="6.1.0-model")
    holder["metrics"] = metrics
    holder["engine"], holder["done"] = traced_engine(holder)
    srv = server.start(metrics, "127.0.0.1:0")
    yield holder, srv
    srv.close()


def get(url, **kw):
    with urllib.request.urlopen(url, timeout=10, **kw) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()


def parse(text) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def by_name(scraped, name):
    return {labels: v for (n, labels), v in scraped.items() if n == name}


def test_scrape_equals_engine_stats(live):
    holder, srv = live
    status, ctype, text = get(srv.url)
    assert status == 200 and ctype.startswith("text/plain")
    got = parse(text)
    st = holder["engine"].stats
    assert st.violations and st.callbacks and st.transitions and st.lost_records == 4

    cbs = by_name(got, "klptrace_callbacks_total")
    assert cbs == {frozenset(zip(("patch", "object", "callback", "result", "evidence"), k)): n
                   for k, n in st.callbacks.items()}
    vio = by_name(got, "klptrace_violations_total")
    for (rule, patch), n in st.violations.items():
        assert vio[frozenset({"rule": rule, "patch": patch}.items())] == n
    assert sum(vio.values()) == sum(st.violations.values())
    tr = by_name(got, "klptrace_transitions_total")
    for (patch, target, outcome), n in st.transitions.items():
        assert tr[frozenset({"patch": patch, "target": target, "outcome": outcome}.items())] == n
    assert sum(tr.values()) == sum(st.transitions.values())
    for name, value in (("klptrace_lost_records_total", st.lost_records),
                        ("klptrace_records_total", st.records),
                        ("klptrace_unknown_findings_total", st.unknown),
                        ("klptrace_warnings_total", st.warnings)):
        assert got[(name, frozenset())] == value, name
    # the histogram saw every finished transition the engine reported
    counts = by_name(got, "klptrace_transition_duration_seconds_count")
    assert sum(counts.values()) == len(holder["done"]) > 0
    # scrape-time state
    assert by_name(got, "klptrace_livepatch_in_transition") == {
        frozenset({"patch": "klpt_lp"}.items()): 0.0, frozenset({"patch": "klpt_lp2"}.items()): 1.0}
    assert got[("klptrace_probe_attached", frozenset({"point": "force", "kind": "kprobe",
                                                           "required": "false"}.items()))] == 0
    assert got[("klptrace_kernel_info", frozenset({"release": "6.1.0-model"}.items()))] == 1


def test_scrape_passes_promtool_check_metrics(live):
    _, srv = live
    _, _, text = get(srv.url)
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_landing_page_404_and_scrape_counter(live):
    _, srv = live
    base = srv.url[: -len("metrics")]
    status, ctype, body = get(base)
    assert status == 200 and ctype.startswith("text/html") and 'href="metrics"' in body
    with pytest.raises(urllib.error.HTTPError) as e:
        get(base + "nope")
    assert e.value.code == 404
    get(srv.url)
    _, _, text = get(srv.url)
    # this scrape is counted before it is rendered: 2 so far
    assert parse(text)[("klptrace_exporter_scrapes_total", frozenset())] == 2


@pytest.mark.parametrize("text", ["", "19557", "localhost", "1.2.3.4:", "1.2.3.4:port",
                                  "::1:19557", "127.0.0.1:70000", "[::1:19557"])
def test_bad_listen_is_one_line(text):
    with pytest.raises(ExporterError) as e:
        parse_listen(text)
    msg = str(e.value)
    assert "\n" not in msg and "--listen" in msg


def test_listen_forms():
    assert parse_listen("127.0.0.1:19557") == Listen("127.0.0.1", 19557)
    assert parse_listen("[::1]:9") == Listen("::1", 9)
    assert parse_listen(":19557") == Listen("", 19557)
    assert parse_listen("localhost:1") == Listen("localhost", 1)
    assert server.DEFAULT_LISTEN == "127.0.0.1:19557"
    assert not 9100 <= server.DEFAULT_PORT <= 9999


def test_port_in_use_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ExporterError) as e:
            server.start(DaemonMetrics(lambda: None, process_metrics=False), f"127.0.0.1:{port}")
    msg = str(e.value)
    assert "\n" not in msg and "already in use" in msg and str(port) in msg


def test_address_not_on_this_host_is_one_line():
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never a local address, no DNS needed
    with pytest.raises(ExporterError) as e:
        server.start(DaemonMetrics(lambda: None, process_metrics=False), "192.0.2.1:0")
    msg = str(e.value)
    assert "\n" not in msg and "no such address on this host" in msg


def make_cert(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_tls_scrape_with_self_signed_cert(tmp_path, live):
    holder, _ = live
    cert, key = make_cert(tmp_path)
    srv = server.start(holder["metrics"], "127.0.0.1:0", certfile=str(cert), keyfile=str(key))
    try:
        assert srv.url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(cert))
        status, _, text = get(srv.url, context=ctx)
        assert status == 200
        got = parse(text)
        assert got[("klptrace_records_total", frozenset())] == holder["engine"].stats.records
        # plain HTTP is not served on the TLS port
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            get(srv.url.replace("https://", "http://"))
    finally:
        srv.close()


def test_unreadable_or_bad_certificate_is_one_line(tmp_path):
    cert, key = make_cert(tmp_path)
    dm = DaemonMetrics(lambda: None, process_metrics=False)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [(str(tmp_path / "missing.pem"), str(key), "cannot read TLS certificate"),
             (str(cert), str(tmp_path / "missing.pem"), "cannot read TLS key"),
             (str(garbage), str(key), "unusable"),
             (str(cert), str(garbage), "unusable"),
             (str(cert), None, "both")]
    for c, k, what in cases:
        with pytest.raises(ExporterError) as e:
            server.start(dm, "127.0.0.1:0", certfile=c, keyfile=k)
        msg = str(e.value)
        assert "\n" not in msg and what in msg, msg
    # nothing was left listening: the same port binds afterwards
    srv = server.start(dm, "127.0.0.1:0")
    srv.close()


def test_exporter_options_defaults():
    import click
    from click.testing import CliRunner

    from klptrace.exporters.options import exporter_options

    @click.command()
    @exporter_options
    def cmd(**kw):
        click.echo(repr(sorted(kw.items())))

    out = CliRunner().invoke(cmd, []).output
    assert "('listen', '127.0.0.1:19557')" in out and "('metrics_max_patches', 32)" in out
    assert "('trace_keep', 5)" in out and "('trace_max_bytes', None)" in out
