"""`klptrace validate` as a user runs it: the installed command, real files."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model_scenarios import SCENARIOS
from tracebuild import cb, insert_after, is_tr, renumber, write_jsonl

KLPTRACE = [sys.executable, "-m", "klptrace.tracer.commands.cli"]
REPO = Path(__file__).resolve().parents[2]


def run(*args, stdin=None):
    p = subprocess.run([str(REPO / ".venv/bin/klptrace"), *args], input=stdin,
                       capture_output=True, text=True, cwd=REPO)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture
def clean(tmp_path):
    m = SCENARIOS["busy-target"]()
    p = tmp_path / "clean.jsonl"
    write_jsonl(p, m.header, m.records)
    return p, m


@pytest.fixture
def broken(tmp_path):
    m = SCENARIOS["reversed-patching"]()
    recs = insert_after(m.records, lambda r: is_tr(r, "reverse"),
                        cb("klpt_lp", "vmlinux", "pre_unpatch"))
    p = tmp_path / "broken.jsonl"
    write_jsonl(p, m.header, recs)
    return p


def test_clean_trace_exits_0(clean):
    rc, out, err = run("validate", str(clean[0]))
    assert rc == 0, out + err
    assert "0 violation(s)" in out


def test_violation_exits_1_with_rule_records_and_spec(broken):
    rc, out, _ = run("validate", str(broken))
    assert rc == 1
    assert "KLP-REV-001" in out
    assert "seq 7" in out
    assert "If a patch transition is reversed, no pre-unpatch handlers will be run" in out


def test_json_format(broken):
    rc, out, _ = run("validate", "--format", "json", str(broken))
    doc = json.loads(out)
    assert rc == 1 and doc["violations"] == 1
    f = [x for x in doc["files"][0]["findings"] if x["kind"] == "violation"][0]
    assert f["rule"] == "KLP-REV-001" and f["records"][0]["seq"] == 7 and f["spec"]


def test_gzip_and_stdin(clean, tmp_path):
    p, _ = clean
    gz = tmp_path / "t.jsonl.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    assert run("validate", str(gz))[0] == 0
    assert run("validate", "-", stdin=p.read_text())[0] == 0


def test_truncated_final_line_is_a_warning(clean, tmp_path):
    p, _ = clean
    t = tmp_path / "cut.jsonl"
    t.write_text(p.read_text() + '{"type":"callback","seq":999,"ts_')
    rc, out, _ = run("validate", str(t))
    assert rc == 0
    assert "truncated" in out


def test_textfile_is_prometheus_text(broken, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families
    tf = tmp_path / "klptrace.prom"
    rc, _, _ = run("validate", "--textfile", str(tf), str(broken))
    assert rc == 1
    fams = {f.name: f for f in text_string_to_metric_families(tf.read_text())}
    viol = [s for s in fams["klptrace_violations"].samples
            if s.labels.get("rule") == "KLP-REV-001" and s.name.endswith("_total")]
    assert viol and viol[0].value == 1
    assert not list(tmp_path.glob("*.tmp*")), "textfile written atomically, no leftovers"


def _bad(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


HDR = json.dumps({"type": "header", "format": "klptrace", "version": 1, "kernel": "x"})
REC = json.dumps({"type": "module", "seq": 1, "ts_ns": 1, "module": "m", "event": "coming"})


@pytest.mark.parametrize("case,text,needle", [
    ("empty", "", "empty file"),
    ("notjson", "hello\n", ":1: not JSON"),
    ("noheader", REC + "\n", ":1: first line is not a klptrace header"),
    ("version", HDR.replace('"version": 1', '"version": 2') + "\n",
     "unsupported trace format version 2"),
    ("malformed", HDR + "\n" + json.dumps({"type": "transition", "seq": 1, "ts_ns": 1}) + "\n"
     + REC.replace('"seq": 1', '"seq": 2') + "\n", ":2: malformed record"),
    ("badcallback", HDR + "\n" + json.dumps({"type": "callback", "seq": 1, "ts_ns": 1,
                                             "patch": "p", "object": "vmlinux",
                                             "callback": "pre_paatch"}) + "\n"
     + REC.replace('"seq": 1', '"seq": 2') + "\n", ":2: malformed record: field 'callback'"),
    ("seq", HDR + "\n" + REC + "\n" + REC + "\n" + REC + "\n", ":3: malformed record: seq 1"),
    ("midjunk", HDR + "\n" + "{oops\n" + REC + "\n", ":2: not JSON"),
])
def test_unusable_input_exits_2_with_one_line(tmp_path, case, text, needle):
    p = _bad(tmp_path, case + ".jsonl", text)
    rc, out, err = run("validate", str(p))
    assert rc == 2
    assert needle in err, err
    assert "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1


def test_missing_file_and_directory(tmp_path):
    for target, needle in ((tmp_path / "nope.jsonl", "no such file"), (tmp_path, "is a directory")):
        rc, out, err = run("validate", str(target))
        assert rc == 2 and needle in err and "Traceback" not in err


def test_findings_before_a_bad_line_are_kept(broken, tmp_path):
    """Bad input loses nothing already judged: the violation before the bad
    line is still reported, and the exit code says the input is unusable."""
    t = tmp_path / "then-junk.jsonl"
    t.write_text(broken.read_text() + "{oops\n" + REC.replace('"seq": 1', '"seq": 99') + "\n")
    rc, out, err = run("validate", str(t))
    assert rc == 2
    assert "KLP-REV-001" in out


def test_several_files_worst_exit_code(clean, broken):
    assert run("validate", str(clean[0]), str(broken))[0] == 1
