"""A stand-in for `klptrace run` in the lab's tracer hook test: it honours
the contract the guest driver relies on (--trace FILE, --ready-file PATH,
--preload PATH..., SIGHUP reopens the trace path, stop on SIGINT with
everything flushed) and records what it was given."""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", required=True)
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--preload", action="append", default=[])
    args = ap.parse_args()
    events: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        events.append(signal.Signals(signum).name)

    def line(by: str) -> str:
        return json.dumps({"preload": args.preload, "handed_over_by": by,
                           "ready_file": args.ready_file}) + "\n"

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    f = open(args.trace, "w")
    time.sleep(1)                            # a tracer takes a while to attach
    Path(args.ready_file).write_text("ready\n")
    while True:
        while not events:
            time.sleep(0.1)
        sig = events.pop(0)
        f.write(line(sig))
        f.close()
        if sig == "SIGINT":
            break
        f = open(args.trace, "a")            # the renamed path: a new file
        f.write('{"type":"header"}\n')
        f.flush()                            # the driver waits for a non-empty file


if __name__ == "__main__":
    main()
