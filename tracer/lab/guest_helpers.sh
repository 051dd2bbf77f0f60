# SPDX-License-Identifier: GPL-2.0
# Guest-side step helpers of the klptrace lab, modelled on the kernel's
# tools/testing/selftests/livepatch/functions.sh. Sourced by guest_driver.sh
# (and usable by hand in `klptrace lab shell`).
#
# Needs: KLPT_KMOD (dir with the built .ko files); optional KLPT_STEP_TIMEOUT
# (seconds each wait may take; TCG is slow, default 60).
#
# A helper that finds the kernel doing something other than what the step
# expects calls die, which exits the (sub)shell running the scenario's steps.

KLPT_STEP_TIMEOUT=${KLPT_STEP_TIMEOUT:-60}
KLP_SYSFS=/sys/kernel/livepatch

# klog MSG: a marker line in the kernel log, so the log reads like the steps.
# At KERN_INFO: the lab's console shows warnings and worse only (vm.py), and
# the markers are for the log, not for the (slow, emulated) serial console.
klog() {
	echo "<6>klpt-lab: $*" > /dev/kmsg
}

die() {
	klog "ERROR: $*"
	echo "ERROR: $*" >&2
	exit 1
}

# loop_until CMD: retry CMD every 0.1 s until it succeeds or the step timeout.
loop_until() {
	local cmd="$*" i=0 max=$((KLPT_STEP_TIMEOUT * 10))
	while true; do
		eval "$cmd" && return 0
		[[ $((i++)) -ge $max ]] && return 1
		sleep 0.1
	done
}

is_livepatch_mod() {
	modinfo -F livepatch "$KLPT_KMOD/$1.ko" 2>/dev/null | grep -q '^Y$'
}

__load_mod() {
	local mod="$1"; shift
	local out
	klog "% insmod $mod${*:+ $*}"
	out=$(insmod "$KLPT_KMOD/$mod.ko" "$@" 2>&1) || die "insmod $mod failed: $out"
	loop_until '[[ -e /sys/module/$mod ]]' || die "module $mod not in /sys/module"
}

# load_mod NAME [PARAM=VALUE...]: load an ordinary (target) module.
load_mod() {
	is_livepatch_mod "$1" && die "use load_lp for the livepatch $1"
	__load_mod "$@"
}

# load_lp_nowait NAME [PARAM=VALUE...]: load a livepatch, do not wait for its
# transition to finish.
load_lp_nowait() {
	local mod="$1"
	is_livepatch_mod "$mod" || die "$mod is not a livepatch"
	__load_mod "$@"
	loop_until '[[ -e $KLP_SYSFS/$mod ]]' || die "livepatch $mod not in $KLP_SYSFS"
}

# load_lp NAME [PARAM=VALUE...]: load a livepatch and wait for its transition.
load_lp() {
	local mod="$1"
	load_lp_nowait "$@"
	loop_until 'grep -q "^0$" $KLP_SYSFS/$mod/transition' ||
		die "livepatch $mod: transition did not finish in ${KLPT_STEP_TIMEOUT}s"
}

# load_failing_mod NAME [PARAM=VALUE...]: a load the kernel must refuse.
load_failing_mod() {
	local mod="$1"; shift
	local out
	klog "% insmod $mod${*:+ $*} (expected to fail)"
	if out=$(insmod "$KLPT_KMOD/$mod.ko" "$@" 2>&1); then
		die "$mod unexpectedly loaded"
	fi
	klog "insmod: $out"
}

# unload_mod NAME: rmmod once nothing holds the module.
unload_mod() {
	local mod="$1" out
	loop_until '[[ $(cat /sys/module/$mod/refcnt 2>/dev/null) == 0 ]]' ||
		die "module $mod still in use (refcnt $(cat /sys/module/$mod/refcnt 2>/dev/null))"
	klog "% rmmod $mod"
	out=$(rmmod "$mod" 2>&1) || die "rmmod $mod failed: $out"
	loop_until '[[ ! -e /sys/module/$mod ]]' || die "module $mod still in /sys/module"
}

unload_lp() {
	unload_mod "$1"
}

# disable_lp NAME: disable a livepatch and wait until the kernel has freed it
# (its sysfs directory disappears after the unpatching transition).
disable_lp() {
	local mod="$1"
	klog "% echo 0 > $KLP_SYSFS/$mod/enabled"
	echo 0 > "$KLP_SYSFS/$mod/enabled" || die "cannot disable $mod"
	loop_until '[[ ! -e $KLP_SYSFS/$mod ]]' ||
		die "livepatch $mod not gone ${KLPT_STEP_TIMEOUT}s after disabling"
}

# wait_transition NAME: wait until livepatch NAME's transition is over.
wait_transition() {
	local mod="$1"
	loop_until 'grep -q "^0$" $KLP_SYSFS/$mod/transition' ||
		die "livepatch $mod: transition did not finish in ${KLPT_STEP_TIMEOUT}s"
}

# release_busy: klpt_busy's worker leaves klpt_busy_work_func now (the module
# stays loaded), so a transition it stalled can complete.
release_busy() {
	klog "% echo 1 > /sys/module/klpt_busy/parameters/release"
	echo 1 > /sys/module/klpt_busy/parameters/release || die "cannot release klpt_busy's worker"
}

# start_getpid_loops N: N processes calling getpid(2) in a loop (klpt_getpid),
# as the kernel's test-syscall.sh starts them; stop_getpid_loops ends them.
start_getpid_loops() {
	local i
	klog "% start $1 getpid loops"
	for i in $(seq 1 "$1"); do
		"$KLPT_KMOD/klpt_getpid" > /dev/null 2>&1 &
	done
	loop_until '[[ $(pgrep -cx klpt_getpid) -ge '"$1"' ]]' || die "getpid loops did not start"
}

stop_getpid_loops() {
	klog "% stop getpid loops"
	pkill -x klpt_getpid
	loop_until '! pgrep -x klpt_getpid > /dev/null' || die "getpid loops still running"
}

# set_pre_patch_ret NAME VALUE: change what NAME's pre_patch callbacks return.
set_pre_patch_ret() {
	local mod="$1" ret="$2"
	klog "% echo $ret > /sys/module/$mod/parameters/pre_patch_ret"
	echo "$ret" > "/sys/module/$mod/parameters/pre_patch_ret"
	loop_until '[[ $(cat /sys/module/$mod/parameters/pre_patch_ret) == "$ret" ]]' ||
		die "pre_patch_ret of $mod not set"
}

# record_text NAME: the address of module NAME's .text in the kernel log
# ("klpt-lab: text NAME 0x..."), so a test can tell whether a module landed
# at another one's old addresses.
record_text() {
	klog "text $1 $(cat /sys/module/$1/sections/.text 2>/dev/null || echo unknown)"
}

# reset_livepatch_state: disable every livepatch, wait for transitions, unload
# every lab module, so the next scenario starts clean. Never dies: it reports
# what it could not clean (returns 1).
reset_livepatch_state() {
	local lp mod ok=0
	pkill -x klpt_getpid 2>/dev/null
	for lp in "$KLP_SYSFS"/*; do
		[[ -e "$lp/enabled" ]] || continue
		# A stalled transition cannot be waited out; reverse it by disabling.
		echo 0 > "$lp/enabled" 2>/dev/null
	done
	loop_until '! ls $KLP_SYSFS/*/transition >/dev/null 2>&1' || {
		for lp in "$KLP_SYSFS"/*; do
			[[ -e "$lp/force" ]] && echo 1 > "$lp/force" 2>/dev/null
		done
		loop_until '! ls $KLP_SYSFS/*/transition >/dev/null 2>&1' || ok=1
	}
	# every lab module (klpt_*), the livepatches first: they may patch the others
	local mods=() m
	for m in /sys/module/klpt_*; do
		[[ -e $m ]] || continue
		m=${m##*/}
		if is_livepatch_mod "$m"; then mods=("$m" "${mods[@]}"); else mods+=("$m"); fi
	done
	for mod in "${mods[@]}"; do
		[[ -e /sys/module/$mod ]] || continue
		echo 0 > /sys/module/$mod/parameters/sleep_secs 2>/dev/null
		loop_until '[[ $(cat /sys/module/$mod/refcnt 2>/dev/null) == 0 ]]'
		rmmod "$mod" 2>/dev/null || ok=1
	done
	return $ok
}
