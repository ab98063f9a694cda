"""The joint (max-T) test of two correlated one-sided t tests (diffaudit.stats.pair_max_sf, pair_level) and the
modelled correlation of two means over bin groups (ar1_group_correlation), against Monte Carlo of the very
statistics the gate computes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from _stats import ar1_rows
from diffaudit import gate, stats


def _prediction_t(rng, n: int, R0: int, rho: float) -> np.ndarray:
    """(n, 2): the two aggregates' t statistics of R0 baseline runs against one candidate, under the null, each
    run's pair of aggregates bivariate normal with correlation rho (the gate's prediction interval)."""
    chol = np.linalg.cholesky(np.array([[1.0, rho], [rho, 1.0]]))
    x = rng.standard_normal((n, R0 + 1, 2)) @ chol.T
    base, cand = x[:, :R0], x[:, R0]
    return (cand - base.mean(axis=1)) / (base.std(axis=1, ddof=1) * math.sqrt(1 + 1 / R0))


@pytest.mark.parametrize("R0,rho", [(3, 0.9), (3, 0.5), (5, 0.95), (9, 0.8)])
def test_the_pair_level_gives_the_joint_test_its_size(R0, rho):
    # 3 baseline seeds: each aggregate on t with 2 df, the variances from the same runs
    n = 400_000
    t = _prediction_t(np.random.default_rng(R0), n, R0, rho)
    level = stats.pair_level(0.025, rho, R0 - 1)
    crit = float(stats.t_isf(level, R0 - 1))
    size = float(np.mean(t.max(axis=1) > crit))
    assert size == pytest.approx(0.025, abs=4 * math.sqrt(0.025 / n))  # +-0.001
    # Holm's first step (0.0125 each) is smaller than the joint test's, and each at 0.025 would be too large
    assert level > 0.0125
    assert float(np.mean(t.max(axis=1) > float(stats.t_isf(0.025, R0 - 1)))) > 0.03


@pytest.mark.parametrize("df", [1.0, 2.0, 2.7, 6.5, 40.0])
@pytest.mark.parametrize("rho", [0.0, 0.7, 0.97])
def test_pair_tail_against_its_construction(df, rho):
    """Wishart denominators for any real df (Bartlett), numerators correlated rho: P(max > c) within Monte Carlo
    error below, and at most 2.5% above (the grid misses some of the joint term where rho is high: the safe
    side, a smaller level for each test)."""
    rng = np.random.default_rng(int(10 * df + 100 * rho))
    n = 1_000_000
    z = rng.standard_normal((n, 2)) @ np.linalg.cholesky(np.array([[1.0, rho], [rho, 1.0]])).T
    c11, n21 = np.sqrt(rng.chisquare(df, n)), rng.standard_normal(n)
    c22 = np.sqrt(rng.chisquare(df - 1, n)) if df > 1 else 0.0
    s1 = c11 / math.sqrt(df)
    s2 = np.sqrt((rho * c11 + math.sqrt(1 - rho**2) * n21) ** 2 + (1 - rho**2) * c22**2) / math.sqrt(df)
    crit = float(stats.t_isf(0.0125, df))
    mc = float(np.mean((z[:, 0] / s1 > crit) | (z[:, 1] / s2 > crit)))
    se = math.sqrt(mc / n)
    assert mc - 3 * se <= stats.pair_max_sf(0.0125, rho, df) <= 1.025 * mc + 3 * se


def test_pair_limits():
    # independent normal statistics: 1 - (1 - a)^2 exactly; a perfect correlation: a alone
    assert stats.pair_max_sf(0.01, 0.0, math.inf) == pytest.approx(1 - 0.99**2, rel=1e-9)
    assert stats.pair_max_sf(0.01, 0.999, math.inf) == pytest.approx(0.01, rel=0.05)
    assert stats.pair_level(0.025, 0.0, math.inf) == pytest.approx(1 - math.sqrt(0.975), rel=1e-6)
    # more correlation, more df: each test may take more of the pair's level (Slepian), never more than all
    levels = [stats.pair_level(0.025, r, 2.0) for r in (0.0, 0.5, 0.8, 0.9, 0.95)]
    assert all(a < b for a, b in zip(levels, levels[1:])) and levels[-1] < 0.025
    assert stats.pair_level(0.025, 0.9, 2.0) < stats.pair_level(0.025, 0.9, 8.0) < stats.pair_level(0.025, 0.9, math.inf)


def test_group_correlation_recovers_an_ar1_along_the_bins():
    """Bins whose errors are an AR(1) along the bins (coefficient 0.6), each with its own sd: the correlation of
    the mean over all bins and over the last half, across 200,000 draws, is the one the formula gives."""
    rng = np.random.default_rng(11)
    B = 20
    sd = 0.01 * (1 + np.arange(B) / 5.0)
    e = ar1_rows(rng, 200_000, B, 0.6) * sd[None, :]
    every, last = np.ones(B, bool), np.arange(B) >= B // 2
    empirical = float(np.corrcoef(e.mean(axis=1), e[:, last].mean(axis=1))[0, 1])
    assert stats.ar1_group_correlation(sd**2, 0.6, every, last) == pytest.approx(empirical, abs=0.005)
    # independent bins of equal variance: sqrt(10 / 20)
    assert stats.ar1_group_correlation(np.ones(B), 0.0, every, last) == pytest.approx(math.sqrt(0.5), rel=1e-12)
    # the precision-weighted means the gate takes: weights 1 / sd^2 over each group
    wa, wb = stats.precision_weights(sd**2, every), stats.precision_weights(sd**2, last)
    weighted = float(np.corrcoef(e @ wa, e @ wb)[0, 1])
    assert abs(weighted - empirical) > 0.02  # the weights matter to the answer
    assert stats.ar1_group_correlation(sd**2, 0.6, every, last, wa, wb) == pytest.approx(weighted, abs=0.005)


def test_the_precision_weighted_mean_has_the_least_variance_for_a_common_rise():
    """Independent bins of very unequal noise (sd 0.5% to 40%, as EDM's extreme noise levels give): the mean of a
    rise common to every bin is unbiased under 1 / variance weights and, over 100,000 draws, has the variance
    1 / sum(1 / var) (far below the equal-weighted mean's); weights renormalise over a row's finite entries."""
    rng = np.random.default_rng(13)
    B = 30
    sd = np.geomspace(0.005, 0.4, B)
    e = 0.05 + rng.standard_normal((100_000, B)) * sd[None, :]
    w = stats.precision_weights(sd**2, np.ones(B, bool))
    m = stats.weighted_mean_rows(e, w)
    assert float(np.mean(m)) == pytest.approx(0.05, abs=5e-5)
    assert float(np.var(m)) == pytest.approx(1 / np.sum(1 / sd**2), rel=0.02)
    assert float(np.var(e.mean(axis=1))) > 20 * float(np.var(m))
    # a missing bin: the others' weights renormalised; outside the group or all-NaN: weight 0 / NaN
    row = np.array([[1.0, np.nan, 3.0]])
    assert stats.weighted_mean_rows(row, np.array([0.25, 0.5, 0.25]))[0] == pytest.approx(2.0)
    assert np.isnan(stats.weighted_mean_rows(np.full((1, 3), np.nan), np.ones(3) / 3)[0])
    part = stats.precision_weights(np.array([1.0, 4.0, 1.0]), np.array([True, True, False]))
    np.testing.assert_allclose(part, [0.8, 0.2, 0.0])
    # a member without a variance takes the median of the others' (never a NaN weight); none has one: equal
    np.testing.assert_allclose(stats.precision_weights(np.array([1.0, np.nan, 4.0]), np.ones(3, bool)),
                               np.array([1.0, 0.4, 0.25]) / 1.65)
    np.testing.assert_allclose(stats.precision_weights(np.full(2, np.nan), np.ones(2, bool)), [0.5, 0.5])
    # one bin that looks noiseless counts as a hundredth of the median variance, not as infinitely precise
    w = stats.precision_weights(np.array([1e-12, 1.0, 1.0, 1.0]), np.ones(4, bool))
    assert w[0] == pytest.approx(100 / 103)
    # the smooth profile along the bins: exact for a log-quadratic; one wild bin cannot drag it along
    pos = np.linspace(-1, 1, 21)
    prof = np.exp(1.0 + 0.5 * pos - 2.0 * pos**2)
    np.testing.assert_allclose(stats.smooth_profile(prof), prof, rtol=1e-10)
    wild = prof.copy()
    wild[10] *= 1e-6
    assert stats.smooth_profile(wild)[10] > 0.1 * prof[10]  # a 1e-6 of its own moves it by a few times, no more


def test_the_modelled_correlation_errs_low_when_the_bins_share_a_part():
    """Seeds' deviations with a part every bin shares plus an AR(1) along the bins: the gate's model (AR(1) alone,
    r1 pooled from the deviations as pooled_spread finds it) gives a lower correlation of the two means than the
    truth, the safe side of the joint test."""
    rng = np.random.default_rng(12)
    B, R = 20, 4000
    dev = 0.5 * rng.standard_normal((R, 1)) + ar1_rows(rng, R, B, 0.5)
    every, last = np.ones(B, bool), np.arange(B) >= B // 2
    truth = float(np.corrcoef(dev.mean(axis=1), dev[:, last].mean(axis=1))[0, 1])
    r1 = stats.pooled_spread(dev - dev.mean(axis=0)).r1
    model = stats.ar1_group_correlation(dev.var(axis=0), r1, every, last)
    assert model < truth - 0.02


def test_decide_takes_the_joint_test_for_two_correlated_aggregates():
    """A hand-made verdict's statistics: two aggregates on 2 df whose p-values are 1.3% and 1.4%: Holm (first
    step 1.25%) passes both, the joint test at rho = 0.9 (each at 1.43%) flags both; without a modelled rho, Holm."""
    B = 4
    crit = [float(stats.t_isf(p, 2)) for p in (0.013, 0.014)]
    every, falling = np.ones(B, bool), np.arange(B) >= 2
    groups = [("weighted mean over all bins", every, 0.02 + crit[0] * 0.01, 1e-4, 2.0, every / every.sum()),
              ("weighted mean over the still-falling bins", falling, 0.02 + crit[1] * 0.01, 1e-4, 2.0,
               falling / falling.sum())]
    base = dict(level_a=np.ones(B), level_b=np.ones(B), raw=np.zeros(B), change=np.zeros(B), var=np.full(B, 1e-4),
                df=np.full(B, 8.0), elastic=np.zeros(B), lag=0.0, lag_fit=0.0, why=[""] * B, groups=groups, notes=[])
    _, _, pg, qg = gate.decide(gate._BinStats(**base, group_rho=0.9))
    assert pg == pytest.approx([0.013, 0.014], rel=1e-6)
    assert np.all(qg <= 0.05)
    _, _, _, qh = gate.decide(gate._BinStats(**base))
    assert np.all(qh > 0.05)
    # the stated detectable rise of the mean over all bins is what its test catches 80% of the time at the
    # joint test's level
    st = gate._BinStats(**base, group_rho=0.9)
    lvl = stats.pair_level(0.025, 0.9, 2.0)
    assert gate.group_detectable(st) == pytest.approx(0.02 + float(stats.detectable_shift(0.01, 2.0, lvl)), rel=1e-9)
