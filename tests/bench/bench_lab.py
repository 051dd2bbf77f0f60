"""Tracer daemon benchmark in the lab VM (issue 7; not a test: figures go to
docs/benchmarks.md). ONE guest boot, the guest kernel under TCG, so only the
ratios measured side by side mean something.

    .venv/bin/python -m tests.bench.bench_lab        # make bench (after bench_validate)

Env: KLPT_KERNEL (lab kernel), KLPT_BENCH_ROUNDS (workload rounds per side, 5),
KLPT_BENCH_ITER (workload iterations a round, 3000: 200-800/s under TCG), KLPT_BENCH_LP_ROUNDS
(livepatch enable/disable timings per side, 7), KLPT_BENCH_EVENTS (enable/disable
cycles of klpt_lp + klpt_lp2 + klpt_mod load/unload before the last RSS reading, 10).

Why two designs side by side: under TCG a round's speed drifts by 2-4x over
minutes (the host's CPU, not the guest), and a daemon start takes 90-200 s, so
"without, then with, then without" compares rounds minutes apart. The paired
design keeps the daemon running and switches every kprobe in the kernel off and
on between rounds (/sys/kernel/debug/kprobes/enabled, the kernel's own switch:
every probe the daemon has, bcc's and the tracefs ones, are kprobes), in ABBA
order so a linear drift cancels. Disarmed, the daemon sees nothing of a round,
so a livepatch cycle run then is simply absent from its trace (it still
validates). The daemon's own CPU time while it idles (/proc/PID/stat) is the
cost the switch leaves out.

(i)   overhead outside livepatch: tests/bench/guest_workload.py (getpid, stat,
      pipe ping-pong with a child): R rounds without the daemon, R with the
      daemon attached (run 1; its CPU time over them), 2R paired rounds
      armed/disarmed, R without again; the daemon is stopped right after the
      paired rounds, so its exit log's probe hit count covers exactly its
      workload (target 0).
(ii)  livepatch operations, paired with daemon run 2: 2 x LP rounds, kprobes
      armed or disarmed (ABBA): insmod klpt_lp (the synchronous enable: pre-patch
      callbacks, patching, the first transition attempt), insmod -> transition
      file 0 ("enable"), echo 0 > enabled (the synchronous disable),
      -> sysfs dir gone ("disable").
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

ROUNDS = int(os.environ.get("KLPT_BENCH_ROUNDS", "5"))
ITER = int(os.environ.get("KLPT_BENCH_ITER", "3000"))
LP_ROUNDS = int(os.environ.get("KLPT_BENCH_LP_ROUNDS", "7"))
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
# arm I: round I of an ABBA sequence (0 3 4 7 8 ... armed): prints the side
arm() {
	if (( $1 % 4 == 0 || $1 % 4 == 3 )); then echo 1 > $KPROBES; echo armed
	else echo 0 > $KPROBES; echo disarmed; fi
}
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
wl() { python3 __ROOT__/tests/bench/guest_workload.py __ITER__; }
workload() {   # TAG
	local i
	for i in $(seq 1 __ROUNDS__); do echo "@@wl_$1_$i=$(wl)"; done
}
workload_paired() {
	local i side
	for i in $(seq 0 $((2 * __ROUNDS__ - 1))); do
		side=$(arm $i); echo "@@wl_${side}_$i=$(wl)"
	done
	echo 1 > $KPROBES
}
lp_paired() {
	local i side t0 t1 t2 t3 t4
	for i in $(seq 0 $((2 * __LP_ROUNDS__ - 1))); do
		side=$(arm $i)
		t0=$(now)
		insmod $KLPT_KMOD/klpt_lp.ko || die "insmod klpt_lp"
		t1=$(now)
		while [[ $(< $KLP_SYSFS/klpt_lp/transition) != 0 ]]; do sleep 0.02; done
		t2=$(now)
		echo 0 > $KLP_SYSFS/klpt_lp/enabled
		t3=$(now)
		while [[ -e $KLP_SYSFS/klpt_lp ]]; do sleep 0.02; done
		t4=$(now)
		unload_lp klpt_lp
		echo "@@insmod_s_${side}_$i=$(dt $t0 $t1)"
		echo "@@enable_s_${side}_$i=$(dt $t0 $t2)"
		echo "@@write0_s_${side}_$i=$(dt $t2 $t3)"
		echo "@@disable_s_${side}_$i=$(dt $t2 $t4)"
		sleep 0.5
	done
	echo 1 > $KPROBES
}
"""

_SCRIPT = r"""
workload base1
start_daemon run1
c0=$(cpu_ticks run1); t0=$(now)
workload traced
echo "@@daemon_cpu_s_run1=$(awk "BEGIN {print ($(cpu_ticks run1) - $c0) / $(getconf CLK_TCK)}")"
echo "@@daemon_wall_s_run1=$(dt $t0 $(now))"
workload_paired
stop_daemon run1
workload base2
start_daemon run2
lp_paired
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

    med = statistics.median
    ratio = lambda a, b: med(a) / med(b)  # noqa: E731
    base = _series(got, "wl_base1_") + _series(got, "wl_base2_")
    traced = _series(got, "wl_traced_")
    armed, disarmed = _series(got, "wl_armed_"), _series(got, "wl_disarmed_")
    hits = re.search(r"probe hits (\d+)", got.get("log_run1", ""))
    freed = [re.findall(r"[0-9.]+", got.get(f"freed_run{i}", "")) for i in (1, 2)]
    lp = {f"{what}_{side}": _series(got, f"{what}_s_{side}_")
          for what in ("insmod", "enable", "write0", "disable") for side in ("armed", "disarmed")}
    stopped2 = re.search(r"stopped: .*", got.get("log_run2", ""))
    mb = lambda kb: int(got[kb]) / 1024  # noqa: E731
    fig = {
        "kernel": kernel.release if hasattr(kernel, "release") else str(kernel),
        "workload_base_ops_s": base, "workload_traced_ops_s": traced,
        "workload_ratio": ratio(traced, base),
        "workload_armed_ops_s": armed, "workload_disarmed_ops_s": disarmed,
        "workload_paired_ratio": ratio(armed, disarmed),
        "probe_hits_during_workload": int(hits.group(1)) if hits else None,
        "daemon_cpu_s": float(got["daemon_cpu_s_run1"]),
        "daemon_wall_s": float(got["daemon_wall_s_run1"]),
        **{f"lp_{k}_s": v for k, v in lp.items()},
        **{f"{w}_ratio": ratio(lp[f"{w}_armed"], lp[f"{w}_disarmed"])
           for w in ("insmod", "enable", "write0", "disable")},
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
    rows = [
        ("workload ops/s without daemon (median)", f"{med(base):.0f}", f"rounds: {f2(base)}"),
        ("workload ops/s with daemon (median)", f"{med(traced):.0f}", f"rounds: {f2(traced)}"),
        ("workload ratio with/without daemon", f"{fig['workload_ratio']:.3f}",
         "rounds minutes apart: drift-prone"),
        ("paired: kprobes armed / disarmed (median)", f"{med(armed):.0f} / {med(disarmed):.0f}",
         f"ratio {fig['workload_paired_ratio']:.3f} (target >= 0.99); "
         f"armed {f2(armed)}; disarmed {f2(disarmed)}"),
        ("probe hits during workload", str(fig["probe_hits_during_workload"]), "target 0"),
        ("daemon CPU while the workload ran", f"{fig['daemon_cpu_s']:.2f} s",
         f"over {fig['daemon_wall_s']:.0f} s: {cpu_pct:.2f} % of one CPU"),
    ]
    for w, what in (("insmod", "insmod klpt_lp (synchronous enable)"),
                    ("enable", "insmod -> transition complete"),
                    ("write0", "echo 0 > enabled (synchronous disable)"),
                    ("disable", "disable -> unpatched, sysfs gone")):
        a, d = lp[f"{w}_armed"], lp[f"{w}_disarmed"]
        rows.append((f"{what}, s", f"{med(a):.3f} / {med(d):.3f}",
                     f"armed / disarmed; ratio {fig[w + '_ratio']:.3f} (target <= 1.05); "
                     f"armed {f2(a)}; disarmed {f2(d)}"))
    rows += [
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
    print(f"  run 2 trace: {fig['run2_validate']} (validate exit {fig['run2_validate_rc']})")
    print("  bcc compile memory (tests/bench/guest_bccmem.py, MB):")
    for step, v in fig["bcc_memory_mb"].items():
        print(f"    {step:<16} {v}")
    if results[1].rc != 0:
        print(f"  guest_bccmem.py failed: {results[1].output[-1500:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
