import os
import sys

# tests/ helpers (kmodel, tracebuild) import as top-level modules
sys.path.insert(0, os.path.dirname(__file__))

# Property tests: `make test` (CI) runs the same examples every time, so that a
# landing is never refused by an example no change of it drew; `make stress`
# explores (KLPT_HYPOTHESIS=explore: new random examples each run, many more).
# A failure found there becomes a plain regression test beside its property.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("KLPT_HYPOTHESIS", "ci"))
