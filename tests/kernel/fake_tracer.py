"""A stand-in for `klptrace run` in the lab's tracer hook test: it honours
the contract the guest driver relies on (--trace FILE, --ready-file PATH,
--preload PATH..., stop on SIGINT with everything flushed) and records what
it was given."""

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
    stop = {"signal": None}

    def on_signal(signum: int, frame: object) -> None:
        stop["signal"] = signal.Signals(signum).name

    signal.signal(signal.SIGINT, on_signal)
    time.sleep(1)                            # a tracer takes a while to attach
    Path(args.ready_file).write_text("ready\n")
    while stop["signal"] is None:
        time.sleep(0.1)
    with open(args.trace, "w") as f:
        f.write(json.dumps({"preload": args.preload, "stopped_by": stop["signal"],
                            "ready_file": args.ready_file}) + "\n")


if __name__ == "__main__":
    main()
