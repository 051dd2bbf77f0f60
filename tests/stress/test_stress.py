"""Stress and fault suite of the tracer daemon (`klptrace run`), issue 7.

ONE guest boot (module fixture `stress_run`) runs, in order:

1. fault (only with KLPT_STRESS_FULL=1, i.e. `make stress`: a second daemon
   start costs 70-150 s under TCG, too much for `make test`): daemon A is started, a klpt_lp patching transition is stalled by
   klpt_busy (sleep_secs), A is killed with SIGKILL in the middle of it, daemon
   B is started: A's trace validates (its last line may be cut), B removed every
   tracefs probe of A, and B judges the open cycle `unknown`, never a violation.
   B's trace is then rotated (mv + SIGHUP) so the storm gets a trace of its own.
   Without KLPT_STRESS_FULL, B is simply started.
2. second instance: `klptrace run` while B runs exits 9 and says why.
3. storm: KLPT_STRESS_CYCLES cycles (default 3 in `make test`; `make stress`: 200)
   of klpt_lp and klpt_lp2 enable/disable (stacked; cycles 3, 8, 13, ... an
   atomic replace instead; every even cycle also an upgrade pair, klpt_up1
   then klpt_up2, which lands at klpt_up1's addresses)
   plus klpt_mod load/unload, with B running. With KLPT_STRESS_FULL=1 the module
   operations run as background jobs concurrent with the livepatch transitions
   (this finds false violations when a patch is enabled while its target module
   is going, see docs/benchmarks.md); without it, in the same order, serially.
4. survival: the storm removed the livepatch modules B had probed directly many
   times; B still runs and still traces a later cycle. B is stopped with SIGINT:
   its exit log says 0 lost and 0 violations, its storm trace validates with exit
   0 and holds no `loss` record.
5. undersized ring buffer: daemon C runs with `--ring-pages 1` (4 events). It
   is stopped (SIGSTOP) for one cycle, so records are lost for certain, then
   continued for a second cycle. Every loss is counted (exit log), surfaced
   as `loss` records whose counts add up to it and as the
   klptrace_lost_records_total metric (a real scrape), and `klptrace validate`
   of C's trace says `unknown`, never a violation (exit 0).

Each guest command prints `@@key=value` lines the tests below read.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from guestout import parse

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
KLPTRACE = ROOT / ".venv" / "bin" / "klptrace"
# Short (make test) default: 3 cycles, to stay near the 4-minute budget of the
# default test run (a daemon start alone is 60-150 s under TCG); make stress: 200.
CYCLES = int(os.environ.get("KLPT_STRESS_CYCLES", "3"))
# KLPT_STRESS_FULL=1 (make stress) adds what is too slow for `make test`: the kill -9/restart part (a second daemon start, +70-150 s
# under TCG) and the storm's concurrency (target-module load/unload as background
# jobs racing the livepatch transitions); without it the storm is serial.
FULL = os.environ.get("KLPT_STRESS_FULL", "0") == "1"
FAULT = CONCURRENT = FULL

_START = ("rm -f /run/klpt-{name}.ready; {klp} run --ready-file /run/klpt-{name}.ready "
          "--trace /run/{name}.jsonl 2>/run/{name}.log & echo $! > /run/{name}.pid; "
          "t0=$(date +%s.%N); "
          "for i in $(seq 1 1800); do [ -e /run/klpt-{name}.ready ] && break; sleep 0.1; done; "
          "[ -e /run/klpt-{name}.ready ] || {{ cat /run/{name}.log; exit 97; }}; "
          "echo \"@@start_{name}_s=$(awk \"BEGIN {{print $(date +%s.%N) - $t0}}\")\"")
_STOP = ("kill -INT $(cat /run/{name}.pid); while kill -0 $(cat /run/{name}.pid) 2>/dev/null; "
         "do sleep 0.2; done; echo '@@log_{name}<<'; cat /run/{name}.log; echo '@@>>'")
_PROBES = "grep -c '^[pr][0-9]*:klptrace/' /sys/kernel/tracing/kprobe_events"
_START_C = _START.replace(" run --ready-file", " run --ring-pages 1 --ready-file")
_CYCLE = ("load_mod klpt_mod; load_lp klpt_lp; load_lp klpt_lp2; disable_lp klpt_lp2; "
          "unload_lp klpt_lp2; disable_lp klpt_lp; unload_lp klpt_lp; unload_mod klpt_mod; ")
_SCRAPE_LOST = ("python3 -c \"import urllib.request as u, re; t = u.urlopen("
                "'http://127.0.0.1:19557/metrics').read().decode(); "
                "print(re.search(r'^klptrace_lost_records_total (\\\\S+)', t, re.M).group(1))\"")


def _prefix(staged: Path) -> str:
    return (f"export KLPT_KMOD={staged} KLPT_STEP_TIMEOUT=120; "
            f"source {ROOT}/tracer/lab/guest_helpers.sh; "
            "mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing; ")


def _wait_transition_done(patch: str) -> str:
    return (f"for i in $(seq 1 600); do [ \"$(cat /sys/kernel/livepatch/{patch}/transition "
            f"2>/dev/null)\" != 1 ] && break; sleep 0.2; done")


def _json_block(name: str, cmd: str) -> str:
    return f"echo '@@json_{name}<<'; {cmd}; echo \"@@>>\"; "


def fault_cmd(klp: str) -> str:
    return (
        _START.format(klp=klp, name="a") + "; "
        "load_mod klpt_busy sleep_secs=900; load_lp_nowait klpt_lp; "
        "echo \"@@transition_before_kill=$(cat /sys/kernel/livepatch/klpt_lp/transition)\"; "
        # A probes the enabled patch's callbacks directly (tracefs kprobes)
        f"for i in $(seq 1 300); do [ \"$({_PROBES})\" -gt 0 ] && break; sleep 0.1; done; "
        f"echo \"@@probes_of_a=$({_PROBES})\"; "
        "apid=$(cat /run/a.pid); kill -9 $apid; while kill -0 $apid 2>/dev/null; do sleep 0.1; done; "
        "echo \"@@transition_at_kill=$(cat /sys/kernel/livepatch/klpt_lp/transition)\"; "
        f"echo \"@@probes_after_kill=$({_PROBES})\"; "
        + _START.format(klp=klp, name="b") + "; "
        "echo \"@@probes_of_dead_run=$(grep -c \"klptrace/d${apid}_\" "
        "/sys/kernel/tracing/kprobe_events)\"; "
        "echo '@@kprobe_events_after_restart<<'; cat /sys/kernel/tracing/kprobe_events; "
        "echo '@@>>'; "
        # the open cycle completes under B
        "unload_mod klpt_busy; " + _wait_transition_done("klpt_lp") + "; "
        "disable_lp klpt_lp; unload_lp klpt_lp; sleep 1; "
        # rotate B's trace: the storm gets its own file
        "mv /run/b.jsonl /run/b-restart.jsonl; kill -HUP $(cat /run/b.pid); "
        "for i in $(seq 1 100); do grep -q 'trace reopened' /run/b.log && break; sleep 0.1; done; "
        "echo \"@@tail_a=$(tail -c 200 /run/a.jsonl | tail -n 1 | head -c 80)\"; "
        + "echo '@@restart_trace_head<<'; head -n 8 /run/b-restart.jsonl; echo '@@>>'; "
        + "echo '@@log_b_restart<<'; cat /run/b.log; echo '@@>>'; "
        + _json_block("a", f"{klp} validate --format json /run/a.jsonl; echo \"@@rc_a=$?\"")
        + _json_block("restart", f"{klp} validate --format json /run/b-restart.jsonl; "
                      "echo \"@@rc_restart=$?\""))


SECOND = ("timeout 120 {klp} run --trace /run/second.jsonl > /run/second.out 2>&1; "
          "echo \"@@second_rc=$?\"; echo '@@second_out<<'; cat /run/second.out; echo '@@>>'")

_STORM = r"""
# spawn CMD: a background job when CONCURRENT, else run it now; join waits for it
spawn() { if (( CONCURRENT )); then ( eval "$1" ) & p=$!; else ( eval "$1" ) || die "$1 failed"; p=; fi; }
join() { [[ -z $p ]] || wait $p || die "cycle $i: background '$1' failed"; }
storm_cycle() {
	local i=$1 p
	if (( i % 5 == 3 )); then
		load_lp klpt_lp
		spawn 'load_mod klpt_mod && unload_mod klpt_mod'
		load_lp klpt_lp2 replace=1
		join 'klpt_mod load/unload'
		loop_until '[[ ! -e $KLP_SYSFS/klpt_lp ]]' || die "klpt_lp not replaced"
		disable_lp klpt_lp2; unload_lp klpt_lp2; unload_lp klpt_lp
		return
	fi
	spawn 'load_mod klpt_mod && unload_mod klpt_mod'
	load_lp klpt_lp
	join 'klpt_mod load/unload'
	load_lp klpt_lp2
	spawn 'load_mod klpt_mod'
	disable_lp klpt_lp2
	join 'klpt_mod load'
	unload_lp klpt_lp2
	disable_lp klpt_lp
	unload_lp klpt_lp
	unload_mod klpt_mod
	if (( i % 2 == 0 )); then
		# a fleet upgrade: version 2 of a fix lands at version 1's addresses
		spawn 'load_mod klpt_mod && unload_mod klpt_mod'
		load_lp klpt_up1; disable_lp klpt_up1; unload_lp klpt_up1
		join 'klpt_mod load/unload'
		load_lp klpt_up2; disable_lp klpt_up2; unload_lp klpt_up2
	fi
}
rss() { echo "@@rss_kb_b_$1=$(awk '/^VmRSS/ {print $2}' /proc/$(cat /run/b.pid)/status)"; }
rss before_storm
t0=$(date +%s.%N)
for i in $(seq 1 CYCLES); do
	( storm_cycle $i ) || { echo "@@storm_failed_cycle=$i"; reset_livepatch_state; break; }
	kill -0 $(cat /run/b.pid) 2>/dev/null || { echo "@@daemon_died_cycle=$i"; break; }
done
echo "@@storm_done=$i"
rss after_storm
echo "@@storm_s=$(awk "BEGIN {print $(date +%s.%N) - $t0}")"
"""


def storm_cmd(cycles: int) -> str:
    return f"CONCURRENT={int(CONCURRENT)}; " + _STORM.replace("CYCLES", str(cycles))


def survive_cmd(klp: str) -> str:
    return (
        "n0=$(wc -l < /run/b.jsonl); "
        "load_mod klpt_mod; load_lp klpt_lp; disable_lp klpt_lp; unload_lp klpt_lp; "
        "unload_mod klpt_mod; sleep 2; "
        "kill -0 $(cat /run/b.pid) && echo @@alive=1 || echo @@alive=0; "
        "echo \"@@later_transitions=$(tail -n +$((n0 + 1)) /run/b.jsonl | "
        "grep '\"transition\"' | grep -c klpt_lp)\"; "
        + _STOP.format(name="b") + "; "
        f"echo \"@@probes_after_stop=$({_PROBES})\"; "
        "echo \"@@loss_records=$(grep -c '\"loss\"' /run/b.jsonl)\"; "
        "echo \"@@storm_records=$(wc -l < /run/b.jsonl)\"; "
        + _json_block("storm", f"{klp} validate --format json /run/b.jsonl; echo \"@@rc_storm=$?\""))


def undersized_cmd(klp: str) -> str:
    return (
        _START_C.format(klp=klp, name="c") + "; "
        "kill -STOP $(cat /run/c.pid); " + _CYCLE + "kill -CONT $(cat /run/c.pid); "
        + _CYCLE + "sleep 2; "
        f"echo \"@@lost_metric=$({_SCRAPE_LOST})\"; "
        + _STOP.format(name="c") + "; "
        "echo \"@@loss_counts=$(grep '\"loss\"' /run/c.jsonl | "
        "grep -o '\"count\": *[0-9]*' | grep -o '[0-9]*$' | paste -sd+)\"; "
        + _json_block("c", f"{klp} validate --format json /run/c.jsonl; echo \"@@rc_c=$?\""))


@pytest.fixture(scope="module")
def stress_run(tmp_path_factory, request):
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    from klptrace.tracer.lab import kmod, packages, vm
    kernel = packages.resolve_kernel(os.environ.get("KLPT_KERNEL"))
    staged = kmod.stage_modules(kmod.build_modules(kernel), tmp_path_factory.mktemp("ko"))
    klp = str(KLPTRACE)
    pre = _prefix(staged)
    first = fault_cmd(klp) if FAULT else _START.format(klp=klp, name="b")
    cmds = {"fault" if FAULT else "start": pre + first,
            "second": pre + SECOND.format(klp=klp),
            "storm": pre + storm_cmd(CYCLES),
            "survive": pre + survive_cmd(klp),
            # the storm's trace itself, kept on the host as lab-out/stress-*/storm.jsonl
            "storm_trace": "cat /run/b.jsonl",
            "undersized": pre + undersized_cmd(klp)}
    results, dmesg = vm.run_commands(kernel, list(cmds.values()),
                                     timeout=900 + 20 * CYCLES)   # a cycle: 10-12 s under TCG
    by_cmd = {r.command: r for r in results}
    out = {k: by_cmd[c].output for k, c in cmds.items()}
    # kept on disk for a failing run
    keep = Path(os.environ.get("KLPT_LAB_OUT", ROOT / "lab-out")) / \
        f"stress-{os.environ.get('KLPT_KERNEL') or 'stable'}"
    keep.mkdir(parents=True, exist_ok=True)
    (keep / "storm.jsonl").write_text(out.pop("storm_trace"))
    for k, o in out.items():
        (keep / f"{k}.out").write_text(o)
    (keep / "dmesg").write_text(dmesg)
    got = {}
    for o in out.values():
        got.update(parse(o))
    print({k: v for k, v in got.items() if "\n" not in v})
    return got, out


def _jsonv(got: dict, name: str) -> dict:
    """The JSON report; validate's stderr lines may follow it in the block."""
    return json.JSONDecoder().raw_decode(got[f"json_{name}"].lstrip())[0]


# The kill -9/restart part belongs to the long suite: `make test` deselects the
# `stress` marker (-m "not stress"), `make stress` runs it with KLPT_STRESS_FULL=1.
needs_fault = pytest.mark.stress


@needs_fault
def test_kill9_trace_so_far_validates(stress_run):
    got, out = stress_run
    assert got.get("transition_before_kill") == "1", out["fault"]
    assert got.get("transition_at_kill") == "1", out["fault"]      # killed mid-transition
    doc = _jsonv(got, "a")
    assert doc["violations"] == 0, got["json_a"]
    assert doc["files"][0]["error"] is None, got["json_a"]
    # exit 0, or a non-zero exit that only carries input warnings (a cut last line)
    assert got["rc_a"] == "0" or doc["files"][0]["input_warnings"], got["json_a"]


@needs_fault
def test_kill9_restart_removes_dead_probes(stress_run):
    got, out = stress_run
    assert int(got["probes_after_kill"]) > 0, out["fault"]   # the dead run left probes
    assert got["probes_of_dead_run"] == "0", out["fault"]


@needs_fault
def test_restart_judges_open_cycle_unknown(stress_run):
    got, _ = stress_run
    doc = _jsonv(got, "restart")
    assert doc["violations"] == 0, got["json_restart"]
    assert doc["unknown"] >= 1, got["json_restart"]
    assert got["rc_restart"] == "0", got["json_restart"]


def test_second_instance_refused(stress_run):
    got, out = stress_run
    assert "start_b_s" in got, out.get("start") or out.get("fault")
    assert got.get("second_rc") == "9", out["second"]
    assert "another klptrace daemon is running" in got["second_out"], out["second"]


def test_storm_lossless_and_valid(stress_run):
    got, out = stress_run
    assert "storm_failed_cycle" not in got and "daemon_died_cycle" not in got, out["storm"]
    assert got.get("storm_done") == str(CYCLES), out["storm"]
    log = got["log_b"]
    m = re.search(r"stopped: (\d+) records, (\d+) lost, (\d+) violations", log)
    assert m, log
    assert (m.group(2), m.group(3)) == ("0", "0"), log
    assert got["loss_records"] == "0", out["survive"]
    doc = _jsonv(got, "storm")
    assert doc["violations"] == 0 and got["rc_storm"] == "0", got["json_storm"]
    # every cycle is in the trace: at least 2 livepatch enables a cycle
    assert int(got["storm_records"]) > 8 * CYCLES, got["storm_records"]


def test_daemon_survives_probed_modules_removed(stress_run):
    got, out = stress_run
    assert got.get("alive") == "1", out["survive"]
    assert int(got.get("later_transitions", "0")) >= 2, out["survive"]
    assert got.get("probes_after_stop") == "0", out["survive"]


def test_undersized_ring_counts_every_loss(stress_run):
    got, out = stress_run
    m = re.search(r"stopped: (\d+) records, (\d+) lost, (\d+) violations", got.get("log_c", ""))
    assert m, out["undersized"]
    lost = int(m.group(2))
    assert lost > 0, out["undersized"]          # stopped for a whole cycle: it must lose
    assert m.group(3) == "0", got["log_c"]
    # every loss is in the trace, at its place, as `loss` records
    assert sum(int(n) for n in got["loss_counts"].split("+")) == lost, out["undersized"]
    # and in the metric, scraped while C ran (after both cycles)
    assert float(got["lost_metric"]) == lost, out["undersized"]
    doc = _jsonv(got, "c")
    assert doc["violations"] == 0, got["json_c"]
    assert doc["unknown"] >= 1, got["json_c"]
    assert got["rc_c"] == "0", got["json_c"]
