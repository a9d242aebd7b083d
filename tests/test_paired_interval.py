"""The paired comparison's interval (Tango's score interval), p-value (exact McNemar) and verdicts, against
computations written here independently: the restricted likelihood maximized numerically, exact enumeration of
small samples, the binomial distribution summed in rationals, Holm's procedure on a worked family."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.optimize import brentq, minimize_scalar
from scipy.stats import norm

from masc_probe.report._compare import apply_holm, holm, mcnemar_p, paired_difference

Z = float(norm.ppf(0.975))


def _score_by_numeric_mle(b: int, c: int, n: int, delta: float) -> float:
    """(b − c − nΔ)/sqrt(n Var) with the cell probabilities maximizing the likelihood under p12 − p21 = Δ, found by
    a bounded numeric search (no closed form)."""
    lo, hi = max(0.0, -delta), (1.0 - delta) / 2  # p21 >= 0, p12 = p21 + Δ >= 0, p12 + p21 <= 1

    def nll(p21: float) -> float:
        p12, rest = p21 + delta, 1.0 - 2 * p21 - delta
        total = 0.0
        for count, prob in ((b, p12), (c, p21), (n - b - c, rest)):
            if count:
                total -= count * math.log(max(prob, 1e-300))
        return total

    if hi - lo < 1e-15:
        p21 = lo
    else:
        p21 = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-13}).x
    var = (2 * p21 + delta) - delta**2
    return (b - c - n * delta) / math.sqrt(n * var)


def _interval_by_numeric_mle(b: int, c: int, n: int) -> tuple[float, float]:
    est = (b - c) / n
    edge = 1 - 1e-9
    low = -1.0 if _score_by_numeric_mle(b, c, n, -edge) <= Z else brentq(
        lambda d: _score_by_numeric_mle(b, c, n, d) - Z, -edge, est, xtol=1e-12)
    high = 1.0 if _score_by_numeric_mle(b, c, n, edge) >= -Z else brentq(
        lambda d: _score_by_numeric_mle(b, c, n, d) + Z, est, edge, xtol=1e-12)
    return low, high


@pytest.mark.parametrize(("b", "c", "n"), [(60, 20, 400), (3, 11, 120), (0, 7, 50), (5, 0, 50), (9, 9, 359),
                                           (1, 0, 10), (40, 38, 1000), (0, 0, 179), (12, 2, 44)])
def test_the_interval_is_the_score_interval_of_the_restricted_likelihood(b: int, c: int, n: int) -> None:
    comp = paired_difference(b, c, n)
    low, high = _interval_by_numeric_mle(b, c, n)
    assert comp["ci"] == pytest.approx([low, high], abs=2e-6)
    assert comp["difference"] == pytest.approx((b - c) / n, abs=1e-15)
    assert comp["ci"][0] <= comp["difference"] <= comp["ci"][1]


@pytest.mark.parametrize("n", [10, 100, 359, 5000])
def test_no_discordant_image_gives_an_interval_around_zero_that_shrinks_with_n(n: int) -> None:
    # By hand: with b = c = 0 the restricted MLE of the control-only cell is max(0, −Δ), and the score equation
    # nΔ / sqrt(nΔ(1 − Δ)) = z gives Δ = z² / (n + z²) on either side.
    comp = paired_difference(0, 0, n)
    half = Z**2 / (n + Z**2)
    assert comp["ci"] == pytest.approx([-half, half], abs=1e-9)
    assert comp["ci"][0] < 0 < comp["ci"][1]
    assert comp["verdict"] == "no difference" and comp["p_value"] == 1.0


def _coverage(n: int, p12: float, p21: float) -> float:
    """Exact coverage of the true Δ = p12 − p21 over every outcome (b, c) of n paired images."""
    delta, rest = p12 - p21, 1.0 - p12 - p21
    total = 0.0
    for b in range(n + 1):
        for c in range(n + 1 - b):
            prob = math.comb(n, b) * math.comb(n - b, c) * p12**b * p21**c * rest ** (n - b - c)
            if prob < 1e-14:
                continue
            low, high = paired_difference(b, c, n)["ci"]
            total += prob * (low - 1e-12 <= delta <= high + 1e-12)
    return total


@pytest.mark.parametrize(("p12", "p21"), [(0.0, 0.0), (0.02, 0.02), (0.1, 0.05), (0.2, 0.05), (0.0, 0.1)])
def test_coverage_by_exact_enumeration_is_near_nominal(p12: float, p21: float) -> None:
    cover = _coverage(30, p12, p21)
    assert cover >= 0.92, cover


def _binomial_two_sided(b: int, m: int) -> float:
    """Two-sided exact binomial p at 1/2 (sum of outcomes no more likely than b), in rationals."""
    probs = [Fraction(math.comb(m, i), 2**m) for i in range(m + 1)]
    return float(min(1, sum(p for p in probs if p <= probs[b])))


def test_the_p_value_is_the_exact_mcnemar_test_and_the_verdict_needs_it_and_the_interval() -> None:
    for b in range(0, 25):
        for c in range(0, 25):
            expected = 1.0 if b + c == 0 else _binomial_two_sided(b, b + c)
            assert mcnemar_p(b, c) == pytest.approx(expected, rel=1e-9), (b, c)
            comp = paired_difference(b, c, 200)
            low, high = comp["ci"]
            rejects = expected < 0.05
            want = "added" if rejects and low > 0 else "removed" if rejects and high < 0 else "no difference"
            assert comp["verdict"] == want, (b, c)
    # Where the two disagree the verdict abstains: 5 of 5 discordant images is p = 1/16 although the interval
    # lies above 0.
    comp = paired_difference(5, 0, 50)
    assert comp["ci"][0] > 0 and comp["p_value"] == pytest.approx(0.0625) and comp["verdict"] == "no difference"


def test_holm_on_a_worked_family() -> None:
    # Sorted p: 0.01, 0.03, 0.04, 0.5 with m = 4: 4·0.01 = 0.04; 3·0.03 = 0.09; max(0.09, 2·0.04 = 0.08) = 0.09;
    # max(0.09, 1·0.5) = 0.5 — back in the original order.
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([]) == []
    assert holm([0.9, 0.9]) == pytest.approx([1.0, 1.0])


def test_holm_verdicts_are_adjusted_within_each_control() -> None:
    # Two families: four init comparisons whose raw p-values reject but whose adjusted ones do not all reject,
    # and one input comparison alone (no adjustment).
    comps = []
    for layer, (b, c) in zip(["a", "b", "c", "d"], [(30, 5), (14, 4), (13, 4), (1, 0)], strict=True):
        comps.append({"layer": layer, "control": "init", **paired_difference(b, c, 400)})
    comps.append({"layer": "a", "control": "input", **paired_difference(14, 4, 400)})
    raw = [c["p_value"] for c in comps]
    apply_holm(comps)
    adjusted = holm(raw[:4])
    for comp, p in zip(comps[:4], adjusted, strict=True):
        assert comp["p_holm"] == pytest.approx(p)
    assert comps[4]["p_holm"] == pytest.approx(raw[4])
    assert raw[1] < 0.05 and adjusted[1] >= 0.05
    assert comps[1]["verdict"] == "no difference" and comps[0]["verdict"] == "added"
    assert comps[4]["verdict"] == "added"  # the same counts, alone in their family
    assert np.all(np.array(adjusted) >= np.array(raw[:4]))
