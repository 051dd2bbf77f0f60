"""Validator benchmark: records per second and peak memory of
`klptrace validate` on generated traces (not a test: figures go to
docs/benchmarks.md).

    .venv/bin/python -m tests.bench.bench_validate [N ...]   # default 1000000
    make bench

The trace repeats the lab's scenarios from the kernel model (tests/kmodel.py)
with the same patch names, so a correct validator's memory stays flat in the
trace length. Peak memory is the child process's max RSS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from model_scenarios import SCENARIOS  # noqa: E402


def write_trace(path: Path, n: int) -> int:
    """At least n records: the scenarios played over and over."""
    plays = [f() for f in SCENARIOS.values()]
    header = dict(plays[0].header, state={"patches": [], "modules": []})
    seq = 0
    dumps = json.dumps
    with open(path, "w") as f:
        f.write(dumps(header) + "\n")
        while seq < n:
            for m in plays:
                # a scenario starts with its own modules loaded: announce them
                for mod in m.header["state"]["modules"]:
                    seq += 1
                    f.write(dumps({"type": "module", "seq": seq, "ts_ns": seq * 1000,
                                   "module": mod, "event": "coming"}) + "\n")
                    seq += 1
                    f.write(dumps({"type": "module", "seq": seq, "ts_ns": seq * 1000,
                                   "module": mod, "event": "live"}) + "\n")
                loaded = set(m.header["state"]["modules"])
                for r in m.records:
                    seq += 1
                    f.write(dumps(dict(r, seq=seq, ts_ns=seq * 1000)) + "\n")
                    if r["type"] == "module":
                        if r["event"] == "live":
                            loaded.add(r["module"])
                        elif r["event"] == "going":
                            loaded.discard(r["module"])
                for mod in sorted(loaded):   # leave no module behind
                    seq += 1
                    f.write(dumps({"type": "module", "seq": seq, "ts_ns": seq * 1000,
                                   "module": mod, "event": "going"}) + "\n")
    return seq


def bench(n: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"bench-{n}.jsonl"
        records = write_trace(path, n)
        size = path.stat().st_size
        with open(Path(d) / "out", "w+") as out:
            t0 = time.perf_counter()
            p = subprocess.Popen([str(REPO / ".venv/bin/klptrace"), "validate", "-q",
                                  str(path)], stdout=out, stderr=subprocess.STDOUT)
            # wait4 gives this child's own peak RSS (RUSAGE_CHILDREN would be the
            # max over every child so far, hiding whether memory grows with n)
            _, status, usage = os.wait4(p.pid, 0)
            secs = time.perf_counter() - t0
            p.returncode = rc = os.waitstatus_to_exitcode(status)
            if rc != 0:
                out.seek(0)
                raise SystemExit(f"validate exited {rc}: {out.read()[-1000:]}")
    return {"records": records, "bytes": size, "seconds": round(secs, 2),
            "records_per_second": int(records / secs),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [1_000_000]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    for n in sizes:
        r = bench(n)
        print(f"{r['records']:>10} records  {r['bytes'] / 2**20:7.1f} MiB  "
              f"{r['seconds']:7.2f} s  {r['records_per_second']:>9} records/s  "
              f"peak RSS {r['peak_rss_mib']} MiB")


if __name__ == "__main__":
    main(sys.argv[1:])
