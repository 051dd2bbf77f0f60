"""`klptrace validate --textfile` and the live endpoint agree on the same
trace: both expose the engine's Stats through exporters.metrics.StatsCollector."""

import urllib.request

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from klptrace.exporters import server
from klptrace.exporters.metrics import DaemonMetrics
from model_scenarios import SCENARIOS
from tracebuild import duplicate, is_cb, write_jsonl
from klptrace.tracer.commands.cli import cli
from klptrace.tracer.judge.engine import Engine
from klptrace.tracer.model.traceio import read_trace


def families(text) -> dict:
    return {f.name: sorted((s.name, sorted(s.labels.items()), s.value) for s in f.samples)
            for f in text_string_to_metric_families(text)}


def trace(tmp_path, name, mutate=None):
    m = SCENARIOS[name]()
    records = mutate(m.records) if mutate else m.records
    p = tmp_path / f"{name}.jsonl"
    write_jsonl(p, m.header, records)
    return p


def live_scrape(path) -> str:
    """What the daemon would expose after streaming this trace."""
    stream = read_trace(str(path))
    engine = Engine(next(stream))
    for rec in stream:
        engine.feed(rec)
    engine.finish()
    dm = DaemonMetrics(lambda: engine.stats, process_metrics=False)
    srv = server.start(dm, "127.0.0.1:0")
    try:
        with urllib.request.urlopen(srv.url, timeout=10) as r:
            return r.read().decode()
    finally:
        srv.close()


@pytest.mark.parametrize("name,mutate", [
    ("atomic-replace", None),
    ("busy-target", None),
    ("multiple-livepatches",
     lambda rs: duplicate(rs, lambda r: is_cb(r, "klpt_lp2", "vmlinux", "post_unpatch"))),
])
def test_textfile_equals_live_scrape(tmp_path, name, mutate):
    path = trace(tmp_path, name, mutate)
    prom = tmp_path / "klptrace.prom"
    res = CliRunner().invoke(cli, ["validate", "--textfile", str(prom), str(path)])
    assert res.exit_code in (0, 1), res.output
    assert (res.exit_code == 1) == (mutate is not None)
    textfile = families(prom.read_text())
    live = families(live_scrape(path))
    shared = {n for n in textfile if not n.startswith("klptrace_validate_")}
    assert {"klptrace_callbacks", "klptrace_violations", "klptrace_transitions",
            "klptrace_lost_records", "klptrace_records"} <= shared
    for n in shared:
        assert textfile[n] == live[n], n
    assert textfile["klptrace_callbacks"], "the trace has callbacks"
    verdict = {dict(l)["verdict"]: v for _, l, v in textfile["klptrace_validate_verdict"]}
    assert verdict["violations" if mutate else "clean"] == 1
