"""Does a guest kernel oops (int3 at a jump-label site) when kprobes are armed
and disarmed by hand around livepatch transitions, without klptrace? Not a
test: an experiment with its figures in docs/lab.md ("The newest line and CI").

    .venv/bin/python -m tests.lab_repro.int3_oops

One guest boot loops N times: insmod klpt_up1 (a livepatch of vmlinux and
klpt_mod), [arm a kprobe and a kretprobe by address on each of its functions
through tracefs], wait for the transition, start `echo 0 > enabled` and
[disarm and re-arm the probes meanwhile], wait until the patch is gone, rmmod.
No BPF, no daemon. The loop stops at an oops (virtme-ng boots with panic=-1).

Env: KLPT_KERNEL (lab kernel, sid), MODE (probes: the bracketed steps;
control: without them), N (iterations, 60), CPUS (guest vCPUs, 2),
NOOPT=1 (debug.kprobes-optimization=0), KLPT_LAB_QEMU (backports: the lab's
QEMU 10, the default; host: Debian 12's QEMU 7.2). The test modules are built
for the kernel as the lab builds them (tracer/lab/kmod.py, cached).
Output: lab-out/int3-oops-KERNEL-QEMU-MODE-CPUS[-noopt]/console.log; the last
line printed says how many iterations ran, in how long, and whether it oopsed.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from klptrace.tracer.lab import LabError, kmod, packages, qemu, vm  # noqa: E402

# The loop, over the lab's own step helpers (tracer/lab/guest_helpers.sh):
# only the disable is started by hand, so that the probes move while it runs.
GUEST = r"""#!/bin/bash
export KLPT_KMOD=__KMOD__
source __OUT__/guest_helpers.sh
T=/sys/kernel/tracing
mountpoint -q $T || mount -t tracefs nodev $T
[[ __NOOPT__ == 1 ]] && echo 0 > /proc/sys/debug/kprobes-optimization
arm() {
	local n=0 a
	for a in $(grep '\[klpt_up1\]' /proc/kallsyms | awk '$2 ~ /^[tT]$/ {print $1}'); do
		n=$((n + 1))
		echo "p:rp/p$n 0x$a" >> $T/kprobe_events 2>/dev/null
		echo "r:rp/r$n 0x$a" >> $T/kprobe_events 2>/dev/null
	done
	echo 1 > $T/events/rp/enable 2>/dev/null
	klog "int3-oops: $(grep -c ':rp/' $T/kprobe_events) probes armed"
}
disarm() { echo 0 > $T/events/rp/enable 2>/dev/null; echo > $T/kprobe_events 2>/dev/null; }
load_mod klpt_mod
for i in $(seq 1 __N__); do
	klog "int3-oops: iteration $i"; echo "int3-oops: iteration $i"
	load_lp_nowait klpt_up1
	[[ __MODE__ == probes ]] && arm
	loop_until '[[ $(cat $KLP_SYSFS/klpt_up1/transition) == 0 ]]' || die "transition"
	echo 0 > $KLP_SYSFS/klpt_up1/enabled &
	[[ __MODE__ == probes ]] && { disarm; arm; }
	wait
	loop_until '[[ ! -e $KLP_SYSFS/klpt_up1 ]]' || die "klpt_up1 not gone"
	[[ __MODE__ == probes ]] && disarm
	unload_lp klpt_up1
done
klog "int3-oops: done __N__"
"""


def main() -> int:
    mode = os.environ.get("MODE", "probes")
    n = int(os.environ.get("N", "60"))
    cpus = int(os.environ.get("CPUS", "2"))
    noopt = os.environ.get("NOOPT") == "1"
    if mode not in ("probes", "control"):
        print("int3_oops: MODE must be probes or control", file=sys.stderr)
        return 2
    spec = os.environ.get("KLPT_KERNEL", "sid")
    kernel = packages.resolve_kernel(spec)
    q = qemu.find()
    out = ROOT / "lab-out" / (f"int3-oops-{spec}-qemu{q.version}-{mode}-{cpus}"
                              f"{'-noopt' if noopt else ''}")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(kmod.build_modules(kernel), out / "kmod", dirs_exist_ok=True)
    shutil.copy(ROOT / "tracer" / "lab" / "guest_helpers.sh", out)
    script = (GUEST.replace("__KMOD__", str(out / "kmod")).replace("__OUT__", str(out))
              .replace("__N__", str(n))
              .replace("__MODE__", mode).replace("__NOOPT__", "1" if noopt else "0"))
    (out / "guest.sh").write_text(script)
    # the lab's console shows warnings and worse (tracer/lab/vm.py): an oops,
    # a panic; the whole kernel log on the emulated serial line (--verbose)
    # would slow every iteration several times
    t0 = time.monotonic()
    try:
        vm.run_commands(kernel, [f"bash {out / 'guest.sh'}"], timeout=max(3000, 30 * n),
                        keep_dir=out, cpus=cpus)
    except LabError as e:
        print(e.one_line(), file=sys.stderr)
    console = (out / "console.log").read_text(errors="replace") \
        if (out / "console.log").exists() else ""
    progress = (out / "0.out").read_text(errors="replace") if (out / "0.out").exists() else ""
    its = re.findall(r"int3-oops: iteration (\d+)", progress)
    oops = re.search(r"Oops: int3.*\n(?:.*\n){0,5}?.*RIP: 0010:(\S+)", console)
    print(f"{kernel.release}, QEMU {q.version} ({q.origin}), {mode}, {cpus} vCPU(s)"
          f"{', no kprobe optimization' if noopt else ''}: "
          f"{its[-1] if its else 0} of {n} iterations in {time.monotonic() - t0:.0f} s; "
          + (f"oops at {oops.group(1)}" if oops else "no oops")
          + f"; console: {out / 'console.log'}")
    return 1 if oops else 0


if __name__ == "__main__":
    sys.exit(main())
