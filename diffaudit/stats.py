"""Statistics for training logs: exact merges, honest intervals, robust detectors.

What we assume, and what each method guards against
----------------------------------------------------

*Sufficient statistics.* The logger writes, per (window, noise bin), the count,
mean and m2 (sum of squared deviations). Groups are combined with Chan's
parallel formula in float64: pooled mean first, then
``m2 = sum(m2_i) + sum(n_i (mean_i - mean)^2)``. Every term is a square of a
small deviation, so nothing cancels; a naive ``sum(x^2) - sum(x)^2 / n`` loses
every digit when the mean is large next to the spread, and goes negative in
float32 on ordinary loss values.

*Autocorrelation.* Consecutive windows of one run share the optimizer
trajectory, so a loss series is positively autocorrelated and an iid standard
error is too small by ``sqrt(tau)``, tau being the integrated autocorrelation
time (tau = 19 for an AR(1) with phi = 0.9: an iid interval is 4.4x too
narrow, and a "significant" trend appears on most healthy runs). So:

1. Remove a quadratic in time (the trend is signal, not correlation; a loss
   curve bends, and a straight line would leave a bow that reads as strong
   correlation), then estimate tau with Geyer's initial monotone sequence.
   Geyer's truncation hides a slow component with a small share of the
   variance (optimizer drift under sampling noise), which can still carry
   much of the variance of a mean, so tau is also estimated on block means
   of 2, 4, 8, ... windows, where the white part averages away, and the
   largest estimate is kept.
2. Cut the series into k contiguous *batches* of at least ``BATCH_TAU * tau``
   windows, k between ``MIN_BATCHES`` and ``MAX_BATCHES``. Means of long
   batches are nearly independent and nearly normal whatever the correlation
   inside them, so the mean, the slope and their intervals are computed from
   the k batch means as if iid. Few, long batches are the robust choice: 16
   rather than 32 costs ~7% of interval width on white noise and saves a lot
   of coverage under slow drift.
3. Adjacent batch means still share the correlation across their border
   (about Gamma_1 / (m tau), Gamma_1 = sum_h h rho_h, m the batch length). This
   first-order bias is corrected: in the standard error of the mean, and by
   Hamed and Rao's variance inflation in the Kendall statistic.

Measured (AR(1) and AR(1) + white mixtures, 300-3000 windows): 95% intervals
cover 93-97% of the time. With fewer than ``MIN_BATCHES * BATCH_TAU * tau``
windows the batches are shorter than wanted and the result says so
(``reliable=False``). What no single series can reveal: a drift whose time
scale approaches the batch length (n / 16 windows) and whose share of the
per-window variance is small; there coverage falls (to ~80% for an AR(1) with
phi = 0.99 holding 6% of the variance, n = 1000) and ``reliable`` stays True.
Several seeds, or a relative tolerance on top of significance, cover that.

*Robust slope.* Theil-Sen (median of pairwise slopes) on the batch means: a
spike moves one batch mean, which moves the median of slopes little. The
interval is Sen's, obtained by inverting Kendall's tau with the *exact* null
distribution of the number of discordant pairs (Mahonian numbers) instead of
the normal approximation: with 8-16 batch means the approximation is coarse,
while the exact interval has coverage >= the nominal level whenever the batch
means are independent with exchangeable errors (the Hamed-Rao inflation of
step 3 widens it for what correlation is left). The Mann-Kendall p-value for
"slope = 0" and the equivalence test come from the same distribution, so the
test, the interval and the TOST always agree.

*Stagnation is an equivalence claim.* "Not significantly decreasing" is not
evidence of a plateau (a short noisy series is never significant). We claim
stagnation only when the slope is shown to lie inside +-epsilon (two one-sided
tests, TOST), epsilon being a relative change of the level per ``per_steps``
steps.

*Many bins.* A run has 20-100 bins, each tested; adjusted p-values come from
Benjamini-Yekutieli (FDR under any dependence between bins: bins of one run are
positively dependent through the shared model) or Holm (family-wise error).

*Two runs.* A late-window mean is compared with Welch's t on batch-means
standard errors (one run per side), or with a t-test over seed means when there
are several seeds per side: then the seed-to-seed spread is the noise, which is
the honest question ("is B worse than another seed of A would be?").

*Long per-step series.* Spikes are points far from a rolling median in units of
a rolling MAD (:func:`median_filter`, polars' rolling median: 1e6 points in ~0.1 s).
Both are robust to the spikes themselves (50% breakdown) and follow the slow
trend of a loss curve. Non-finite values are removed in one place
(``_split_finite``), reported by position, and never reach a median. A zero
MAD (constant or quantized stretches) is floored at a tiny positive scale, so
a constant series has z = 0 everywhere and any departure from it is a spike.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import polars as pl
from scipy import special

from diffaudit.errors import DataError, InconclusiveError

# ----------------------------------------------------------------------------
# Defaults

BATCH_TAU = 5.0  # a batch spans at least this many integrated autocorrelation times
MIN_BATCHES = 8  # fewest batch means: exact two-sided Mann-Kendall p can reach 5e-5
MAX_BATCHES = 16  # more batch means add little power and shorten the batches
BATCH_LENGTH = 4.0  # a batch spans at least this many correlation lengths Gamma_1 / tau
TAU_MIN_BLOCKS = 64  # coarsest block level the conservative tau estimate looks at
MAD_TO_SIGMA = 1.482602218505602  # 1 / Phi^-1(3/4): MAD of a normal -> its sigma
SPIKE_WINDOW = 101  # rolling window (points) for the spike detector's median and MAD
SPIKE_THRESHOLD = 8.0  # robust z above which a point is a spike


# ----------------------------------------------------------------------------
# Distributions: Student's t and the normal through scipy.special (scipy.stats costs ~0.6 s of import on the
# 2-core machine, for these six functions; tests check each against scipy.stats)


def t_sf(x, df):
    """P(T > x) for Student's t with ``df`` degrees of freedom (``df`` may be inf: the normal)."""
    return special.stdtr(df, -np.asarray(x, np.float64))


def t_cdf(x, df):
    """P(T <= x)."""
    return special.stdtr(df, np.asarray(x, np.float64))


def t_ppf(q, df):
    """The q-quantile of Student's t."""
    return special.stdtrit(df, q)


def t_isf(q, df):
    """The value exceeded with probability q (by symmetry, precise for tiny q)."""
    return -special.stdtrit(df, q)


def norm_sf(x):
    """P(Z > x) for a standard normal."""
    return special.ndtr(-np.asarray(x, np.float64))


def norm_isf(q):
    """The value a standard normal exceeds with probability q."""
    return -special.ndtri(q)


# ----------------------------------------------------------------------------
# Result types


@dataclass(frozen=True, eq=False)
class Moments:
    """Count, mean and m2 (sum of squared deviations) of one or many groups, float64."""

    count: np.ndarray
    mean: np.ndarray  # NaN where count == 0
    m2: np.ndarray

    @property
    def var(self) -> np.ndarray:
        """Sample variance (ddof=1); NaN where count < 2."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 1, self.m2 / (self.count - 1), np.nan)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var)


@dataclass(frozen=True, eq=False)
class BatchMeans:
    """A series cut into contiguous batches, with a standard error honest under autocorrelation."""

    x: np.ndarray  # weight-averaged position (step) of each batch
    means: np.ndarray  # weighted mean of each batch
    weights: np.ndarray  # total weight (sample count) of each batch
    mean: float  # weighted mean of the whole series
    se: float  # standard error of `mean` from the spread of the batch means
    df: int  # degrees of freedom of `se` (n_batches - 1)
    n: int  # windows used (finite, positive weight)
    n_batches: int
    batch_size: int  # windows per batch (the shortest batch)
    tau: float  # integrated autocorrelation time of the detrended series (conservative), in windows
    batch_corr: float  # estimated correlation of adjacent batch means (corrected for in `se`)
    reliable: bool  # batches as long as wanted (BATCH_TAU * tau, BATCH_LENGTH * Gamma_1 / tau)


@dataclass(frozen=True, eq=False)
class Trend:
    """Theil-Sen slope of a series with an autocorrelation-honest interval and p-value."""

    slope: float  # per unit of x (per step)
    lo: float  # lower end of the `confidence` interval of the slope
    hi: float
    p_value: float  # two-sided exact Mann-Kendall on batch means, H0: slope = 0
    confidence: float
    intercept: float  # y = intercept + slope * x through the medians (Theil-Sen "separate")
    level: float  # median of the batch means: what relative slopes are relative to
    per_steps: float  # unit of the relative slopes
    rel_slope: float  # slope * per_steps / level: fractional change per `per_steps` steps
    rel_lo: float
    rel_hi: float
    batches: BatchMeans

    @property
    def reliable(self) -> bool:
        return self.batches.reliable


@dataclass(frozen=True, eq=False)
class Equivalence:
    """Two one-sided tests that a slope lies within +-margin (relative, per `per_steps` steps)."""

    equivalent: bool  # the slope is shown to lie inside the margin at level alpha
    p_value: float  # TOST p-value: max of the two one-sided p-values
    margin: float  # relative change per `per_steps` steps
    per_steps: float
    alpha: float
    rel_lo: float  # (1 - 2 alpha) interval of the relative slope: equivalent iff inside +-margin
    rel_hi: float
    trend: Trend  # the slope, its `confidence` interval and the Mann-Kendall p for slope != 0


@dataclass(frozen=True, eq=False)
class Comparison:
    """Difference b - a of two means with its interval and two-sided p-value."""

    mean_a: float
    mean_b: float
    diff: float  # mean_b - mean_a
    lo: float
    hi: float
    rel_diff: float  # diff / |mean_a|
    rel_lo: float  # lo / |mean_a| (mean_a treated as exact)
    rel_hi: float
    se: float
    df: float
    p_value: float  # for `alternative`; the interval is always two-sided at `confidence`
    confidence: float
    alternative: str  # "two-sided", "greater" (H1: b > a, e.g. loss regressed) or "less"
    method: str  # "welch-batch-means", "seed-welch" or "seed-borrowed-variance"
    n_a: int  # windows (series) or seeds on side a
    n_b: int


@dataclass(frozen=True, eq=False)
class Spikes:
    """Points of a per-step series far above (or below) their rolling median."""

    indices: np.ndarray  # positions in the input series, ascending
    z: np.ndarray  # robust z-score of each, (x - rolling median) / (1.4826 rolling MAD)
    event_start: np.ndarray  # runs of consecutive spikes (finite points): first position
    event_end: np.ndarray  # last position (inclusive)
    event_peak: np.ndarray  # position of the largest |z| in the run
    nonfinite: np.ndarray  # positions of NaN / inf values, ignored by the detector
    n: int  # length of the input
    threshold: float
    window: int

    @property
    def n_events(self) -> int:
        return int(self.event_start.size)

    @property
    def rate(self) -> float:
        """Spiking points per finite point."""
        finite = self.n - self.nonfinite.size
        return self.indices.size / finite if finite else float("nan")


@dataclass(frozen=True, eq=False)
class LevelShift:
    """Median of the last stretch of a series against a reference stretch (early or best)."""

    reference: str  # "early" or "best"
    ref_level: float  # median of the reference block
    late_level: float  # median of the last block
    ratio: float  # late_level / ref_level; NaN when ref_level <= 0
    z: float  # (late - ref) / robust sigma of the per-point noise in the reference block
    block: int  # points per block
    n_nonfinite: int


# ----------------------------------------------------------------------------
# Missing values: the one place they are handled


def _split_finite(x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (finite values, their positions, positions of non-finite values) of a 1-D array."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise DataError(f"expected a 1-D series, got shape {x.shape}")
    ok = np.isfinite(x)
    pos = np.flatnonzero(ok)
    return x[pos], pos, np.flatnonzero(~ok)


def _clean_windows(y, x, weights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop windows with a non-finite mean or position, or a weight <= 0; check x increases."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1:
        raise DataError(f"expected a 1-D series of window means, got shape {y.shape}")
    x = np.arange(y.size, dtype=np.float64) if x is None else np.asarray(x, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    if x.shape != y.shape or w.shape != y.shape:
        raise DataError(f"series, positions and weights differ in shape: {y.shape}, {x.shape}, {w.shape}")
    keep = np.isfinite(y) & np.isfinite(x) & np.isfinite(w) & (w > 0)
    y, x, w = y[keep], x[keep], w[keep]
    if np.any(np.diff(x) <= 0):
        raise DataError("window positions (steps) must be strictly increasing")
    return y, x, w


# ----------------------------------------------------------------------------
# Sufficient statistics (Chan's parallel formula, float64)


def moments(x, axis: int = -1) -> Moments:
    """Two-pass float64 count, mean and m2 of raw values along `axis` (NaN ignored)."""
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    n = ok.sum(axis=axis).astype(np.float64)
    xs = np.where(ok, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = xs.sum(axis=axis) / n
        d = np.where(ok, x - np.expand_dims(mean, axis), 0.0)
        mean = mean + d.sum(axis=axis) / n  # one refinement step: exact to rounding
        d = np.where(ok, x - np.expand_dims(mean, axis), 0.0)
    m2 = (d * d).sum(axis=axis)
    return Moments(n, np.where(n > 0, mean, np.nan), np.where(n > 0, m2, 0.0))


def merge_groups(group, count, mean, m2, size: int) -> Moments:
    """Merge groups (count, mean, m2) that share an index of ``group`` into ``size`` groups: Chan's formula,
    exact in float64 (the mean refined once against the first pass). The one merge of moments on arrays:
    every other merge here is this one with a particular grouping.

    A group with count 0 or a non-finite mean is empty and ignored (a non-finite m2 counts as 0); an
    output group with nothing in it has count 0, mean NaN and m2 0.
    """
    g = np.asarray(group, np.intp).ravel()
    n = np.asarray(count, np.float64).ravel()
    mu = np.asarray(mean, np.float64).ravel()
    s = np.asarray(m2, np.float64).ravel()
    ok = (n > 0) & np.isfinite(mu)
    n = np.where(ok, n, 0.0)
    mu = np.where(ok, mu, 0.0)
    s = np.where(ok & np.isfinite(s), s, 0.0)
    if g.size and g[0] >= 0 and g[-1] < size and np.all(g[1:] > g[:-1]):
        # every group of one row at most (one rank's windows, in order): nothing to merge, the rows are the groups
        N, M, M2 = np.zeros(size), np.full(size, np.nan), np.zeros(size)
        N[g], M[g], M2[g] = n, np.where(ok, mu, np.nan), s
        return Moments(N, np.where(N > 0, M, np.nan), M2)
    N = np.bincount(g, n, size)
    with np.errstate(invalid="ignore", divide="ignore"):
        M = np.where(N > 0, np.bincount(g, n * mu, size) / N, 0.0)
        M = M + np.where(N > 0, np.bincount(g, n * (mu - M[g]), size) / N, 0.0)
    d = np.where(ok, mu - M[g], 0.0)
    M2 = np.bincount(g, s + n * d * d, size)
    return Moments(N, np.where(N > 0, M, np.nan), np.where(N > 0, M2, 0.0))


def merge_moments(count, mean, m2, axis: int = -1) -> Moments:
    """Combine all groups along `axis` into one group: exact in float64, any number of groups."""
    one = coarsen_moments(count, mean, m2, [0], axis=axis)
    return Moments(*(np.take(v, 0, axis=axis) for v in (one.count, one.mean, one.m2)))


MOMENT_STRETCH = 1 << 16  # cells merged at a time by coarsen_moments


def coarsen_moments(count, mean, m2, starts, axis: int = -1) -> Moments:
    """Merge runs of consecutive groups along `axis`: group j covers [starts[j], starts[j+1]).

    `starts` are ascending indices with starts[0] == 0; use :func:`batch_starts` for k
    near-equal batches. Empty groups (count 0, mean NaN) are allowed and ignored.
    """
    n = np.moveaxis(np.asarray(count, np.float64), axis, -1)
    mu = np.moveaxis(np.asarray(mean, np.float64), axis, -1)
    s = np.moveaxis(np.asarray(m2, np.float64), axis, -1)
    if not (n.shape == mu.shape == s.shape):
        raise DataError(f"count, mean and m2 differ in shape: {n.shape}, {mu.shape}, {s.shape}")
    starts = np.asarray(starts, dtype=np.intp)
    L = n.shape[-1]
    if L == 0 or starts.size == 0 or starts[0] != 0 or np.any(np.diff(starts) <= 0) or starts[-1] >= L:
        raise DataError(f"batch starts {starts.tolist()[:8]} do not cut a sequence of {L} groups")
    G = starts.size
    lead = n.shape[:-1]
    rows = int(np.prod(lead, dtype=np.int64))
    group = np.repeat(np.arange(G), np.diff(np.append(starts, L)))
    n, mu, s = (v.reshape(rows, L) for v in (n, mu, s))
    out = tuple(np.empty((rows, G)) for _ in range(3))
    # a stretch of rows at a time: each merge's dozen temporaries as long as its input stay a few MB (a 1M-cell
    # window x bin grid would need ~100 MB at once); a group's values are summed in the same order either way
    step = max(1, MOMENT_STRETCH // L)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        flat = (np.arange(r1 - r0)[:, None] * G + group[None, :]).ravel()
        got = merge_groups(flat, n[r0:r1], mu[r0:r1], s[r0:r1], (r1 - r0) * G)
        for o, v in zip(out, (got.count, got.mean, got.m2)):
            o[r0:r1] = v.reshape(r1 - r0, G)
    return Moments(*(np.moveaxis(v.reshape(lead + (G,)), -1, axis) for v in out))


def batch_starts(n: int, k: int) -> np.ndarray:
    """Start indices of k contiguous, near-equal batches of n items (longer batches last)."""
    if not 1 <= k <= n:
        raise DataError(f"cannot cut {n} windows into {k} batches")
    return (np.arange(k) * n) // k


# ----------------------------------------------------------------------------
# Autocorrelation and batch means


def _geyer(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tau, Gamma_1) of each centred row of v: Geyer's initial monotone sequence estimate of
    tau = 1 + 2 sum rho_h, and Gamma_1 = sum h rho_h over the same lags (not clamped).
    All rows in one FFT; each row's sums stop at its own first non-positive pair."""
    r, n = v.shape
    f = np.fft.rfft(v, 2 * n, axis=1)
    acov = np.fft.irfft(f * np.conj(f), 2 * n, axis=1)[:, :n]
    flat = acov[:, 0] <= 0  # a constant series: no correlation to measure
    rho = acov / np.where(flat, 1.0, acov[:, 0])[:, None]
    m = n // 2
    gamma = rho[:, : 2 * m : 2] + rho[:, 1 : 2 * m : 2]
    nonpos = gamma <= 0
    kept = np.where(nonpos.any(axis=1), nonpos.argmax(axis=1), m)
    gamma = np.where(np.arange(m) < kept[:, None], np.minimum.accumulate(gamma, axis=1), 0.0)
    lags = np.arange(n)
    inside = (lags >= 1) & (lags < 2 * kept[:, None])
    tau = np.where(flat, 1.0, -1.0 + 2.0 * gamma.sum(axis=1))
    return tau, np.where(flat, 0.0, np.where(inside, lags * rho, 0.0).sum(axis=1))


def _correlation_rows(v: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tau, Gamma_1, conservative tau) of each row of v (finite values at positions pos), a quadratic removed.

    tau (1 <= tau <= n; n / tau is the effective sample size) is Geyer's initial
    monotone sequence: pairs rho_2m + rho_2m+1 of sample autocorrelations summed
    up to the first non-positive pair and forced to be non-increasing. That
    truncation also hides a slow component with a small share of the variance
    (optimizer drift under sampling noise), each of whose lags is lost in the
    noise although it can carry much of the variance of a mean; so the
    conservative tau also looks at block means of 2, 4, 8, ... values (at least
    ``TAU_MIN_BLOCKS`` blocks), where the white part averages away and the slow
    part shows, and keeps the largest long-run variance seen.
    """
    r, n = v.shape
    ones = np.ones(r)
    if n < 4:
        return ones, np.zeros(r), ones.copy()
    # A trend is signal, not correlation. A loss curve bends, so a straight line
    # leaves a bow that reads as strong correlation; a quadratic takes the bend
    # and only ~3 of the n degrees of freedom of any slow noise.
    t = (pos - pos.mean()) / max(float(np.ptp(pos)), 1.0)
    basis = np.vander(t, min(3, n - 1))
    mag = np.max(np.abs(v), axis=1)
    v = v - (basis @ np.linalg.solve(basis.T @ basis, basis.T @ v.T)).T
    var0 = np.einsum("ij,ij->i", v, v) / n
    still = var0 <= (1e-12 * mag) ** 2  # constant up to the rounding of the fit
    var0 = np.where(still, 1.0, var0)
    tau, gamma1 = _geyer(v)
    cons = tau
    b = 2
    while n // b >= TAU_MIN_BLOCKS:
        nb = n // b
        blocks = v[:, : nb * b].reshape(r, nb, b).mean(axis=2)
        blocks = blocks - blocks.mean(axis=1, keepdims=True)
        # long-run variance seen at this level, in units of the per-value variance
        cons = np.maximum(cons, b * np.einsum("ij,ij->i", blocks, blocks) / nb * _geyer(blocks)[0] / var0)
        b *= 2
    clamp = lambda t_: np.where(still, 1.0, np.clip(t_, 1.0, n))  # noqa: E731
    return clamp(tau), np.where(still, 0.0, np.maximum(gamma1, 0.0)), clamp(cons)


def _correlation(y) -> tuple[float, float, float]:
    """(tau, Gamma_1, conservative tau) of the finite values of y, a quadratic removed (one row of
    :func:`_correlation_rows`)."""
    v, pos, _ = _split_finite(y)
    return tuple(float(a[0]) for a in _correlation_rows(v[None, :], pos))


def same_columns(mask: np.ndarray) -> list[np.ndarray]:
    """The columns of a 2-D boolean mask, grouped by equal content (first appearance first)."""
    packed = np.packbits(mask, axis=0)
    groups: dict[bytes, list[int]] = {}
    for j in range(mask.shape[1]):
        groups.setdefault(packed[:, j].tobytes(), []).append(j)
    return [np.array(js) for js in groups.values()]


CORRELATION_STRETCH = 1 << 16  # values (windows x columns) whose autocorrelations are computed at a time


def correlations(y, keep) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tau, Gamma_1, conservative tau) of each column of ``y`` over the rows ``keep`` marks, each column
    taken as one series of its kept values, as :func:`batch_means` takes its cleaned windows (pass the result
    to it as ``correlation=``). Columns that keep the same rows share one FFT: a run's bins usually all do."""
    y = np.asarray(y, np.float64)
    keep = np.asarray(keep, bool) & np.isfinite(y)
    out = tuple(np.ones(y.shape[1]) for _ in range(3))
    out[1][:] = 0.0
    if y.size == 0:
        return out
    for same in same_columns(keep):
        rows = np.flatnonzero(keep[:, same[0]])
        # a few columns at a time: the FFTs of a 10,000-window x 100-bin grid at once take ~50 MB
        step = max(1, CORRELATION_STRETCH // max(rows.size, 1))
        for i in range(0, len(same), step):
            js = same[i:i + step]
            got = _correlation_rows(y[np.ix_(rows, js)].T, np.arange(rows.size, dtype=np.float64))
            for o, a in zip(out, got):
                o[js] = a
    return out


def batch_means(
    y,
    x=None,
    *,
    weights=None,  # sample count of each window; None = equal
    n_batches: int | None = None,  # None = choose from the autocorrelation (see module docstring)
    batch_tau: float = BATCH_TAU,  # batches span at least this many autocorrelation times
    min_batches: int = MIN_BATCHES,
    max_batches: int = MAX_BATCHES,
    correlation: tuple[float, float, float] | None = None,  # (tau, Gamma_1, conservative tau); None = measure
) -> BatchMeans:
    """Cut a series of window means into contiguous batches; mean and an honest standard error.

    Windows with a non-finite mean or zero weight are dropped first. Raises
    InconclusiveError when fewer windows than `min_batches` remain. ``correlation``
    is the series' own, measured before for many series at once (:func:`correlations`).
    """
    y, x, w = _clean_windows(y, x, weights)
    n = y.size
    if n < max(min_batches, 2):
        raise InconclusiveError(f"{n} usable windows, at least {max(min_batches, 2)} needed")
    tau, gamma1, tau_cons = _correlation(y) if correlation is None else correlation
    # long enough for tau, and for the correlation length Gamma_1 / tau, which a slow
    # component with a small share of the variance makes much longer than tau
    need = max(batch_tau * tau_cons, BATCH_LENGTH * gamma1 / tau, 1.0)
    if n_batches is None:
        k = int(np.clip(n // math.ceil(need), min_batches, max_batches))
    else:
        k = int(n_batches)
    if not 2 <= k <= n:
        raise DataError(f"cannot cut {n} windows into {k} batches")
    starts = batch_starts(n, k)
    W = np.add.reduceat(w, starts)
    means = np.add.reduceat(w * y, starts) / W
    bx = np.add.reduceat(w * x, starts) / W
    mean = float(W @ means / W.sum())
    frac = W / W.sum()
    var = k / (k - 1) * float(np.sum(frac * frac * (means - mean) ** 2))
    # adjacent batch means still share the correlation across their border: their
    # correlation is about Gamma_1 / (m tau - 2 Gamma_1). It makes the spread of the
    # batch means too small and the mean's variance larger; correct both, first order.
    m = n / k
    rho_b = float(np.clip(gamma1 / max(m * tau - 2 * gamma1, 1e-12), 0.0, 0.5))
    var *= (1 + 2 * rho_b * (k - 1) / k) / (1 - 2 * rho_b / k)
    size_min = int(np.min(np.diff(np.append(starts, n))))
    return BatchMeans(
        x=bx, means=means, weights=W, mean=mean, se=math.sqrt(var), df=k - 1, n=n, n_batches=k,
        batch_size=size_min, tau=tau_cons, batch_corr=rho_b, reliable=size_min >= need,
    )


# ----------------------------------------------------------------------------
# Kendall / Sen: exact null distribution on k batch means


@lru_cache(maxsize=64)
def _discordant_pmf(k: int) -> np.ndarray:
    """P(D = d), d = 0..k(k-1)/2: discordant pairs among k exchangeable continuous values."""
    p = np.ones(1)
    for m in range(2, k + 1):
        p = np.convolve(p, np.full(m, 1.0 / m))
    p.setflags(write=False)
    return p


@lru_cache(maxsize=256)
def _discordant_cdfs(k: int, inflation: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(P(D <= d), P(D >= d)) for d = 0..k(k-1)/2, summed without cancellation.

    ``inflation`` > 1 widens the null for correlated neighbours (Hamed and Rao's
    variance correction): an observed d counts as ``N/2 + (d - N/2) / sqrt(inflation)``.
    """
    p = _discordant_pmf(k)
    le = np.minimum(np.cumsum(p), 1.0)
    ge = np.minimum(np.cumsum(p[::-1])[::-1], 1.0)
    if inflation > 1.0:
        N = p.size - 1
        d = N / 2 + (np.arange(N + 1) - N / 2) / math.sqrt(inflation)
        le, ge = le[np.floor(d + 1e-9).astype(int)], ge[np.ceil(d - 1e-9).astype(int)]
    le.setflags(write=False)
    ge.setflags(write=False)
    return le, ge


class _SenTest:
    """Kendall / Sen inference on k batch means: p-values at any slope, and the interval."""

    def __init__(self, bm: BatchMeans):
        k = bm.n_batches
        i, j = np.triu_indices(k, k=1)
        self.slopes = np.sort((bm.means[j] - bm.means[i]) / (bm.x[j] - bm.x[i]))
        # Hamed-Rao with the lag-1 correlation of the batch means only (rank ~ Pearson)
        infl = 1.0 + 2.0 * (k - 3) / k * bm.batch_corr if k > 3 else 1.0
        self.le, self.ge = _discordant_cdfs(k, round(infl, 6))

    def p_below(self, b: float) -> float:
        """One-sided p for H1: slope > b (few pairwise slopes below b); ties count against."""
        return float(self.le[int(np.searchsorted(self.slopes, b, side="right"))])

    def p_above(self, b: float) -> float:
        """One-sided p for H1: slope < b (few pairwise slopes above b); ties count against."""
        return float(self.ge[int(np.searchsorted(self.slopes, b, side="left"))])

    def interval(self, alpha_each_side: float) -> tuple[float, float]:
        """Sen's interval: the slopes b that neither one-sided test rejects at alpha_each_side."""
        # q = number of discordance counts d rejected on the low side; the interval is
        # [s_(q), s_(N-q+1)] (1-based order statistics), symmetric like the null
        q = int(np.count_nonzero(self.le <= alpha_each_side * (1 + 1e-12)))
        if q == 0:
            return -math.inf, math.inf
        N = self.slopes.size
        return float(self.slopes[q - 1]), float(self.slopes[N - q])


# ----------------------------------------------------------------------------
# Trend, stagnation


def trend(
    y,
    x=None,
    *,
    weights=None,  # sample count of each window; None = equal
    confidence: float = 0.95,
    per_steps: float = 1000.0,  # relative slopes are per this many units of x
    n_batches: int | None = None,  # None = choose from tau
    batch_tau: float = BATCH_TAU,
    min_batches: int = MIN_BATCHES,
    max_batches: int = MAX_BATCHES,
) -> Trend:
    """Theil-Sen slope of a window-mean series, with its interval and Mann-Kendall p-value.

    `x` are the windows' steps (default 0, 1, ...). All inference is on batch
    means (see the module docstring), so it stays honest under autocorrelation.
    """
    bm = batch_means(
        y, x, weights=weights, n_batches=n_batches, batch_tau=batch_tau,
        min_batches=min_batches, max_batches=max_batches,
    )
    return _trend_from_batches(bm, confidence, per_steps)


def _trend_from_batches(bm: BatchMeans, confidence: float, per_steps: float, sen: _SenTest | None = None) -> Trend:
    sen = sen or _SenTest(bm)
    slope = float(np.median(sen.slopes))
    intercept = float(np.median(bm.means) - slope * np.median(bm.x))
    lo, hi = sen.interval((1.0 - confidence) / 2)
    p = min(1.0, 2.0 * min(sen.p_below(0.0), sen.p_above(0.0)))
    level = float(np.median(bm.means))
    scale = per_steps / level if level > 0 else math.nan
    return Trend(
        slope=slope, lo=lo, hi=hi, p_value=p, confidence=confidence, intercept=intercept,
        level=level, per_steps=per_steps, rel_slope=slope * scale, rel_lo=lo * scale,
        rel_hi=hi * scale, batches=bm,
    )


def log_scale(tr: Trend) -> Trend | None:
    """The same batches' trend on log(batch means), so slopes are relative rates; None if a mean is <= 0.

    exp(slope * length) - 1 is then the relative change over ``length`` steps, which stays above
    -100% where a straight line through a decaying loss would not. The batches (and so their
    independence) are those of ``tr``; Kendall's test is rank-based, so p is unchanged.
    """
    bm = tr.batches
    if bm is None or not np.all(bm.means > 0):
        return None
    return _trend_from_batches(dataclasses.replace(bm, means=np.log(bm.means)), tr.confidence, tr.per_steps)


def equivalence(
    y,
    x=None,
    *,
    margin: float = 0.01,  # +-relative change of the level per `per_steps` that counts as flat
    per_steps: float = 1000.0,
    alpha: float = 0.05,
    weights=None,
    confidence: float = 0.95,  # of the interval reported in .trend
    n_batches: int | None = None,
    batch_tau: float = BATCH_TAU,
    min_batches: int = MIN_BATCHES,
    max_batches: int = MAX_BATCHES,
    correlation: tuple[float, float, float] | None = None,  # as batch_means takes it
) -> Equivalence:
    """Stagnation test (TOST): is the slope shown to lie within +-margin * level per `per_steps`?"""
    bm = batch_means(
        y, x, weights=weights, n_batches=n_batches, batch_tau=batch_tau,
        min_batches=min_batches, max_batches=max_batches, correlation=correlation,
    )
    sen = _SenTest(bm)  # one set of pairwise slopes for the trend and the two one-sided tests
    tr = _trend_from_batches(bm, confidence, per_steps, sen)
    if not tr.level > 0:
        raise InconclusiveError(f"level {tr.level:g} is not positive: a relative margin is meaningless")
    delta = margin * tr.level / per_steps
    p = max(sen.p_below(-delta), sen.p_above(delta))
    lo, hi = sen.interval(alpha)
    scale = per_steps / tr.level
    return Equivalence(
        equivalent=p <= alpha, p_value=p, margin=margin, per_steps=per_steps, alpha=alpha,
        rel_lo=lo * scale, rel_hi=hi * scale, trend=tr,
    )


# ----------------------------------------------------------------------------
# Multiple testing


def adjust_pvalues(p, method: str = "by") -> np.ndarray:
    """Adjusted p-values: "by" (Benjamini-Yekutieli), "bh" or "holm". NaN stay NaN, not counted."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    q = p[ok]
    if q.size == 0:
        return out
    if np.any((q < 0) | (q > 1)):
        raise DataError("p-values must lie in [0, 1]")
    if method in ("by", "bh"):  # Benjamini-Hochberg; BY divides the level by sum 1/i (any dependence)
        m = q.size
        order = np.argsort(q, kind="stable")
        scale = m * (np.sum(1.0 / np.arange(1, m + 1)) if method == "by" else 1.0)
        adj = np.minimum.accumulate((q[order] * scale / np.arange(1, m + 1))[::-1])[::-1]
        res = np.empty(m)
        res[order] = np.minimum(adj, 1.0)
        out[ok] = res
    elif method == "holm":
        m = q.size
        order = np.argsort(q, kind="stable")
        adj = np.maximum.accumulate(q[order] * (m - np.arange(m)))
        res = np.empty(m)
        res[order] = np.minimum(adj, 1.0)
        out[ok] = res
    else:
        raise DataError(f"unknown p-value adjustment {method!r}: use 'by', 'bh' or 'holm'")
    return out


# ----------------------------------------------------------------------------
# Two-sample comparison


_ALTERNATIVES = ("two-sided", "greater", "less")


def _comparison(mean_a, mean_b, se, df, confidence, alternative, method, n_a, n_b) -> Comparison:
    if alternative not in _ALTERNATIVES:
        raise DataError(f"alternative must be one of {', '.join(_ALTERNATIVES)}, got {alternative!r}")
    diff = mean_b - mean_a
    if se > 0 and df > 0:
        tq = float(t_ppf(0.5 + confidence / 2, df))
        lo, hi = diff - tq * se, diff + tq * se
        t = diff / se
        p = {
            "two-sided": lambda: 2 * t_sf(abs(t), df),
            "greater": lambda: t_sf(t, df),
            "less": lambda: t_cdf(t, df),
        }[alternative]()
        p = float(min(p, 1.0))
    else:  # zero spread: any difference is exact
        lo = hi = diff
        shown = {"two-sided": diff != 0, "greater": diff > 0, "less": diff < 0}[alternative]
        p = 0.0 if shown else 1.0
    base = abs(mean_a)
    r = (lambda v: v / base) if base > 0 else (lambda v: math.nan)
    return Comparison(
        mean_a=float(mean_a), mean_b=float(mean_b), diff=float(diff), lo=float(lo), hi=float(hi),
        rel_diff=r(diff), rel_lo=r(lo), rel_hi=r(hi), se=float(se), df=float(df), p_value=p,
        confidence=confidence, alternative=alternative, method=method, n_a=int(n_a), n_b=int(n_b),
    )


def compare_series(
    a,
    b,
    *,
    x_a=None,
    x_b=None,
    weights_a=None,
    weights_b=None,
    confidence: float = 0.95,
    alternative: str = "two-sided",  # "greater": H1 is mean_b > mean_a
    batch_tau: float = BATCH_TAU,
    min_batches: int = MIN_BATCHES,
    max_batches: int = MAX_BATCHES,
) -> Comparison:
    """Mean of series b minus mean of series a (one run each): Welch t on batch-means errors."""
    ba = batch_means(a, x_a, weights=weights_a, batch_tau=batch_tau, min_batches=min_batches,
                     max_batches=max_batches)
    bb = batch_means(b, x_b, weights=weights_b, batch_tau=batch_tau, min_batches=min_batches,
                     max_batches=max_batches)
    va, vb = ba.se**2, bb.se**2
    se = math.sqrt(va + vb)
    den = va * va / ba.df + vb * vb / bb.df
    df = (va + vb) ** 2 / den if den > 0 else math.inf
    return _comparison(ba.mean, bb.mean, se, df, confidence, alternative, "welch-batch-means", ba.n, bb.n)


def compare_seed_means(a, b, *, confidence: float = 0.95, alternative: str = "two-sided") -> Comparison:
    """Mean over seeds of b minus that of a, with the seed-to-seed spread as the noise.

    Welch's t when both sides have >= 2 seeds; when one side has a single seed,
    the other side's variance stands for both (equal spread assumed).
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    na, nb = a.size, b.size
    if na == 0 or nb == 0 or na + nb < 3:
        raise InconclusiveError(f"{na} and {nb} seeds: at least 3 in all, one on each side, needed")
    if na >= 2 and nb >= 2:
        va, vb = a.var(ddof=1) / na, b.var(ddof=1) / nb
        se = math.sqrt(va + vb)
        den = va * va / (na - 1) + vb * vb / (nb - 1)
        df = (va + vb) ** 2 / den if den > 0 else math.inf
        method = "seed-welch"
    else:
        s2 = (a if na >= 2 else b).var(ddof=1)
        se = math.sqrt(s2 * (1 / na + 1 / nb))
        df = max(na, nb) - 1
        method = "seed-borrowed-variance"
    return _comparison(a.mean(), b.mean(), se, df, confidence, alternative, method, na, nb)


# ----------------------------------------------------------------------------
# Long per-step series: spikes and level shifts


ROBUST_Z_STRETCH = 1 << 16  # finite points made into robust z at a time (with their neighbours)


def median_filter(v: np.ndarray, window: int) -> np.ndarray:
    """The rolling median over ``window`` (odd) points centred on each point, the series mirrored at both ends
    (about the end point, which is not repeated: scipy.ndimage's "mirror"). Polars' rolling median (C speed,
    1e6 points in ~0.1 s): scipy.ndimage would cost ~0.3 s of import for this one function."""
    v = np.asarray(v, np.float64)
    if v.size < 2:
        return v.copy()
    h = window // 2
    padded = np.pad(v, h, mode="reflect")  # numpy's "reflect" is scipy's "mirror"
    return pl.Series(padded).rolling_median(window_size=2 * h + 1).to_numpy()[2 * h:]


def _scale_floor(v: np.ndarray) -> float:
    """Smallest robust scale used anywhere: keeps z finite where a MAD is 0."""
    mag = float(np.median(np.abs(v), overwrite_input=True)) if v.size else 0.0  # partitions |v| in place, no copy
    return max(1e-12 * mag, np.finfo(np.float64).tiny)


@dataclass(frozen=True)
class RobustZ:
    """The robust z of every finite point of a per-step series (input of :func:`spikes_at`)."""

    z: np.ndarray  # (x - rolling median) / (1.4826 rolling MAD), one per finite point
    pos: np.ndarray  # their positions in the input series
    nonfinite: np.ndarray  # positions of NaN / inf values, ignored
    n: int  # length of the input
    window: int


def robust_z(x, *, window: int = SPIKE_WINDOW) -> RobustZ:
    """Robust z of each finite point: (x - rolling median) / (1.4826 rolling MAD) over ``window`` finite
    neighbours (odd; forced odd). Vectorized (two rolling medians). For a multiplicative series (grad norm)
    pass ``np.log(x)``."""
    v, pos, bad = _split_finite(x)
    n = int(np.asarray(x).shape[0])
    window = max(int(window) | 1, 3)
    if v.size == 0:
        return RobustZ(np.empty(0), pos, bad, n, window)
    floor = _scale_floor(v)
    # A stretch of points at a time, each with 2h neighbours either side (h = window // 2): a median needs h of
    # them, the MAD of the deviations h more. The mirror at a stretch's inner border touches only the margins
    # dropped, so every z is the one the whole series gives, in a few MB of temporaries instead of eight
    # arrays as long as the run.
    h = window // 2
    z = np.empty_like(v)
    for lo in range(0, v.size, ROBUST_Z_STRETCH):
        hi = min(lo + ROBUST_Z_STRETCH, v.size)
        a, b = max(lo - 2 * h, 0), min(hi + 2 * h, v.size)
        seg = v[a:b]
        # "mirror", not "nearest": repeating the edge value would make it the median
        # and the MAD 0 near both ends, and flag ordinary points there
        dev = seg - median_filter(seg, window)
        mad = median_filter(np.abs(dev), window)
        keep = slice(lo - a, hi - a)
        z[lo:hi] = dev[keep] / np.maximum(MAD_TO_SIGMA * mad[keep], floor)
    return RobustZ(z, pos, bad, n, window)


def spikes_at(rz: RobustZ, threshold: float = SPIKE_THRESHOLD, side: str = "upper") -> Spikes:
    """The points of ``rz`` beyond ``threshold`` ("upper", "lower" or "both" sides), and their events: runs of
    consecutive finite points, each with the position of its largest |z|."""
    if side not in ("upper", "lower", "both"):
        raise DataError(f"side must be 'upper', 'lower' or 'both', got {side!r}")
    z, pos = rz.z, rz.pos
    empty = np.empty(0, np.intp)
    if side == "upper":
        hit = z > threshold
    elif side == "lower":
        hit = z < -threshold
    else:
        hit = np.abs(z) > threshold
    fi = np.flatnonzero(hit)  # indices into the finite values
    if fi.size == 0:
        return Spikes(empty, np.empty(0), empty, empty, empty, rz.nonfinite, rz.n, threshold, rz.window)
    new = np.ones(fi.size, bool)
    new[1:] = np.diff(fi) > 1
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], fi.size) - 1
    za = np.abs(z[fi])
    # argmax of |z| within each run, vectorized: sort by (run, -|z|) and take each run's first
    run_id = np.cumsum(new) - 1
    order = np.lexsort((-za, run_id))
    peak = fi[order[starts]]
    return Spikes(
        indices=pos[fi], z=z[fi], event_start=pos[fi[starts]], event_end=pos[fi[ends]],
        event_peak=pos[peak], nonfinite=rz.nonfinite, n=rz.n, threshold=threshold, window=rz.window,
    )


def level_shift(
    x,
    *,
    frac: float = 0.1,  # the late block is this fraction of the finite points
    reference: str = "best",  # "best": the lowest earlier block median; "early": the first block
) -> LevelShift:
    """Has the series risen at the end? Late-block median against an earlier block's median.

    For loss explosions use reference="best" (risen from the best level reached);
    "early" compares with the start of training. The best-block reference is the
    minimum of several noisy medians, so it is biased slightly low on short series.
    """
    if reference not in ("best", "early"):
        raise DataError(f"reference must be 'best' or 'early', got {reference!r}")
    v, _, bad = _split_finite(x)
    m = v.size
    block = max(int(math.ceil(frac * m)), 1)
    if m < 2 * block or block < 3:
        raise InconclusiveError(f"{m} finite points: too few for two blocks of {max(block, 3)}")
    late = v[m - block :]
    head = v[: ((m - block) // block) * block].reshape(-1, block)
    medians = np.median(head, axis=1)
    j = int(np.argmin(medians)) if reference == "best" else 0
    ref = head[j]
    ref_level, late_level = float(medians[j]), float(np.median(late))
    scale = max(MAD_TO_SIGMA * float(np.median(np.abs(ref - ref_level))), _scale_floor(v))
    ratio = late_level / ref_level if ref_level > 0 else math.nan
    return LevelShift(
        reference=reference, ref_level=ref_level, late_level=late_level, ratio=ratio,
        z=(late_level - ref_level) / scale, block=block, n_nonfinite=int(bad.size),
    )


# ----------------------------------------------------------------------------
# Short, strongly correlated series: an AR(1) model for the error of a mean
#
# Batch means need batches several autocorrelation times long (``reliable``).
# A late window of 8 blocks never has that: the blocks themselves are the
# batches, and an AR(1) with phi = 0.9 makes the naive standard error of their
# mean 4.9x too small while the spread of 8 values still looks like 7 degrees of
# freedom. When the batches are not reliable the error of the mean is computed
# from an AR(1) model of the blocks instead: the exact variance of the mean of n
# AR(1) values against the expected sample variance (the inflation factor), and
# the Satterthwaite degrees of freedom of that sample variance (the "true
# effective df": 2.8 for n = 8 at phi = 0.9, not 7). phi itself cannot be
# estimated from one short series (after detrending, 8 values barely tell
# phi = 0.5 from phi = 0.99), so it is estimated once from many series that share
# it (the noise bins of a run pair), over as many blocks as there are, with the
# small-sample bias of the lag-1 autocorrelation removed exactly (ratio of
# expectations under the model, the same detrending applied).
#
# Measured (20 series, 30 values, 100 trials): the inflation's median is right
# for a pure AR(1) (phi 0.5: 3.3 for 3.2; phi 0.9: 21 for 24). Its limit is the
# one no short series escapes: a slow component holding a small share of the
# variance next to white noise (AR(1) phi 0.9 with 20% of it) reads as phi ~ 0.1
# and the error of the mean comes out ~1.35x too small. Adding the white share as
# a second parameter (lags 1 and 2) was tried and is not identifiable at these
# lengths: it put white noise at phi 0.99 in 10% of trials. Where it matters, a
# caller adds a seed-to-seed allowance on top.

AR1_PHI_MAX = 0.99  # the largest AR(1) coefficient the pooled estimate returns


@lru_cache(maxsize=512)
def _ar1_mean_factors(n: int, phi: float) -> tuple[float, float]:
    # With S the AR(1) correlation matrix phi^|i-j| (n x n) and C = I - 11'/n: Var(mean) = 1'S1 / n^2, E[s^2] = tr(CS) / (n - 1),
    # and the Satterthwaite df of s^2 is tr(CS)^2 / tr(CSCS). With c = S1 (S is symmetric), tr(CS) = n - 1'c/n
    # and tr(CSCS) = |S|_F^2 - 2 c'c / n + (1'c)^2 / n^2, and each of c, 1'c and |S|_F^2 is a geometric sum:
    # O(n), no n x n matrix (tests check the matrix form).
    i = np.arange(n, dtype=np.float64)
    k = np.arange(1, n, dtype=np.float64)
    if phi == 0.0:
        c = np.ones(n)
        frob = float(n)
    else:
        c = (2.0 - phi ** (i + 1) - phi ** (n - i)) / (1.0 - phi) - 1.0  # row sums of phi^|i-j|
        frob = n + 2.0 * float(np.sum((n - k) * phi ** (2 * k)))
    total = float(c.sum())
    tr = n - total / n
    tr2 = frob - 2.0 * float(c @ c) / n + total * total / n**2
    var_mean = total / n**2  # Var(mean) / sigma^2
    naive = tr / (n - 1) / n  # E[s^2 / n] / sigma^2
    return var_mean / naive, tr * tr / tr2


def ar1_mean_factors(n: int, phi: float) -> tuple[float, float]:
    """(inflation, df) for the mean of n AR(1) values: Var(mean) = inflation * E[s^2] / n, and the
    Satterthwaite degrees of freedom of s^2 (n - 1 when phi = 0)."""
    n = int(n)
    if n < 2:
        raise DataError(f"{n} values: at least 2 needed for an error of the mean")
    phi = float(np.clip(phi, 0.0, AR1_PHI_MAX))
    return _ar1_mean_factors(n, round(phi, 4))


@lru_cache(maxsize=64)
def _trend_basis(n: int, degree: int) -> np.ndarray:
    """An orthonormal basis Q (n x degree+1) of the polynomials of ``degree`` in time; the detrender is I - QQ'."""
    t = np.linspace(-1.0, 1.0, n)
    q, _ = np.linalg.qr(np.vander(t, degree + 1))
    return q


def _detrend(z: np.ndarray, degree: int) -> np.ndarray:
    """Each row of z less its least-squares polynomial of ``degree`` in time (O(n) per row)."""
    q = _trend_basis(z.shape[1], degree)
    return z - (z @ q) @ q.T


def _xlag(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """s[k] = sum over |i - j| = k of u_i v_j (the lag sums of u v'), k = 0..n-1, by FFT."""
    n = u.size
    size = 1 << int(2 * n - 1).bit_length()
    c = np.fft.irfft(np.fft.rfft(u, size) * np.conj(np.fft.rfft(v, size)), size)  # c[m] = sum_j u_{j+m} v_j
    out = c[:n].copy()
    out[1:] += c[size - n + 1:][::-1]
    return out


@lru_cache(maxsize=64)
def _expected_lag1(n: int, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid of phi and the expected pooled lag-1 autocorrelation of detrended AR(1) series of length n.

    rho(phi) = tr(M A M R) / tr(M R), with R the AR(1) correlation matrix phi^|i-j|, M = I - QQ' the detrender and A the
    symmetric lag-1 operator. R depends on |i - j| only, so each trace is sum_k s[k] phi^k over the lag sums
    s of M A M and of M; with P = QQ' of rank degree + 1, MAM = A - PA - AP + PAP, and every lag sum comes
    from a few cross-correlations of n-vectors (FFT): no n x n matrix, so 20,000 blocks take milliseconds
    (tests check the trace form).
    """
    q = _trend_basis(n, degree)
    r = q.shape[1]
    aq = 0.5 * (np.vstack([q[1:], np.zeros((1, r))]) + np.vstack([np.zeros((1, r)), q[:-1]]))  # A Q
    b = q.T @ aq  # Q'AQ
    s_p = sum(_xlag(q[:, a], q[:, a]) for a in range(r))  # lag sums of P = sum_a q_a q_a'
    s_m = -s_p
    s_m[0] += n
    s_pa = sum(_xlag(q[:, a], aq[:, a]) for a in range(r))  # of P A = sum_a q_a (A q_a)'; A P has the same
    s_pap = sum(b[a, c] * _xlag(q[:, a], q[:, c]) for a in range(r) for c in range(r))
    s_mam = s_pap - 2.0 * s_pa
    if n > 1:
        s_mam[1] += n - 1  # A: 0.5 on both neighbouring diagonals
    phis = np.linspace(0.0, AR1_PHI_MAX, 199)
    # phi^k as exp(k log phi), 0 where it is below 1e-304: `phis ** k` took 0.17 s at n = 10,000 (pow, and
    # products sinking into subnormals), this ~0.01 s, the same to ~1e-13 relative
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.log(phis)[:, None] * np.arange(n)[None, :]
    e[:, 0] = 0.0  # phi^0 = 1, phi = 0 included
    powers = np.exp(e, out=np.zeros_like(e), where=e > -700.0)
    rho = (powers @ s_mam) / (powers @ s_m)
    rho = np.maximum.accumulate(rho)  # monotone for interpolation (it is, up to rounding)
    return phis, rho


@dataclass(frozen=True)
class PooledAR1:
    """AR(1) coefficient shared by several series, from their pooled lag-1 autocorrelation."""

    phi: float  # bias-corrected estimate, in [0, AR1_PHI_MAX]
    rho: float  # raw pooled lag-1 autocorrelation of the detrended series
    n: int  # values per series
    series: int  # series pooled
    degree: int  # polynomial removed from each series first


def pooled_ar1(z, *, degree: int | None = None) -> PooledAR1:
    """Estimate one AR(1) coefficient from the rows of ``z`` (series x values; rows with a NaN are dropped).

    Each row loses a polynomial in time (``degree`` 2, or 1 below 12 values: a trend is signal), then
    rho = sum of lag-1 products / sum of squares over all rows, and phi is the value whose expected rho
    (ratio of expectations under AR(1) with the same detrending) equals it. Raises InconclusiveError with
    fewer than 5 values or no usable row.
    """
    z = np.asarray(z, np.float64)
    if z.ndim != 2:
        raise DataError(f"expected series x values, got shape {z.shape}")
    z = z[np.isfinite(z).all(axis=1)]
    n = z.shape[1]
    if n < 5 or z.shape[0] == 0:
        raise InconclusiveError(f"{z.shape[0]} complete series of {n} values: too few to estimate a correlation")
    deg = (2 if n >= 12 else 1) if degree is None else int(degree)
    e = _detrend(z, deg)
    den = float(np.sum(e * e))
    if den <= 0:
        return PooledAR1(0.0, 0.0, n, int(z.shape[0]), deg)
    rho = float(np.sum(e[:, 1:] * e[:, :-1])) / den
    phis, exp_rho = _expected_lag1(n, deg)
    phi = float(np.interp(rho, exp_rho, phis, left=0.0, right=AR1_PHI_MAX))
    return PooledAR1(phi, rho, n, int(z.shape[0]), deg)


def ar1_mean_error(y, phi: float) -> tuple[float, float, float]:
    """(mean, standard error, df) of the mean of a short series under AR(1) errors with coefficient phi."""
    y = np.asarray(y, np.float64)
    y = y[np.isfinite(y)]
    n = y.size
    if n < 2:
        raise InconclusiveError(f"{n} usable values, at least 2 needed")
    infl, df = ar1_mean_factors(n, phi)
    return float(y.mean()), math.sqrt(infl * float(y.var(ddof=1)) / n), float(df)


# ----------------------------------------------------------------------------
# What a test can see, and a seed spread pooled across noise bins
#
# *Detectable rise.* A one-sided test of "change <= limit" at level a, whose
# change has standard error se on df degrees of freedom, rejects when
# (change - limit) / se > t_{1-a, df}. Its power at a true change limit + delta
# is P(T'(df, delta / se) > t_{1-a, df}), T' a noncentral t (the estimated se is
# random too). The detectable rise is the delta that gives ``power``: the
# noncentrality is solved exactly (scipy.special.nctdtrinc), so with a few df
# it is honestly larger than the normal-theory limit + (z_{1-a} + z_power) se.
#
# *Pooled seed spread.* A run's late loss in noise bin b differs from another
# seed's by a seed effect of variance sigma_b^2; k seeds give each bin's s_b^2
# on k - 1 degrees of freedom, far too few alone (t with 2 df for 3 seeds). But
# sigma_b^2 varies smoothly with the noise level, so the bins inform each other:
# empirical Bayes as in limma (Smyth 2004, "Linear models and empirical Bayes
# methods for assessing differential expression"): log s_b^2 is fitted by a
# low-degree polynomial in the bin's position (the prior profile s0_b^2), the
# scatter of log s_b^2 about it beyond what k - 1 df explain gives the prior's
# degrees of freedom d0 (trigamma), and each bin's variance is shrunk towards
# the profile: (d0 s0_b^2 + d s_b^2) / (d0 + d), on d0 + d df. Bins that share
# one network are not independent, so the prior cannot have more df than the
# bins really hold: d0 is capped at d (n_eff - p), n_eff the effective number
# of independent bins (the smaller of (tr S)^2 / tr(S^2), corrected for the few
# runs, and what the correlation of neighbouring bins leaves) and p the
# profile's parameters. And seeds' deviations have heavier tails than a
# normal's (one seed in eight of patches_conv sits 4 sd out in a few bins): a
# bin's variance gets at most ``MAX_BIN_DF`` df in all, so its test is a t on
# 8 df at most, whose tails allow for that (set on the calibration families:
# 20 df let 14 of 168 healthy candidates of patches_conv through against 5
# baseline seeds, 8 df 6 of 168, at the same power on digits_mlp).

POWER = 0.8  # a detectable rise is caught with this probability
MAX_BIN_DF = 8.0  # the profile lends a bin df up to this many in all: a t on 8 df, heavier-tailed than a normal


def detectable_shift(se, df, level: float, power: float = POWER) -> np.ndarray:
    """Smallest true shift beyond the tested limit that a one-sided t test at ``level`` catches with ``power``.

    ``se`` and ``df`` broadcast (df may be inf: the normal); NaN where se is not finite and positive. In the
    unit of ``se``.
    """
    se = np.asarray(se, np.float64)
    df = np.broadcast_to(np.asarray(df, np.float64), se.shape)
    out = np.full(se.shape, np.nan)
    ok = np.isfinite(se) & (se > 0) & (df > 0)
    if not ok.any():
        return out
    d = df[ok]
    crit = np.where(np.isfinite(d), -special.stdtrit(np.where(np.isfinite(d), d, 1.0), level), -special.ndtri(level))
    normal = crit - special.ndtri(1 - power)
    with np.errstate(all="ignore"):
        nc = special.nctdtrinc(np.where(np.isfinite(d), d, 1.0), 1 - power, crit)
    nc = np.where(np.isfinite(d) & (d < 1e6) & np.isfinite(nc), np.maximum(nc, normal), normal)
    out[ok] = nc * se[ok]
    return out


@dataclass(frozen=True, eq=False)
class PooledSpread:
    """Per-bin seed variances shrunk towards a smooth profile over the bins (see the section comment)."""

    var: np.ndarray  # (B,) moderated variance per bin; NaN where the bin had no estimate
    df: np.ndarray  # (B,) its degrees of freedom, d + d0
    raw: np.ndarray  # (B,) the bin's own s_b^2
    prior: np.ndarray  # (B,) the profile s0_b^2
    d: float  # df of each bin's own estimate
    d0: float  # prior df, after the cap
    d0_fit: float  # prior df the scatter asked for (inf: none beyond sampling)
    n_eff: float  # effective number of independent bins
    degree: int  # polynomial degree of the profile
    r1: float = math.nan  # lag-1 correlation of the runs' deviations along the bins (scaled by the profile), in [0, 1]


def _trigamma_inverse(v: float) -> float:
    """y with trigamma(y) = v (Newton's method of Smyth 2004, on 1 / trigamma)."""
    if v > 1e7:
        return 1.0 / math.sqrt(v)
    if v < 1e-6:
        return 1.0 / v
    y = 0.5 + 1.0 / v
    for _ in range(50):
        tri = float(special.polygamma(1, y))
        step = tri * (1 - tri / v) / float(special.polygamma(2, y))
        y += step
        if -step / y < 1e-8:
            break
    return y


def pooled_spread(dev, *, d: float | None = None, degree: int = 2, max_df: float | None = None,
                  scale=None) -> PooledSpread:
    """Seed variances per bin pooled across bins, from ``dev`` (runs x bins): each run's deviation from its own
    group's mean (NaN where a run did not sample a bin). ``d``: degrees of freedom of each bin's variance (default:
    runs - 1, one group). ``scale`` (B,): a known variance per bin that the spread is proportional to where
    nothing else differs (the sampling variance of a bin's late mean: bins the sampler rarely visits are noisier
    by their count alone); the profile is then smooth in the ratio to it, not in the variance itself. Raises
    InconclusiveError with fewer than 2 runs or 2 usable bins.
    """
    if scale is not None:
        scale = np.asarray(scale, np.float64)
        ok = np.isfinite(scale) & (scale > 0)
        unit = np.where(ok, scale, np.nan)
        unit = np.where(ok, unit / np.nanmedian(unit), np.nan) if ok.any() else np.ones_like(scale)
        ps = pooled_spread(np.asarray(dev, np.float64) / np.sqrt(unit)[None, :], d=d, degree=degree, max_df=max_df)
        return dataclasses.replace(ps, var=ps.var * unit, raw=ps.raw * unit, prior=ps.prior * unit)
    dev = np.asarray(dev, np.float64)
    R, B = dev.shape
    d = float(R - 1 if d is None else d)
    max_df = MAX_BIN_DF if max_df is None else max_df
    full = np.isfinite(dev).all(axis=0)
    if d < 1 or full.sum() < 2:
        raise InconclusiveError(f"{R} runs and {int(full.sum())} bins every run sampled: too few to pool a spread")
    s2 = np.full(B, np.nan)
    s2[full] = np.sum(dev[:, full] ** 2, axis=0) / d
    use = full & (s2 > 0)
    pos = np.linspace(-1.0, 1.0, B)  # bins are ordered by noise level
    deg = int(min(degree, max(0, use.sum() - 3)))
    if use.sum() < 2:
        return PooledSpread(s2, np.full(B, d), s2, s2, d, 0.0, 0.0, 1.0, 0, math.nan)
    # limma: E[log s^2] = log sigma^2 + digamma(d/2) - log(d/2); Var[log s^2] = trigamma(d/2)
    e = np.log(s2[use]) - float(special.digamma(d / 2)) + math.log(d / 2)
    basis = np.vander(pos[use], deg + 1)
    coef, *_ = np.linalg.lstsq(basis, e, rcond=None)
    resid = e - basis @ coef
    p = deg + 1
    excess = float(np.sum(resid**2)) / max(use.sum() - p, 1) - float(special.polygamma(1, d / 2))
    d0_fit = 2 * _trigamma_inverse(excess) if excess > 0 else math.inf
    # the bins' effective number (trace Sigma)^2 / trace(Sigma^2), of the deviations scaled by the profile:
    # unbiased estimates of both traces from the Wishart moments E tr(S^2) = (1 + 1/d) tr(Sigma^2) +
    # (tr Sigma)^2 / d and E (tr S)^2 = (tr Sigma)^2 + 2 tr(Sigma^2) / d (a plain ratio of the sample traces
    # says d at most: a few runs span only d dimensions)
    prior_use = np.exp(basis @ coef)
    zs = dev[:, use] / np.sqrt(prior_use)
    g = zs @ zs.T / d  # (R, R): same non-zero spectrum as the (B, B) sample covariance
    t2, t1 = float(np.sum(g * g)), float(np.trace(g)) ** 2
    den = 1 + 1 / d - 2 / d**2  # 0 on 1 df: the two moments then cannot be told apart
    a = (t2 - t1 / d) / den if den > 0 else 0.0
    c = t1 - 2 * a / d
    n_eff = float(np.clip(c / a, 1.0, use.sum())) if a > 0 and c > 0 else float(use.sum())
    # a few runs barely show the correlation between bins, but neighbouring noise levels share most of it (a
    # seed that is worse at one noise level is worse at the next): the lag-1 correlation along the bins, pooled
    # over runs, is well estimated even from 3, and an AR(1) along the bins has B (1 - r^2) / (1 + r^2)
    # effectively independent variances; the smaller of the two counts
    r1 = float(np.sum(zs[:, 1:] * zs[:, :-1]) / np.sum(zs[:, :-1] ** 2)) if zs.shape[1] > 2 else 0.0
    r1 = min(max(r1, 0.0), 1.0)
    n_eff = min(n_eff, max(1.0, use.sum() * (1 - r1**2) / (1 + r1**2)))
    d0 = float(min(d0_fit, max(d * (n_eff - p), 0.0), max(max_df - d, 0.0)))
    prior = np.exp(np.vander(pos, deg + 1) @ coef)
    var = np.where(full, (d0 * prior + d * np.where(full, s2, 0.0)) / (d0 + d), np.nan)
    return PooledSpread(var, np.where(full, d + d0, np.nan), s2, prior, d, d0, d0_fit, n_eff, deg, r1)


# ----------------------------------------------------------------------------
# Two correlated one-sided t tests at once (the gate's two aggregates)
#
# The mean change over all bins and over the still-falling bins (about half of
# them) are two tests of nearly the same thing: Holm spends alpha / 2 on the
# first, as if they were unrelated. A max-T test spends alpha on the larger of
# the two statistics under their joint null. Each statistic is T_g = Z_g / S_g:
# numerators (Z_1, Z_2) standard bivariate normal with correlation rho, and
# variance estimates from the same runs, so (df S_1^2, df S_2^2) is the diagonal
# of a 2 x 2 Wishart on df degrees of freedom with the same correlation
# (Bartlett: c11^2 ~ chi2_df, c22^2 ~ chi2_{df-1}, n21 ~ N(0, 1), for any real
# df >= 1). Given the denominators, both statistics exceed c with the
# bivariate normal orthant probability (Owen's T); its expectation over the
# denominators is taken on a grid of equal-probability midpoints, and
# P(max > c) = 2 P(T > c) - P(both > c) keeps the grid's error in the small
# joint term (against 1,000,000 draws of the construction: never below, at most
# 2.5% above where rho is near 1, the safe side; the tests check).
# With few df the denominators differ, the tails are the denominators', and
# the joint test is close to Bonferroni (df 2, rho 0.9: each test at 1.40%
# instead of 1.25% for 2.5% in all); with many df and rho near 1 it spends
# nearly the whole 2.5% on each.
#
# rho is a model's, not an estimate from a few runs (2 df for 3 seeds say
# nothing about a correlation): bins correlated as an AR(1) along the noise
# levels, coefficient the pooled lag-1 correlation of the runs' deviations
# (:func:`pooled_spread`, the one it already uses for the effective number of
# bins), each bin with its own variance. A common part shared by every bin,
# which the bins of one network have, correlates far bins more than an AR(1)
# does, so the model's rho is low, and a lower rho is the conservative side
# (Slepian: the max of less correlated statistics exceeds c more often).
# Measured on the calibration families' healthy seeds: model rho 0.88 against
# 0.94 across 40 seeds of digits_mlp, 0.92 against 0.975 across 8 of
# patches_conv.

PAIR_GRID = (48, 12, 12)  # midpoints in c11 (the heavy tail of small denominators), n21, c22


@lru_cache(maxsize=32)
def _bartlett_nodes(df: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-probability midpoints of the 2 x 2 Bartlett factors on ``df`` degrees of freedom, on a grid."""
    u1, u2, u3 = ((np.arange(m) + 0.5) / m for m in PAIR_GRID)
    c11 = np.sqrt(special.chdtri(df, 1 - u1))
    n21 = special.ndtri(u2)
    c22 = np.sqrt(special.chdtri(df - 1, 1 - u3)) if df > 1 else np.zeros(u3.size)
    return tuple(np.meshgrid(c11, n21, c22, indexing="ij"))


def _both_above(h, k, rho: float):
    """P(X > h and Y > k) for a standard bivariate normal with correlation rho < 1, h and k > 0 (Owen's T)."""
    s = math.sqrt(1 - rho * rho)
    return (0.5 * (special.ndtr(-h) + special.ndtr(-k)) - special.owens_t(h, (k - rho * h) / (h * s))
            - special.owens_t(k, (h - rho * k) / (k * s)))


def pair_max_sf(level: float, rho: float, df: float) -> float:
    """P(the smaller of two one-sided t tests' p-values <= ``level``) under their joint null (see the section
    comment): the p-value of the pair when ``level`` is the smaller p observed. ``rho`` is clipped to [0, 0.999];
    ``df`` >= 1, inf for known variances (the normal)."""
    level = float(level)
    if not 0 < level < 0.5:
        return min(2 * level, 1.0) if level >= 0.5 else max(level, 0.0)
    rho = float(np.clip(rho, 0.0, 0.999))
    df = float(df)
    if not math.isfinite(df) or df > 1e4:
        c = -float(special.ndtri(level))
        return float(2 * level - _both_above(c, c, rho))
    df = max(round(df, 3), 1.0)
    c = -float(special.stdtrit(df, level))
    c11, n21, c22 = _bartlett_nodes(df)
    s1 = c11 / math.sqrt(df)
    s2 = np.sqrt((rho * c11 + math.sqrt(1 - rho * rho) * n21) ** 2 + (1 - rho * rho) * c22**2) / math.sqrt(df)
    return float(min(2 * level - np.mean(_both_above(c * s1, c * s2, rho)), 1.0))


@lru_cache(maxsize=1024)
def _pair_level(level: float, rho: float, df: float) -> float:
    # P(max) lies between the marginal level and twice it: a bracketed root on the logs
    def f(x: float) -> float:
        return math.log(pair_max_sf(math.exp(x), rho, df)) - math.log(level)

    a, b = math.log(level / 2), math.log(level)
    if f(a) >= 0:
        return level / 2
    if f(b) <= 0:
        return level
    from scipy.optimize import brentq  # here, not at the top: scipy.optimize costs 24 MiB and 0.1 s of import

    x = brentq(f, a, b, xtol=1e-12)
    while f(x) > 1e-12:  # never above the level asked for
        x -= 1e-9
    return math.exp(x)


def pair_level(level: float, rho: float, df: float) -> float:
    """The level each of two correlated one-sided t tests may take so that the pair's max-T test has ``level``:
    between ``level / 2`` (Bonferroni, rho = 0 and df large) and ``level`` (rho = 1). rho is rounded down to
    0.001 (a lower rho is the safe side), df to 0.001."""
    df = float(df) if math.isfinite(df) and df <= 1e4 else math.inf
    return _pair_level(float(level), math.floor(float(np.clip(rho, 0.0, 0.999)) * 1000) / 1000,
                       df if not math.isfinite(df) else max(round(df, 3), 1.0))


def ar1_group_correlation(var, r1: float, a, b, wa=None, wb=None) -> float:
    """Correlation of the means over bin groups ``a`` and ``b`` (boolean masks; weighted by ``wa``, ``wb`` when
    given, else equally) when the bins' errors have variances ``var`` and correlation r1^|i - j| along the bins
    (i, j their positions); NaN when undefined."""
    var = np.asarray(var, np.float64)
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    use = (a | b) & np.isfinite(var) & (var > 0)
    if not (math.isfinite(r1) and (a & use).any() and (b & use).any()):
        return math.nan
    i = np.flatnonzero(use)
    sd = np.sqrt(var[i])
    cov = sd[:, None] * sd[None, :] * float(np.clip(r1, 0.0, 1.0)) ** np.abs(i[:, None] - i[None, :])
    wa = (a[i] if wa is None else np.where(a[i], np.asarray(wa, np.float64)[i], 0.0)).astype(np.float64)
    wb = (b[i] if wb is None else np.where(b[i], np.asarray(wb, np.float64)[i], 0.0)).astype(np.float64)
    wa, wb = wa / wa.sum(), wb / wb.sum()
    return float(wa @ cov @ wb / math.sqrt(float(wa @ cov @ wa) * float(wb @ cov @ wb)))


VARIANCE_FLOOR = 0.01  # of the members' median variance: the least any bin's variance counts for in the weights


def precision_weights(var, members) -> np.ndarray:
    """Weights of the ``members`` bins (a boolean mask) in their precision-weighted mean: 1 / ``var``, summing to
    1, 0 outside the group. The mean of a rise common to every bin is the same under any weights; when the bins'
    errors are independent these give it the least variance, so a few very noisy bins (the extreme noise levels of
    EDM-style training) no longer swamp it. A member whose variance is not a finite positive number takes the
    median of the others' (all of them equal weights when none has one); no variance is taken below a hundredth of
    that median, so one bin that happened to look noiseless cannot take the whole mean."""
    var = np.asarray(var, np.float64)
    members = np.asarray(members, bool)
    w = np.zeros(var.shape, np.float64)
    v = var[members]
    if v.size == 0:
        return w
    ok = np.isfinite(v) & (v > 0)
    if not ok.any():
        w[members] = 1.0
    else:
        mid = float(np.median(v[ok]))
        w[members] = 1.0 / np.maximum(np.where(ok, v, mid), VARIANCE_FLOOR * mid)
    return w / w.sum()


def smooth_profile(var, degree: int = 2) -> np.ndarray:
    """A smooth profile of per-bin variances along the bins (ordered by noise level): exp of a least-squares
    polynomial of ``degree`` in the bin's position fitted to log ``var`` over its finite positive entries, at every
    bin; ``var`` itself where fewer than degree + 2 entries can be fitted. What the precision weights take when each
    bin's own variance is measured on the data the weighted mean's error bar comes from (a profile of a few
    parameters cannot favour the bins that happened to look quiet)."""
    var = np.asarray(var, np.float64)
    B = var.size
    use = np.isfinite(var) & (var > 0)
    if use.sum() < degree + 2:
        return var.copy()
    pos = np.linspace(-1.0, 1.0, B)
    coef, *_ = np.linalg.lstsq(np.vander(pos[use], degree + 1), np.log(var[use]), rcond=None)
    return np.exp(np.vander(pos, degree + 1) @ coef)


def weighted_mean_rows(values, weights) -> np.ndarray:
    """Per row of ``values`` (..., bins), the ``weights``-weighted mean over its finite entries, the weights
    renormalised over them; NaN for a row with no finite entry of positive weight."""
    v = np.asarray(values, np.float64)
    w = np.broadcast_to(np.asarray(weights, np.float64), v.shape)
    ok = np.isfinite(v) & (w > 0)
    den = np.sum(np.where(ok, w, 0.0), axis=-1)
    num = np.sum(np.where(ok, w * np.where(ok, v, 0.0), 0.0), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.nan)


__all__ = [
    "BATCH_LENGTH", "BATCH_TAU", "MAD_TO_SIGMA", "MAX_BATCHES", "MIN_BATCHES", "SPIKE_THRESHOLD",
    "SPIKE_WINDOW", "TAU_MIN_BLOCKS",
    "AR1_PHI_MAX", "MAX_BIN_DF", "PAIR_GRID", "POWER", "ar1_group_correlation", "precision_weights", "smooth_profile", "weighted_mean_rows", "VARIANCE_FLOOR", "pair_level", "pair_max_sf", "BatchMeans", "PooledSpread", "detectable_shift", "pooled_spread", "Comparison", "PooledAR1", "ar1_mean_error", "ar1_mean_factors",
    "pooled_ar1", "Equivalence", "LevelShift", "Moments", "Spikes", "Trend",
    "adjust_pvalues", "batch_means", "batch_starts", "coarsen_moments", "compare_seed_means", "compare_series",
    "correlations", "same_columns",
    "RobustZ", "equivalence", "robust_z", "spikes_at", "level_shift", "merge_groups", "merge_moments",
    "median_filter", "moments", "norm_isf", "norm_sf", "t_cdf", "t_isf", "t_ppf", "t_sf", "trend",
]
