"""Runs the scenarios: resolve and install the kernel, build and stage the
modules, write the guest's plan, boot ONE guest that runs every scenario
(guest_driver.sh), then read back per scenario its kernel log, step log and
status and compare the callback ground truth with the expected sequence.

Hook for the tracer: with tracer_cmd, the guest driver starts
`TRACER_CMD [--preload KO]... --trace RUN/tracer-current.jsonl --ready-file RUN/tracer.ready`
once, before the first scenario, and waits (up to TRACER_READY_TIMEOUT) for the
ready file. After each scenario it hands the trace over as logrotate would
(rename to NAME.jsonl, SIGHUP, wait for the reopened file), so each scenario
leaves NAME.jsonl beside NAME.dmesg; after the last, SIGINT stops the tracer
(its exit code in tracer.rc, its log in tracer.log)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from . import kmod, packages, vm
from .cachedir import GUEST_SCRIPTS_DIR
from .errors import LabError
from .groundtruth import CallbackRecord, parse_log
from .kernel import Kernel
from .scenarios import Scenario, select

BOOT_TIMEOUT = 300          # boot to the driver's first line (TCG, maybe a busy host)
SCENARIO_TIMEOUT = 300      # one scenario's steps + cleanup
SHUTDOWN_TIMEOUT = 120      # driver done to qemu gone
STEP_TIMEOUT = 60           # each wait inside a guest step
TRACER_READY_TIMEOUT = 300  # bcc compiles in 30-90 s under TCG, more when the host is busy
TRACER_STOP_TIMEOUT = 60
DMESG_TAIL = 40

Progress = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


@dataclass(frozen=True)
class Phase:
    """One pass over the scenarios in a boot: without the tracer, or with the
    tracer command (and these --preload modules: True for the lab's own)."""
    name: str
    tracer: bool = False
    preload: "bool | tuple[str, ...]" = False


# The phases of a run that measures what the tracer does (tests/kernel/test_lines.py):
# the same scenarios without it, with it inferring, with it probing directly.
TRACER_PHASES = (Phase("none"), Phase("inferred", tracer=True),
                 Phase("direct", tracer=True, preload=True))

STEP_MARK = re.compile(r"^\[\s*(\d+\.\d+)\] klpt-lab: step (\d+) (begin: (.*)|end rc=(-?\d+))$")
LOG_TIME = re.compile(r"^\[\s*(\d+\.\d+)\] (.*)$")
# what starts a livepatch operation in a scenario's log: the enable (the
# kernel's own line, after insmod loaded the module) or a write the step
# helpers log right before making it (echo 0 > enabled, releasing klpt_busy)
TRIGGER = re.compile(r"livepatch: enabling patch '|klpt-lab: % echo ")
DONE = re.compile(r"livepatch: '[^']+': (?:un)?patching complete")


@dataclass(frozen=True)
class StepTime:
    n: int
    step: str
    seconds: float      # on the guest kernel's clock, begin marker to end marker
    rc: int


@dataclass(frozen=True)
class Span:
    """A livepatch operation as the kernel logged it: from what started it
    (TRIGGER) to its transition's completion, in the step that waited for it."""
    n: int              # the step
    step: str
    seconds: float
    trigger: str
    done: str


@dataclass
class ScenarioResult:
    scenario: Scenario
    run_dir: Path
    status: str                       # "ok", "failed: ...", "not run"
    observed: list[CallbackRecord]
    dmesg: str
    steps_log: str
    phase: str = ""

    def transition_spans(self) -> list[Span]:
        """Each transition completion logged during a step, with the time since
        the latest trigger before it (a trigger may be in an earlier step:
        a release, then a step that waits)."""
        out, step, trigger = [], None, None
        for line in self.dmesg.splitlines():
            m = LOG_TIME.match(line.strip())
            if not m:
                continue
            t, text = float(m.group(1)), m.group(2)
            mark = STEP_MARK.match(line.strip())
            if mark and mark.group(4) is not None:
                step = (int(mark.group(2)), mark.group(4))
            elif mark:
                step = None
            elif TRIGGER.search(text):
                trigger = (t, text)
            elif DONE.search(text) and step is not None and trigger is not None:
                out.append(Span(step[0], step[1], t - trigger[0], trigger[1], text))
                trigger = None
        return out

    def step_times(self) -> list[StepTime]:
        """Each step that ended, with its duration (the driver's markers)."""
        begun: dict[int, tuple[float, str]] = {}
        out = []
        for line in self.dmesg.splitlines():
            m = STEP_MARK.match(line.strip())
            if not m:
                continue
            t, n = float(m.group(1)), int(m.group(2))
            if m.group(4) is not None:
                begun[n] = (t, m.group(4))
            elif n in begun:
                t0, step = begun.pop(n)
                out.append(StepTime(n, step, t - t0, int(m.group(5))))
        return out

    @property
    def name(self) -> str:
        return self.scenario.name

    @property
    def dmesg_path(self) -> Path:
        return self.run_dir / f"{self.name}.dmesg"

    @property
    def trace_path(self) -> Path:
        """The tracer's output for this scenario (exists only with a tracer)."""
        return self.run_dir / f"{self.name}.jsonl"

    @property
    def tracer_rc(self) -> int | None:
        f = self.run_dir / f"{self.name}.tracer.rc"
        return int(f.read_text().strip()) if f.exists() else None

    @property
    def observed_keys(self) -> list[tuple]:
        return [r.key() for r in self.observed]

    @property
    def matches(self) -> bool:
        return self.observed_keys == list(self.scenario.expected)

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.matches

    def report(self) -> str:
        """Everything needed to diagnose a failure from a CI log alone."""
        out = [f"scenario {self.name}: {'ok' if self.ok else 'FAILED'} (steps: {self.status}; "
               f"callbacks: {'match' if self.matches else 'differ from expected'})",
               f"  {self.scenario.about}", "  steps:"]
        out += [f"    % {s}" for s in self.scenario.steps]
        exp = [_fmt_key(k) for k in self.scenario.expected]
        obs = [_fmt_key(r.key()) + f"  state={r.state or '-'}" for r in self.observed]
        out.append("  expected vs observed callbacks (patch object callback ret):")
        for i in range(max(len(exp), len(obs))):
            e = exp[i] if i < len(exp) else "(none)"
            o = obs[i] if i < len(obs) else "(none)"
            mark = "  " if i < len(exp) and i < len(obs) and \
                self.scenario.expected[i] == self.observed[i].key() else "!!"
            out.append(f"  {mark} {i + 1:2} {e:45} | {o}")
        if self.status != "ok" and self.steps_log:
            out.append("  step log:")
            out += [f"    {l}" for l in self.steps_log.splitlines()[-30:]]
        tail = self.dmesg.splitlines()[-DMESG_TAIL:]
        out.append(f"  guest kernel log, last {len(tail)} lines ({self.dmesg_path}):")
        out += [f"    {l}" for l in tail]
        return "\n".join(out)


def _fmt_key(k: tuple) -> str:
    patch, obj, cb, ret = k
    return f"{patch} {obj} {cb} {'-' if ret is None else ret}"


@dataclass
class LabRun:
    kernel: Kernel
    run_dir: Path
    results: list[ScenarioResult]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def result(self, name: str, phase: str | None = None) -> ScenarioResult:
        return next(r for r in self.results
                    if r.name == name and (phase is None or r.phase == phase))

    def phase(self, phase: str) -> list[ScenarioResult]:
        return [r for r in self.results if r.phase == phase]

    def summary(self) -> str:
        t = self.timings
        lines = [f"lab: kernel {self.kernel.release} ({self.kernel.suite}); "
                 f"total {t.get('total', 0):.0f}s (kernel {t.get('kernel', 0):.0f}s, "
                 f"build {t.get('build', 0):.0f}s, vm {t.get('vm', 0):.0f}s); logs in {self.run_dir}"]
        for r in self.results:
            lines.append(f"  {'ok  ' if r.ok else 'FAIL'} {r.phase + ': ' if r.phase else ''}{r.name}"
                         + ("" if r.ok else f"  ({r.status}; callbacks "
                            f"{'match' if r.matches else 'differ'})"))
        return "\n".join(lines)


class ScenarioWatchdog:
    """Time limits by phase, driven by the driver's "klpt-lab:" console lines:
    boot (until the driver starts), each scenario (from its begin line), and
    shutdown (after "driver done")."""

    LINE = re.compile(r"klpt-lab: (.*)$")

    def __init__(self, progress: Progress, scenario_timeout: float):
        self.progress = progress
        self.scenario_timeout = scenario_timeout
        self.t0 = time.monotonic()
        self.phase = "boot"
        self.deadline = self.t0 + BOOT_TIMEOUT
        self.last_step = ""
        self.finished = False

    def on_line(self, line: str) -> None:
        m = self.LINE.search(line)
        if not m:
            return
        msg = m.group(1)
        now = time.monotonic()
        self.progress(f"lab: [{now - self.t0:5.0f}s] {msg}")
        if msg.startswith("driver started"):
            self.phase, self.deadline = "driver", now + SCENARIO_TIMEOUT
        elif msg == "starting tracer":
            self.phase, self.deadline = "tracer start", now + TRACER_READY_TIMEOUT + 30
        elif msg.endswith(": begin"):
            self.phase = "scenario " + msg[: -len(": begin")]
            self.deadline, self.last_step = now + self.scenario_timeout, ""
        elif ": step " in msg:
            self.last_step = msg.split(": ", 1)[1]
        elif msg == "driver done":
            self.phase, self.deadline, self.finished = "shutdown", now + SHUTDOWN_TIMEOUT, True

    def expired(self) -> LabError | None:
        if time.monotonic() <= self.deadline:
            return None
        if self.phase == "boot":
            return LabError("boot timeout", f"the guest did not start the lab driver within {BOOT_TIMEOUT}s")
        if self.phase == "shutdown":
            return LabError("boot timeout", f"the guest did not power off within {SHUTDOWN_TIMEOUT}s")
        where = f" at {self.last_step}" if self.last_step else ""
        return LabError("step timeout", f"{self.phase} not finished within "
                                        f"{self.scenario_timeout:.0f}s{where}")


def _preload_paths(preload: bool | Iterable[str | Path] | None, staged: Path) -> list[str]:
    if not preload:
        return []
    if preload is True:
        return [str(staged / f"{m}.ko") for m in kmod.LIVEPATCHES]
    return [str(Path(p).resolve()) for p in preload]   # type: ignore[union-attr]


def _prepare_run_dir(run_dir: Path, chosen: list[Scenario], dirs: list[Path]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    # Remove only what this lab writes, so a reused --out DIR never mixes runs.
    for d in dirs:
        for s in chosen:
            for f in d.glob(f"{s.name}.*"):
                f.unlink()
        for name in ("tracer.log", "tracer.rc", "metrics.prom", "tracer-current.jsonl"):
            (d / name).unlink(missing_ok=True)
    for name in ("plan.sh", "boot.dmesg", "driver.log", "console.log"):
        (run_dir / name).unlink(missing_ok=True)
    for sub in ("steps", "guest"):
        shutil.rmtree(run_dir / sub, ignore_errors=True)


def _write_plan(run_dir: Path, chosen: list[Scenario], staged: Path,
                phases: list[tuple[Path, str]]) -> None:
    (run_dir / "steps").mkdir()
    for s in chosen:
        (run_dir / "steps" / f"{s.name}.steps").write_text(
            f"# {s.name}: {s.about}\n" + "\n".join(s.steps) + "\n")
    guest = run_dir / "guest"
    guest.mkdir()
    for f in ("guest_driver.sh", "guest_helpers.sh"):
        shutil.copy2(GUEST_SCRIPTS_DIR / f, guest / f)
    plan = [
        "# written by tracer/lab/runner.py; sourced by guest_driver.sh",
        f"KLPT_SCENARIOS=({' '.join(shlex.quote(s.name) for s in chosen)})",
        f"KLPT_KMOD={shlex.quote(str(staged))}",
        f"KLPT_STEP_TIMEOUT={STEP_TIMEOUT}",
        f"KLPT_PHASE_DIRS=({' '.join(shlex.quote(str(d)) for d, _ in phases)})",
        f"KLPT_PHASE_TRACERS=({' '.join(shlex.quote(t) for _, t in phases)})",
        f"KLPT_TRACER_READY_TIMEOUT={TRACER_READY_TIMEOUT}",
        f"KLPT_TRACER_STOP_TIMEOUT={TRACER_STOP_TIMEOUT}",
    ]
    (run_dir / "plan.sh").write_text("\n".join(plan) + "\n")


def _read(p: Path) -> str:
    return p.read_text(errors="replace") if p.exists() else ""


def _collect(run_dir: Path, s: Scenario, phase: str) -> ScenarioResult:
    status = _read(run_dir / f"{s.name}.status").strip() or "not run"
    dmesg = _read(run_dir / f"{s.name}.dmesg")
    return ScenarioResult(s, run_dir, status, parse_log(dmesg), dmesg,
                          _read(run_dir / f"{s.name}.steps.log"), phase)


def run_scenarios(kernel: str | Kernel | None = None, only: str | list[str] | None = None,
                  out_dir: str | Path = "lab-out", tracer_cmd: str | None = None,
                  preload: bool | Iterable[str | Path] | None = None,
                  progress: Progress = _print, cpus: int = vm.CPUS,
                  phases: Iterable[Phase] | None = None) -> LabRun:
    """Run the chosen scenarios (all by default) in one guest boot.

    kernel: a Kernel, or a --kernel spec ("6.12", ...); None: $KLPT_KERNEL,
    else Debian stable's kernel. tracer_cmd: a command line run in the guest
    around each scenario (see module doc). preload: True for the lab's own
    livepatch .ko files, or paths, passed to the tracer as --preload.
    cpus: the guest's vCPUs. phases: run the scenarios once per phase (each
    in out_dir/PHASE/, results tagged with the phase), the tracer command
    around those whose phase asks for it; without, one pass in out_dir.
    Raises LabError when the lab itself cannot run (apt, build, boot or step
    timeout); a scenario whose callbacks differ is a result, not an error."""
    t_start = time.monotonic()
    timings: dict[str, float] = {}
    chosen = select(only)
    packages.require_root()
    packages.ensure_host_packages()
    if not isinstance(kernel, Kernel):
        spec = kernel if kernel is not None else os.environ.get("KLPT_KERNEL")
        progress(f"lab: resolving kernel {spec or 'stable'}")
        kernel = packages.resolve_kernel(spec, progress)
    timings["kernel"] = time.monotonic() - t_start

    t = time.monotonic()
    built = kmod.build_modules(kernel, progress)
    timings["build"] = time.monotonic() - t

    run_dir = Path(out_dir).resolve()
    if phases is None:
        plan_phases = [(Phase("", tracer=bool(tracer_cmd), preload=preload or False), run_dir)]
    else:
        plan_phases = [(p, run_dir / p.name) for p in phases]
    _prepare_run_dir(run_dir, chosen, [d for _, d in plan_phases])
    staged = kmod.stage_modules(built, run_dir / "kmod")

    def tracer_line(p: Phase) -> str:
        if not (p.tracer and tracer_cmd):
            return ""
        return " ".join([tracer_cmd] + [f"--preload {shlex.quote(x)}"
                                        for x in _preload_paths(p.preload, staged)])

    lines = [(d, tracer_line(p)) for p, d in plan_phases]
    _write_plan(run_dir, chosen, staged, lines)

    traced = any(t for _, t in lines)
    progress(f"lab: booting {kernel.release} under TCG for {len(chosen)} scenario(s)"
             + (f" in {len(lines)} phases" if len(lines) > 1 else "")
             + (" with tracer" if traced else ""))
    per_scenario = SCENARIO_TIMEOUT + (2 * TRACER_STOP_TIMEOUT if traced else 0)
    watchdog = ScenarioWatchdog(progress, per_scenario)
    t = time.monotonic()
    driver = run_dir / "guest" / "guest_driver.sh"
    vm.run_guest(kernel, f"bash {shlex.quote(str(driver))} {shlex.quote(str(run_dir))}",
                 rwdirs=(run_dir,), console_log=run_dir / "console.log", watchdog=watchdog,
                 cpus=cpus)
    timings["vm"] = time.monotonic() - t
    if not watchdog.finished:
        raise LabError("guest", f"the guest stopped before the driver finished "
                                f"({watchdog.phase}; console: {run_dir / 'console.log'}, its end "
                                "follows)", detail=vm.console_tail(run_dir / "console.log"))
    timings["total"] = time.monotonic() - t_start
    run = LabRun(kernel, run_dir, [_collect(d, s, p.name) for p, d in plan_phases
                                   for s in chosen], timings)
    (run_dir / "summary.txt").write_text(run.summary() + "\n")
    return run
