"""The tracer changes no transition of the line under test (issue 21): in
the lab run's three phases (tests/kernel/conftest.py), every step that waits
for a transition ends with the tracer too, within two sweeps of the same step
without it, and the kernel finds no task's stack unreliable that it did not
without the tracer (tests/kernel/linechecks.py). Every other line's short
suite holds the same (tests/kernel/test_lines.py)."""

from __future__ import annotations

import pytest

import linechecks as lc

pytestmark = pytest.mark.kernel


def test_the_tracer_changes_no_transition(lab_run):
    table, bad = lc.tracer_leaves_transitions_alone(lab_run)
    (lab_run.run_dir / "transitions.txt").write_text(f"{lab_run.kernel.release}\n{table}\n")
    print(f"\n{lab_run.kernel.release}\n{table}")
    assert not bad, "\n".join(bad) + "\n" + table


def test_no_kretprobe_where_it_would_stall_a_transition(lab_run):
    plan, bad = lc.plan_attaches_every_required_point(lab_run)
    assert not bad, "\n".join(bad) + f"\n{plan}"
