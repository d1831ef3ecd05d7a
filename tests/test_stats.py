"""Statistics for comparing models: Fréchet distance and paired bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from magic141.engine import stats
from magic141.errors import InvalidInput


def standardised(rng, n: int) -> np.ndarray:
    """``n`` samples with sample mean exactly 0 and sample standard deviation (ddof=1) exactly 1."""
    x = rng.normal(size=n)
    return (x - x.mean()) / x.std(ddof=1)


# Fréchet distance --------------------------------------------------------------------------------


def test_frechet_distance_is_zero_for_one_set_and_symmetric():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 6))
    b = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)) + 0.3
    assert stats.frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert stats.frechet_distance(a, b) > 0.5
    assert stats.frechet_distance(a, b) == pytest.approx(stats.frechet_distance(b, a), rel=1e-6)


def test_frechet_distance_of_a_mean_shift_is_the_shift_squared_and_grows_with_it():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 3)) @ rng.normal(size=(3, 3))
    shift = np.array([0.5, -1.0, 2.0])
    distances = [stats.frechet_distance(a, a + k * shift) for k in (1, 2, 3)]
    assert distances == pytest.approx([k * k * float(shift @ shift) for k in (1, 2, 3)], rel=1e-6)


def test_frechet_distance_of_two_1d_gaussians_is_the_known_value():
    rng = np.random.default_rng(2)
    mu1, s1, mu2, s2 = 1.0, 0.5, -2.0, 3.0
    a, b = mu1 + s1 * standardised(rng, 500), mu2 + s2 * standardised(rng, 700)
    assert stats.frechet_distance(a, b) == pytest.approx((mu1 - mu2) ** 2 + (s1 - s2) ** 2, rel=1e-9)
    assert stats.frechet_distance(a[:, None], b[:, None]) == pytest.approx(stats.frechet_distance(a, b))


def test_frechet_distance_refuses_sets_of_different_dimensions():
    with pytest.raises(InvalidInput, match="dimension"):
        stats.frechet_distance(np.zeros((5, 2)), np.zeros((5, 3)))


# Paired bootstrap --------------------------------------------------------------------------------


def test_the_bootstrap_interval_covers_the_true_mean_most_of_the_time():
    rng = np.random.default_rng(3)
    true_mean = 2.0  # exponential with scale 2: skewed, as per-case errors are
    covered = 0
    for rep in range(50):
        result = stats.paired_bootstrap({"x": rng.exponential(true_mean, 100)}, draws=400, seed=rep)["x"]
        assert result.lo <= result.mean <= result.hi
        covered += result.lo <= true_mean <= result.hi
    assert covered >= 42  # nominal 95%: 47.5 of 50


def test_the_bootstrap_interval_narrows_like_one_over_root_n():
    rng = np.random.default_rng(4)
    widths = {}
    for n in (100, 1600):
        result = stats.paired_bootstrap({"x": rng.normal(0, 1, n)}, seed=n)["x"]
        widths[n] = result.hi - result.lo
        assert widths[n] == pytest.approx(2 * 1.96 / np.sqrt(n), rel=0.2)  # a normal mean's 95% width
    assert 3 < widths[100] / widths[1600] < 5  # sixteen times the cases, a quarter of the width


def test_paired_gaps_are_far_narrower_than_the_rows_and_find_a_small_constant():
    rng = np.random.default_rng(5)
    base = rng.normal(0, 1, 200)  # cases differ a lot in difficulty, the same for both models
    better = base + 0.05 + rng.normal(0, 0.02, 200)
    result = stats.paired_bootstrap({"base": base, "better": better}, reference="base")
    own = result["better"].hi - result["better"].lo
    assert result["better"].lo < result["base"].hi  # unpaired, the two rows' intervals overlap
    assert 0 < result["better"].gap_lo < 0.05 < result["better"].gap_hi  # paired, the gap is found
    assert result["better"].gap_hi - result["better"].gap_lo < 0.1 * own
    assert result["better"].gap == pytest.approx(result["better"].mean - result["base"].mean)
    assert result["base"].gap is None and result["base"].gap_lo is None
    assert all(r.gap is None for r in stats.paired_bootstrap({"base": base, "better": better}).values())


def test_unpaired_resampling_would_miss_the_gap_that_pairing_finds():
    rng = np.random.default_rng(6)
    base = rng.normal(0, 1, 200)
    better = base + 0.05
    alone = [stats.paired_bootstrap({"x": row}, seed=seed)["x"] for row, seed in ((base, 1), (better, 2))]
    paired = stats.paired_bootstrap({"base": base, "better": better}, reference="base")["better"]
    assert alone[1].lo < alone[0].hi  # independent intervals cannot tell the rows apart
    assert paired.gap_lo == pytest.approx(0.05) and paired.gap_hi == pytest.approx(0.05)


def test_booleans_become_rates_and_the_json_is_rounded():
    ok = np.array([True, False, True, True] * 10)
    result = stats.paired_bootstrap({"ok": ok}, draws=300)["ok"]
    assert result.mean == pytest.approx(0.75) and 0 <= result.lo < 0.75 < result.hi <= 1
    record = stats.Interval(1 / 3, 0.1234567, 0.5).to_json()
    assert record == {"mean": 0.3333, "lo": 0.1235, "hi": 0.5, "gap": None, "gap_lo": None, "gap_hi": None}


def test_the_same_seed_gives_the_same_intervals():
    rows = {"a": np.random.default_rng(7).normal(size=50)}
    assert stats.paired_bootstrap(rows, seed=3) == stats.paired_bootstrap(rows, seed=3)
    assert stats.paired_bootstrap(rows, seed=3) != stats.paired_bootstrap(rows, seed=4)


def test_rows_of_different_lengths_or_an_unknown_reference_are_refused():
    with pytest.raises(InvalidInput, match="a: 5, b: 4"):
        stats.paired_bootstrap({"a": np.zeros(5), "b": np.zeros(4)})
    with pytest.raises(InvalidInput, match="reference 'c'"):
        stats.paired_bootstrap({"a": np.zeros(5), "b": np.zeros(5)}, reference="c")
    with pytest.raises(InvalidInput, match="the truth: 6"):
        stats.paired_bootstrap_sets({"a": np.zeros((5, 2))}, np.zeros((6, 2)), stats.frechet_distance)


def test_set_level_bootstrap_of_frechet_distance_ranks_models_by_how_close_their_features_are():
    rng = np.random.default_rng(8)
    truth = rng.normal(size=(150, 4))
    rows = {
        "close": truth + rng.normal(0, 0.1, truth.shape),
        "shifted": truth + rng.normal(0, 0.1, truth.shape) + 0.4,
    }
    result = stats.paired_bootstrap_sets(rows, truth, stats.frechet_distance, reference="close", draws=200)
    assert result["close"].mean < 0.1 and result["shifted"].mean == pytest.approx(4 * 0.4**2, abs=0.1)
    assert result["close"].hi < result["shifted"].lo
    assert result["shifted"].gap_lo > 0.4  # shifted is clearly farther from the truth
    assert result["close"].gap is None
