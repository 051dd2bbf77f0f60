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
	# a host at work that loads no livepatch: files, processes, memory
	find /usr/lib/python3 -maxdepth 3 > /dev/null
	for i in $(seq 1 50); do /bin/true; done
	dd if=/dev/zero of=/dev/null bs=1M count=200 2>/dev/null; sleep 2
	echo "@@quiet_hits=$(metric 'klptrace_probe_hits_total')"
	load_mod klpt_mod; load_lp klpt_lp
	sleep 1
	echo "@@patched_output=$(cat /proc/cmdline)"        # klpt_lp replaced cmdline_proc_show
	local before; before=$(metric 'klptrace_probe_hits_total')
	# 3000 calls of the patched function; the shell's own read, not a cat per
	# call (3000 forks took 6 minutes under TCG)
	for i in $(seq 1 3000); do read -r _ < /proc/cmdline; done
	echo "@@hot_hits_delta=$(awk "BEGIN {print $(metric 'klptrace_probe_hits_total') - $before}")"
	disable_lp klpt_lp; unload_lp klpt_lp; unload_mod klpt_mod; sleep 1
	# idle: nothing is held, no transition is open, so only the 5 s backstop
	# wakes the daemon (tracer/daemon/runloop.py); a scrape does not wake its loop
	local t0=$EPOCHREALTIME
	echo "@@idle_wakeups_before<<"; metric_lines 'klptrace_daemon_wakeups_total'; echo "@@>>"
	sleep 12
	echo "@@idle_wakeups_after<<"; metric_lines 'klptrace_daemon_wakeups_total'; echo "@@>>"
	echo "@@idle_s=$(awk "BEGIN {print $EPOCHREALTIME - $t0}")"
	# discovery: a producer's directory made after the daemon started (two
	# levels missing: its parent /var/lib is watched), a module copied in,
	# then loaded: its first callback is seen directly
	local d=/var/lib/kpatch/$(uname -r)
	mkdir -p $d && cp $KLPT_KMOD/klpt_lp2.ko $d/
	loop_until "grep -q 'discovery: $d/klpt_lp2.ko: preloading' /run/quiet.log" \
		|| echo "@@discovery_missed=1"
	load_lp klpt_lp2; disable_lp klpt_lp2; unload_lp klpt_lp2; sleep 1
	rm -r /var/lib/kpatch
	stop quiet
	echo "@@lp2_callbacks<<"; grep '"patch":"klpt_lp2"' /run/quiet.jsonl | grep '"callback"'; echo "@@>>"
	echo "@@inspect<<"; $KLPT inspect $KLPT_KMOD/klpt_lp.ko; echo "@@>>"
}

# --- 2. started with a patch enabled and a module load in flight; a return
#        probe not attached ----------------------------------------------------------
case_midway() {
	load_lp klpt_lp
	echo 1 > /sys/module/klpt_lp/parameters/hold_pre_patch
	insmod $KLPT_KMOD/klpt_mod.ko & local ins=$!
	sleep 2          # klp_module_coming is in klpt_lp's pre_patch for klpt_mod now
	# a coming module is in /proc/modules ("Loading"); its /sys/module
	# directory is made only after klp_module_coming returns
	echo "@@held=$(grep -q '^klpt_mod .* Loading' /proc/modules && echo 1 || echo 0)"
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
	KLPT_INJECT_FAULT=infer:3 KLPT="$KLPT_FAULTY" TRACE=/run/tiny/t.jsonl start faults || return
	cycle                                             # its 3rd event meets the injected fault
	dd if=/dev/zero of=/run/tiny/fill bs=1k count=1000 2>/dev/null   # the disk is full
	# judged, not written: the trace file's last page may still hold a cycle's
	# records (tmpfs allocates by page), so cycle until a write has failed
	local n u
	for n in 1 2 3 4; do
		cycle; sleep 1
		u=$(metric 'klptrace_trace_records_unwritten_total')
		[ "${u%.*}" -gt 0 ] && break
	done
	echo "@@unwritten=$u"
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

# --- 4. a stalled transition explained, scraped by a real Prometheus ---------------
# KLPT_PROM: the host-written directory (tests/kernel/promlab.py) with
# prometheus.yml (scrapes 127.0.0.1:19557 every second, loads rules.yml: the
# shipped rules with every `for:` shortened), exprs.json (the dashboard's
# PromQL) and KLPT_PROMETHEUS, the prometheus binary.

# prom_get PATH?QUERY: Prometheus's HTTP API, the JSON answer on one line
prom_get() {
	python3 - "$1" <<'PY'
import sys, urllib.request
print(urllib.request.urlopen("http://127.0.0.1:9090" + sys.argv[1], timeout=10).read().decode())
PY
}

# prom_alerts: the alerts Prometheus holds now (pending and firing), one per line
prom_alerts() {
	prom_get /api/v1/alerts | python3 -c '
import json, sys
for a in json.load(sys.stdin)["data"]["alerts"]:
    print(json.dumps({"name": a["labels"]["alertname"], "state": a["state"],
                      "labels": a["labels"], "annotations": a["annotations"]}))'
}

# prom_wait_alert NAME STATE: until alert NAME is firing (STATE firing) or
# held in no state at all (STATE none); 1 after the step timeout
prom_wait_alert() {
	python3 - "$1" "$2" "$KLPT_STEP_TIMEOUT" <<'PY'
import json, sys, time, urllib.request
name, want, limit = sys.argv[1], sys.argv[2], time.time() + float(sys.argv[3])
while time.time() < limit:
    alerts = json.load(urllib.request.urlopen("http://127.0.0.1:9090/api/v1/alerts", timeout=10))
    states = {a["state"] for a in alerts["data"]["alerts"] if a["labels"]["alertname"] == name}
    if ("firing" in states) if want == "firing" else not states:
        sys.exit(0)
    time.sleep(0.5)
sys.exit(1)
PY
}

# metric_pos NAME_REGEX: the daemon's samples matching it add up to more than 0
metric_pos() {
	local v; v=$(metric "$1")
	[[ $v != 0 && $v != 0.0 ]]
}

# prom_exprs MODE: every dashboard expression, instant (now) or range (since
# Prometheus started): {"expr": number of series} as JSON
prom_exprs() {
	python3 - "$KLPT_PROM/exprs.json" "$1" "$PROM_T0" <<'PY'
import json, sys, time, urllib.parse, urllib.request
exprs, mode, t0 = json.load(open(sys.argv[1])), sys.argv[2], float(sys.argv[3])
out = {}
for e in exprs:
    q = {"query": e}
    if mode == "range":
        q.update(start=str(t0), end=str(time.time()), step="2")
    url = "http://127.0.0.1:9090/api/v1/" + ("query_range" if mode == "range" else "query")
    doc = json.load(urllib.request.urlopen(url + "?" + urllib.parse.urlencode(q), timeout=20))
    out[e] = len(doc["data"]["result"]) if doc["status"] == "success" else -1
print(json.dumps(out))
PY
}

# stall_scrape: the stall families and the transition gauge from the daemon
stall_scrape() {
	python3 -c '
import urllib.request
for l in urllib.request.urlopen("http://127.0.0.1:19557/metrics", timeout=10).read().decode().splitlines():
    if l.startswith(("klptrace_transition_b", "klptrace_transition_open", "klptrace_transition_s",
                     "klptrace_livepatch_in_transition", "klptrace_stall_")):
        print(l)'
}

case_stall() {
	mkdir -p /run/prom-data
	PROM_T0=$(date +%s)
	"$KLPT_PROMETHEUS" --config.file="$KLPT_PROM/prometheus.yml" --storage.tsdb.path=/run/prom-data \
		--web.listen-address=127.0.0.1:9090 > /run/prometheus.log 2>&1 &
	local prom=$!
	start stall || { kill $prom; return 1; }
	loop_until 'prom_get "/api/v1/query?query=up%7Bjob%3D%22klptrace%22%7D%3D%3D1" | grep -q "\"value\""' ||
		{ echo "@@prom_not_scraping=1"; cat /run/prometheus.log; }
	# a healthy host: one whole cycle, then no shipped alert may be pending or firing
	cycle
	sleep 8
	echo "@@alerts_healthy<<"; prom_alerts; echo "@@>>"
	# the stall: klpt_busy's worker sleeps in klpt_busy_work_func, which klpt_lp patches
	load_mod klpt_busy sleep_secs=600
	local t_stall=$SECONDS
	load_lp_nowait klpt_lp
	loop_until 'metric_pos "klptrace_transition_blocking_function_tasks\{.*function=\"klpt_busy_work_func\""' ||
		echo "@@stall_not_seen=1"
	echo "@@stall_seen_after=$((SECONDS - t_stall))"
	echo "@@scrape_stall<<"; stall_scrape; echo "@@>>"
	echo "@@status<<"; $KLPT status; echo "@@rc_status=$?"; echo "@@>>"
	echo "@@status_direct<<"; $KLPT status --direct; echo "@@>>"
	echo "@@status_json<<"; $KLPT status --format json; echo "@@>>"
	prom_wait_alert KlptraceTransitionStalled firing && echo "@@stall_alert_after=$((SECONDS - t_stall))"
	echo "@@alerts_stall<<"; prom_alerts; echo "@@>>"
	echo "@@dashboard_stall<<"; prom_exprs instant; echo "@@>>"
	# the worker leaves the function: klpt_busy's exit wakes it; the next sweep completes
	local t_leave=$SECONDS
	unload_mod klpt_busy
	wait_no_transition klpt_lp
	echo "@@completed_after_leave=$((SECONDS - t_leave))"
	prom_wait_alert KlptraceTransitionStalled none && echo "@@resolved_after_leave=$((SECONDS - t_leave))"
	sleep 2
	echo "@@scrape_after<<"; stall_scrape; echo "@@>>"
	echo "@@status_after<<"; $KLPT status; echo "@@>>"
	echo "@@dashboard_range<<"; prom_exprs range; echo "@@>>"
	disable_lp klpt_lp; unload_lp klpt_lp
	sleep 8
	echo "@@alerts_healthy_after<<"; prom_alerts; echo "@@>>"
	echo "@@stall_hits<<"; metric_lines 'klptrace_probe_hits_total\{program="stall'; echo "@@>>"
	kill $prom; wait $prom 2>/dev/null
	stop stall
	echo "@@stall_records<<"; grep '"type":"stall"' /run/stall.jsonl; echo "@@>>"
	validate stall
	echo "@@validate_text_stall<<"; $KLPT validate /run/stall.jsonl; echo "@@>>"
}

# metric_lines NAME_REGEX: the daemon's samples matching it, as they are
metric_lines() {
	python3 - "$1" <<'PY'
import re, sys, urllib.request
for l in urllib.request.urlopen("http://127.0.0.1:19557/metrics", timeout=10).read().decode().splitlines():
    if l and not l.startswith("#") and re.match(sys.argv[1], l):
        print(l)
PY
}
