"""The statistics of the lab benchmark's paired rounds (pure; unit-tested in
tests/unit/test_bench_abba.py).

Rounds run in ABBA order: round i is ON when i % 4 is 0 or 3, OFF otherwise.
A quad (rounds 4q .. 4q+3: on, off, off, on) gives one ratio
(on0 + on3) / (off1 + off2), in which a drift linear over the quad cancels.
The figure is the median of the quad ratios with a bootstrap 95 % interval of
that median: a target is met only if the whole interval is on its side, and
not measurable if the interval straddles it.
"""

from __future__ import annotations

import random
import statistics


def side(i: int) -> str:
    return "on" if i % 4 in (0, 3) else "off"


def quad_ratios(values: list[float]) -> list[float]:
    """values[i] is round i's figure; an incomplete last quad is dropped."""
    out = []
    for q in range(len(values) // 4):
        a0, b1, b2, a3 = values[4 * q: 4 * q + 4]
        if b1 + b2 > 0:
            out.append((a0 + a3) / (b1 + b2))
    return out


def median_ci(xs: list[float], *, resamples: int = 4000, seed: int = 7) -> tuple[float, float, float]:
    """(median, low, high): the percentile bootstrap 95 % interval of the median."""
    if not xs:
        raise ValueError("no values")
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(resamples))
    return statistics.median(xs), meds[int(0.025 * resamples)], meds[int(0.975 * resamples) - 1]


def verdict(ci: tuple[float, float, float], target: float, *, at_least: bool) -> str:
    """'met', 'missed' or 'not resolved' (the interval straddles the target)."""
    _, lo, hi = ci
    if at_least:
        return "met" if lo >= target else "missed" if hi < target else "not resolved"
    return "met" if hi <= target else "missed" if lo > target else "not resolved"
