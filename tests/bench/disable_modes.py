"""Which mode does a disable take, and is the daemon the cause? (issue 16;
not a test: figures go to docs/benchmarks.md)

    .venv/bin/python -m tests.bench.disable_modes    # MODES="0 1 stop" N=8

One guest boot, one vCPU, one daemon (`klptrace run`, or KLPT_BENCH_KLPTRACE).
Rounds interleave the modes (MODES, each N times): a number is the seconds
between the enable's end (transition 0) and `echo 0 > enabled`, with the
daemon running; `stop` is the daemon SIGSTOPped (kprobes stay armed). Each
round's enable and disable are read from the guest kernel's log clock as
tests/bench/bench_lab.py does. The unpatching transition's disable has two
modes (about 50 and 150 ms: an RCU-tasks grace period that found a runnable
task rescans 100 ms later); the question is whether the daemon's state moves
rounds from one to the other. Output lands in KLPT_LAB_OUT/disable-modes.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from bench import bench_lab as bl  # noqa: E402
from guestout import parse  # noqa: E402

N = int(os.environ.get("N", "8"))
MODES = os.environ.get("MODES", "0 1 stop")
KLPTRACE = os.environ.get("KLPT_BENCH_KLPTRACE", str(bl.KLP))

_SCRIPT = r"""
start_daemon run
echo 1 > $KPROBES
pid=$(cat /run/run.pid)
MODES=(__MODES__)
NM=${#MODES[@]}
for i in $(seq 0 $((NM * __N__ - 1))); do
	mode=$((i % NM))
	if [[ ${MODES[$mode]} == stop ]]; then kill -STOP $pid; else kill -CONT $pid; fi
	sleep 1
	dmesg -C
	insmod $KLPT_KMOD/klpt_lp.ko || die "insmod klpt_lp"
	while [[ $(< $KLP_SYSFS/klpt_lp/transition) != 0 ]]; do sleep 0.02; done
	[[ ${MODES[$mode]} == stop ]] || sleep ${MODES[$mode]}
	echo "klpt-bench: disable" > /dev/kmsg
	echo 0 > $KLP_SYSFS/klpt_lp/enabled
	while [[ -e $KLP_SYSFS/klpt_lp ]]; do sleep 0.02; done
	unload_lp klpt_lp
	echo "@@m${mode}_kmsg_$i<<"
	dmesg | grep -E "enabling patch 'klpt_lp'|'klpt_lp': (un)?patching complete|klpt-bench: disable"
	echo "@@>>"
done
kill -CONT $pid
sleep 2
stop_daemon run
"""


def main() -> int:
    if os.geteuid() != 0:
        print("disable_modes: the lab needs root", file=sys.stderr)
        return 2
    from klptrace.tracer.lab import kmod, packages, vm
    kernel = packages.resolve_kernel(os.environ.get("KLPT_KERNEL"))
    out_dir = Path(os.environ.get("KLPT_LAB_OUT", ROOT / "lab-out")) / "disable-modes"
    out_dir.mkdir(parents=True, exist_ok=True)
    staged = kmod.stage_modules(kmod.build_modules(kernel), out_dir / "kmod")
    script = bl._HELPERS + _SCRIPT
    for k, v in {"__KMOD__": str(staged), "__ROOT__": str(ROOT), "__KLP__": KLPTRACE,
                 "__N__": str(N), "__MODES__": MODES}.items():
        script = script.replace(k, v)
    (out_dir / "guest.sh").write_text(script)
    t = time.monotonic()
    res, _ = vm.run_commands(kernel, [f"bash {out_dir}/guest.sh"], timeout=600 + 20 * N,
                             cpus=1, keep_dir=out_dir / "guest")
    out = res[0].output
    if res[0].rc != 0:
        print(out[-3000:])
        print(f"disable_modes: guest script failed (rc {res[0].rc}); see {out_dir}", file=sys.stderr)
        return 1
    got = parse(out)
    print(f"disable modes ({kernel.release}, 1 vCPU, {time.monotonic() - t:.0f} s wall; {out_dir})")
    for m, name in enumerate(MODES.split()):
        rounds = [bl._kmsg_intervals(v) for k, v in sorted(got.items())
                  if re.fullmatch(rf"m{m}_kmsg_\d+", k)]
        dis = [d * 1000 for _e, d in rounds]
        slow = sum(d > 100 for d in dis)
        label = "daemon stopped" if name == "stop" else f"disable {name} s after the enable"
        print(f"  {label:<34} enable median {statistics.median(e * 1000 for e, _ in rounds):6.1f} ms"
              f"  disable median {statistics.median(dis):6.1f} ms, slow (> 100 ms) in "
              f"{slow} of {len(dis)}: {', '.join(f'{d:.0f}' for d in dis)}")
    print(got.get("log_run", "").strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
