"""The shipped example traces (the specification's scenarios written as
traces, and deliberately broken ones) validate exactly as the specification
says."""

from pathlib import Path

import pytest

from klptrace.tracer.commands.validate import validate_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.jsonl")), ids=lambda p: p.stem)
def test_scenario_example_is_clean(path):
    r = validate_file(str(path))
    assert r.error is None
    assert [f for f in r.findings] == []


@pytest.mark.parametrize("path", sorted((EXAMPLES / "violations").glob("*.jsonl")),
                         ids=lambda p: p.stem)
def test_broken_example_names_its_rule(path):
    rule = "-".join(path.stem.split("-")[:3])
    r = validate_file(str(path))
    assert rule in {f.rule for f in r.findings if f.kind == "violation"}
