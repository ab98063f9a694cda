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
narrow and a "significant" trend appears on most healthy runs). We estimate
tau with Geyer's initial monotone sequence on the linearly detrended series
(the trend is signal, not correlation), then cut the series into k contiguous
*batches* of at least ``BATCH_TAU * tau`` windows. Means of batches that long
are nearly independent and nearly normal, whatever the correlation inside
them, so everything afterwards (mean and its standard error, slope and its
interval, Mann-Kendall) works on the k batch means and treats them as iid.
k is held between ``MIN_BATCHES`` and ``MAX_BATCHES``; with fewer than
``MIN_BATCHES * BATCH_TAU * tau`` windows the batches are shorter than we
want and the result says so (``reliable=False``): its interval is then too
narrow, by an amount that grows with tau.

*Robust slope.* Theil-Sen (median of pairwise slopes) on the batch means: a
spike moves one batch mean, which moves the median of slopes little. The
interval is Sen's, obtained by inverting Kendall's tau with the *exact* null
distribution of the number of discordant pairs (Mahonian numbers) instead of
the normal approximation: with 8-32 batch means the approximation is coarse,
while the exact interval has coverage >= the nominal level whenever the batch
means are independent with exchangeable errors. The Mann-Kendall p-value for
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
a rolling MAD (``scipy.ndimage.median_filter``, C speed: 1e6 points in ~0.15 s).
Both are robust to the spikes themselves (50% breakdown) and follow the slow
trend of a loss curve. Non-finite values are removed in one place
(``_split_finite``), reported by position, and never reach a median. A zero
MAD (constant or quantized stretches) is floored at a tiny positive scale, so
a constant series has z = 0 everywhere and any departure from it is a spike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage, stats as sps

from diffaudit.errors import DataError, InconclusiveError

# ----------------------------------------------------------------------------
# Defaults

BATCH_TAU = 5.0  # a batch spans at least this many integrated autocorrelation times
MIN_BATCHES = 8  # fewest batch means: exact two-sided Mann-Kendall p can reach 5e-5
MAX_BATCHES = 32  # more batch means add little power and shorten the batches
MAD_TO_SIGMA = 1.482602218505602  # 1 / Phi^-1(3/4): MAD of a normal -> its sigma
SPIKE_WINDOW = 101  # rolling window (points) for the spike detector's median and MAD
SPIKE_THRESHOLD = 8.0  # robust z above which a point is a spike


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
    tau: float  # integrated autocorrelation time of the detrended series, in windows
    reliable: bool  # batches span >= BATCH_TAU * tau windows

    @property
    def n_eff(self) -> float:
        """Effective sample size n / tau of the series."""
        return self.n / self.tau


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
    p_value: float
    confidence: float
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


def combine(a: Moments, b: Moments) -> Moments:
    """Elementwise Chan merge of two sets of groups (e.g. the same windows on two ranks)."""
    na, nb = np.asarray(a.count, np.float64), np.asarray(b.count, np.float64)
    ma = np.where(na > 0, a.mean, 0.0)
    mb = np.where(nb > 0, b.mean, 0.0)
    n = na + nb
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = mb - ma
        frac_b = np.where(n > 0, nb / n, 0.0)
        mean = ma + delta * frac_b
        m2 = np.asarray(a.m2, np.float64) + np.asarray(b.m2, np.float64) + delta * delta * na * frac_b
    return Moments(n, np.where(n > 0, mean, np.nan), np.where(n > 0, m2, 0.0))


def merge_moments(count, mean, m2, axis: int = -1) -> Moments:
    """Combine all groups along `axis` into one group: exact in float64, any number of groups."""
    return coarsen_moments(count, mean, m2, [0], axis=axis, _squeeze=True)


def coarsen_moments(count, mean, m2, starts, axis: int = -1, *, _squeeze: bool = False) -> Moments:
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
    ok = n > 0
    n = np.where(ok, n, 0.0)
    mu = np.where(ok, mu, 0.0)
    s = np.where(ok, s, 0.0)
    group = np.repeat(np.arange(starts.size), np.diff(np.append(starts, L)))
    N = np.add.reduceat(n, starts, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        M = np.add.reduceat(n * mu, starts, axis=-1) / N
        M = np.where(N > 0, M, 0.0)
        M = M + np.where(N > 0, np.add.reduceat(n * (mu - M[..., group]), starts, axis=-1) / N, 0.0)
        d = np.where(ok, mu - M[..., group], 0.0)  # refined: exact to rounding
    M2 = np.add.reduceat(s, starts, axis=-1) + np.add.reduceat(n * d * d, starts, axis=-1)
    M = np.where(N > 0, M, np.nan)
    M2 = np.where(N > 0, M2, 0.0)
    out = [np.moveaxis(v, -1, axis) for v in (N, M, M2)]
    if _squeeze:
        out = [np.take(v, 0, axis=axis) for v in out]
    return Moments(*out)


def batch_starts(n: int, k: int) -> np.ndarray:
    """Start indices of k contiguous, near-equal batches of n items (longer batches last)."""
    if not 1 <= k <= n:
        raise DataError(f"cannot cut {n} windows into {k} batches")
    return (np.arange(k) * n) // k


# ----------------------------------------------------------------------------
# Autocorrelation and batch means


def integrated_autocorr_time(y, *, detrend: bool = True) -> float:
    """Integrated autocorrelation time tau (>= 1) by Geyer's initial monotone sequence.

    tau = 1 + 2 sum_k rho_k; n / tau is the effective sample size. Pairs of
    autocorrelations Gamma_m = rho_2m + rho_2m+1 are summed up to the first
    non-positive pair and forced to be non-increasing, which keeps the noisy tail
    of the sample autocorrelation out. NaNs are dropped (their neighbours joined).
    """
    v, pos, _ = _split_finite(y)
    n = v.size
    if n < 4:
        return 1.0
    v = v - v.mean()
    if detrend:
        t = pos - pos.mean()
        tt = float(t @ t)
        if tt > 0:
            v = v - t * (float(t @ v) / tt)
    f = np.fft.rfft(v, 2 * n)
    acov = np.fft.irfft(f * np.conj(f), 2 * n)[:n]
    if acov[0] <= 0:  # constant series: no correlation to measure
        return 1.0
    rho = acov / acov[0]
    m = n // 2
    gamma = rho[: 2 * m : 2] + rho[1 : 2 * m : 2]
    nonpos = np.flatnonzero(gamma <= 0)
    gamma = gamma[: nonpos[0] if nonpos.size else m]
    gamma = np.minimum.accumulate(gamma)
    tau = -1.0 + 2.0 * float(gamma.sum())
    return float(min(max(tau, 1.0), n))


def effective_sample_size(y, *, detrend: bool = True) -> float:
    """n / tau: the number of independent values a correlated series is worth (NaN dropped)."""
    n = int(np.isfinite(np.asarray(y, dtype=np.float64)).sum())
    return n / integrated_autocorr_time(y, detrend=detrend) if n else 0.0


def batch_means(
    y,
    x=None,
    *,
    weights=None,  # sample count of each window; None = equal
    n_batches: int | None = None,  # None = choose from tau (BATCH_TAU * tau windows per batch)
    batch_tau: float = BATCH_TAU,  # batches span at least this many autocorrelation times
    min_batches: int = MIN_BATCHES,
    max_batches: int = MAX_BATCHES,
) -> BatchMeans:
    """Cut a series of window means into contiguous batches; mean and an honest standard error.

    Windows with a non-finite mean or zero weight are dropped first. Raises
    InconclusiveError when fewer windows than `min_batches` remain.
    """
    y, x, w = _clean_windows(y, x, weights)
    n = y.size
    if n < max(min_batches, 2):
        raise InconclusiveError(f"{n} usable windows, at least {max(min_batches, 2)} needed")
    tau = integrated_autocorr_time(y) if n >= 4 else 1.0
    if n_batches is None:
        size = max(math.ceil(batch_tau * tau), 1)
        k = int(np.clip(n // size, min_batches, max_batches))
    else:
        k = int(n_batches)
    starts = batch_starts(n, k)
    W = np.add.reduceat(w, starts)
    means = np.add.reduceat(w * y, starts) / W
    bx = np.add.reduceat(w * x, starts) / W
    mean = float(W @ means / W.sum())
    frac = W / W.sum()
    se = math.sqrt(k / (k - 1) * float(np.sum(frac * frac * (means - mean) ** 2))) if k > 1 else float("nan")
    size_min = int(np.min(np.diff(np.append(starts, n))))
    return BatchMeans(
        x=bx, means=means, weights=W, mean=mean, se=se, df=k - 1, n=n, n_batches=k,
        batch_size=size_min, tau=tau, reliable=size_min >= batch_tau * tau,
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


@lru_cache(maxsize=64)
def _discordant_cdfs(k: int) -> tuple[np.ndarray, np.ndarray]:
    """(P(D <= d), P(D >= d)) for d = 0..k(k-1)/2, each summed without cancellation."""
    p = _discordant_pmf(k)
    le = np.minimum(np.cumsum(p), 1.0)
    ge = np.minimum(np.cumsum(p[::-1])[::-1], 1.0)
    le.setflags(write=False)
    ge.setflags(write=False)
    return le, ge


def _pairwise_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    i, j = np.triu_indices(x.size, k=1)
    return np.sort((y[j] - y[i]) / (x[j] - x[i]))


def _p_below(slopes: np.ndarray, k: int, b: float) -> float:
    """One-sided p for H1: slope > b (few pairwise slopes below b). Ties count against."""
    le, _ = _discordant_cdfs(k)
    d = int(np.searchsorted(slopes, b, side="right"))  # slopes <= b
    return float(le[d])


def _p_above(slopes: np.ndarray, k: int, b: float) -> float:
    """One-sided p for H1: slope < b (few pairwise slopes above b). Ties count against."""
    _, ge = _discordant_cdfs(k)
    d = int(np.searchsorted(slopes, b, side="left"))  # slopes < b
    return float(ge[d])


def _sen_interval(slopes: np.ndarray, k: int, alpha_each_side: float) -> tuple[float, float]:
    """Sen's interval: order statistics of the pairwise slopes from the exact Kendall null."""
    le, _ = _discordant_cdfs(k)
    # q = largest q with P(D < q) = P(D <= q-1) <= alpha: the interval is [s_(q), s_(N-q+1)]
    q = int(np.searchsorted(le, alpha_each_side * (1 + 1e-12), side="right"))
    if q == 0:
        return -math.inf, math.inf
    N = slopes.size
    return float(slopes[q - 1]), float(slopes[N - q])


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


def _trend_from_batches(bm: BatchMeans, confidence: float, per_steps: float) -> Trend:
    k = bm.n_batches
    slopes = _pairwise_slopes(bm.x, bm.means)
    slope = float(np.median(slopes))
    intercept = float(np.median(bm.means) - slope * np.median(bm.x))
    lo, hi = _sen_interval(slopes, k, (1.0 - confidence) / 2)
    p = min(1.0, 2.0 * min(_p_below(slopes, k, 0.0), _p_above(slopes, k, 0.0)))
    level = float(np.median(bm.means))
    scale = per_steps / level if level > 0 else math.nan
    return Trend(
        slope=slope, lo=lo, hi=hi, p_value=p, confidence=confidence, intercept=intercept,
        level=level, per_steps=per_steps, rel_slope=slope * scale, rel_lo=lo * scale,
        rel_hi=hi * scale, batches=bm,
    )


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
) -> Equivalence:
    """Stagnation test (TOST): is the slope shown to lie within +-margin * level per `per_steps`?"""
    bm = batch_means(
        y, x, weights=weights, n_batches=n_batches, batch_tau=batch_tau,
        min_batches=min_batches, max_batches=max_batches,
    )
    tr = _trend_from_batches(bm, confidence, per_steps)
    k = bm.n_batches
    if not tr.level > 0:
        raise InconclusiveError(f"level {tr.level:g} is not positive: a relative margin is meaningless")
    delta = margin * tr.level / per_steps
    slopes = _pairwise_slopes(bm.x, bm.means)
    p = max(_p_below(slopes, k, -delta), _p_above(slopes, k, delta))
    lo, hi = _sen_interval(slopes, k, alpha)
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
    if method in ("by", "bh"):
        out[ok] = sps.false_discovery_control(q, method=method)
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


def reject(p, alpha: float = 0.05, method: str = "by") -> np.ndarray:
    """Which hypotheses are rejected after adjustment (False where p is NaN)."""
    adj = adjust_pvalues(p, method)
    return np.where(np.isfinite(adj), adj <= alpha, False)


# ----------------------------------------------------------------------------
# Two-sample comparison


def _comparison(mean_a, mean_b, se, df, confidence, method, n_a, n_b) -> Comparison:
    diff = mean_b - mean_a
    if se > 0 and np.isfinite(df) and df > 0:
        tq = float(sps.t.ppf(0.5 + confidence / 2, df))
        lo, hi = diff - tq * se, diff + tq * se
        p = float(2 * sps.t.sf(abs(diff) / se, df))
    else:  # zero spread: any difference is exact
        lo = hi = diff
        p = 1.0 if diff == 0 else 0.0
    base = abs(mean_a)
    r = (lambda v: v / base) if base > 0 else (lambda v: math.nan)
    return Comparison(
        mean_a=float(mean_a), mean_b=float(mean_b), diff=float(diff), lo=float(lo), hi=float(hi),
        rel_diff=r(diff), rel_lo=r(lo), rel_hi=r(hi), se=float(se), df=float(df), p_value=p,
        confidence=confidence, method=method, n_a=int(n_a), n_b=int(n_b),
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
    return _comparison(ba.mean, bb.mean, se, df, confidence, "welch-batch-means", ba.n, bb.n)


def compare_seed_means(a, b, *, confidence: float = 0.95) -> Comparison:
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
    return _comparison(a.mean(), b.mean(), se, df, confidence, method, na, nb)


def compare_runs(
    a,
    b,
    *,
    weights_a=None,
    weights_b=None,
    confidence: float = 0.95,
) -> Comparison:
    """Late-window mean of b vs a, each side a list of per-seed window-mean series.

    One seed per side: :func:`compare_series`. Otherwise each seed is reduced to its
    weighted mean and :func:`compare_seed_means` is used.
    """
    a, b = list(a), list(b)
    wa = [None] * len(a) if weights_a is None else list(weights_a)
    wb = [None] * len(b) if weights_b is None else list(weights_b)
    if len(a) == 0 or len(b) == 0:
        raise InconclusiveError("a side has no runs")
    if len(a) == 1 and len(b) == 1:
        return compare_series(a[0], b[0], weights_a=wa[0], weights_b=wb[0], confidence=confidence)

    def seed_mean(y, w):
        y, _, w = _clean_windows(y, None, w)
        return float(w @ y / w.sum()) if y.size else math.nan

    ma = [seed_mean(y, w) for y, w in zip(a, wa)]
    mb = [seed_mean(y, w) for y, w in zip(b, wb)]
    return compare_seed_means(ma, mb, confidence=confidence)


# ----------------------------------------------------------------------------
# Long per-step series: spikes and level shifts


def _scale_floor(v: np.ndarray) -> float:
    """Smallest robust scale used anywhere: keeps z finite where a MAD is 0."""
    mag = float(np.median(np.abs(v))) if v.size else 0.0
    return max(1e-12 * mag, np.finfo(np.float64).tiny)


def detect_spikes(
    x,
    *,
    window: int = SPIKE_WINDOW,  # points in the rolling median / MAD (odd; forced odd)
    threshold: float = SPIKE_THRESHOLD,  # robust z beyond which a point is a spike
    side: str = "upper",  # "upper" (loss, grad norm), "lower" or "both"
) -> Spikes:
    """Spikes of a per-step series: robust z = (x - rolling median) / (1.4826 rolling MAD).

    Vectorized (two C median filters). Non-finite points are dropped before the
    filters (the window spans finite neighbours) and reported in `.nonfinite`.
    For a multiplicative series (grad norm) pass ``np.log(x)``.
    """
    if side not in ("upper", "lower", "both"):
        raise DataError(f"side must be 'upper', 'lower' or 'both', got {side!r}")
    v, pos, bad = _split_finite(x)
    n = int(np.asarray(x).shape[0])
    empty = np.empty(0, np.intp)
    window = max(int(window) | 1, 3)
    if v.size == 0:
        return Spikes(empty, np.empty(0), empty, empty, empty, bad, n, threshold, window)
    med = ndimage.median_filter(v, size=window, mode="nearest")
    dev = v - med
    mad = ndimage.median_filter(np.abs(dev), size=window, mode="nearest")
    scale = np.maximum(MAD_TO_SIGMA * mad, _scale_floor(v))
    z = dev / scale
    if side == "upper":
        hit = z > threshold
    elif side == "lower":
        hit = z < -threshold
    else:
        hit = np.abs(z) > threshold
    fi = np.flatnonzero(hit)  # indices into the finite values
    if fi.size == 0:
        return Spikes(empty, np.empty(0), empty, empty, empty, bad, n, threshold, window)
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
        event_peak=pos[peak], nonfinite=bad, n=n, threshold=threshold, window=window,
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


__all__ = [
    "BATCH_TAU", "MAX_BATCHES", "MIN_BATCHES", "SPIKE_THRESHOLD", "SPIKE_WINDOW",
    "BatchMeans", "Comparison", "Equivalence", "LevelShift", "Moments", "Spikes", "Trend",
    "adjust_pvalues", "batch_means", "batch_starts", "coarsen_moments", "combine",
    "compare_runs", "compare_seed_means", "compare_series", "detect_spikes",
    "effective_sample_size", "equivalence", "integrated_autocorr_time", "level_shift",
    "merge_moments", "moments", "reject", "trend",
]
