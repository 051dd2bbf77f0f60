"""What every kernel line is held to, from one lab run in the three phases of
tracer/lab/runner.py TRACER_PHASES (the scenarios without the tracer, with
it inferring, with it probing the preloaded callbacks directly): used by the
whole suite of the line under test (tests/kernel/test_scenarios.py,
test_tracer.py, test_transitions.py) and by every line's short suite in
`make test` (tests/kernel/test_lines.py).

Each check returns the list of what is wrong (empty: it holds), with enough
in each line to diagnose a CI failure from its log alone.

The tracer's effect on transitions (issue 21) is checked two ways:

* every step that waits for a transition to end (tracer/lab/scenarios.py
  WAITING_STEPS) ends, with the tracer too, and the operation it waits for,
  as the kernel logged it (from what started it, `enabling patch` or the
  write that disables, reverses or releases, to `... complete`:
  tracer/lab/runner.py ``transition_spans``), lasts at most ``SLACK_S``
  longer than the same one without the tracer, in the same boot. The
  livepatch core retries a transition about once a second
  (klp_transition_work_fn), so a transition ends within the operation or at a
  whole sweep later; a task the tracer kept from switching costs at least one
  more sweep for every sweep it does so. Two sweeps of slack absorb the
  emulator's noise (figures: docs/benchmarks.md, "Transitions with and
  without the tracer"); a transition the tracer holds open (5.10 with
  kretprobes: the reversed busy-target took 56 s) fails. What a person waits
  for around it (the shell, insmod, polling sysfs) is in the same boot's
  user space, which the daemon shares the CPUs with: the benchmark measures
  that (docs/benchmarks.md).
* the livepatch core's own words: with the tracer, no task "has an unreliable
  stack" (klp_try_switch_task's dynamic debug) unless the same scenario says
  so for that task's command without the tracer. A kretprobe on a function
  a checked task is in makes exactly that message (on kernels before 5.15).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tracefiles import callback_keys, header, records

from klptrace.tracer.lab.scenarios import TRANSITION_SCENARIOS, WAITING_STEPS

ROOT = Path(__file__).resolve().parents[2]
KLPTRACE = ROOT / ".venv" / "bin" / "klptrace"
TRACED = ("inferred", "direct")
SLACK_S = 2.0
UNRELIABLE = re.compile(r"livepatch: \w+: (.+):(\d+) has an unreliable stack")


def fail_lab(e) -> None:
    """A lab that could not run (tracer.lab.LabError) fails the test with its
    one line and its detail: a build's output, or the end of the console of a
    guest that died (its kernel's last words)."""
    import pytest
    pytest.fail(e.one_line() + ("\n" + e.detail[-4000:] if e.detail else ""), pytrace=False)


def kernel_as_specified(run, phases=("none", *TRACED)) -> list[str]:
    """The kernel-log ground truth of every scenario is the expected sequence,
    with and without the tracer."""
    return [r.report() for p in phases for r in run.phase(p) if not r.ok]


def tracer_sees_every_callback(run) -> list[str]:
    """Each traced scenario's callback records equal its kernel log; with
    --preload every callback is `direct`; no gap; transition and patch
    records are there."""
    bad = []
    for phase in TRACED:
        for res in run.phase(phase):
            where = f"{phase}: {res.name}"
            if res.tracer_rc not in (None, 0) or not res.trace_path.exists():
                bad.append(f"{where}: tracer rc {res.tracer_rc}, trace "
                           f"{'present' if res.trace_path.exists() else 'missing'}")
                continue
            recs = records(res.trace_path)
            got = callback_keys(recs)
            if got != res.observed_keys:
                bad.append(f"{where}: tracer {got}\n   kernel log {res.observed_keys}")
            evs = {r["evidence"] for r in recs if r["type"] == "callback"}
            if phase == "direct" and evs - {"direct"}:
                bad.append(f"{where}: evidence {sorted(evs)} with --preload")
            losses = [r for r in recs if r["type"] == "loss"]
            if losses:
                bad.append(f"{where}: gaps {losses}")
            kinds = {r["type"] for r in recs}
            if got and not {"transition", "patch"} <= kinds:
                bad.append(f"{where}: no transition/patch records ({sorted(kinds)})")
    return bad


def plan_attaches_every_required_point(run) -> tuple[dict, list[str]]:
    """The plan in the first traced trace's header (what `klptrace probes`
    prints there): every required point attached, every callback kind
    inferred or better; on a kernel before 5.15 no kretprobe at all."""
    from klptrace.tracer.observe.probeplan import POINTS
    res = run.phase("inferred")[0]
    plan = header(res.trace_path)["probes"]
    how = {p["point"]: p["how"] for p in plan["points"]}
    bad = [f"required point {pt.name} not attached" for pt in POINTS
           if pt.required and how.get(pt.name, "none") == "none"]
    if not set(plan["evidence"].values()) <= {"inferred", "core"}:
        bad.append(f"evidence {plan['evidence']}")
    returns = plan.get("returns", {})
    if returns.get("how") == "exit-kprobes" and "kretprobe" in how.values():
        bad.append(f"a kretprobe on a kernel where it stalls transitions: {how}")
    return plan, bad


def traces_validate_clean(run) -> list[str]:
    paths = [str(r.trace_path) for p in TRACED for r in run.phase(p)]
    p = subprocess.run([str(KLPTRACE), "validate", *paths], capture_output=True, text=True)
    return [] if p.returncode == 0 else [f"validate exit {p.returncode}:\n{p.stdout}{p.stderr}"]


def _waiting(step: str) -> bool:
    return any(step.startswith(w) for w in WAITING_STEPS)


def _unreliable(res) -> set[str]:
    return {m.group(1) for m in UNRELIABLE.finditer(res.dmesg)}


def transition_times(run) -> dict[tuple[str, int, str], dict[str, float]]:
    """{(scenario, step number, step): {phase: seconds}}: each transition
    span (trigger to completion) of the steps that wait for one, in the
    transition scenarios."""
    out: dict = {}
    for res in run.results:
        if res.name not in TRANSITION_SCENARIOS:
            continue
        for t in res.transition_spans():
            if _waiting(t.step):
                out.setdefault((res.name, t.n, t.step), {})[res.phase] = t.seconds
    return out


def tracer_leaves_transitions_alone(run) -> tuple[str, list[str]]:
    """Every transition ends with the tracer, within SLACK_S of the same step
    without it, and the tracer makes no task's stack unreliable. Returns a
    table of the figures (for the log and docs) and what is wrong."""
    bad = []
    for phase in TRACED:
        for res in run.phase(phase):
            if res.name in TRANSITION_SCENARIOS and res.status != "ok":
                bad.append(f"{phase}: {res.name}: {res.status}")
    for res in run.results:
        if res.name in TRANSITION_SCENARIOS:
            waited = [t.n for t in res.step_times() if _waiting(t.step)]
            spans = [t.n for t in res.transition_spans() if _waiting(t.step)]
            if res.status == "ok" and waited != spans:
                bad.append(f"{res.phase}: {res.name}: steps {waited} waited for a "
                           f"transition, the log has the completion of {spans} only")
    times = transition_times(run)
    rows = [f"{'scenario':32} {'step':28} {'none':>6} {'inferred':>8} {'direct':>7}"]
    for (name, n, step), by in sorted(times.items()):
        cells = [f"{by[p]:6.2f}" if p in by else "   -  " for p in ("none", *TRACED)]
        rows.append(f"{name:32} {step:28} {cells[0]:>6} {cells[1]:>8} {cells[2]:>7}")
        base = by.get("none")
        if base is None:
            bad.append(f"{name} step {n} ({step}): no figure without the tracer")
            continue
        for p in TRACED:
            if p in by and by[p] > base + SLACK_S:
                bad.append(f"{p}: {name} step {n} ({step}) took {by[p]:.2f}s, "
                           f"{base:.2f}s without the tracer (bound +{SLACK_S:.0f}s)")
    for phase in TRACED:
        for res in run.phase(phase):
            if res.name not in TRANSITION_SCENARIOS:
                continue
            new = _unreliable(res) - _unreliable(run.result(res.name, "none"))
            if new:
                bad.append(f"{phase}: {res.name}: the kernel found an unreliable stack in "
                           f"{sorted(new)} (not so without the tracer)")
    return "\n".join(rows), bad
