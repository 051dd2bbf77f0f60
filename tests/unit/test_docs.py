"""Documents that must not drift from the code."""

import re
from pathlib import Path

from klptrace.tracer.commands import docgen
from klptrace.tracer.model import events
from klptrace.tracer.model.rules import RULES

REPO = Path(__file__).resolve().parents[2]
SPEC_COPIES = [REPO / "docs/reference/livepatch-callbacks.rst",
               REPO.parent / "shared/reference/livepatch-callbacks.rst"]


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def test_rules_md_is_generated_from_the_catalogue():
    assert (REPO / "docs/rules.md").read_text() == docgen.render_rules(), \
        "docs/rules.md drifted: run `make docs`"


def test_every_rule_quotes_the_specification_verbatim():
    spec = _norm(SPEC_COPIES[0].read_text())
    for r in RULES.values():
        assert _norm(r.quote) in spec, r.id


def test_vendored_spec_equals_the_shared_one():
    shared = SPEC_COPIES[1]
    if shared.exists():   # shared/ sits beside the clone in CI and for developers
        assert shared.read_text() == SPEC_COPIES[0].read_text()


def test_trace_format_doc_names_every_type_event_and_field():
    doc = (REPO / "docs/trace-format.md").read_text()
    for word in (events.RECORD_TYPES + events.PATCH_EVENTS + events.TRANSITION_EVENTS
                 + events.MODULE_EVENTS + events.CALLBACKS + events.EVIDENCE
                 + events.STALL_EVENTS + events.STALL_REASONS):
        assert f"`{word}`" in doc, word


def test_trace_format_says_where_every_record_may_stand():
    """Every record is either pinned in a step or free with a range: the
    section that the engine's placement principle and tests/tracebuild.py
    free_range follow."""
    doc = (REPO / "docs/trace-format.md").read_text()
    section = doc[doc.index("## Where each record may stand"):doc.index("## Reading rules")]
    pinned = section[section.index("**Pinned**"):section.index("**Free**")]
    free = section[section.index("**Free**"):]
    for e in events.TRANSITION_EVENTS + ("coming", "going"):
        assert f"`{e}`" in pinned, e
    for e in events.PATCH_EVENTS + ("live", "refused"):
        assert f"\n| `{e}` |" in free, e
    assert "\n| `complete` after `cancel` |" in free
