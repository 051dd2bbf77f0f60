"""Every kernel line in every `make test` (issue 21): bookworm-backports' 6.12,
bullseye's 5.10 and sid's newest (7.x), each in one guest boot that runs the
short suite three times (no tracer, the tracer inferring, the tracer with
--preload: tracer/lab/runner.py TRACER_PHASES), and holds it to what the
whole suite holds Debian stable's kernel to (tests/kernel/linechecks.py):

* the kernel's callbacks are the specification's, with and without the tracer;
* the tracer's callback records equal the kernel log, `direct` with
  --preload, with no gap; the plan attaches every required point (and no
  kretprobe where it would stall a transition); the traces validate clean;
* every transition ends with the tracer, within two sweeps of the same step
  without it, and no task's stack is made unreliable.

The short suite: the transition scenarios (an enable and a disable, a
stalled transition reversed, many tasks switching, a second livepatch
refused while a transition runs, a target module loaded during one), a
refused module and an atomic replace. The whole suite of a line is
`make lab-LINE` (which deselects this file: there the line is the one under
test). Two vCPUs (the lab's QEMU 10: docs/lab.md, "The int3 oops").
"""

from __future__ import annotations


import pytest

import linechecks as lc

pytestmark = [pytest.mark.kernel, pytest.mark.lines]

LINES = ("6.12", "5.10", "sid")
SHORT_SUITE = ("target-before-livepatch", "busy-target", "many-tasks-switching",
               "second-livepatch-waits", "target-loads-during-transition",
               "module-coming-enodev", "atomic-replace")


@pytest.fixture(scope="module", params=LINES)
def line_run(request, lab_means, lab_out_dir):
    from klptrace.tracer.lab import LabError, run_scenarios
    from klptrace.tracer.lab.runner import TRACER_PHASES
    line = request.param
    out = lab_out_dir("lines").parent / f"line-{line}"
    try:
        run = run_scenarios(kernel=line, only=list(SHORT_SUITE), out_dir=out,
                            tracer_cmd=str(lc.KLPTRACE) + " run", phases=TRACER_PHASES)
    except LabError as e:
        lc.fail_lab(e)
    print(run.summary())
    return run


def test_the_kernel_runs_each_scenario_as_the_specification_says(line_run):
    bad = lc.kernel_as_specified(line_run)
    assert not bad, "\n\n".join(bad)


def test_the_tracer_sees_every_callback_the_kernel_ran(line_run):
    bad = lc.tracer_sees_every_callback(line_run)
    assert not bad, "\n".join(bad)


def test_the_plan_attaches_every_required_point(line_run):
    plan, bad = lc.plan_attaches_every_required_point(line_run)
    import json
    (line_run.run_dir / "plan.json").write_text(json.dumps(plan, indent=1) + "\n")
    assert not bad, "\n".join(bad) + f"\n{plan}"


def test_traces_validate_clean(line_run):
    bad = lc.traces_validate_clean(line_run)
    assert not bad, "\n".join(bad)


def test_the_tracer_changes_no_transition(line_run):
    table, bad = lc.tracer_leaves_transitions_alone(line_run)
    (line_run.run_dir / "transitions.txt").write_text(
        f"{line_run.kernel.release}\n{table}\n")
    print(f"\n{line_run.kernel.release}\n{table}")
    assert not bad, "\n".join(bad) + "\n" + table
