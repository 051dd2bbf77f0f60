"""`klptrace` with a fault injected into its daemon's event path, for the
kernel tests (tests/kernel/guest_daemon.sh, case faults): KLPT_INJECT_FAULT=
STAGE:N raises an exception in STAGE at its Nth event, once
(tests/faults.py). The product has no such switch; this wraps it.

    KLPT_INJECT_FAULT=infer:3 python3 tests/kernel/klptrace_faulty.py run ...
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from faults import FaultInjection  # noqa: E402

from klptrace.tracer.commands.cli import main  # noqa: E402
from klptrace.tracer.daemon import daemon  # noqa: E402

_init = daemon.Daemon.__init__


def _with_faults(self, opts, *, faults=None):
    _init(self, opts, faults=FaultInjection(os.environ.get("KLPT_INJECT_FAULT")))


daemon.Daemon.__init__ = _with_faults
sys.argv[0] = "klptrace"
main()
