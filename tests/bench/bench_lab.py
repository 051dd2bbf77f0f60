"""Tracer daemon benchmark in the lab VM (issue 7; not a test: figures go to
docs/benchmarks.md). ONE guest boot, the guest kernel under TCG, so only the
ratios measured side by side mean something.

    .venv/bin/python -m tests.bench.bench_lab        # make bench (after bench_validate)

Env: KLPT_KERNEL (lab kernel), KLPT_BENCH_ROUNDS (workload rounds per side, 5),
KLPT_BENCH_ITER (workload iterations a round, 3000: about 200/s under TCG), KLPT_BENCH_LP_ROUNDS
(livepatch enable/disable timings per side, 7), KLPT_BENCH_EVENTS (enable/disable
cycles of klpt_lp + klpt_lp2 + klpt_mod load/unload before the last RSS reading, 10).

(i)   overhead outside livepatch: tests/bench/guest_workload.py (getpid, stat,
      pipe ping-pong with a child) in rounds: R without the daemon, R with the
      daemon attached (run 1), R without again; the daemon is then stopped and
      its exit log's probe hit count covers exactly that period (target 0).
(ii)  livepatch operations: insmod klpt_lp -> transition 0 ("enable") and
      echo 0 > enabled -> sysfs dir gone ("disable"), R times without the
      daemon, then R times with the daemon running (run 2).
(iii) daemon start: launch -> ready file (both runs); VmRSS right before and
      after the daemon frees bcc's compiler memory (its log line); VmRSS/VmHWM after attach
      and after KLPT_BENCH_EVENTS cycles (run 2); then, in the same boot,
      tests/bench/guest_bccmem.py: what of the RSS after the BPF compile
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

ROUNDS = int(os.environ.get("KLPT_BENCH_ROUNDS", "5"))
ITER = int(os.environ.get("KLPT_BENCH_ITER", "3000"))
LP_ROUNDS = int(os.environ.get("KLPT_BENCH_LP_ROUNDS", "7"))
EVENTS = int(os.environ.get("KLPT_BENCH_EVENTS", "10"))

_HELPERS = r"""
export KLPT_KMOD=__KMOD__ KLPT_STEP_TIMEOUT=120
source __ROOT__/tracer/lab/guest_helpers.sh
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
now() { echo $EPOCHREALTIME; }
dt() { awk "BEGIN {printf \"%.3f\", $2 - $1}"; }
start_daemon() {   # NAME: start, wait for readiness, print start time and RSS
	rm -f /run/$1.ready
	__KLP__ run --ready-file /run/$1.ready --trace /run/$1.jsonl 2>/run/$1.log &
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
workload() {   # TAG
	local i
	for i in $(seq 1 __ROUNDS__); do
		echo "@@wl_$1_$i=$(python3 __ROOT__/tests/bench/guest_workload.py __ITER__)"
	done
}
lp_times() {   # TAG
	local i t0 t1 t2
	for i in $(seq 1 __LP_ROUNDS__); do
		t0=$(now)
		insmod $KLPT_KMOD/klpt_lp.ko || die "insmod klpt_lp"
		while [[ $(< $KLP_SYSFS/klpt_lp/transition) != 0 ]]; do sleep 0.02; done
		t1=$(now)
		echo 0 > $KLP_SYSFS/klpt_lp/enabled
		while [[ -e $KLP_SYSFS/klpt_lp ]]; do sleep 0.02; done
		t2=$(now)
		echo "@@enable_s_$1_$i=$(dt $t0 $t1)"
		echo "@@disable_s_$1_$i=$(dt $t1 $t2)"
		unload_lp klpt_lp
		sleep 0.5
	done
}
"""

_SCRIPT = r"""
workload base1
start_daemon run1
workload traced
stop_daemon run1
workload base2
lp_times base
start_daemon run2
lp_times traced
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
"""


def _series(got: dict, prefix: str) -> list[float]:
    return [float(v) for k, v in sorted(got.items()) if k.startswith(prefix) and v]


def main() -> int:
    if os.geteuid() != 0:
        print("bench_lab: the lab needs root", file=sys.stderr)
        return 2
    from tracer.lab import kmod, packages, vm
    kernel = packages.resolve_kernel(os.environ.get("KLPT_KERNEL"))
    out_dir = Path(os.environ.get("KLPT_LAB_OUT", ROOT / "lab-out")) / \
        f"bench-lab-{os.environ.get('KLPT_KERNEL') or 'stable'}"
    out_dir.mkdir(parents=True, exist_ok=True)
    staged = kmod.stage_modules(kmod.build_modules(kernel), out_dir / "kmod")
    subst = {"__KMOD__": str(staged), "__ROOT__": str(ROOT), "__KLP__": str(KLP),
             "__ROUNDS__": str(ROUNDS), "__ITER__": str(ITER),
             "__LP_ROUNDS__": str(LP_ROUNDS), "__EVENTS__": str(EVENTS)}
    script = _HELPERS + _SCRIPT
    for k, v in subst.items():
        script = script.replace(k, v)
    (out_dir / "guest.sh").write_text(script)
    t = time.monotonic()
    results, dmesg = vm.run_commands(
        kernel, [f"bash {out_dir}/guest.sh",
                 f"python3 {ROOT}/tests/bench/guest_bccmem.py"],
        timeout=2400 + 20 * EVENTS)
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

    base = _series(got, "wl_base1_") + _series(got, "wl_base2_")
    traced = _series(got, "wl_traced_")
    hits = re.search(r"probe hits (\d+)", got.get("log_run1", ""))
    freed = [re.findall(r"[0-9.]+", got.get(f"freed_run{i}", "")) for i in (1, 2)]
    en_b, en_t = _series(got, "enable_s_base_"), _series(got, "enable_s_traced_")
    dis_b, dis_t = _series(got, "disable_s_base_"), _series(got, "disable_s_traced_")
    stopped2 = re.search(r"stopped: .*", got.get("log_run2", ""))
    med = statistics.median
    mb = lambda kb: int(got[kb]) / 1024  # noqa: E731
    fig = {
        "kernel": kernel.release if hasattr(kernel, "release") else str(kernel),
        "workload_base_ops_s": base, "workload_traced_ops_s": traced,
        "workload_ratio": med(traced) / med(base),
        "probe_hits_during_workload": int(hits.group(1)) if hits else None,
        "enable_s_base": en_b, "enable_s_traced": en_t,
        "enable_ratio": med(en_t) / med(en_b),
        "disable_s_base": dis_b, "disable_s_traced": dis_t,
        "disable_ratio": med(dis_t) / med(dis_b),
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
        "wall_s": wall,
        "bcc_memory_mb": {k[4:]: v for k, v in bccmem.items() if k.startswith("mem_")},
        "llvm_text_mb": bccmem.get("llvm_text_mb"),
    }
    (out_dir / "figures.json").write_text(json.dumps(fig, indent=2))
    f2 = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    rows = [
        ("workload ops/s without daemon (median)", f"{med(base):.0f}", f"rounds: {f2(base)}"),
        ("workload ops/s with daemon (median)", f"{med(traced):.0f}", f"rounds: {f2(traced)}"),
        ("workload throughput ratio", f"{fig['workload_ratio']:.3f}", "target >= 0.99"),
        ("probe hits during workload", str(fig["probe_hits_during_workload"]), "target 0"),
        ("enable -> transition done, s (median)", f"{med(en_b):.2f} / {med(en_t):.2f}",
         f"without / with; ratio {fig['enable_ratio']:.3f} (target <= 1.05)"),
        ("disable -> unpatched, s (median)", f"{med(dis_b):.2f} / {med(dis_t):.2f}",
         f"without / with; ratio {fig['disable_ratio']:.3f} (target <= 1.05)"),
        ("daemon start to ready, s", f2(fig["start_s"]), "run 1 (cold) / run 2"),
        ("VmRSS before freeing the compiler, MB", f2(fig["rss_mb_before_free"]),
         "daemon log, run 1 / run 2"),
        ("VmRSS after freeing it, MB", f2(fig["rss_mb_after_free"]), "daemon log"),
        ("VmRSS after attach, MB", f2(fig["rss_mb_attach"]),
         f"VmHWM {f2(fig['hwm_mb_attach'])}; target <= 60"),
        (f"VmRSS after {EVENTS} cycles, MB", f"{fig['rss_mb_events']:.2f}",
         f"VmHWM {fig['hwm_mb_events']:.2f}; {fig['records_run2']} trace lines"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"\nlab bench ({fig['kernel']}; one boot, {wall:.0f} s wall; figures in {out_dir})")
    for name, val, note in rows:
        print(f"  {name:<{w}}  {val:>14}  {note}")
    if fig["run2_stopped"]:
        print(f"  run 2: {fig['run2_stopped']}")
    print("  bcc compile memory (tests/bench/guest_bccmem.py, MB):")
    for step, v in fig["bcc_memory_mb"].items():
        print(f"    {step:<16} {v}")
    if results[1].rc != 0:
        print(f"  guest_bccmem.py failed: {results[1].output[-1500:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
