"""The paired benchmark's statistics (tests/bench/abba.py)."""

from bench.abba import median_ci, quad_ratios, side, verdict


def test_abba_order():
    assert [side(i) for i in range(8)] == ["on", "off", "off", "on"] * 2


def test_quad_ratio_cancels_a_linear_drift():
    # a 10 % slower ON side on a throughput falling linearly round by round
    values = [(100 - 5 * i) * (0.9 if side(i) == "on" else 1.0) for i in range(12)]
    assert [round(r, 9) for r in quad_ratios(values)] == [0.9, 0.9, 0.9]


def test_incomplete_quad_dropped():
    assert quad_ratios([1, 1, 1, 1, 2, 2]) == [1.0]


def test_median_ci_contains_the_median_and_is_seeded():
    xs = [0.97, 1.01, 0.99, 1.03, 1.0, 0.98, 1.02]
    med, lo, hi = median_ci(xs)
    assert lo <= med == 1.0 <= hi
    assert (lo, hi) == median_ci(xs)[1:]


def test_verdict():
    assert verdict((1.0, 0.995, 1.01), 0.99, at_least=True) == "met"
    assert verdict((0.98, 0.97, 0.985), 0.99, at_least=True) == "missed"
    assert verdict((1.0, 0.9, 1.1), 0.99, at_least=True) == "not resolved"
    assert verdict((1.01, 1.0, 1.04), 1.05, at_least=False) == "met"
    assert verdict((1.2, 1.1, 1.3), 1.05, at_least=False) == "missed"
