"""Fuzzing `klptrace validate`: no input produces a traceback or a hang; every
input is judged clean, violating or unusable (exit 0, 1 or 2).

Iterations: KLPT_FUZZ_EXAMPLES (default 300 per test in `make test`; the
stress suite runs 5000)."""

import json
import os
import re
import subprocess
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from klptrace.tracer.model import events as ev
from klptrace.tracer.model.rules import RULES
from klptrace.tracer.commands.validate import validate_file

N = int(os.environ.get("KLPT_FUZZ_EXAMPLES", "300"))
REPO = Path(__file__).resolve().parents[2]
SETTINGS = settings(max_examples=N, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])

names = st.sampled_from(["klpt_lp", "klpt_lp2", "vmlinux", "klpt_mod", "", "x" * 70])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=8),
                    st.floats(allow_nan=True))
values = st.one_of(scalars, names, st.sampled_from(ev.CALLBACKS + ev.PATCH_EVENTS
                                                   + ev.TRANSITION_EVENTS + ev.MODULE_EVENTS
                                                   + ev.TARGETS + ev.EVIDENCE))
record = st.fixed_dictionaries(
    {"type": st.sampled_from(ev.RECORD_TYPES + ("header", "bogus"))},
    optional={k: values for k in ("seq", "ts_ns", "patch", "object", "callback", "event",
                                  "target", "module", "ret", "evidence", "count", "replace")}
    | {"objects": st.lists(st.fixed_dictionaries(
        {"name": names}, optional={"callbacks": st.lists(values, max_size=5)}), max_size=3)})
header = st.one_of(st.just(ev.header("k")), st.just(ev.header("k", state={"modules": []})),
                   st.fixed_dictionaries({"type": st.just("header")},
                                         optional={"format": values, "version": values,
                                                   "state": values}))
line = st.one_of(record.map(json.dumps), st.text(max_size=40), st.just(""),
                 st.builds(lambda r: json.dumps(r)[:-3], record))


def _seq_fix(lines):
    """Half the time give records increasing seqs so the engine gets deep."""
    out = []
    for i, l in enumerate(lines, 1):
        try:
            r = json.loads(l)
        except ValueError:
            out.append(l)
            continue
        if isinstance(r, dict):
            r["seq"], r["ts_ns"] = i, i * 10
            out.append(json.dumps(r))
        else:
            out.append(l)
    return out


@SETTINGS
@given(header, st.lists(line, max_size=30), st.booleans(), st.booleans())
def test_validate_never_raises(tmp_path_factory, h, lines, fix, newline):
    if fix:
        lines = _seq_fix(lines)
    p = tmp_path_factory.mktemp("fz") / "t.jsonl"
    text = "\n".join([json.dumps(h)] + lines)
    p.write_text(text + ("\n" if newline else ""))
    r = validate_file(str(p))      # must not raise
    _judged_or_rejected(r, p, text.encode())


def _judged_or_rejected(r, path, data: bytes) -> None:
    """Either a verdict (findings of the three kinds, every violation naming
    its rule) or one line naming the file, and its line when the trouble is
    on one (a line the file has)."""
    if r.error is None:
        assert r.stats.records <= data.count(b"\n") + 1
        for f in r.findings:
            assert f.kind in ("violation", "unknown", "warning")
            assert f.kind != "violation" or f.rule in RULES
        return
    assert "\n" not in r.error and r.error.startswith(f"{path}:"), r.error
    line = re.match(rf"{re.escape(str(path))}:(\d+):", r.error)
    if line:
        assert 1 <= int(line.group(1)) <= data.count(b"\n") + 1, r.error


def _validate_bytes(tmp_path_factory, data: bytes) -> None:
    p = tmp_path_factory.mktemp("fz") / "b.jsonl"
    p.write_bytes(data)
    _judged_or_rejected(validate_file(str(p)), p, data)     # must not raise


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(tmp_path_factory, data):
    _validate_bytes(tmp_path_factory, data)


@SETTINGS
@given(st.binary(max_size=200))
def test_bytes_after_a_header_never_raise(tmp_path_factory, data):
    """Past the header, so the records' checks and the engine see the bytes."""
    _validate_bytes(tmp_path_factory,
                    (json.dumps(ev.header("k", state={"modules": []})) + "\n").encode() + data)


def test_cli_exit_codes_on_a_fuzzed_sample(tmp_path):
    """The command itself, on a few nasty inputs: exit 0/1/2, no traceback."""
    samples = [b"\x1f\x8b\x00garbage", b"\xff\xfe\x00", b"{}\n", b"[]\n",
               (json.dumps(ev.header("k")) + "\n" + '{"type":"callback","seq":1,"ts_ns":1,'
                '"patch":"p","object":"vmlinux","callback":"post_unpatch","ret":true}\n').encode()]
    for i, s in enumerate(samples):
        p = tmp_path / f"s{i}.jsonl"
        p.write_bytes(s)
        c = subprocess.run([str(REPO / ".venv/bin/klptrace"), "validate", str(p)],
                           capture_output=True, text=True, timeout=60)
        assert c.returncode in (0, 1, 2), c
        assert "Traceback" not in c.stderr + c.stdout


valid_record = st.one_of(
    st.builds(lambda p, objs, rep: ev.patch_enable(0, 0, p, objs, replace=rep),
              st.sampled_from(["a", "b"]),
              st.lists(st.fixed_dictionaries({"name": st.sampled_from(["vmlinux", "m1", "m2"]),
                                              "callbacks": st.lists(st.sampled_from(ev.CALLBACKS),
                                                                    unique=True)}),
                       max_size=3), st.booleans()),
    st.builds(lambda p, e: ev.patch_event(0, 0, p, e), st.sampled_from(["a", "b"]),
              st.sampled_from(ev.PATCH_EVENTS[1:])),
    st.builds(lambda p, e, t: ev.transition(0, 0, p, e, t), st.sampled_from(["a", "b"]),
              st.sampled_from(ev.TRANSITION_EVENTS), st.sampled_from(ev.TARGETS)),
    st.builds(lambda m, e: ev.module(0, 0, m, e), st.sampled_from(["m1", "m2"]),
              st.sampled_from(ev.MODULE_EVENTS)),
    st.builds(lambda p, o, c, r: ev.callback(0, 0, p, o, c, ret=r), st.sampled_from(["a", "b"]),
              st.sampled_from(["vmlinux", "m1", "m2"]), st.sampled_from(ev.CALLBACKS),
              st.sampled_from([None, 0, -19])),
    st.builds(lambda n: ev.loss(0, 0, n), st.integers(0, 5)),
)


@SETTINGS
@given(st.sampled_from([ev.header("k"), ev.header("k", state={"modules": ["m1"], "patches": [
    {"name": "a", "enabled": True, "transition": True, "objects": [{"name": "vmlinux"}]}]})]),
       st.lists(valid_record, max_size=60))
def test_engine_never_raises_on_valid_records(h, recs):
    from klptrace.tracer.judge.engine import Engine
    e = Engine(h)
    for i, r in enumerate(recs, 1):
        r["seq"], r["ts_ns"] = i, i
        for f in e.feed(r):
            assert f.kind in ("violation", "unknown", "warning")
            assert f.kind != "violation" or f.rule
    e.finish()
