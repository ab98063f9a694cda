"""Tests for diffaudit.stats: synthetic seeded signals with known answers.

Every rate asserted here (coverage, false positives, recall) is measured on
enough seeded replicates that the bound is several standard errors away from
what a correct method gives, and the matching naive method is shown to fail it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as hst
from scipy import stats as sps
from scipy.signal import lfilter

from diffaudit import stats as st
from _stats import detect_spikes, integrated_autocorr_time
from diffaudit.errors import DataError, InconclusiveError


def ar1(rng, n, phi, sd=1.0, size=None):
    """Stationary AR(1) with marginal standard deviation `sd` (burn-in from the stationary law)."""
    shape = (n,) if size is None else (size, n)
    e = rng.standard_normal(shape) * sd * math.sqrt(1 - phi**2)
    x0 = rng.standard_normal(shape[:-1]) * sd
    y, _ = lfilter([1.0], [1.0, -phi], e, axis=-1, zi=(phi * x0)[..., None])
    return y


def split_moments(x, cuts):
    parts = np.split(x, cuts)
    ms = [st.moments(p) for p in parts]
    return (np.array([m.count for m in ms]), np.array([m.mean for m in ms]),
            np.array([m.m2 for m in ms]))


# ----------------------------------------------------------------------------
# Chan merging


def test_merge_of_random_splits_equals_single_pass():
    rng = np.random.default_rng(0)
    x = 0.3 + 0.1 * rng.standard_normal(200_000)  # loss-like values
    ref = st.moments(x)
    cuts = np.sort(rng.choice(np.arange(1, x.size), 300, replace=False))
    merged = st.merge_moments(*split_moments(x, cuts))
    assert merged.count == x.size
    assert abs(merged.mean / ref.mean - 1) < 1e-12
    assert abs(merged.m2 / ref.m2 - 1) < 1e-12
    assert abs(merged.var / np.var(x, ddof=1) - 1) < 1e-12


def test_merge_is_exact_where_naive_sum_of_squares_fails():
    # large mean, tiny spread: sum(x^2) - sum(x)^2/n cancels every digit it has
    rng = np.random.default_rng(1)
    x = 1000.0 + 0.01 * rng.standard_normal(200_000)
    ref = st.moments(x)
    cuts = np.sort(rng.choice(np.arange(1, x.size), 50, replace=False))
    merged = st.merge_moments(*split_moments(x, cuts))
    assert abs(merged.m2 / ref.m2 - 1) < 1e-12
    naive64 = np.sum(x * x) - np.sum(x) ** 2 / x.size
    assert abs(naive64 / ref.m2 - 1) > 1e-9  # float64 naive: millions of times worse
    x32 = x.astype(np.float32)
    naive32 = float(np.sum(x32 * x32, dtype=np.float32) - np.sum(x32, dtype=np.float32) ** 2 / x.size)
    assert naive32 <= 0 or abs(naive32 / ref.m2 - 1) > 0.5  # float32 naive: no digit right
    assert abs(merged.var / np.var(x, ddof=1) - 1) < 1e-12  # numpy's two-pass agrees


@settings(max_examples=60, deadline=None)
@given(
    n=hst.integers(2, 400),
    ncuts=hst.integers(0, 30),
    loc=hst.sampled_from([0.0, 0.05, 1.0, 1e3]),
    seed=hst.integers(0, 2**32 - 1),
)
def test_merge_any_split_property(n, ncuts, loc, seed):
    rng = np.random.default_rng(seed)
    x = loc + rng.gamma(2.0, 0.01, n)
    ref = st.moments(x)
    cuts = np.unique(rng.integers(1, n, ncuts)) if ncuts else np.empty(0, int)
    merged = st.merge_moments(*split_moments(x, cuts))
    assert merged.count == n
    assert merged.mean == pytest.approx(ref.mean, rel=1e-13)
    assert merged.m2 == pytest.approx(ref.m2, rel=1e-11, abs=1e-300)


def test_merge_groups_of_one_row_each_is_the_rows_themselves():
    """Groups of at most one row, in order (a single rank's windows), skip the merge: the result must be what
    the general merge gives for the same rows in another order, empty and non-finite rows included."""
    rng = np.random.default_rng(12)
    g = np.sort(rng.choice(50, 30, replace=False))
    n = rng.integers(0, 5, g.size).astype(float)
    mu = rng.normal(size=g.size)
    m2 = rng.uniform(0, 2, g.size)
    mu[3], m2[4] = np.nan, np.inf
    fast = st.merge_groups(g, n, mu, m2, 50)
    order = rng.permutation(g.size)  # not increasing: the general path
    slow = st.merge_groups(g[order], n[order], mu[order], m2[order], 50)
    for f in ("count", "mean", "m2"):
        assert np.allclose(getattr(fast, f), getattr(slow, f), rtol=1e-13, atol=0, equal_nan=True), f
    assert fast.count[g[3]] == 0 and np.isnan(fast.mean[g[3]]) and fast.m2[g[4]] == 0


def test_coarsen_pairwise_combine_and_empty_groups():
    rng = np.random.default_rng(2)
    x = 5.0 + rng.standard_normal(1000)
    cuts = np.arange(10, 1000, 10)  # 100 windows of 10
    n, mu, m2 = split_moments(x, cuts)
    n[7], mu[7], m2[7] = 0, np.nan, 0.0  # an empty window (bin never sampled)
    keep = np.ones(1000, bool)
    keep[70:80] = False
    c = st.coarsen_moments(n, mu, m2, st.batch_starts(100, 4))
    for j, (a, b) in enumerate([(0, 250), (250, 500), (500, 750), (750, 1000)]):
        ref = st.moments(x[a:b][keep[a:b]])
        assert c.count[j] == ref.count
        assert c.mean[j] == pytest.approx(ref.mean, rel=1e-14)
        assert c.m2[j] == pytest.approx(ref.m2, rel=1e-12)
    # elementwise pairwise merge (two ranks of the same windows)
    a = st.Moments(n[:50], mu[:50], m2[:50])
    b = st.Moments(n[50:], mu[50:], m2[50:])
    ab = st.merge_moments(np.stack([a.count, b.count]), np.stack([a.mean, b.mean]), np.stack([a.m2, b.m2]), axis=0)
    for j in range(50):
        ref = st.moments(np.concatenate([x[10 * j:10 * j + 10][keep[10 * j:10 * j + 10]],
                                         x[500 + 10 * j:510 + 10 * j]]))
        assert ab.mean[j] == pytest.approx(ref.mean, rel=1e-14)
        assert ab.m2[j] == pytest.approx(ref.m2, rel=1e-12)
    # merging along an axis of a 2-D (bins x windows) array
    m = st.merge_moments(np.stack([n, n]), np.stack([mu, mu]), np.stack([m2, m2]), axis=1)
    assert m.count.shape == (2,) and m.m2[0] == pytest.approx(st.moments(x[keep]).m2, rel=1e-12)
    all_empty = st.merge_moments([0, 0], [np.nan, np.nan], [0, 0])
    assert all_empty.count == 0 and np.isnan(all_empty.mean) and all_empty.m2 == 0


# ----------------------------------------------------------------------------
# Effective sample size, batch means


def _ess(y):
    """n / tau: the number of independent values a correlated series is worth."""
    return len(y) / integrated_autocorr_time(y)


def test_ess_of_ar1_matches_theory():
    rng = np.random.default_rng(3)
    n, phi = 20_000, 0.9
    expected = n * (1 - phi) / (1 + phi)  # 1052.6
    ess = [_ess(y) for y in ar1(rng, n, phi, size=8)]
    assert np.mean(ess) == pytest.approx(expected, rel=0.1)
    assert all(abs(e / expected - 1) < 0.3 for e in ess)
    white = _ess(rng.standard_normal(n))
    assert white == pytest.approx(n, rel=0.1)
    # a trend is signal, not correlation: detrending keeps ESS near n
    assert _ess(rng.standard_normal(n) + np.linspace(0, 10, n)) > 0.8 * n
    assert integrated_autocorr_time(np.ones(100)) == 1.0


def _geyer_by_hand(y):
    """(tau, Gamma_1, conservative tau) from the definitions, one lag at a time (no FFT, no vectorizing)."""
    def geyer(v):
        n = len(v)
        acov = [float(np.dot(v[: n - h], v[h:])) for h in range(n)]
        if acov[0] <= 0:
            return 1.0, 0.0
        rho = [a / acov[0] for a in acov]
        tau, g1, prev, h = -1.0, 0.0, math.inf, 0
        while 2 * h + 1 < n:
            pair = rho[2 * h] + rho[2 * h + 1]
            if pair <= 0:
                break
            prev = min(prev, pair)
            tau += 2 * prev
            g1 += (2 * h) * rho[2 * h] + (2 * h + 1) * rho[2 * h + 1]
            h += 1
        return tau, g1

    y = np.asarray(y, float)
    y = y[np.isfinite(y)]
    n = y.size
    pos = np.flatnonzero(np.isfinite(y)).astype(float)
    t = (pos - pos.mean()) / max(np.ptp(pos), 1.0)
    v = y - np.polyval(np.polyfit(t, y, 2), t)
    var0 = float(v @ v) / n
    if var0 <= (1e-12 * np.max(np.abs(y))) ** 2:  # constant up to the rounding of the fit
        return 1.0, 0.0, 1.0
    tau, g1 = geyer(v)
    cons, b = tau, 2
    while n // b >= st.TAU_MIN_BLOCKS:
        blocks = v[: n // b * b].reshape(-1, b).mean(axis=1)
        blocks -= blocks.mean()
        cons = max(cons, b * float(blocks @ blocks) / blocks.size * geyer(blocks)[0] / var0)
        b *= 2
    return min(max(tau, 1.0), n), max(g1, 0.0), min(max(cons, 1.0), n)


@pytest.mark.parametrize("phi,n", [(0.0, 700), (0.6, 2_000), (0.95, 1_500), (0.99, 300), (0.3, 9)])
def test_correlation_matches_the_definitions_one_lag_at_a_time(phi, n):
    rng = np.random.default_rng(int(phi * 100) + n)
    y = 1.0 + np.linspace(0, 0.5, n) ** 2 + ar1(rng, n, phi, sd=0.1)
    assert st._correlation(y) == pytest.approx(_geyer_by_hand(y), rel=1e-9)


def test_correlations_of_many_columns_equal_each_column_alone():
    """Columns that keep the same rows go through one FFT, each with its own truncation lag and block levels:
    every column's figures must equal those of its own series, whatever the other columns hold."""
    rng = np.random.default_rng(31)
    W = 600
    y = np.stack([1 + ar1(rng, W, phi, sd=s) for phi, s in
                  [(0.0, 0.1), (0.5, 0.1), (0.9, 0.01), (0.99, 1.0), (0.7, 0.1), (0.2, 0.1)]], axis=1)
    y[:, 4] = 3.0  # a constant column beside correlated ones
    keep = np.ones(y.shape, bool)
    keep[::7, 5] = False  # a column with its own rows
    y[100, 1] = np.nan  # a NaN is dropped like a window batch_means drops
    got = st.correlations(y, keep)
    for j in range(y.shape[1]):
        alone = _geyer_by_hand(y[keep[:, j] & np.isfinite(y[:, j]), j])
        assert tuple(g[j] for g in got) == pytest.approx(alone, rel=1e-9), j
    assert got[0][4] == got[2][4] == 1.0 and got[1][4] == 0.0
    groups = st.same_columns(keep & np.isfinite(y))
    assert sorted(map(list, groups)) == [[0, 2, 3, 4], [1], [5]]
    # batch_means with the measured correlation is batch_means measuring it itself
    given, measured = st.batch_means(y[:, 3], correlation=tuple(g[3] for g in got)), st.batch_means(y[:, 3])
    assert given.n_batches == measured.n_batches
    assert (given.se, given.tau) == pytest.approx((measured.se, measured.tau), rel=1e-12)  # one FFT or many


def test_batch_means_standard_error_is_honest_under_autocorrelation():
    rng = np.random.default_rng(4)
    ys = 2.0 + ar1(rng, 1000, 0.9, sd=0.1, size=300)
    cover, naive_cover = 0, 0
    for y in ys:
        bm = st.batch_means(y)
        t = sps.t.ppf(0.975, bm.df)
        cover += abs(bm.mean - 2.0) <= t * bm.se
        naive_cover += abs(y.mean() - 2.0) <= 1.96 * y.std(ddof=1) / math.sqrt(y.size)
    assert 0.90 <= cover / 300 <= 0.99
    assert naive_cover / 300 < 0.6  # iid error is sqrt(19) too small


def test_batch_means_weights_and_nan_windows():
    y = np.array([1.0, 2.0, np.nan, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    w = np.array([1, 1, 5, 1, 1, 0, 1, 1, 1, 3])
    bm = st.batch_means(y, weights=w, n_batches=4, min_batches=2)
    assert bm.n == 8  # the NaN window and the zero-weight window are dropped
    keep = np.isfinite(y) & (w > 0)
    assert bm.mean == pytest.approx(np.average(y[keep], weights=w[keep]))
    with pytest.raises(InconclusiveError):
        st.batch_means([1.0, 2.0, 3.0])
    with pytest.raises(DataError):
        st.batch_means(np.arange(10.0), x=np.arange(10.0)[::-1])


# ----------------------------------------------------------------------------
# Trend: Theil-Sen on batch means


def test_theil_sen_on_batch_means_matches_scipy_reference():
    rng = np.random.default_rng(5)
    x = np.sort(rng.uniform(0, 1000, 20))
    y = 0.01 * x + rng.standard_normal(20)
    tr = st.trend(y, x, n_batches=20)  # one window per batch: plain Theil-Sen
    ref = sps.theilslopes(y, x)
    assert tr.slope == pytest.approx(ref.slope, rel=1e-12)
    assert tr.intercept == pytest.approx(ref.intercept, rel=1e-10)
    # exact Kendall p equals scipy's exact Mann-Kendall (Kendall tau against x)
    assert tr.p_value == pytest.approx(sps.kendalltau(x, y, method="exact").pvalue, rel=1e-9)
    # the exact interval is never narrower than the normal-approximation one by more than a step
    assert tr.lo <= ref.high_slope and tr.hi >= ref.low_slope


def test_slope_interval_covers_truth_under_autocorrelation():
    rng = np.random.default_rng(6)
    n, phi, true = 1000, 0.9, -2e-6  # per step; windows every 100 steps
    x = np.arange(n) * 100.0
    noise = ar1(rng, n, phi, sd=0.02, size=200)
    cover = naive = 0
    for i, e in enumerate(noise):
        y = 1.0 + true * x + e
        tr = st.trend(y, x)
        cover += tr.lo <= true <= tr.hi
        if i < 60:  # iid Sen interval on the raw windows (500k pairwise slopes each)
            ref = sps.theilslopes(y, x)
            naive += ref.low_slope <= true <= ref.high_slope
    assert 0.90 <= cover / 200 <= 0.99
    assert naive / 60 < 0.7  # the correction matters: the iid interval under-covers


def test_trend_false_positive_rate_across_bins_with_by():
    rng = np.random.default_rng(7)
    runs, bins, n = 30, 100, 300
    x = np.arange(n) * 100.0
    any_rej = naive_any = 0
    for _ in range(runs):
        ys = 0.5 + ar1(rng, n, 0.9, sd=0.02, size=bins)  # no slope in any bin
        p = np.array([st.trend(y, x).p_value for y in ys])
        any_rej += (st.adjust_pvalues(p, "by") <= 0.05).any()
        pn = np.array([sps.kendalltau(x, y).pvalue for y in ys[:20]])  # naive, first 20 bins
        naive_any += (st.adjust_pvalues(pn, "by") <= 0.05).any()
    assert any_rej / runs <= 0.05
    assert naive_any / runs > 0.5


def test_trend_detects_real_slope_and_relative_units():
    rng = np.random.default_rng(8)
    n = 400
    x = np.arange(n) * 50.0  # 20k steps
    y = 0.4 - 0.008 * x / 1000 + ar1(rng, n, 0.8, sd=0.004)  # -0.008 per 1k steps
    tr = st.trend(y, x)
    assert tr.p_value < 1e-4
    assert tr.lo < -0.008 / 1000 < tr.hi
    assert tr.level == pytest.approx(0.32, rel=0.02)  # median of the batch means: mid-run level
    assert tr.rel_slope == pytest.approx(-0.008 / 0.32, rel=0.1)
    assert tr.rel_lo < tr.rel_slope < tr.rel_hi
    assert tr.reliable


def test_trend_ignores_a_spike():
    rng = np.random.default_rng(9)
    x = np.arange(400) * 100.0
    y = 1.0 + 0.01 * rng.standard_normal(400)
    y[350] = 50.0  # one enormous window
    assert st.trend(y, x).p_value > 0.01


# ----------------------------------------------------------------------------
# Stagnation: equivalence


def test_equivalence_flat_is_stagnant_and_declining_is_not():
    rng = np.random.default_rng(10)
    n = 1000
    x = np.arange(n) * 100.0  # 100k steps
    flat = 0.3 + ar1(rng, n, 0.9, sd=0.003)
    eq = st.equivalence(flat, x, margin=0.01)
    assert eq.equivalent and eq.p_value < 0.05
    assert -0.01 < eq.rel_lo <= eq.rel_hi < 0.01
    # a real decline of 5% of the level per 1k steps, over 20k steps
    xd = np.arange(400) * 50.0
    declining = 0.3 * np.exp(-0.05 * xd / 1000) + ar1(rng, 400, 0.9, sd=0.003)
    dec = st.equivalence(declining, xd, margin=0.01)
    assert not dec.equivalent and dec.p_value > 0.5
    assert dec.trend.p_value < 1e-4 and dec.trend.rel_hi < -0.01
    # too short and noisy to tell: neither a trend nor stagnation
    short = 0.3 + ar1(rng, 40, 0.9, sd=0.03)
    s = st.equivalence(short, np.arange(40) * 100.0, margin=0.01)
    assert not s.equivalent and s.trend.p_value > 0.05


def test_equivalence_false_claim_rate_at_margin():
    # slope exactly at the margin: TOST may claim stagnation in at most ~alpha of runs
    rng = np.random.default_rng(11)
    n, x = 600, np.arange(600) * 100.0
    claims = 0
    for e in ar1(rng, n, 0.9, sd=0.002, size=200):
        y = 1.0 * (1 - 0.01 * (x - x.mean()) / 1000) + e  # level 1 at the middle
        claims += st.equivalence(y, x, margin=0.01).equivalent
    assert claims / 200 <= 0.08


# ----------------------------------------------------------------------------
# Multiple testing


def test_adjusted_pvalues_against_reference():
    rng = np.random.default_rng(12)
    p = rng.uniform(0, 0.1, 40)
    m = p.size
    # Holm by brute force from its definition
    holm = np.empty(m)
    order = np.argsort(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        holm[i] = running
    assert np.allclose(st.adjust_pvalues(p, "holm"), holm)
    # BY: BH times the harmonic sum, step-up
    c = np.sum(1.0 / np.arange(1, m + 1))
    by = np.empty(m)
    srt = p[order] * m * c / np.arange(1, m + 1)
    by[order] = np.minimum(1, np.minimum.accumulate(srt[::-1])[::-1])
    assert np.allclose(st.adjust_pvalues(p, "by"), by)
    withnan = np.append(p, np.nan)
    adj = st.adjust_pvalues(withnan, "holm")
    assert np.isnan(adj[-1]) and np.allclose(adj[:-1], holm)
    assert not st.adjust_pvalues(withnan, "by")[-1] <= 0.05
    with pytest.raises(DataError):
        st.adjust_pvalues(p, "bonferroni-ish")


# ----------------------------------------------------------------------------
# Two-sample comparison


def late_window(rng, level, n=200, size=None):
    """Realistic late-training window means: AR(1) drift plus sampling noise, ~5% of level."""
    return level * (1 + ar1(rng, n, 0.7, sd=0.03, size=size) + 0.04 * rng.standard_normal(
        (n,) if size is None else (size, n)))


def test_compare_series_identical_distributions_false_positive_rate():
    rng = np.random.default_rng(13)
    a, b = late_window(rng, 0.2, size=800), late_window(rng, 0.2, size=800)
    p = np.array([st.compare_series(ai, bi).p_value for ai, bi in zip(a, b)])
    assert np.mean(p < 0.05) <= 0.07  # 0.05 +- 0.008 over 800 trials
    assert 0.4 <= np.mean(p < 0.5) <= 0.6  # roughly uniform, not just conservative
    naive = np.array([sps.ttest_ind(ai, bi, equal_var=False).pvalue for ai, bi in zip(a, b)])
    assert np.mean(naive < 0.05) > 0.2  # iid Welch ignores the autocorrelation


def test_compare_series_detects_three_percent_shift():
    rng = np.random.default_rng(14)
    hits = 0
    for _ in range(50):
        c = st.compare_series(late_window(rng, 0.2, n=500), late_window(rng, 0.206, n=500))
        hits += c.p_value < 0.05 and c.lo > 0
    assert hits / 50 >= 0.9
    assert c.rel_diff == pytest.approx(0.03, abs=0.02)
    assert c.rel_lo < c.rel_diff < c.rel_hi and c.method == "welch-batch-means"
    # one-sided "did b get worse": half the two-sided p on the side of the shift
    a, b = late_window(rng, 0.2, n=500), late_window(rng, 0.206, n=500)
    two = st.compare_series(a, b)
    assert st.compare_series(a, b, alternative="greater").p_value == pytest.approx(two.p_value / 2)
    assert st.compare_series(a, b, alternative="less").p_value > 0.99
    # no spread at all: the difference is exact, and nothing divides by zero
    flat = st.compare_series(np.full(50, 0.2), np.full(50, 0.3))
    assert flat.p_value == 0.0 and flat.lo == flat.hi == pytest.approx(0.1)
    assert st.compare_series(np.full(50, 0.2), np.full(50, 0.2)).p_value == 1.0
    with pytest.raises(InconclusiveError):
        st.compare_series(np.full(5, 0.2), np.full(50, 0.2))


def test_compare_seeds_false_positive_rate_and_power():
    rng = np.random.default_rng(15)

    def seeds(level, k):  # each seed settles at its own level: 1% seed-to-seed spread
        return [late_window(rng, level * (1 + 0.01 * rng.standard_normal())) for _ in range(k)]

    def compare(a, b):  # each seed reduced to its late mean, then Welch's t over seeds
        return st.compare_seed_means([y.mean() for y in a], [y.mean() for y in b])

    fp = sum(compare(seeds(0.2, 4), seeds(0.2, 4)).p_value < 0.05 for _ in range(200))
    assert fp / 200 <= 0.08
    hits = 0
    for _ in range(50):
        c = compare(seeds(0.2, 4), seeds(0.206, 4))
        hits += c.p_value < 0.05
    assert hits / 50 >= 0.8 and c.method == "seed-welch"
    one = st.compare_seed_means([0.2], [0.2, 0.201, 0.199])
    assert one.method == "seed-borrowed-variance" and one.df == 2
    with pytest.raises(InconclusiveError):
        st.compare_seed_means([0.2], [0.3])


# ----------------------------------------------------------------------------
# Spikes and level shifts on long per-step series


def loss_curve(rng, n, df=5):
    t = np.arange(n)
    base = 0.1 + 0.9 * np.exp(-t / (n / 5))
    return base, base * (1 + 0.02 * rng.standard_t(df, n))  # heavy-tailed clean noise


def test_spikes_found_at_injected_positions_on_a_million_steps():
    rng = np.random.default_rng(16)
    n = 1_000_000
    base, y = loss_curve(rng, n)
    pos = np.sort(rng.choice(np.arange(n), 500, replace=False))
    y[pos] += base[pos] * rng.uniform(0.3, 3.0, pos.size)  # +30% .. +300% of the level
    y[rng.choice(n, 300, replace=False)] = np.nan
    s = detect_spikes(y)
    recall = np.isin(pos, s.indices).mean()
    assert recall >= 0.95
    assert np.setdiff1d(s.indices, pos).size <= 0.001 * n  # t(5) noise: ~2e-4 per point
    assert s.nonfinite.size == 300 and not np.isin(s.nonfinite, s.indices).any()
    assert np.all(s.z > s.threshold) and np.all(np.diff(s.indices) > 0)
    assert np.all(s.event_start <= s.event_peak) and np.all(s.event_peak <= s.event_end)


def test_spikes_rare_on_clean_heavy_tailed_noise():
    rng = np.random.default_rng(17)
    _, y = loss_curve(rng, 200_000, df=5)
    s = detect_spikes(y)
    assert s.rate < 5e-4
    _, g = loss_curve(rng, 200_000, df=30)  # near-Gaussian batch-mean noise: essentially none
    assert detect_spikes(g).indices.size <= 2


def test_spikes_constant_and_degenerate_series():
    with np.errstate(all="raise"):  # no division by a zero MAD anywhere
        c = np.full(10_000, 2.0)
        assert detect_spikes(c).indices.size == 0
        c[5000] = 2.5
        s = detect_spikes(c)
        assert s.indices.tolist() == [5000] and s.z[0] > 1e6
        assert detect_spikes(np.zeros(100)).indices.size == 0
        allnan = detect_spikes(np.full(50, np.nan))
        assert allnan.indices.size == 0 and allnan.nonfinite.size == 50
        assert detect_spikes([1.0]).indices.size == 0  # shorter than the window
        assert detect_spikes([1.0, 1.1, 1.0, 0.9, 50.0]).indices.tolist() == [4]
    quant = np.round(np.random.default_rng(18).standard_normal(5000))  # MAD often 0 or 1
    assert detect_spikes(quant, side="both").rate < 0.01


def test_spike_events_group_consecutive_points():
    y = np.random.default_rng(19).standard_normal(5000)
    y[1000:1004] += [20, 40, 30, 25]
    y[3000] -= 30
    up = detect_spikes(y)
    assert up.event_start.tolist() == [1000] and up.event_end.tolist() == [1003]
    assert up.event_peak.tolist() == [1001]
    both = detect_spikes(y, side="both")
    assert both.n_events == 2 and 3000 in both.indices.tolist()
    # a NaN inside a run is skipped, not a break
    y[1002] = np.nan
    s = detect_spikes(y)
    assert s.event_start.tolist() == [1000] and s.event_end.tolist() == [1003]


def test_one_filtering_read_at_several_thresholds():
    y = np.random.default_rng(21).standard_normal(20_000)
    y[[500, 501, 9000]] += [12, 30, 15]
    y[7] = np.nan
    rz = st.robust_z(y)
    assert rz.z.size == 19_999 and rz.nonfinite.tolist() == [7]
    # the z of every finite point against a brute-force rolling median / MAD (scipy's, "mirror" ends)
    from scipy import ndimage

    pos = np.delete(np.arange(y.size), 7)
    v = y[pos]
    med = ndimage.median_filter(v, size=st.SPIKE_WINDOW | 1, mode="mirror")
    mad = ndimage.median_filter(np.abs(v - med), size=st.SPIKE_WINDOW | 1, mode="mirror")
    z = (v - med) / (st.MAD_TO_SIGMA * mad)
    np.testing.assert_allclose(rz.z, z, rtol=1e-12)
    assert np.array_equal(rz.pos, pos)
    for thr, side in [(8.0, "upper"), (5.0, "both"), (3.0, "lower"), (-math.inf, "upper")]:
        hit = {"upper": z > thr, "lower": z < -thr, "both": np.abs(z) > thr}[side]
        a = st.spikes_at(rz, thr, side)
        assert np.array_equal(a.indices, pos[hit]) and np.array_equal(a.z, z[hit]), (thr, side)
        assert np.array_equal(a.nonfinite, [7])
    assert st.spikes_at(rz, 8.0).indices.tolist() == [500, 501, 9000]
    assert st.spikes_at(rz, 20.0).event_peak.tolist() == [501]
    with pytest.raises(DataError, match="side"):
        st.spikes_at(rz, 8.0, "up")


def test_level_shift_explosion_and_healthy_decay():
    rng = np.random.default_rng(20)
    base, y = loss_curve(rng, 100_000, df=30)
    healthy = st.level_shift(y)
    assert healthy.ratio < 1.05  # the end is the best block
    exploded = y.copy()
    exploded[80_000:] = base[80_000:] * 4 * (1 + 0.02 * rng.standard_normal(20_000))
    ex = st.level_shift(exploded)
    assert ex.ratio > 3 and ex.z > 50
    early = st.level_shift(y, reference="early")
    assert early.ratio < 0.3  # loss fell from its start
    flat = st.level_shift(np.full(1000, 0.7))
    assert flat.z == 0 and flat.ratio == 1
    with pytest.raises(InconclusiveError):
        st.level_shift([1.0, 2.0, 3.0])


# ----------------------------------------------------------------------------
# The distributions and FDR adjustments diffaudit computes through scipy.special, against scipy.stats


def test_distributions_match_scipy_stats():
    from scipy import stats as sps

    x = np.array([-40.0, -3.2, -0.4, 0.0, 0.7, 2.5, 12.0])
    for df in (1.0, 2.5, 7.0, 80.0, np.inf):
        np.testing.assert_allclose(st.t_sf(x, df), sps.t.sf(x, df), rtol=1e-10, atol=1e-300)
        np.testing.assert_allclose(st.t_cdf(x, df), sps.t.cdf(x, df), rtol=1e-10, atol=1e-300)
        q = np.array([1e-12, 0.01, 0.025, 0.5, 0.975])
        np.testing.assert_allclose(st.t_ppf(q, df), sps.t.ppf(q, df), rtol=1e-9)
        np.testing.assert_allclose(st.t_isf(q, df), sps.t.isf(q, df), rtol=1e-9)
    np.testing.assert_allclose(st.norm_sf(x), sps.norm.sf(x), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(st.norm_isf(np.array([1e-300, 1e-9, 0.05, 0.5])), sps.norm.isf([1e-300, 1e-9, 0.05, 0.5]),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("method", ["bh", "by"])
def test_fdr_adjustment_matches_scipy(method):
    from scipy import stats as sps

    rng = np.random.default_rng(4)
    for m in (1, 2, 7, 50, 400):
        p = np.concatenate([rng.uniform(size=m - m // 5), rng.uniform(0, 1e-4, size=m // 5)])
        p[rng.integers(0, m, size=min(3, m))] = 0.5  # ties
        np.testing.assert_allclose(st.adjust_pvalues(p, method), sps.false_discovery_control(p, method=method),
                                   rtol=1e-12)


@pytest.mark.parametrize("n, window", [(1, 5), (2, 3), (3, 5), (7, 5), (50, 101), (1000, 101), (5000, 31)])
def test_median_filter_is_scipy_mirror_median_filter(n, window):
    from scipy import ndimage

    v = np.random.default_rng(n).standard_normal(n) * np.exp(np.linspace(0, 3, n))
    np.testing.assert_array_equal(st.median_filter(v, window), ndimage.median_filter(v, size=window, mode="mirror"))


def test_median_filter_of_a_series_shorter_than_its_window_stays_within_its_values():
    # (scipy.ndimage returns uninitialized memory for 2 points and a window of 5; this returns medians of values)
    for n in (2, 3, 4):
        v = np.random.default_rng(n).standard_normal(n)
        m = st.median_filter(v, 101)
        assert m.shape == v.shape and np.all((m >= v.min()) & (m <= v.max()))
