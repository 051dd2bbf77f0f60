"""Tracer daemon benchmark in the lab VM (issue 7; not a test: figures go to
docs/benchmarks.md). ONE guest boot, the guest kernel under TCG, so only the
ratios measured side by side mean something.

    .venv/bin/python -m tests.bench.bench_lab        # make bench (after bench_validate)

Env: KLPT_KERNEL (lab kernel), KLPT_BENCH_CPUS (guest vCPUs, 1),
KLPT_BENCH_ROUNDS (with/without workload rounds per side, 5), KLPT_BENCH_ITER
(workload iterations a with/without round, 3000), KLPT_BENCH_BLOCKS (paired
workload blocks, 48) of KLPT_BENCH_BLOCK_ITER iterations (1000),
KLPT_BENCH_LP_ROUNDS (paired livepatch enable/disable rounds per side, 16),
KLPT_BENCH_EVENTS (enable/disable cycles of klpt_lp + klpt_lp2 + klpt_mod
load/unload before the last RSS reading, 10).

Why one vCPU: with two, a transition completes at its first attempt only if
the other CPU's idle task happened to pass its switch point in between, else a
second later (klp_transition_work_fn's retry), so enable and disable times
jump between two modes 1 s apart; and the workload's ping-pong then crosses
vCPUs, whose wake-ups TCG makes vary 4x between neighbouring rounds (both
seen on 2026-12-01). On one vCPU every task but the caller is off-CPU, so the
transition completes inside the write that starts it, and the daemon competes
with the workload for the one CPU: the worst case for the daemon's cost.

Why paired: under TCG a round's speed drifts over minutes (the host's CPU),
and a daemon start takes 90-200 s, so "without, then with, then without"
compares rounds minutes apart. The paired design keeps the daemon and switches
it ON (running, every kprobe armed) or OFF (every kprobe disarmed through the
kernel's own switch /sys/kernel/debug/kprobes/enabled: all of the daemon's
probes, bcc's and the tracefs ones, are kprobes; and the daemon SIGSTOPped, so
its poll loop costs nothing either) between rounds, in ABBA order so that a
linear drift cancels (tests/bench/abba.py: median of the quad ratios, with a
bootstrap 95 % interval). OFF, the daemon sees nothing of a round, so a
livepatch cycle run then is simply absent from its trace (it still validates).

(i)   overhead outside livepatch: tests/bench/guest_workload.py (getpid, stat,
      pipe ping-pong with a child): R rounds without the daemon, R with the
      daemon attached (run 1; its CPU time over them), the paired blocks
      (one process: the switch between blocks is outside the timed part), R
      without again; the daemon is stopped right after the paired blocks, so
      its exit log's probe hit count covers exactly its workload (target 0).
(ii)  livepatch operations, paired with daemon run 2, two series of 2 x LP
      rounds ON or OFF (ABBA): "daemon" (ON: the daemon running, as
      deployed) and "probes" (ON: kprobes armed but the daemon kept stopped,
      so only the BPF programs' in-kernel cost is in the round; the daemon
      reads the events afterwards). Each round is timed by the guest kernel's
      own log clock: "enabling patch" to "patching complete" (pre-patch
      callbacks, patching, the transition, post-patch callbacks) and a marker
      written to /dev/kmsg right before `echo 0 > enabled` to "unpatching
      complete"; and from user space: insmod klpt_lp, and until its sysfs
      directory is gone.
(iii) daemon start: launch -> ready file (both runs); VmRSS right before and
      after the daemon frees bcc's compiler memory (its log line); VmRSS/VmHWM
      after attach and after KLPT_BENCH_EVENTS cycles (run 2); then, in the same
      boot, tests/bench/guest_bccmem.py: what of the RSS after the BPF compile
      malloc_trim and madvise of bcc's/LLVM's text give back.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from guestout import parse  # noqa: E402
KLP = ROOT / ".venv" / "bin" / "klptrace"

from bench import abba  # noqa: E402

CPUS = int(os.environ.get("KLPT_BENCH_CPUS", "1"))
ROUNDS = int(os.environ.get("KLPT_BENCH_ROUNDS", "5"))
ITER = int(os.environ.get("KLPT_BENCH_ITER", "3000"))
BLOCKS = int(os.environ.get("KLPT_BENCH_BLOCKS", "48"))
BLOCK_ITER = int(os.environ.get("KLPT_BENCH_BLOCK_ITER", "1000"))
LP_ROUNDS = int(os.environ.get("KLPT_BENCH_LP_ROUNDS", "16"))
EVENTS = int(os.environ.get("KLPT_BENCH_EVENTS", "10"))

_HELPERS = r"""
export KLPT_KMOD=__KMOD__ KLPT_STEP_TIMEOUT=120
source __ROOT__/tracer/lab/guest_helpers.sh
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
mountpoint -q /sys/kernel/debug || mount -t debugfs nodev /sys/kernel/debug
KPROBES=/sys/kernel/debug/kprobes/enabled
[[ -w $KPROBES ]] || die "no $KPROBES: the paired design needs the kernel's kprobe switch"
now() { echo $EPOCHREALTIME; }
dt() { awk "BEGIN {printf \"%.3f\", $2 - $1}"; }
cpu_ticks() { awk '{print $14 + $15}' /proc/$(cat /run/$1.pid)/stat; }   # utime + stime
# switch I NAME [probes]: round I of an ABBA sequence (0 3 4 7 8 ... on):
# ON is daemon NAME running and every kprobe armed, OFF every kprobe disarmed
# and NAME stopped (as tests/bench/guest_workload.py does between its blocks);
# with "probes", NAME stays stopped on both sides and only the kprobes switch:
# the in-kernel cost of the BPF programs alone; before each such round NAME
# runs for a moment with every kprobe disarmed and reads what the last round
# left (its ring buffer holds a few rounds only: a full one would make the
# programs cheaper, and lose records). Prints the side.
switch() {
	local pid=$(cat /run/$2.pid)
	if [[ $3 == probes ]]; then
		echo 0 > $KPROBES; kill -CONT $pid; sleep 0.5; kill -STOP $pid
	fi
	if (( $1 % 4 == 0 || $1 % 4 == 3 )); then
		[[ $3 == probes ]] || kill -CONT $pid
		echo 1 > $KPROBES; echo on
	else echo 0 > $KPROBES; kill -STOP $pid; echo off; fi
	sleep 0.05
}
start_daemon() {   # NAME [VAR=VALUE...]: start, wait for readiness, print start time and RSS
	local name=$1; shift
	set -- $name "$@"
	rm -f /run/$1.ready
	env "${@:2}" __KLP__ run --ready-file /run/$1.ready --trace /run/$1.jsonl 2>/run/$1.log &
	echo $! > /run/$1.pid
	local t0=$(now)
	for i in $(seq 1 3600); do [ -e /run/$1.ready ] && break; sleep 0.05; done
	[ -e /run/$1.ready ] || { cat /run/$1.log; exit 97; }
	echo "@@start_s_$1=$(dt $t0 $(now))"
	# the daemon's own reading right before and after it frees the compiler
	echo "@@freed_$1=$(grep -o 'VmRSS [0-9.]* -> [0-9.]* MB' /run/$1.log)"
	rss $1 attach
}
rss() {   # NAME WHEN
	local pid=$(cat /run/$1.pid)
	echo "@@rss_kb_$1_$2=$(awk '/^VmRSS/ {print $2}' /proc/$pid/status)"
	echo "@@hwm_kb_$1_$2=$(awk '/^VmHWM/ {print $2}' /proc/$pid/status)"
}
stop_daemon() {
	kill -INT $(cat /run/$1.pid)
	while kill -0 $(cat /run/$1.pid) 2>/dev/null; do sleep 0.1; done
	echo "@@log_$1<<"; cat /run/$1.log; echo "@@>>"
}
wl() { python3 __ROOT__/tests/bench/guest_workload.py __ITER__; }
workload() {   # TAG
	local i
	for i in $(seq 1 __ROUNDS__); do echo "@@wl_$1_$i=$(wl)"; done
}
workload_paired() {   # NAME
	echo "@@paired<<"
	python3 __ROOT__/tests/bench/guest_workload.py __BLOCK_ITER__ __BLOCKS__ $(cat /run/$1.pid) \
		|| die "paired workload"
	echo "@@>>"
}
lp_paired() {   # NAME TAG [probes]
	local i side t0 t1 t2 t3
	for i in $(seq 0 $((2 * __LP_ROUNDS__ - 1))); do
		side=$(switch $i $1 $3)
		dmesg -C
		t0=$(now)
		insmod $KLPT_KMOD/klpt_lp.ko || die "insmod klpt_lp"
		t1=$(now)
		while [[ $(< $KLP_SYSFS/klpt_lp/transition) != 0 ]]; do sleep 0.02; done
		t2=$(now)
		echo "klpt-bench: disable" > /dev/kmsg
		echo 0 > $KLP_SYSFS/klpt_lp/enabled
		while [[ -e $KLP_SYSFS/klpt_lp ]]; do sleep 0.02; done
		t3=$(now)
		unload_lp klpt_lp
		echo "@@$2_insmod_s_${side}_$i=$(dt $t0 $t1)"
		echo "@@$2_gone_s_${side}_$i=$(dt $t2 $t3)"
		echo "@@$2_kmsg_$i<<"
		dmesg | grep -E "enabling patch 'klpt_lp'|'klpt_lp': (un)?patching complete|klpt-bench: disable"
		echo "@@>>"
		sleep 0.5
	done
	switch 0 $1 > /dev/null   # ON: the daemon reads what the rounds left
	sleep 1
}
"""

_SCRIPT = r"""
workload base1
start_daemon run1
c0=$(cpu_ticks run1); t0=$(now)
workload traced
echo "@@daemon_cpu_s_run1=$(awk "BEGIN {print ($(cpu_ticks run1) - $c0) / $(getconf CLK_TCK)}")"
echo "@@daemon_wall_s_run1=$(dt $t0 $(now))"
workload_paired run1
stop_daemon run1
workload base2
start_daemon run2
lp_paired run2 daemon
lp_paired run2 probes probes
t0=$(now)
for c in $(seq 1 __EVENTS__); do
	load_mod klpt_mod; load_lp klpt_lp; load_lp klpt_lp2
	disable_lp klpt_lp2; unload_lp klpt_lp2; disable_lp klpt_lp; unload_lp klpt_lp
	unload_mod klpt_mod
done
echo "@@events_s=$(dt $t0 $(now))"
sleep 1
rss run2 events
echo "@@records_run2=$(wc -l < /run/run2.jsonl)"
stop_daemon run2
echo '@@validate_run2<<'; __KLP__ validate -q /run/run2.jsonl; echo "@@rc_validate_run2=$?"; echo '@@>>'
"""


def _series(got: dict, prefix: str) -> list[float]:
    """The values of prefix<N> keys, in round order."""
    keys = [k for k in got if k.startswith(prefix) and k[len(prefix):].isdigit() and got[k]]
    return [float(got[k]) for k in sorted(keys, key=lambda k: int(k[len(prefix):]))]


_KMSG = re.compile(r"^\[\s*([0-9.]+)\] (.*)$")


def _kmsg_intervals(block: str) -> tuple[float, float]:
    """(enable, disable) seconds on the guest kernel's log clock from one
    round's lines: "enabling patch" -> "patching complete", and the bench's
    marker -> "unpatching complete"."""
    t: dict[str, float] = {}
    for line in block.splitlines():
        m = _KMSG.match(line.strip())
        if not m:
            continue
        msg = m.group(2)
        for key, needle in (("enabling", "enabling patch"), ("patched", "': patching complete"),
                            ("marker", "klpt-bench: disable"), ("unpatched", "unpatching complete")):
            if needle in msg:
                t[key] = float(m.group(1))
    return t["patched"] - t["enabling"], t["unpatched"] - t["marker"]


def _paired_workload(block: str) -> list[float]:
    values = []
    for i, line in enumerate(block.split("\n")):
        side, rate = line.split()
        if side != abba.side(i):
            raise ValueError(f"paired block {i} is {side!r}, expected {abba.side(i)!r}")
        values.append(float(rate))
    return values


def _paired(values: list[float], target: float, at_least: bool) -> dict:
    ratios = abba.quad_ratios(values)
    ci = abba.median_ci(ratios)
    on = [v for i, v in enumerate(values) if abba.side(i) == "on"]
    off = [v for i, v in enumerate(values) if abba.side(i) == "off"]
    return {"values": values, "quad_ratios": ratios, "ratio": ci[0], "ci95": [ci[1], ci[2]],
            "median_on": statistics.median(on), "median_off": statistics.median(off),
            "target": target, "at_least": at_least,
            "verdict": abba.verdict(ci, target, at_least=at_least)}


def main() -> int:
    if os.geteuid() != 0:
        print("bench_lab: the lab needs root", file=sys.stderr)
        return 2
    from klptrace.tracer.lab import kmod, packages, vm
    kernel = packages.resolve_kernel(os.environ.get("KLPT_KERNEL"))
    out_dir = Path(os.environ.get("KLPT_LAB_OUT", ROOT / "lab-out")) / \
        f"bench-lab-{os.environ.get('KLPT_KERNEL') or 'stable'}"
    out_dir.mkdir(parents=True, exist_ok=True)
    staged = kmod.stage_modules(kmod.build_modules(kernel), out_dir / "kmod")
    subst = {"__KMOD__": str(staged), "__ROOT__": str(ROOT), "__KLP__": str(KLP),
             "__ROUNDS__": str(ROUNDS), "__ITER__": str(ITER), "__BLOCKS__": str(BLOCKS),
             "__BLOCK_ITER__": str(BLOCK_ITER),
             "__LP_ROUNDS__": str(LP_ROUNDS), "__EVENTS__": str(EVENTS)}
    script = _HELPERS + _SCRIPT
    for k, v in subst.items():
        script = script.replace(k, v)
    (out_dir / "guest.sh").write_text(script)
    t = time.monotonic()
    results, dmesg = vm.run_commands(
        kernel, [f"bash {out_dir}/guest.sh",
                 f"python3 {ROOT}/tests/bench/guest_bccmem.py"],
        timeout=2400 + 20 * EVENTS + 10 * LP_ROUNDS, cpus=CPUS)
    wall = time.monotonic() - t
    out = results[0].output
    (out_dir / "guest.out").write_text(out)
    (out_dir / "dmesg").write_text(dmesg)
    got = parse(out)
    bccmem = parse(results[1].output)
    (out_dir / "bccmem.out").write_text(results[1].output)
    if results[0].rc != 0:
        print(out[-4000:])
        print(f"bench_lab: guest script failed (rc {results[0].rc}); see {out_dir}",
              file=sys.stderr)
        return 1

    med = statistics.median
    base = _series(got, "wl_base1_") + _series(got, "wl_base2_")
    traced = _series(got, "wl_traced_")
    hits = re.search(r"probe hits (\d+)", got.get("log_run1", ""))
    freed = [re.findall(r"[0-9.]+", got.get(f"freed_run{i}", "")) for i in (1, 2)]
    n_lp = 2 * LP_ROUNDS
    paired = {"workload": _paired(_paired_workload(got["paired"]), 0.99, True)}
    for tag in ("daemon", "probes"):
        kmsg = [_kmsg_intervals(got[f"{tag}_kmsg_{i}"]) for i in range(n_lp)]
        paired[f"{tag}_enable"] = _paired([k[0] for k in kmsg], 1.05, False)
        paired[f"{tag}_disable"] = _paired([k[1] for k in kmsg], 1.05, False)
        for what in ("insmod", "gone"):
            paired[f"{tag}_{what}"] = _paired(
                [float(got[f"{tag}_{what}_s_{abba.side(i)}_{i}"]) for i in range(n_lp)],
                1.05, False)
    stopped2 = re.search(r"stopped: .*", got.get("log_run2", ""))
    mb = lambda kb: int(got[kb]) / 1024  # noqa: E731
    fig = {
        "kernel": kernel.release if hasattr(kernel, "release") else str(kernel),
        "cpus": CPUS,
        "workload_base_ops_s": base, "workload_traced_ops_s": traced,
        "workload_ratio": med(traced) / med(base),
        "paired": paired,
        "probe_hits_during_workload": int(hits.group(1)) if hits else None,
        "daemon_cpu_s": float(got["daemon_cpu_s_run1"]),
        "daemon_wall_s": float(got["daemon_wall_s_run1"]),
        "start_s": [float(got["start_s_run1"]), float(got["start_s_run2"])],
        "rss_mb_attach": [mb("rss_kb_run1_attach"), mb("rss_kb_run2_attach")],
        # the daemon's log: VmRSS right before / after free_compiler_memory()
        "rss_mb_before_free": [float(f[0]) for f in freed if f],
        "rss_mb_after_free": [float(f[1]) for f in freed if f],
        "hwm_mb_attach": [mb("hwm_kb_run1_attach"), mb("hwm_kb_run2_attach")],
        "rss_mb_events": mb("rss_kb_run2_events"), "hwm_mb_events": mb("hwm_kb_run2_events"),
        "events_cycles": EVENTS, "events_s": float(got["events_s"]),
        "records_run2": int(got["records_run2"]),
        "run2_stopped": stopped2.group(0) if stopped2 else None,
        "run2_validate": got.get("validate_run2", "").strip(),
        "run2_validate_rc": got.get("rc_validate_run2"),
        "wall_s": wall,
        "bcc_memory_mb": {k[4:]: v for k, v in bccmem.items() if k.startswith("mem_")},
        "llvm_text_mb": bccmem.get("llvm_text_mb"),
    }
    (out_dir / "figures.json").write_text(json.dumps(fig, indent=2))
    f2 = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    cpu_pct = 100 * fig["daemon_cpu_s"] / fig["daemon_wall_s"]

    def paired_row(name: str, key: str, unit: str, scale: float = 1.0) -> tuple[str, str, str]:
        p = paired[key]
        cmp = ">=" if p["at_least"] else "<="
        return (f"{name} ({unit}, median ON / OFF)",
                f"{p['median_on'] * scale:.1f} / {p['median_off'] * scale:.1f}",
                f"ON/OFF {p['ratio']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}] "
                f"({len(p['quad_ratios'])} quads; target {cmp} {p['target']}: {p['verdict']})")

    rows = [
        paired_row("paired workload", "workload", "iterations/s"),
        ("probe hits during workload", str(fig["probe_hits_during_workload"]), "target 0"),
        ("daemon CPU while the workload ran", f"{fig['daemon_cpu_s']:.2f} s",
         f"over {fig['daemon_wall_s']:.0f} s: {cpu_pct:.2f} % of one CPU"),
        ("workload with / without daemon (median)", f"{med(traced):.0f} / {med(base):.0f}",
         f"ratio {fig['workload_ratio']:.3f}: rounds minutes apart, drift-prone; "
         f"with {f2(traced)}; without {f2(base)}"),
        *(paired_row(f"{what}, {tag}", f"{tag}_{key}", "ms", 1000)
          for tag in ("daemon", "probes")
          for key, what in (("enable", "enable, kernel log clock"),
                            ("disable", "disable, kernel log clock"),
                            ("insmod", "insmod klpt_lp"),
                            ("gone", "echo 0 -> sysfs dir gone"))),
        ("daemon start to ready, s", f2(fig["start_s"]), "run 1 / run 2"),
        ("VmRSS before freeing the compiler, MB", f2(fig["rss_mb_before_free"]),
         "daemon log, run 1 / run 2"),
        ("VmRSS after freeing it, MB", f2(fig["rss_mb_after_free"]), "daemon log"),
        ("VmRSS after attach, MB", f2(fig["rss_mb_attach"]),
         f"VmHWM {f2(fig['hwm_mb_attach'])}; target <= 60"),
        (f"VmRSS after {EVENTS} cycles, MB", f"{fig['rss_mb_events']:.2f}",
         f"VmHWM {fig['hwm_mb_events']:.2f}; {fig['records_run2']} trace lines"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"\nlab bench ({fig['kernel']}, {CPUS} vCPU; one boot, {wall:.0f} s wall; "
          f"figures in {out_dir})")
    for name, val, note in rows:
        print(f"  {name:<{w}}  {val:>15}  {note}")
    if fig["run2_stopped"]:
        print(f"  run 2: {fig['run2_stopped']}")
    print(f"  run 2 trace: {fig['run2_validate']} (validate exit {fig['run2_validate_rc']})")
    print("  bcc compile memory (tests/bench/guest_bccmem.py, MB):")
    for step, v in fig["bcc_memory_mb"].items():
        print(f"    {step:<16} {v}")
    if results[1].rc != 0:
        print(f"  guest_bccmem.py failed: {results[1].output[-1500:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
