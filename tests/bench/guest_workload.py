"""Guest workload of tests/bench/bench_lab.py: syscall- and scheduler-heavy,
no livepatch activity. Each iteration: getpid, stat, and a one-byte pipe
ping-pong with a child process (two context switches).

    python3 guest_workload.py ITERATIONS
        one round; prints iterations/s
    python3 guest_workload.py ITERATIONS BLOCKS DAEMON_PID
        paired: BLOCKS blocks of ITERATIONS in ABBA order (on, off, off, on,
        on, off, ...), the daemon ON (running, every kprobe armed) or OFF
        (every kprobe disarmed, the daemon SIGSTOPped: as if it were not
        there); prints one "on RATE" / "off RATE" line a block

Why in one process: a new python3 per round costs a start-up that TCG makes
noisy, and blocks a second apart see the same host; the switch happens
between blocks, outside the timed part.
"""

import os
import signal
import sys
import time

from abba import side   # beside this file: the guest runs it from the host's tree

KPROBES = "/sys/kernel/debug/kprobes/enabled"


def _switch(to: str, pid: int) -> None:
    # ON: resume the daemon first, then arm (it sees every event of the block);
    # OFF: disarm first, then stop it (nothing is left for it to read).
    if to == "on":
        os.kill(pid, signal.SIGCONT)
        with open(KPROBES, "w") as f:
            f.write("1")
    else:
        with open(KPROBES, "w") as f:
            f.write("0")
        os.kill(pid, signal.SIGSTOP)
    time.sleep(0.05)   # let the switch's own work (ftrace text pokes) settle


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    blocks = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    pid = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    child = os.fork()
    if child == 0:
        while os.read(r1, 1) == b"x":
            os.write(w2, b"y")
        os._exit(0)

    def round_() -> float:
        t = time.perf_counter()
        for _ in range(n):
            os.getpid()
            os.stat("/")
            os.write(w1, b"x")
            os.read(r2, 1)
        return n / (time.perf_counter() - t)

    try:
        if not blocks:
            print(f"{round_():.1f}")
        else:
            for i in range(blocks):
                _switch(side(i), pid)
                print(f"{side(i)} {round_():.1f}", flush=True)
    finally:
        if blocks:
            _switch("on", pid)
        os.write(w1, b"q")
        os.waitpid(child, 0)


if __name__ == "__main__":
    main()
