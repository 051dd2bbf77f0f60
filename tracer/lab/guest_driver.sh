#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# klptrace lab: the guest-side driver. One guest boot runs every planned
# scenario in turn, in each phase. Usage (inside the VM): guest_driver.sh RUN_DIR
#
# RUN_DIR (shared read-write with the host) holds, written by the host:
#   plan.sh            KLPT_SCENARIOS=(...), KLPT_KMOD, timeouts, and the phases:
#                      KLPT_PHASE_DIRS=(...) and KLPT_PHASE_TRACERS=(...), a
#                      tracer command per phase ("" for none)
#   steps/NAME.steps   one helper call per line (guest_helpers.sh)
# and receives, in each phase's directory, per scenario NAME:
#   NAME.dmesg         the kernel log of that scenario only, with a marker
#                      before and after each step (its duration on the
#                      kernel's clock)
#   NAME.steps.log     each step, its output and exit code
#   NAME.status        "ok", or "failed: <why>" (the last line written)
#   NAME.jsonl, NAME.tracer.rc    only with a tracer command
# plus, with a tracer, tracer.log and tracer.rc (its exit code at the end) and
# metrics.prom; and once in RUN_DIR boot.dmesg (the log before the first
# scenario) and driver.log.
#
# The tracer runs once per phase (a bcc compile takes 30-90 s under TCG: once
# per scenario would not fit CI's budget). Each scenario's trace is handed
# over the way logrotate does it: rename the file, SIGHUP, and the daemon
# drains what it has and reopens the path with a fresh header. The phases run
# the same scenarios without a tracer and with each tracer command, so one
# boot measures what the tracer does to them (tests/kernel/test_lines.py).
#
# Progress goes to stdout as "klpt-lab: ..." lines; the host watches them for
# its boot and step time limits.

RUN_DIR="$1"
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$RUN_DIR/plan.sh"
. "$HERE/guest_helpers.sh"

say() { echo "klpt-lab: $*"; }

setup_kernel_logging() {
	# Userspace writes to /dev/kmsg are rate limited (10 per 5 s) by default;
	# the step markers would be dropped.
	echo on > /proc/sys/kernel/printk_devkmsg
	# The livepatch core's pr_debug transition messages, as the selftests do.
	local ctl=/proc/dynamic_debug/control
	[[ -e $ctl ]] || ctl=/sys/kernel/debug/dynamic_debug/control
	if [[ -e $ctl ]]; then
		# klp_try_switch_task's messages included: "has an unreliable
		# stack" is how a test sees a task the core could not switch
		echo 'file kernel/livepatch/* +p' > "$ctl"
	else
		say "warning: no dynamic_debug control; no transition messages"
	fi
	# bcc (the tracer) needs these; virtme-ng mounts them today, be sure.
	mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug
	mountpoint -q /sys/kernel/tracing || mount -t tracefs none /sys/kernel/tracing
}

TRACER_PID=
OUT=            # the current phase's directory
TRACE_NOW=
# start_tracer: run the host-given tracer command in the background and wait
# for it to create its ready file. Returns 1 (with a reason in TRACER_ERROR)
# when it exits or is not ready in time.
start_tracer() {
	local ready="$OUT/tracer.ready" i=0
	rm -f "$ready" "$TRACE_NOW" "$OUT/tracer.rc"
	say "starting tracer"
	# Job control: a background job of a non-interactive shell ignores SIGINT,
	# and SIGINT is how the tracer is told to stop.
	set -m
	eval "exec $KLPT_TRACER_CMD --trace \"$TRACE_NOW\" --ready-file \"$ready\"" \
		> "$OUT/tracer.log" 2>&1 &
	TRACER_PID=$!
	set +m
	while [[ ! -e $ready ]]; do
		if ! kill -0 "$TRACER_PID" 2>/dev/null; then
			wait "$TRACER_PID"; echo $? > "$OUT/tracer.rc"
			TRACER_ERROR="tracer exited (rc $(cat "$OUT/tracer.rc")) before it was ready"
			TRACER_PID=
			return 1
		fi
		if [[ $((i++)) -ge $((KLPT_TRACER_READY_TIMEOUT * 10)) ]]; then
			TRACER_ERROR="tracer not ready after ${KLPT_TRACER_READY_TIMEOUT}s"
			return 1
		fi
		sleep 0.1
	done
	say "tracer ready after $((i / 10))s"
	return 0
}

# hand_over_trace NAME: the records so far become NAME.jsonl (rename + SIGHUP;
# the tracer drains before reopening, and the new file's header is the sign
# that it has). Returns 1 with TRACER_ERROR when the tracer is gone or slow.
hand_over_trace() {
	local name="$1" i=0
	if [[ -z $TRACER_PID ]] || ! kill -0 "$TRACER_PID" 2>/dev/null; then
		TRACER_ERROR="tracer is not running"
		return 1
	fi
	# the BPF ring buffer is polled every 200 ms: let the last events arrive
	sleep 0.5
	mv "$TRACE_NOW" "$OUT/$name.jsonl"
	kill -HUP "$TRACER_PID"
	while [[ ! -s $TRACE_NOW ]]; do
		if [[ $((i++)) -ge $((KLPT_TRACER_STOP_TIMEOUT * 10)) ]] || ! kill -0 "$TRACER_PID" 2>/dev/null; then
			TRACER_ERROR="tracer did not reopen its trace after SIGHUP"
			return 1
		fi
		sleep 0.1
	done
	echo 0 > "$OUT/$name.tracer.rc"
}

# scrape_metrics: one real HTTP scrape of the tracer's Prometheus endpoint
# (its default address) into metrics.prom; the host checks it against the
# traces. A tracer without an endpoint leaves no file.
scrape_metrics() {
	/usr/bin/python3 - "$OUT/metrics.prom" <<'PY' || say "no metrics scraped"
import sys, urllib.request
body = urllib.request.urlopen("http://127.0.0.1:19557/metrics", timeout=10).read()
open(sys.argv[1], "wb").write(body)
PY
}

# stop_tracer: SIGINT, wait for it to flush and exit; SIGKILL if it hangs.
stop_tracer() {
	local i=0 rc
	[[ -n $TRACER_PID ]] || return 0
	# The whole job's process group, in case the command is a wrapper.
	kill -INT -- "-$TRACER_PID" 2>/dev/null
	while kill -0 "$TRACER_PID" 2>/dev/null; do
		if [[ $((i++)) -ge $((KLPT_TRACER_STOP_TIMEOUT * 10)) ]]; then
			say "tracer did not exit on SIGINT; killing it"
			kill -KILL -- "-$TRACER_PID" 2>/dev/null
			break
		fi
		sleep 0.1
	done
	wait "$TRACER_PID"; rc=$?
	echo "$rc" > "$OUT/tracer.rc"
	say "tracer stopped (rc $rc)"
	TRACER_PID=
}

# run_steps NAME: the scenario's steps, each echoed and logged, and marked in
# the kernel log before and after ("klpt-lab: step N begin: STEP", "klpt-lab:
# step N end rc=RC": tracer/lab/runner.py reads each step's duration from
# them); stops at the first failing step (a helper's die). Runs in a
# subshell so die ends only it.
run_steps() {
	local name="$1"
	(
		n=0
		while IFS= read -r step; do
			[[ -z $step || $step == \#* ]] && continue
			n=$((n + 1))
			say "$name: step $n: $step"
			echo "% $step"
			klog "step $n begin: $step"
			# Own subshell: a helper's die ends this step only, and is logged.
			( eval "$step" ) 2>&1
			rc=$?
			klog "step $n end rc=$rc"
			echo "rc=$rc"
			[[ $rc == 0 ]] || { echo "FAILED step $n: $step"; exit 1; }
		done < "$RUN_DIR/steps/$name.steps"
	) > "$OUT/$name.steps.log" 2>&1
}

run_scenario() {
	local name="$1" status=ok t0=$SECONDS
	say "$name: begin"
	reset_livepatch_state || say "$name: warning: state not clean before start"
	dmesg -C
	klog "===== scenario $name ====="
	if [[ -n $KLPT_TRACER_CMD && -n $TRACER_ERROR ]]; then
		status="failed: $TRACER_ERROR"
	fi
	if ! run_steps "$name"; then
		status="failed: $(grep '^FAILED' "$OUT/$name.steps.log" | tail -1 | cut -c8-)"
		status+=" ($(grep '^ERROR' "$OUT/$name.steps.log" | tail -1))"
	fi
	klog "===== end of scenario $name ====="
	dmesg > "$OUT/$name.dmesg"
	reset_livepatch_state || { [[ $status == ok ]] && status="failed: cleanup left livepatch state behind"; }
	if [[ -n $KLPT_TRACER_CMD && -z $TRACER_ERROR ]] && ! hand_over_trace "$name"; then
		[[ $status == ok ]] && status="failed: $TRACER_ERROR"
	fi
	echo "$status" > "$OUT/$name.status"
	say "$name: end $status ($((SECONDS - t0))s)"
}

# run_phase I: every scenario, with phase I's tracer (if any) around them all.
run_phase() {
	local i="$1" name
	OUT="${KLPT_PHASE_DIRS[$i]}"
	KLPT_TRACER_CMD="${KLPT_PHASE_TRACERS[$i]}"
	TRACE_NOW="$OUT/tracer-current.jsonl"
	TRACER_ERROR=
	mkdir -p "$OUT"
	say "phase $((i + 1)) of ${#KLPT_PHASE_DIRS[@]}: ${KLPT_TRACER_CMD:-no tracer}"
	if [[ -n $KLPT_TRACER_CMD ]]; then
		reset_livepatch_state
		start_tracer || say "tracer failed: $TRACER_ERROR"
	fi
	for name in "${KLPT_SCENARIOS[@]}"; do
		run_scenario "$name"
	done
	if [[ -n $KLPT_TRACER_CMD ]]; then
		scrape_metrics
		stop_tracer
	fi
}

main() {
	say "driver started on $(uname -r)"
	dmesg > "$RUN_DIR/boot.dmesg"
	setup_kernel_logging
	local i
	for i in "${!KLPT_PHASE_DIRS[@]}"; do
		run_phase "$i"
	done
	say "driver done"
}

main 2>&1 | tee -a "$RUN_DIR/driver.log"
