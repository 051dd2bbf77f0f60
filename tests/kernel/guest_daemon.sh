# SPDX-License-Identifier: GPL-2.0
# Guest side of tests/kernel/test_daemon.py: the daemon (`klptrace run`) on a
# real kernel, in the situations a fleet puts it in. Sourced after
# tracer/lab/guest_helpers.sh with KLPT (the klptrace command) and KLPT_KMOD
# set; each case prints `@@key=value` lines and `@@key<<` ... `@@>>` blocks
# (tests/guestout.py). One guest boot runs all cases, one daemon per case (a
# daemon start is a bcc compile: a minute or more under TCG).

# start NAME [ARGS...]: a daemon in the background, its trace /run/NAME.jsonl
# (or $TRACE), its log /run/NAME.log; waits until it is ready.
start() {
	local name=$1 i; shift
	rm -f /run/$name.ready
	$KLPT run --ready-file /run/$name.ready --trace "${TRACE:-/run/$name.jsonl}" "$@" \
		2>/run/$name.log &
	echo $! > /run/$name.pid
	for i in $(seq 1 3000); do [ -e /run/$name.ready ] && break; sleep 0.1; done
	[ -e /run/$name.ready ] || { echo "@@start_failed_$name=1"; cat /run/$name.log; return 1; }
}

# stop NAME: SIGINT, wait, print its log as a block.
stop() {
	local pid; pid=$(cat /run/$1.pid)
	kill -INT $pid
	while kill -0 $pid 2>/dev/null; do sleep 0.2; done
	echo "@@log_$1<<"; cat /run/$1.log; echo "@@>>"
}

# metric NAME_REGEX: the sum of the samples of the daemon's families matching it
metric() {
	python3 - "$1" <<'PY'
import re, sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:19557/metrics", timeout=10).read().decode()
print(sum(float(l.split()[-1]) for l in text.splitlines()
          if l and not l.startswith("#") and re.match(sys.argv[1], l)))
PY
}

# validate NAME [FILE]: the JSON report and the exit code of `klptrace validate`
validate() {
	echo "@@json_$1<<"; $KLPT validate --format json "${2:-/run/$1.jsonl}"; echo "@@rc_$1=$?"; echo "@@>>"
}

wait_no_transition() {
	loop_until '[[ "$(cat $KLP_SYSFS/'"$1"'/transition 2>/dev/null)" != 1 ]]'
}

cycle() {   # one enable/disable cycle of klpt_lp with klpt_mod loaded
	load_mod klpt_mod; load_lp klpt_lp; disable_lp klpt_lp; unload_lp klpt_lp; unload_mod klpt_mod
}

# --- 1. quiet host, then a patched function on the hot path -----------------------
case_quiet() {
	start quiet --preload $KLPT_KMOD/klpt_lp.ko || return
	ls -R /usr > /dev/null; dd if=/dev/zero of=/dev/null bs=1M count=200 2>/dev/null; sleep 2
	echo "@@quiet_hits=$(metric 'klptrace_probe_hits_total')"
	load_mod klpt_mod; load_lp klpt_lp
	sleep 1
	echo "@@patched_output=$(cat /proc/cmdline)"        # klpt_lp replaced cmdline_proc_show
	local before; before=$(metric 'klptrace_probe_hits_total')
	for i in $(seq 1 3000); do cat /proc/cmdline > /dev/null; done
	echo "@@hot_hits_delta=$(awk "BEGIN {print $(metric 'klptrace_probe_hits_total') - $before}")"
	disable_lp klpt_lp; unload_lp klpt_lp; unload_mod klpt_mod; sleep 1
	stop quiet
	echo "@@inspect<<"; $KLPT inspect $KLPT_KMOD/klpt_lp.ko; echo "@@>>"
}

# --- 2. started with a patch enabled and a module load in flight; a return
#        probe not attached ----------------------------------------------------------
case_midway() {
	load_lp klpt_lp
	echo 1 > /sys/module/klpt_lp/parameters/hold_pre_patch
	insmod $KLPT_KMOD/klpt_mod.ko & local ins=$!
	sleep 2          # klp_module_coming is in klpt_lp's pre_patch for klpt_mod now
	echo "@@held=$([ -e /sys/module/klpt_mod ] && echo 1 || echo 0)"
	start midway --skip-point module-coming-ret || return
	echo 0 > /sys/module/klpt_lp/parameters/hold_pre_patch
	wait $ins; echo "@@insmod_rc=$?"
	unload_mod klpt_mod
	load_mod klpt_mod              # seen from its entry on, but its return probe is skipped
	sleep 12                       # past the inference's 10 s hold bound
	unload_mod klpt_mod
	disable_lp klpt_lp; unload_lp klpt_lp; sleep 1
	echo "@@gaps=$(metric 'klptrace_observation_gaps_total')"
	stop midway
	echo "@@loss_reasons<<"; grep '"loss"' /run/midway.jsonl; echo "@@>>"
	echo "@@after_gaps=$(grep -c '"pre_unpatch"' /run/midway.jsonl)"
	validate midway
}

# --- 3. an exception on the event path, and a trace disk that fills up ------------
case_faults() {
	mkdir -p /run/tiny && mount -t tmpfs -o size=48k tmpfs /run/tiny
	KLPT_INJECT_FAULT=infer:3 TRACE=/run/tiny/t.jsonl start faults || return
	cycle                                             # its 3rd event meets the injected fault
	dd if=/dev/zero of=/run/tiny/fill bs=1k count=1000 2>/dev/null   # the disk is full
	cycle                                             # judged, not written
	echo "@@unwritten=$(metric 'klptrace_trace_records_unwritten_total')"
	echo "@@infer_errors=$(metric 'klptrace_handler_errors_total\{stage="infer"\}')"
	echo "@@alive_full=$(kill -0 $(cat /run/faults.pid) && echo 1 || echo 0)"
	rm -f /run/tiny/fill
	cycle                                             # space again: written, after a loss record
	sleep 1
	stop faults
	echo "@@loss_reasons_faults<<"; grep '"loss"' /run/tiny/t.jsonl; echo "@@>>"
	echo "@@last_cycle_callbacks=$(tail -n 20 /run/tiny/t.jsonl | grep -c '"callback"')"
	validate faults /run/tiny/t.jsonl
	umount /run/tiny
}
