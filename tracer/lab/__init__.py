"""The kernel lab: real livepatches in a TCG guest (virtme-ng) on Debian's
kernels, the documented callback scenarios, and their kernel-log ground truth.

Public API (used by the kernel tests and by the tracer's tests):
    run_scenarios(kernel=None, only=None, out_dir, tracer_cmd=None, preload=None) -> LabRun
    resolve_kernel(spec) -> Kernel;  LabError;  SCENARIOS
"""

from .errors import LabError
from .packages import Kernel, resolve_kernel
from .runner import LabRun, ScenarioResult, run_scenarios
from .scenarios import NAMES, SCENARIOS

__all__ = ["LabError", "Kernel", "resolve_kernel", "LabRun", "ScenarioResult",
           "run_scenarios", "NAMES", "SCENARIOS"]
