"""deploy/: the alert rules pass `promtool check rules` and their own
`promtool test rules`, the systemd unit passes `systemd-analyze verify` with no
warning, the dashboard and rules only use metrics the exporter has, and
exporters.sdnotify speaks sd_notify. The tools are real and must be present
(scripts/setup.sh installs prometheus for promtool; systemd ships
systemd-analyze): these tests never skip."""

import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

from klptrace.exporters import metricsdoc, sdnotify, server

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy/prometheus/klptrace-rules.yml"
RULES_TEST = REPO / "deploy/prometheus/klptrace-rules.test.yml"
UNIT = REPO / "deploy/systemd/klptrace.service"
DASHBOARD = REPO / "deploy/grafana/klptrace-dashboard.json"


def tool(name):
    path = shutil.which(name) or f"/usr/bin/{name}"
    assert os.access(path, os.X_OK), f"{name} missing: run `make setup` (Debian package " \
        f"{'prometheus' if name == 'promtool' else 'systemd'})"
    return path


def run(*cmd, cwd=None):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120)


def test_promtool_check_rules():
    r = run(tool("promtool"), "check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_promtool_test_rules():
    r = run(tool("promtool"), "test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert r.returncode == 0, r.stdout + r.stderr


def test_required_alerts_present():
    text = RULES.read_text()
    for alert in ("KlptraceRuleViolation", "KlptraceTransitionStalled", "KlptraceLostRecords",
                  "KlptraceDown", "KlptraceAbsent"):
        assert f"alert: {alert}" in text
        assert f"alertname: {alert}" in RULES_TEST.read_text(), f"{alert} untested"


def test_systemd_analyze_verify(tmp_path):
    # verify checks that ExecStart's binary exists: point it at a stand-in in
    # tmp (the real path is /opt/klptrace/.venv/bin/klptrace, docs/operations.md)
    stub = tmp_path / "klptrace"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = UNIT.read_text()
    assert "ExecStart=/opt/klptrace/.venv/bin/klptrace run" in unit
    (tmp_path / "klptrace.service").write_text(
        unit.replace("/opt/klptrace/.venv/bin/klptrace", str(stub)))
    r = run(tool("systemd-analyze"), "verify", str(tmp_path / "klptrace.service"))
    assert r.returncode == 0, r.stdout + r.stderr
    # unknown keys and bad values are only warnings to verify: none allowed
    assert r.stdout.strip() == "" and r.stderr.strip() == "", r.stdout + r.stderr


def test_unit_shape():
    unit = UNIT.read_text()
    assert "Type=notify" in unit                          # READY=1 after attach
    assert f"--listen {server.DEFAULT_LISTEN}" in unit
    for cap in ("CAP_SYS_ADMIN", "CAP_BPF", "CAP_PERFMON", "CAP_SYS_RESOURCE"):
        assert cap in unit
    # these would hide what bcc needs (module headers, tracefs writes, kallsyms)
    for forbidden in ("ProtectKernelModules=yes", "ProtectKernelTunables=yes",
                      "ProcSubset=pid", "MemoryDenyWriteExecute=yes"):
        assert forbidden not in unit
    assert "StandardError=journal" in unit


def _exprs():
    dash = json.loads(DASHBOARD.read_text())
    for p in dash["panels"]:
        for t in p["targets"]:
            yield t["expr"]
    for v in dash["templating"]["list"]:
        if v.get("definition"):
            yield v["definition"]
    yield from re.findall(r"expr: \|?\s*(.+?)\n\s+(?:for|labels):", RULES.read_text(), re.S)


def test_dashboard_and_rules_use_only_exported_metrics():
    known = {name for name, *_ in metricsdoc.families()}
    known |= {n + s for n in known if not n.endswith("_total")
              for s in ("_bucket", "_sum", "_count")}
    used = set()
    for e in _exprs():
        used |= set(re.findall(r"\bklptrace_[a-z_]+", e))
    # the annotations' queries too (KlptraceTransitionStalled names the functions)
    used |= set(re.findall(r"\bklptrace_[a-z_]+", RULES.read_text()))
    assert used, "no metric found in the dashboard or rules"
    assert used <= known, used - known


def test_dashboard_is_importable_json():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "klptrace" and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_sdnotify_sends_ready_and_stopping(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sdnotify.ready("probes attached")
        assert s.recv(4096) == b"READY=1\nSTATUS=probes attached"
        assert sdnotify.stopping()
        assert s.recv(4096) == b"STOPPING=1"


def test_sdnotify_abstract_socket(monkeypatch):
    name = f"klptrace-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.status("hello")
        assert s.recv(4096) == b"STATUS=hello"


def test_sdnotify_without_systemd_is_a_noop(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert sdnotify.ready() is False


def test_unit_starts_before_kpatch_without_an_ordering_cycle():
    """Discovery preloads the modules kpatch.service loads at boot: klptrace
    must be ready before it, with no ordering through network.target (which is
    after network-pre.target, which kpatch.service is Before=)."""
    text = UNIT.read_text()
    assert re.search(r"^Before=.*\bkpatch\.service\b", text, re.M), text
    assert re.search(r"^DefaultDependencies=no$", text, re.M)
    after = " ".join(re.findall(r"^After=(.*)$", text, re.M))
    assert "network" not in after, after
    assert "--no-discover" not in text


def test_the_stall_alert_names_the_blocking_functions():
    """Its annotations query the blocking-function gauge of the alert's own
    instance and patch (promtool test rules checks what they render)."""
    import yaml
    rules = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    ann = rules["KlptraceTransitionStalled"]["annotations"]
    for key in ("blocking_functions", "description"):
        assert "klptrace_transition_blocking_function_tasks{" in ann[key], key
        assert "$labels.instance" in ann[key] and "$labels.patch" in ann[key], key
    assert "klptrace_transition_blocked_tasks{" in ann["blocked_tasks"]


def test_optional_probe_points_never_alert():
    import yaml
    rules = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert 'required!="false"' in rules["KlptraceProbeNotAttached"]["expr"]
    dash = json.loads(DASHBOARD.read_text())
    (panel,) = [p for p in dash["panels"] if p["title"] == "Probes not attached"]
    assert 'required!="false"' in panel["targets"][0]["expr"]
