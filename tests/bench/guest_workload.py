"""Guest workload of tests/bench/bench_lab.py: syscall- and scheduler-heavy,
no livepatch activity. Each iteration: getpid, stat, and a one-byte pipe
ping-pong with a child process (two context switches). Prints iterations/s.

    python3 guest_workload.py [ITERATIONS]
"""

import os
import sys
import time


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:
        while os.read(r1, 1) == b"x":
            os.write(w2, b"y")
        os._exit(0)
    t = time.perf_counter()
    for _ in range(n):
        os.getpid()
        os.stat("/")
        os.write(w1, b"x")
        os.read(r2, 1)
    dt = time.perf_counter() - t
    os.write(w1, b"q")
    os.waitpid(pid, 0)
    print(f"{n / dt:.1f}")


if __name__ == "__main__":
    main()
