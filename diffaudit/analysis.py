"""What a run's logs say about its training: per-noise-level tables, step-series summaries, findings.

:func:`analyze` turns a loaded :class:`~diffaudit.load.Run` into an
:class:`Analysis` of frozen dataclasses and polars frames; nothing here prints,
renders or picks an exit code. The findings (:mod:`diffaudit.findings`) are
small rules over these numbers.

How the numbers are made, and why
---------------------------------

*Per noise level.* A diffusion loss mixes noise levels whose losses differ by
orders of magnitude, and the sampler's mix changes from batch to batch, so a
per-step loss curve is mostly sampling noise. Everything about the loss is
therefore computed per bin, from the logger's sufficient statistics (count,
mean, m2 per window and bin), merged exactly with Chan's formula over the
early, middle and late phases of training. Run-level quantities weight the bins
by how often the sampler visits them (``count_share``): that is the run's own
objective, and it is what "a share of the run's loss" means in every finding.

*Trends and stagnation.* Per bin, on the window means of the *trend stretch*
(the last half of training by default), :func:`diffaudit.stats.equivalence`
gives the Theil-Sen slope with an autocorrelation-honest interval (batch means),
the Mann-Kendall p-value for "the slope is 0" and the TOST p-value for "the
relative change over the stretch lies within +-margin". Both families of
p-values are corrected over the bins with Benjamini-Yekutieli (valid under the
positive dependence bins of one model have). A bin is *flat* only when the
equivalence is shown, never because a trend failed to reach significance.

*Against L*.* The Gaussian L* (closed form, from ``data_var`` or
``data_spectrum`` in run.json) is an upper bound on the irreducible loss of any
data with that covariance: a bin above it is worse than the best linear
denoiser. The empirical L* (``diffaudit optimum``) is the memorization floor.
Excess is judged by its impact, ``count_share * (late - L*) / late_total``,
never by a ratio in one bin: at the highest noise levels both numbers are tiny
and a large ratio there changes nothing.

*The step series.* Spikes are found on the log of the per-step loss with a
rolling median / MAD (:func:`diffaudit.stats.robust_z`, :func:`~diffaudit.stats.spikes_at`); a lasting blow-up
by the median of the last 10% of steps against the best earlier block
(:func:`diffaudit.stats.level_shift`). Both are robust to the spikes themselves.

Cost: a handful of vectorised passes over the frames the loader built, one
equivalence test per bin on at most a few thousand window means, two median
filters over the per-step loss. Deterministic: no random numbers anywhere.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace

import numpy as np
import polars as pl

from diffaudit import stats
from diffaudit.errors import DiffauditError
from diffaudit.findings import Thresholds, evaluate, verdict as _verdict
from diffaudit.results import (BIN_COLUMNS, Analysis, ClipSummary, EmaSummary, EvalSummary,
                               GradFlowSummary, LossSummary, NonfiniteSummary, Phases, ProbeSummary,
                               ProfileSummary, RunInfo, ScheduleInfo, SpikeSummary, TimestepSummary)
from diffaudit.lifecycle import Lifecycle, lifecycle as _lifecycle
from diffaudit.noise import timestep_cause
from diffaudit.timeprobe import time_probe as _time_probe
from diffaudit.load import Run
from diffaudit.reference import reference_lstar, statistics_source
from diffaudit.words import json_float

# ----------------------------------------------------------------------------
# Defaults

LATE_FRACTION = 0.2  # the late phase: the last fifth of the logged steps
PHASE_FRACTION = 0.2  # width of the early and middle phases, as a fraction of the steps
TREND_FRACTION = 0.5  # trends and stagnation are judged on the last half of training
MAX_POINTS = 2000  # rows of the downsampled per-step series (for plots)
MAX_TIME_ROWS = 200  # time rows of the per-bin heatmap series
GRID_STRETCH = 1 << 16  # bins rows made into grid cells at a time (their temporaries: a few MB)
STEP_SERIES_STRETCH = 1 << 16  # steps rows reduced to plotted points at a time
MAX_SPIKE_EVENTS = 50  # spike events kept (largest first)
MAX_TREND_WINDOWS = 1000  # longer trend stretches are merged (exactly) into this many windows first
# spikes: the threshold follows the tail of the run's own robust z (see spike_threshold)
SPIKE_TAIL_LO = 0.05  # the power-law tail is fitted between the 95% ...
SPIKE_TAIL_HI = 0.005  # ... and the 99.5% quantile of the robust z
SPIKE_FALSE_EVENTS = 0.25  # the fitted tail may exceed the threshold this many times per run
SPIKE_FALSE_SINGLE = 0.02  # ... and the threshold for one lone spike to count (`spike_big_ratio`) this often
SPIKE_MAX_THRESHOLD = 1000.0  # a bound on the extrapolation (a tail index near 0 would ask for infinity)
_UNIT_ROUNDOFF = {"float64": 1.1e-16, "float32": 6.0e-8, "float16": 4.9e-4, "bfloat16": 3.9e-3}


# ----------------------------------------------------------------------------
# Entry point


def analyze(
    run: Run,
    *,
    late_fraction: float = LATE_FRACTION,  # the late phase: this fraction of the logged steps, at the end
    phase_fraction: float = PHASE_FRACTION,  # width of the early and middle phases
    trend_fraction: float = TREND_FRACTION,  # trends and stagnation use this last fraction of training
    stagnation_margin: float | None = None,  # +-relative change over the stretch that is "flat" (Thresholds)
    alpha: float | None = None,  # level of the per-bin tests after correction (Thresholds)
    thresholds: Thresholds | None = None,  # every rule's threshold
    max_points: int = MAX_POINTS,  # rows of the downsampled per-step series
    max_time_rows: int = MAX_TIME_ROWS,  # time rows of the per-bin heatmap series
    now: float | None = None,  # when the run is read (unix time; default now): in progress or ended
    plots: bool = True,  # False: leave out what only pages draw (empty `series`, `bin_series`): for findings alone
    threads: int = 2,  # 1: the per-step work and the bins' one after the other (less memory at once, more time)
) -> Analysis:
    """Analyse a loaded run: per-bin table, step-series summaries, schedule, probes, eval, findings, verdict.

    ``plots=False`` is for a caller that keeps only the findings (the gate's findings rule): no detector
    reads the downsampled per-step series or the per-bin heatmap rows, which cost ~0.08 s of a
    1,000,000-step run; they come back empty (their columns, no rows).
    """
    for name, v in (("late_fraction", late_fraction), ("phase_fraction", phase_fraction),
                    ("trend_fraction", trend_fraction)):
        if not (0.0 < v <= 1.0):
            raise DiffauditError(f"{name} must be in (0, 1], got {v}")
    th = thresholds or Thresholds()
    if stagnation_margin is not None:
        th = replace(th, stagnation_margin=float(stagnation_margin))
    if alpha is not None:
        th = replace(th, alpha=float(alpha))
    settings = {"late_fraction": late_fraction, "phase_fraction": phase_fraction, "trend_fraction": trend_fraction,
                "thresholds": asdict(th)}

    steps = run.steps if run.steps.height == 0 or run.steps["step"].is_sorted() else run.steps.sort("step")
    # What reads only the per-step series (spikes, clipping, gradient flow, the plotted series) and the run's
    # lifecycle is worked out on a second thread while this one works out the bins: about half the work each,
    # and their numpy and polars calls release the GIL. Each works a stretch at a time, so side by side their
    # peaks stay small; threads=1 (watch, which also holds the decoded parts) runs them one after the other.
    with ThreadPoolExecutor(max_workers=1) as pool:
        per_step = (pool.submit if threads > 1 else _Done)(_per_step, run, steps, late_fraction, trend_fraction,
                                                            max_points, th, now, plots)
        grid = _Grid.from_bins(run.train_bins, run.process.num_bins)
        phases, sel = _phases(grid, late_fraction, phase_fraction, trend_fraction)
        ref = reference_lstar(run)
        lg, le, le_se, problems = ref.gaussian, ref.empirical, ref.empirical_se, [ref.problem] if ref.problem else []
        table, late_total, weights = _bin_table(run, grid, sel, lg, le, le_se, th)
        loss = _loss_summary(steps, grid, sel, weights, table, lg, le, late_total, th)
        ev_series, ev, ev_cols = _eval(run, grid, weights, late_fraction)
        table = table.with_columns(*[pl.Series(k, v, nan_to_null=True) for k, v in ev_cols.items()])
        probes = _probes(run)
        table = _attach_probes(table, probes)
        drawn = grid if plots else _Grid.from_bins(run.train_bins.clear(), run.process.num_bins)
        by_bin = dict(bin_series=_bin_series(drawn, lg, max_time_rows), schedule=_schedule(run),
                      ema=_ema(run, grid, weights, late_fraction), time_probe=_time_probe(run.bins))
        per_step = per_step.result()
    lc = per_step.pop("lifecycle")
    analysis = Analysis(
        run=_run_info(run, grid, problems),
        phases=phases,
        bins=table,
        eval_series=ev_series,
        loss=loss,
        profile=_profile(table),
        probes=probes,
        eval=ev,
        settings=settings,
        lifecycle=lc,
        early=_early(lc, loss, th),
        **by_bin,
        **per_step,
    )
    found = evaluate(analysis, th)
    return replace(analysis, findings=found, verdict=_verdict(found))


class _Done:
    """A call made at once, read as a finished future (``analyze(threads=1)``)."""

    def __init__(self, fn, *args):
        self._value = fn(*args)

    def result(self):
        return self._value


def _per_step(run: Run, steps: pl.DataFrame, late_fraction: float, trend_fraction: float, max_points: int,
              th: Thresholds, now: float | None, plots: bool) -> dict:
    """The parts of the analysis that read the per-step series (and the run's lifecycle), not the bins."""
    return dict(
        spikes=_spikes(steps),
        series=_step_series(steps if plots else steps.clear(), max_points),
        clip=_clip(run, steps, late_fraction, trend_fraction),
        nonfinite=_nonfinite(run, steps),
        timesteps=_timesteps(run, steps),
        grad_flow=_grad_flow(steps, late_fraction, th),
        lifecycle=_lifecycle(run, now=now),
    )


# ----------------------------------------------------------------------------
# The window x bin grid


@dataclass(frozen=True, eq=False)
class _Grid:
    """Train bin statistics as dense (window, bin) arrays, windows in step order."""

    step_lo: np.ndarray  # (W,)
    step_hi: np.ndarray
    x: np.ndarray  # window centre, strictly increasing
    n: np.ndarray  # (W, B) counts, 0 where absent
    mean: np.ndarray  # NaN where absent
    m2: np.ndarray  # 0 where absent
    nonfinite: np.ndarray  # (B,) non-finite samples of each bin over all windows (only their totals are read)

    @property
    def W(self) -> int:
        return int(self.x.size)

    @classmethod
    def from_bins(cls, bins: pl.DataFrame, nb: int) -> "_Grid":
        if bins.height == 0:
            z = np.zeros((0, nb))
            e = np.zeros(0, np.int64)
            return cls(e, e, np.zeros(0), z, z.copy(), z.copy(), np.zeros(nb))
        return cls._from_ordered(bins, nb) or cls._from_any(bins, nb)

    @classmethod
    def _from_any(cls, bins: pl.DataFrame, nb: int) -> "_Grid":
        lo = bins["step_lo"].to_numpy()
        hi = bins["step_hi"].to_numpy()
        centre = 0.5 * (lo + hi)
        # windows are identified by their centre; rows of one window (and bin) are Chan-merged
        step = np.diff(centre)
        if np.all(step >= 0):  # windows in step order (as loaded): their ids without a sort
            new = np.r_[True, step > 0]
            ux, wi = centre[new], np.cumsum(new) - 1
        else:
            ux, wi = np.unique(centre, return_inverse=True)
        W = ux.size
        b = np.clip(bins["bin"].to_numpy().astype(np.int64), 0, nb - 1)
        flat = wi * nb + b
        size = W * nb
        m = stats.merge_groups(flat, bins["count"].fill_null(0).to_numpy(), bins["mean"].fill_null(np.nan).to_numpy(),
                               bins["m2"].fill_null(np.nan).to_numpy(), size)
        N, M, M2 = m.count, m.mean, m.m2
        nf = np.bincount(flat, bins["nonfinite"].fill_null(0).to_numpy().astype(np.float64), size)
        slo = np.full(W, np.iinfo(np.int64).max)
        shi = np.full(W, np.iinfo(np.int64).min)
        np.minimum.at(slo, wi, lo)
        np.maximum.at(shi, wi, hi)
        shape = (W, nb)
        return cls(slo, shi, ux, N.reshape(shape), M.reshape(shape), M2.reshape(shape), nf.reshape(shape).sum(axis=0))

    @classmethod
    def _from_ordered(cls, bins: pl.DataFrame, nb: int) -> "_Grid | None":
        """The grid of rows in window order with one row per (window, bin) at most, as a loaded run's train bins
        are, made GRID_STRETCH rows at a time: what :meth:`_from_any` computes, without a dozen arrays as long as
        the rows at once (+130 MB for 1,000,000 rows). None for other rows.

        The window ids, centres and spans are those of :meth:`_from_any`'s ordered case (a stretch's first centre
        compared with the previous stretch's last); with one row per cell, stats.merge_groups has nothing to merge
        and gives on a stretch of rows what it gives on all of them.
        """
        n, S = bins.height, GRID_STRETCH
        lo_col, hi_col = bins["step_lo"], bins["step_hi"]
        new = np.empty(n, bool)
        centres, last = [], None
        for a in range(0, n, S):
            c = 0.5 * (lo_col.slice(a, S).to_numpy() + hi_col.slice(a, S).to_numpy())
            step = np.diff(c if last is None else np.r_[last, c])
            if not np.all(step >= 0):
                return None
            new[a:a + c.size] = np.r_[True, step > 0] if last is None else step > 0
            centres.append(c[new[a:a + c.size]])
            last = c[-1]
        ux = np.concatenate(centres)
        W = ux.size
        slo = np.full(W, np.iinfo(np.int64).max)
        shi = np.full(W, np.iinfo(np.int64).min)
        flat = np.empty(n, np.int64)
        first = 0  # the window id of the stretch's first row, less its own 'new'
        for a in range(0, n, S):
            wi = np.cumsum(new[a:a + S]) - 1 + first
            first = int(wi[-1]) + 1
            np.minimum.at(slo, wi, lo_col.slice(a, S).to_numpy())
            np.maximum.at(shi, wi, hi_col.slice(a, S).to_numpy())
            flat[a:a + wi.size] = wi * nb + np.clip(bins["bin"].slice(a, S).to_numpy().astype(np.int64), 0, nb - 1)
        del new
        size = W * nb
        if not (flat[0] >= 0 and flat[-1] < size and np.all(flat[1:] > flat[:-1])):
            return None
        N, M, M2, nf = np.zeros(size), np.full(size, np.nan), np.zeros(size), np.zeros(nb)
        for a in range(0, n, S):
            g = flat[a:a + S]
            g0, k = int(g[0]), int(g[-1] - g[0]) + 1
            g = g - g0
            part = bins.slice(a, S)
            m = stats.merge_groups(g, part["count"].fill_null(0).to_numpy(), part["mean"].fill_null(np.nan).to_numpy(),
                                   part["m2"].fill_null(np.nan).to_numpy(), k)
            N[g0:g0 + k], M[g0:g0 + k], M2[g0:g0 + k] = m.count, m.mean, m.m2
            # whole numbers: their sum is exact in any order
            nf += np.bincount(flat[a:a + S] % nb, part["nonfinite"].fill_null(0).to_numpy().astype(np.float64), nb)
        shape = (W, nb)
        return cls(slo, shi, ux, N.reshape(shape), M.reshape(shape), M2.reshape(shape), nf)

    def merge(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(count, mean, m2) per bin over the windows `rows` (boolean mask or indices), exact."""
        n = self.n[rows]
        if n.shape[0] == 0:
            return np.zeros(n.shape[1]), np.full(n.shape[1], np.nan), np.zeros(n.shape[1])
        m = stats.merge_moments(n, self.mean[rows], self.m2[rows], axis=0)
        return m.count, m.mean, m.m2


def _phases(grid: _Grid, late_fraction, phase_fraction, trend_fraction) -> tuple[Phases, dict]:
    """Window masks of the phases; at least one window each (two or more for the trend stretch when possible)."""
    W = grid.W
    if W == 0:
        return Phases(None, None, None, None), {}
    s0, s1 = float(grid.step_lo.min()), float(grid.step_hi.max())
    span = max(s1 - s0, 1.0)
    x = grid.x
    early = x <= s0 + phase_fraction * span
    early[0] = True
    mid = np.abs(x - (s0 + s1) / 2) <= phase_fraction * span / 2
    mid[int(np.argmin(np.abs(x - (s0 + s1) / 2)))] = True
    late = x >= s1 - late_fraction * span
    late[-1] = True
    trend = x >= s1 - trend_fraction * span
    k = min(W, stats.MIN_BATCHES)
    if trend.sum() < k:
        trend[W - k:] = True

    def rng(m):
        idx = np.flatnonzero(m)
        return (int(grid.step_lo[idx].min()), int(grid.step_hi[idx].max()))

    sel = {"early": early, "mid": mid, "late": late, "trend": trend}
    return Phases(rng(early), rng(mid), rng(late), rng(trend)), sel


# ----------------------------------------------------------------------------
# L* references


# ----------------------------------------------------------------------------
# The per-bin table


def _bin_table(run: Run, grid: _Grid, sel: dict, lg, le, le_se, th: Thresholds):
    p = run.process
    nb = p.num_bins
    edges = p.bin_edges().astype(np.float64)
    with np.errstate(divide="ignore"):
        lsnr = p.bin_log_snr()
    nan = np.full(nb, np.nan)
    cols: dict[str, np.ndarray] = {
        "bin": np.arange(nb),
        "t_lo": edges[:-1],
        "t_hi": edges[1:],
        "log_snr": np.asarray(lsnr, np.float64),
    }
    if grid.W == 0:
        for c in BIN_COLUMNS:
            cols.setdefault(c, nan.copy())
        cols["count"] = np.zeros(nb)
        cols["trend"] = np.array(["n/a"] * nb)
        return _frame(cols), None, np.full(nb, 1.0 / nb)

    count = grid.n.sum(axis=0)
    total = count.sum()
    cols["count"] = count
    cols["coverage"] = count * nb / total if total > 0 else nan.copy()
    cols["nonfinite"] = grid.nonfinite
    for name in ("early", "mid"):
        _, m, _ = grid.merge(sel[name])
        cols[f"{name}_mean"] = m
    ln, lm, lm2 = grid.merge(sel["late"])
    with np.errstate(invalid="ignore", divide="ignore"):
        lvar = np.where(ln > 1, lm2 / (ln - 1), np.nan)
    cols["late_mean"] = lm
    cols["late_std"] = np.sqrt(lvar)
    cols["late_se"], late_df = _late_se(grid, sel["late"], ln, lvar)
    # the sampler's weight of each bin, late (its own objective); bins never sampled late weigh 0
    weights = ln / ln.sum() if ln.sum() > 0 else np.full(nb, 1.0 / nb)
    has = np.isfinite(lm) & (weights > 0)
    late_total = float(np.sum(weights[has] * lm[has])) if has.any() else None
    cols["count_share"] = weights
    cols["lstar_gauss"] = lg
    cols["lstar_emp"] = le
    cols["lstar_emp_se"] = le_se
    with np.errstate(invalid="ignore", divide="ignore"):
        ex = lm - lg
        cols["excess"] = ex
        cols["excess_z"] = _normal_equivalent(ex / cols["late_se"], late_df)
        cols["excess_share"] = weights * np.maximum(ex, 0.0) / late_total if late_total else nan.copy()
        cols["excess_emp"] = lm - le
        cols["loss_share"] = weights * lm / late_total if late_total else nan.copy()
        gap0 = cols["early_mean"] - lg
        cols["gap_closed"] = np.where(gap0 > 0, (cols["early_mean"] - lm) / gap0, np.nan)
    cols.update(_bin_trends(grid, sel["trend"], th))
    return _frame(cols), late_total, weights


def _curve_residuals(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y less a cubic in log(step): the loss curve's fall (fast, then slow) is signal, not noise.
    y is one series, or one series per column (all at the steps x)."""
    lx = np.log1p(np.maximum(x - x.min(), 0.0) + (x.max() - x.min()) / max(x.size, 1))
    t = (lx - lx.mean()) / max(float(np.ptp(lx)), 1e-12)
    basis = np.vander(t, min(4, y.shape[0] - 1))
    fit = basis @ np.linalg.lstsq(basis, y, rcond=None)[0]
    return np.subtract(y, fit, out=fit)  # y - fit, in the fit's memory


def _late_se(grid: _Grid, late, ln, lvar) -> tuple[np.ndarray, np.ndarray]:
    """Standard error of the late mean per bin, honest under autocorrelation, and its degrees of freedom.

    Consecutive windows share the optimizer's trajectory, so the late window means
    are autocorrelated and their spread over sqrt(k) is far too small (with AR(1)
    window noise, phi = 0.9, a loss exactly at a reference reads z >= 3 a quarter
    of the time). The error is the largest of: the iid error of the pooled samples;
    the batch-means error of the late windows (:func:`stats.batch_means`; with
    fewer than ``stats.MIN_BATCHES`` late windows, their plain spread); and, with
    >= 6 windows, the long-run variance of the bin's whole window series over the
    k late windows: the variance of its residuals times their conservative
    integrated autocorrelation time (:func:`stats.correlations`). The
    residuals are those of the log window means about a cubic in log(step), which
    follows a loss curve's fast-then-slow fall by factors, so the fall itself is
    not taken for noise (scaled back by the late level). The degrees of freedom
    are the series' effective sample size less one (k - 1 without a series).
    Bins with windows at the same steps (usually all of them) are computed together.
    """
    nb = grid.n.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt(lvar / ln)
    df = np.full(nb, np.inf)
    have = (grid.n > 0) & np.isfinite(grid.mean)
    m = late[:, None] & have
    k = m.sum(axis=0)
    late_corr = stats.correlations(grid.mean, m)
    series_tau = _series_tau(grid, have)
    for b in range(nb):
        if k[b] < 2:
            continue
        y, w = grid.mean[m[:, b], b], grid.n[m[:, b], b]
        cand = [se[b]]
        if k[b] >= stats.MIN_BATCHES:
            try:
                cand.append(stats.batch_means(y, weights=w, correlation=tuple(c[b] for c in late_corr)).se)
            except DiffauditError:
                pass
        else:
            cand.append(float(np.std(y, ddof=1)) / math.sqrt(k[b]))
        df[b] = k[b] - 1.0
        if b in series_tau:
            r, tau = series_tau[b]
            scale = float(np.average(y, weights=w)) ** 2 if np.all(grid.mean[have[:, b], b] > 0) else 1.0
            cand.append(math.sqrt(scale * float(r @ r) / max(r.size - 4, 1) * tau / k[b]))
            df[b] = max(r.size / tau - 1.0, 1.0)
        se[b] = np.nanmax(cand)
    return se, df


def _series_tau(grid: _Grid, have: np.ndarray) -> dict[int, tuple[np.ndarray, float]]:
    """{bin: (residuals of its whole window series about the loss curve, their conservative tau)} for bins
    with >= 6 windows; log window means where all are positive. Bins with windows at the same steps share
    one least-squares fit and one FFT."""
    out = {}
    if have.shape[0] < 6 or have.shape[1] == 0:
        return out
    for bins in stats.same_columns(have):
        rows = have[:, bins[0]]
        if rows.sum() < 6:
            continue
        y = grid.mean[np.ix_(rows, bins)]  # a copy: the log is taken in place (the grid's size, once)
        positive = np.all(y > 0, axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            np.log(y, out=y, where=positive[None, :])  # the log of the columns all positive, the others as they are
        r = _curve_residuals(y, grid.x[rows])
        del y
        tau = stats.correlations(r, np.ones(r.shape, bool))[2]
        for i, b in enumerate(bins):
            out[int(b)] = (r[:, i], float(tau[i]))
    return out


def _normal_equivalent(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    """The normal z with the same one-sided tail probability as Student's t with `df` degrees of freedom."""

    t = np.asarray(t, np.float64)
    out = np.full(t.shape, np.nan)
    ok = np.isfinite(t)
    tt, dd = t[ok], np.where(np.isfinite(df[ok]), df[ok], 1e9)
    # through the tail on the far side, so large |t| keep their precision
    out[ok] = np.where(tt >= 0, stats.norm_isf(stats.t_sf(tt, dd)), -stats.norm_isf(stats.t_cdf(tt, dd)))
    return out


def _trend_windows(grid: _Grid, trend_rows) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(x, count, mean) of the trend stretch's windows, merged into at most MAX_TREND_WINDOWS; and its span.

    Merging consecutive windows is exact (Chan) and leaves the inference unchanged:
    the batch means that the trend tests use are means of >= 8 contiguous stretches anyway.
    """
    idx = np.flatnonzero(trend_rows)
    if idx.size and idx[-1] - idx[0] + 1 == idx.size:  # one stretch of windows (as the trend's always is): views
        idx = slice(int(idx[0]), int(idx[-1]) + 1)
    size = len(range(*idx.indices(grid.W))) if isinstance(idx, slice) else idx.size
    span = float(grid.step_hi[idx].max() - grid.step_lo[idx].min()) if size else 0.0
    n, mean, x = grid.n[idx], grid.mean[idx], grid.x[idx]
    if size > MAX_TREND_WINDOWS:
        starts = stats.batch_starts(size, MAX_TREND_WINDOWS)
        m = stats.coarsen_moments(n, mean, grid.m2[idx], starts, axis=0)
        x = np.add.reduceat(x, starts) / np.diff(np.append(starts, size))
        n, mean = m.count, m.mean
    return x, n, mean, span


def _bin_trends(grid: _Grid, trend_rows, th: Thresholds) -> dict[str, np.ndarray]:
    """Per bin: Theil-Sen trend and TOST over the trend stretch, BY-adjusted across bins."""
    nb = grid.n.shape[1]
    out = {k: np.full(nb, np.nan) for k in ("slope", "slope_lo", "slope_hi", "rel_change", "rel_lo", "rel_hi",
                                              "p_value", "tost_p")}
    x, n, mean, span = _trend_windows(grid, trend_rows)
    corr = stats.correlations(mean, (n > 0) & np.isfinite(x)[:, None])  # all bins' at once
    for b in range(nb):
        try:
            eq = stats.equivalence(mean[:, b], x, weights=n[:, b], margin=th.stagnation_margin,
                                   per_steps=max(span, 1.0), alpha=th.alpha, correlation=tuple(c[b] for c in corr))
        except DiffauditError:  # too few windows, or a zero level
            continue
        tr = eq.trend
        for k, v in (("slope", tr.slope), ("slope_lo", tr.lo), ("slope_hi", tr.hi), ("rel_change", tr.rel_slope),
                     ("rel_lo", tr.rel_lo), ("rel_hi", tr.rel_hi), ("p_value", tr.p_value), ("tost_p", eq.p_value)):
            out[k][b] = v
        # The relative change is read off the Theil-Sen fit of log(loss) on the same batches: a
        # straight line through a decaying loss extrapolates to "-135%", exp(slope * length) - 1 cannot.
        lt = stats.log_scale(tr)
        if lt is not None:
            out["rel_change"][b], out["rel_lo"][b], out["rel_hi"][b] = np.expm1(np.array([lt.slope, lt.lo, lt.hi]) * span)
    out["q_value"] = stats.adjust_pvalues(out["p_value"], "by")
    out["tost_q"] = stats.adjust_pvalues(out["tost_p"], "by")
    label = np.full(nb, "n/a", dtype=object)
    known = np.isfinite(out["p_value"])
    label[known] = "inconclusive"
    label[known & (out["tost_q"] < th.alpha)] = "flat"
    sig = known & (out["q_value"] < th.alpha)
    label[sig & (out["slope"] < 0)] = "decreasing"
    label[sig & (out["slope"] > 0)] = "increasing"
    out["trend"] = label.astype(str)
    return out


def _frame(cols: dict) -> pl.DataFrame:
    order = ["bin", "t_lo", "t_hi", "log_snr"] + [c for c in BIN_COLUMNS if c not in ("bin", "t_lo", "t_hi", "log_snr")]
    data = {}
    for c in order:
        if c not in cols:
            continue
        v = np.asarray(cols[c])
        if c == "bin":
            data[c] = pl.Series(c, v.astype(np.int32))
        elif c in ("count", "nonfinite"):
            data[c] = pl.Series(c, np.nan_to_num(v.astype(np.float64)).astype(np.int64))
        elif v.dtype.kind in "US":
            data[c] = pl.Series(c, v.astype(str))
        else:
            data[c] = pl.Series(c, v.astype(np.float64), nan_to_null=True)
    return pl.DataFrame(data)


# ----------------------------------------------------------------------------
# The run's loss as a whole


def _aggregate(n: np.ndarray, mean: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per window: the sampler-weighted mean over bins (fixed weights, so the batch mix adds no noise)."""
    present = n > 0
    w = np.where(present, weights[None, :], 0.0)
    ws = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        agg = (w * np.where(present, mean, 0.0)).sum(axis=1) / ws
    return np.where(ws > 0, agg, np.nan), n.sum(axis=1)


def _loss_summary(steps, grid, sel, weights, table, lg, le, late_total, th) -> LossSummary:
    f = {k: None for k in LossSummary.__dataclass_fields__}
    f["stagnant"] = False
    # the per-step series: first / best / late levels
    if steps.height:
        loss = _floats(steps["loss"])
        try:
            ls = stats.level_shift(loss, frac=0.1, reference="best")
            fin = loss[np.isfinite(loss)]
            f.update(first_level=float(np.median(fin[: ls.block])), best_level=ls.ref_level,
                     late_level=ls.late_level, late_over_best=json_float(ls.ratio), shift_z=json_float(ls.z))
        except DiffauditError:
            pass
    if grid.W:
        agg, n = _aggregate(grid.n, grid.mean, weights)
        e, l = sel["early"], sel["late"]
        with np.errstate(invalid="ignore", divide="ignore"):
            ae = np.nansum(agg[e] * n[e]) / np.sum(n[e][np.isfinite(agg[e])])
            al = np.nansum(agg[l] * n[l]) / np.sum(n[l][np.isfinite(agg[l])])
        f["late_over_early"] = json_float(al / ae) if ae > 0 else None
        idx = np.flatnonzero(sel["trend"])
        f["trend_from"], f["trend_to"] = int(grid.step_lo[idx].min()), int(grid.step_hi[idx].max())
        x, tn, tmean, span = _trend_windows(grid, sel["trend"])
        tagg, tw = _aggregate(tn, tmean, weights)
        try:
            eq = stats.equivalence(tagg, x, weights=tw, margin=th.stagnation_margin,
                                   per_steps=max(span, 1.0), alpha=th.alpha)
            tr = eq.trend
            f.update(trend_rel=json_float(tr.rel_slope), trend_lo=json_float(tr.rel_lo), trend_hi=json_float(tr.rel_hi),
                     trend_p=json_float(tr.p_value), tost_p=json_float(eq.p_value), tost_lo=json_float(eq.rel_lo),
                     tost_hi=json_float(eq.rel_hi), stagnant=bool(eq.equivalent))
        except DiffauditError:
            pass
    f["late_total"] = late_total
    late = table["late_mean"].fill_null(np.nan).to_numpy()
    if late_total and np.isfinite(lg).any():
        ok = np.isfinite(lg) & np.isfinite(late)
        f["reference"] = "Gaussian"
        f["excess_share"] = float(np.sum((weights * np.maximum(late - lg, 0.0))[ok]) / late_total)
    if late_total and np.isfinite(le).any():
        ok = np.isfinite(le) & np.isfinite(late)
        f["excess_share_emp"] = float(np.sum((weights * np.maximum(late - le, 0.0))[ok]) / late_total)
    return LossSummary(**f)


def _profile(table: pl.DataFrame) -> ProfileSummary:
    """How much the late loss varies across noise levels, relative to how much L* does (coefficients of variation)."""
    late = table["late_mean"].fill_null(np.nan).to_numpy()
    lg = table["lstar_gauss"].fill_null(np.nan).to_numpy()
    ok = np.isfinite(late) & np.isfinite(lg)
    if ok.sum() < 3:
        return ProfileSummary(None, None, None, None, None, None, None)
    l, g = late[ok], lg[ok]
    # relative spreads, so a model far below L* everywhere (memorizing) is not mistaken for a flat one
    cv_l = float(l.std() / l.mean()) if l.mean() > 0 else None
    cv_g = float(g.std() / g.mean()) if g.mean() > 0 else None
    corr = float(np.corrcoef(l, g)[0, 1]) if l.std() > 0 and g.std() > 0 else None
    return ProfileSummary(
        range_ratio=cv_l / cv_g if cv_l is not None and cv_g else None,
        correlation=corr,
        loss_min=float(l.min()), loss_max=float(l.max()),
        lstar_min=float(g.min()), lstar_max=float(g.max()),
        lstar_rel_range=cv_g,
    )


# ----------------------------------------------------------------------------
# Per-step series: downsampling, spikes, non-finite, clipping


def _floats(col: pl.Series) -> np.ndarray:
    """A per-step column as float64 with NaN for nulls: ``col.cast(pl.Float64).fill_null(np.nan).to_numpy()``,
    without the two whole-column polars copies on the way for a float column (numpy gives its nulls as NaN)."""
    if col.dtype in (pl.Float32, pl.Float64):
        return col.to_numpy().astype(np.float64, copy=False)
    return col.cast(pl.Float64).fill_null(np.nan).to_numpy()


def _step_series(steps: pl.DataFrame, max_points: int) -> pl.DataFrame:
    """The per-step columns reduced to at most `max_points` consecutive groups (for plots)."""
    if steps.height == 0:
        return pl.DataFrame(schema={"step_lo": pl.Int64, "step_hi": pl.Int64, "steps": pl.UInt32})
    every = max(1, math.ceil(steps.height / max(max_points, 1)))
    loss = pl.col("loss").cast(pl.Float64)
    finite = loss.filter(loss.is_finite())
    gn = pl.col("grad_norm").cast(pl.Float64)
    gfin = gn.filter(gn.is_finite())
    # groups of `every` consecutive rows, so a stretch of whole groups is reduced at a time: the aggregations'
    # temporaries (each column as float64, filtered, per group) then cost a stretch's worth of memory
    stretch = every * max(1, STEP_SERIES_STRETCH // every)
    return pl.concat([_step_series_groups(steps.slice(a, stretch), every, finite, gfin)
                      for a in range(0, steps.height, stretch)])


def _step_series_groups(steps: pl.DataFrame, every: int, finite: pl.Expr, gfin: pl.Expr) -> pl.DataFrame:
    return (
        steps.with_row_index("_r")
        .group_by((pl.col("_r") // every).alias("_g"), maintain_order=True)
        .agg(
            pl.col("step").min().alias("step_lo"),
            pl.col("step").max().alias("step_hi"),
            pl.len().alias("steps"),
            finite.mean().alias("loss_mean"),
            finite.median().alias("loss_median"),
            finite.min().alias("loss_min"),
            finite.max().alias("loss_max"),
            gfin.median().alias("grad_norm_median"),
            gfin.max().alias("grad_norm_max"),
            pl.col("clipped").cast(pl.Float64).mean().alias("clip_rate"),
            pl.col("clipped").cast(pl.Int64).sum().alias("clipped"),
            pl.col("clip_threshold").cast(pl.Float64).median().alias("clip_threshold"),
            pl.col("nonfinite").cast(pl.Int64).sum().alias("nonfinite"),
            pl.col("lr").cast(pl.Float64).mean().alias("lr"),
        )
        .drop("_g")
    )


def _local_median(v: np.ndarray, pos: np.ndarray, i: int, half: int) -> float:
    """The median of ``v`` at the ``half`` places of ``pos`` either side of its ``i``-th (no copy of v[pos])."""
    return float(np.median(v[pos[max(0, i - half): i + half + 1]]))


def spike_threshold(z: np.ndarray, n: int | None = None, *, false_events: float | None = None
                    ) -> tuple[float, float | None]:
    """The robust z a spike must pass on this run, and the tail index it was read from.

    Small per-rank batches make the per-step loss heavy-tailed (a batch that drew a
    few hard samples), and on Student-t(3) noise a fixed z > 8 on a MAD scale finds
    ~15 "spikes" per 10,000 healthy steps. So the threshold follows the run's own
    noise: a power law ``P(Z > z) ~ z^-a`` is fitted to the upper tail of the robust
    z between its 95% and 99.5% quantiles (a few real spikes, under 0.5% of the
    steps, do not move those quantiles), and the threshold is the z that the fitted
    tail exceeds ``SPIKE_FALSE_EVENTS`` times in the whole run, never below the
    fixed ``stats.SPIKE_THRESHOLD``. A Gaussian tail (a ~ 5) keeps the fixed 8; a
    t(3) tail over 10,000 steps asks for ~35. ``false_events`` overrides
    ``SPIKE_FALSE_EVENTS`` (a lone spike is held to ``SPIKE_FALSE_SINGLE``).
    """
    return spike_thresholds(z, n, (SPIKE_FALSE_EVENTS if false_events is None else false_events,))[0]


def spike_thresholds(z: np.ndarray, n: int | None, false_events: tuple[float, ...]) -> list[tuple[float, float | None]]:
    """:func:`spike_threshold` at several ``false_events``, the tail fitted once."""
    z = np.asarray(z, np.float64)
    z = z[np.isfinite(z)]
    n = int(n or z.size)
    base = stats.SPIKE_THRESHOLD
    if z.size < 200:
        return [(base, None)] * len(false_events)
    q_lo, q_hi = np.quantile(z, [1 - SPIKE_TAIL_LO, 1 - SPIKE_TAIL_HI])
    if not (q_lo > 0 and q_hi > q_lo):
        return [(base, None)] * len(false_events)
    a = math.log(SPIKE_TAIL_LO / SPIKE_TAIL_HI) / math.log(q_hi / q_lo)
    out = []
    for events in false_events:
        p = events / max(n, 1)
        thr = q_hi * (SPIKE_TAIL_HI / p) ** (1.0 / a) if p < SPIKE_TAIL_HI else q_hi
        out.append((float(max(base, min(thr, SPIKE_MAX_THRESHOLD))), float(a)))
    return out


def _spikes(steps: pl.DataFrame) -> SpikeSummary:
    n = steps.height
    empty = SpikeSummary(n, 0, None, (), None, None, None, None, None, None, threshold=stats.SPIKE_THRESHOLD,
                         single_threshold=stats.SPIKE_THRESHOLD)
    if n == 0:
        return empty
    loss = _floats(steps["loss"])
    pos_ok = np.isfinite(loss) & (loss > 0)
    if pos_ok.sum() < 10:
        return replace(empty, events_per_10k=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ll = np.where(pos_ok, np.log(loss), np.nan)
    del pos_ok, loss
    every = stats.robust_z(ll)  # the robust z of every finite step, filtered once
    del ll
    # the losses and steps are read again after the filter, whose temporaries are the largest of the analysis
    loss = _floats(steps["loss"])
    step = steps["step"].to_numpy()
    (thr, tail), (lone, _) = spike_thresholds(every.z, every.z.size, (SPIKE_FALSE_EVENTS, SPIKE_FALSE_SINGLE))
    # candidates at the fixed threshold: the largest excursions (a blow-up is one, on any noise) ...
    cand = stats.spikes_at(every)
    fin_pos = every.pos  # the finite log losses' places
    half = every.window // 2
    found = []
    for pk in cand.event_peak:
        k = int(np.searchsorted(fin_pos, pk))
        med = _local_median(loss, fin_pos, k, half)
        z = float(cand.z[np.searchsorted(cand.indices, pk)])
        found.append({"step": int(step[pk]), "loss": float(loss[pk]), "median": med,
                      "ratio": float(loss[pk] / med) if med > 0 else math.inf, "z": z, "_pos": int(pk)})
    found.sort(key=lambda e: -e["ratio"])
    top = found[0] if found else None
    # ... and the spike events proper: peaks beyond what the run's own noise makes
    events = [e for e in found if e["z"] > thr]
    peaks = np.array([e["_pos"] for e in events], np.intp)
    at = np.unique(np.append(peaks, [top["_pos"]] if top else []).astype(np.intp))  # where the grad norm is read
    for e in found:
        e.pop("_pos")
    # the grad norm at those spikes, against its own running median
    g = _floats(steps["grad_norm"])
    gmax = gstep = None
    gpos = np.flatnonzero(np.isfinite(g) & (g > 0))
    if gpos.size >= 10:
        for pk in at:
            k = int(np.searchsorted(gpos, pk))
            if k >= gpos.size or gpos[k] != pk:
                continue
            med = _local_median(g, gpos, k, half)
            r = float(g[pk] / med) if med > 0 else math.inf
            if gmax is None or r > gmax:
                gmax, gstep = r, int(step[pk])
    span = float(step.max() - step.min() + 1)
    n_events = int(peaks.size)
    return SpikeSummary(
        n_steps=n,
        n_events=n_events,
        events_per_10k=n_events * 1e4 / span,
        events=tuple(events[:MAX_SPIKE_EVENTS]),
        max_ratio=top["ratio"] if top else None,
        max_ratio_step=top["step"] if top else None,
        max_ratio_loss=top["loss"] if top else None,
        max_ratio_median=top["median"] if top else None,
        max_grad_ratio=gmax,
        max_grad_ratio_step=gstep,
        threshold=thr,
        tail_index=tail,
        single_threshold=lone,
        max_ratio_z=top["z"] if top else None,
    )


def _nonfinite(run: Run, steps: pl.DataFrame) -> NonfiniteSummary:
    nb = run.process.num_bins
    tb = run.train_bins
    if tb.height:
        per_bin = np.bincount(np.clip(tb["bin"].to_numpy(), 0, nb - 1), tb["nonfinite"].fill_null(0).to_numpy(), nb)
    else:
        per_bin = np.zeros(nb)
    bins = np.flatnonzero(per_bin > 0)
    if steps.height == 0:
        total_bad = int(per_bin.sum())
        return NonfiniteSummary(total_bad, float(total_bad / max(tb["count"].sum() + total_bad, 1)) if tb.height else 0.0,
                                0, None, tuple(bins), tuple(int(c) for c in per_bin[bins]), 0, None, 0, False, False, None)
    nf = steps["nonfinite"].fill_null(0).to_numpy().astype(np.int64)
    cnt = steps["count"].fill_null(0).to_numpy().astype(np.int64)
    step = steps["step"].to_numpy()
    bad_steps = np.flatnonzero(nf > 0)
    n_bad = int(nf.sum())
    total = int(nf.sum() + cnt.sum())
    # diverged: from some step on, no step has a finite loss (and at least 1% of the run, >= 3 steps)
    loss = _floats(steps["loss"])
    fin = np.isfinite(loss) & (cnt > 0)
    last_fin = np.flatnonzero(fin)
    tail = steps.height - (int(last_fin[-1]) + 1 if last_fin.size else 0)
    diverged = tail >= max(3, int(0.01 * steps.height)) and int(nf[-tail:].sum() if tail else 0) > 0
    # the logger keeps a logged NaN grad norm as NaN; null means the step logged none
    g = steps["grad_norm"].cast(pl.Float64)
    with_logging = int(g.is_not_null().sum())
    gnp = g.fill_null(0.0).to_numpy()
    bad_g = ~np.isfinite(gnp)
    gb = np.flatnonzero(bad_g)
    ls = steps["loss_scale"] if "loss_scale" in steps.columns else None
    return NonfiniteSummary(
        loss_samples=n_bad,
        loss_share=n_bad / total if total else 0.0,
        loss_steps=int(bad_steps.size),
        loss_first_step=int(step[bad_steps[0]]) if bad_steps.size else None,
        loss_bins=tuple(int(b) for b in bins),
        loss_bin_counts=tuple(int(c) for c in per_bin[bins]),
        grad_steps=int(gb.size),
        grad_first_step=int(step[gb[0]]) if gb.size else None,
        steps_with_grad_logging=with_logging,
        loss_scale_used=bool(ls is not None and ls.is_not_null().any()),
        diverged=bool(diverged),
        diverged_from=int(step[steps.height - tail]) if diverged else None,
        **_negative(steps),
    )


def _negative(steps: pl.DataFrame) -> dict:
    """Negative per-sample losses the logger counted (and left out) on a device: samples, steps, the first step."""
    if "negative" not in steps.columns:
        return {}
    neg = steps["negative"].fill_null(0).cast(pl.Int64).to_numpy()
    hit = np.flatnonzero(neg > 0)
    return {"negative_samples": int(neg.sum()), "negative_steps": int(hit.size),
            "negative_first_step": int(steps["step"][int(hit[0])]) if hit.size else None}


def _clip(run: Run, steps, late_fraction, trend_fraction) -> ClipSummary:
    none = ClipSummary(False, None, None, None, None, None, None, None, None, None)
    if steps.height == 0 or "clipped" not in steps.columns:
        return none
    c = steps["clipped"]
    known = c.is_not_null().to_numpy()
    if not known.any():
        return none
    step = steps["step"].to_numpy()
    cl = c.fill_null(False).to_numpy().astype(np.float64)
    s0, s1 = float(step.min()), float(step.max())
    span = max(s1 - s0, 1.0)
    late = known & (step >= s1 - late_fraction * span)
    early = known & (step <= s0 + late_fraction * span)
    rate = float(cl[known].mean())
    thr = steps["clip_threshold"].cast(pl.Float64).drop_nulls()
    g = _floats(steps["grad_norm"])
    lg = g[late & np.isfinite(g)]
    # trend of the per-window clip rate over the trend stretch
    win = int(run.meta.get("window") or 100)
    rise = rise_lo = rise_hi = rise_p = None
    tr_mask = known & (step >= s1 - trend_fraction * span)
    if tr_mask.sum():
        key = step[tr_mask] // max(win, 1)
        uk, inv = np.unique(key, return_inverse=True)
        nwin = np.bincount(inv)
        r = np.bincount(inv, cl[tr_mask]) / nwin
        xs = np.bincount(inv, step[tr_mask].astype(np.float64)) / nwin
        stretch = float(step[tr_mask].max() - step[tr_mask].min())
        try:
            t = stats.trend(r, xs, weights=nwin, per_steps=max(stretch, 1.0))
            rise, rise_lo, rise_hi, rise_p = (t.slope * stretch, t.lo * stretch, t.hi * stretch, t.p_value)
        except DiffauditError:
            pass
    return ClipSummary(
        available=True,
        threshold=float(thr.median()) if thr.len() else None,
        rate=rate,
        early_rate=float(cl[early].mean()) if early.any() else None,
        late_rate=float(cl[late].mean()) if late.any() else None,
        late_grad_median=float(np.median(lg)) if lg.size else None,
        rise=json_float(rise), rise_lo=json_float(rise_lo), rise_hi=json_float(rise_hi), rise_p=json_float(rise_p),
    )


# ----------------------------------------------------------------------------
# Schedule


def _schedule(run: Run) -> ScheduleInfo:
    p = run.process
    meta = run.meta
    dtype = meta.get("alphas_cumprod_dtype")
    from_betas = bool(meta.get("schedule_from_betas"))
    with np.errstate(divide="ignore"):
        lsnr = p.bin_log_snr()
    fin = lsnr[np.isfinite(lsnr)]
    lmin = float(fin.min()) if fin.size else None
    lmax = float(fin.max()) if fin.size else None
    if p.kind != "vp":
        if p.kind == "flow":
            a, s = p.alpha_sigma(np.array([p.bin_edges()[-1]]))
            snr = float(a[0] ** 2 / s[0] ** 2) if s[0] > 0 else math.inf
        else:
            sd = float(p.sigma_data) if p.sigma_data else 1.0
            snr = sd**2 / p.sigma_max**2
        return ScheduleInfo(p.kind, None, None, 0, None, None, None, snr, None, dtype, from_betas, None, 0, lmin, lmax)
    ab, om = p.alpha_bar, p.one_minus_alpha_bar
    d = np.diff(ab)
    inc = np.flatnonzero(d > 0)
    snr = float(ab[-1] / om[-1]) if om[-1] > 0 else math.inf
    err = None
    if not from_betas and dtype in _UNIT_ROUNDOFF and om[0] > 0:
        err = _UNIT_ROUNDOFF[dtype] * float(ab[0]) / float(om[0])
    zero = int(np.sum(om <= 0)) if p.prediction in ("epsilon", "v_prediction") else 0
    return ScheduleInfo(
        kind="vp", num_timesteps=int(ab.size), monotone=not inc.size, n_increases=int(inc.size),
        first_increase_t=int(inc[0] + 1) if inc.size else None,
        max_increase=float(d[inc].max()) if inc.size else None,
        terminal_alpha_bar=float(ab[-1]), terminal_snr=snr, one_minus_first=float(om[0]),
        dtype=dtype, from_betas=from_betas, one_minus_rel_error=err, zero_noise_steps=zero,
        log_snr_min=lmin, log_snr_max=lmax,
    )


# ----------------------------------------------------------------------------
# Gradient probe


def _probes(run: Run) -> ProbeSummary:
    pe = run.meta.get("probe_every")
    pr = run.probes
    empty_table = pl.DataFrame(schema={"probe_bin": pl.Int32, "bin_lo": pl.Int32, "bin_hi": pl.Int32, "n": pl.UInt32,
                                       "grad_norm": pl.Float64, "ratio_to_median": pl.Float64})
    if pr.height == 0:
        return ProbeSummary(0, pe, empty_table, None, None, None, None, None)
    # ranks probe the same step on their own batches: average their norms per (step, probe bin)
    pr = (pr.filter(pl.col("grad_norm").is_not_null() & pl.col("grad_norm").is_finite())
          .group_by("step", "probe_bin", "bin_lo", "bin_hi").agg(pl.col("grad_norm").cast(pl.Float64).mean()))
    steps = np.unique(pr["step"].to_numpy())
    if steps.size == 0:
        return ProbeSummary(0, pe, empty_table, None, None, None, None, None)
    late_steps = steps[steps.size // 2:]
    t = (pr.filter(pl.col("step").is_in(late_steps.tolist()))
         .group_by("probe_bin", "bin_lo", "bin_hi").agg(pl.len().alias("n"), pl.col("grad_norm").median())
         .sort("probe_bin"))
    g = t["grad_norm"].to_numpy()
    med = float(np.median(g)) if g.size else math.nan
    t = t.with_columns((pl.col("grad_norm") / med).alias("ratio_to_median"))
    if g.size < 2 or not med > 0:
        return ProbeSummary(int(steps.size), pe, t, None, None, None, None, None)
    i = int(np.argmax(g))
    return ProbeSummary(
        n_steps=int(steps.size), probe_every=pe, table=t,
        max_over_median=float(g[i] / med), min_over_median=float(g.min() / med),
        max_norm=float(g[i]), median_norm=med,
        max_bins=(int(t["bin_lo"][i]), int(t["bin_hi"][i])),
    )


def _attach_probes(table: pl.DataFrame, probes: ProbeSummary) -> pl.DataFrame:
    nb = table.height
    v = np.full(nb, np.nan)
    for r in probes.table.iter_rows(named=True):
        lo, hi = max(int(r["bin_lo"]), 0), min(int(r["bin_hi"]), nb)
        v[lo:hi] = r["grad_norm"]
    return table.with_columns(pl.Series("grad_norm_probe", v, nan_to_null=True))


# ----------------------------------------------------------------------------
# Eval against train


def _match_train(grid: _Grid, steps: np.ndarray) -> np.ndarray:
    """Index of the train window holding each step (else the nearest by centre); -1 without train windows."""
    if grid.W == 0:
        return np.full(steps.size, -1)
    i = np.searchsorted(grid.step_lo, steps, side="right") - 1
    i = np.clip(i, 0, grid.W - 1)
    inside = (grid.step_lo[i] <= steps) & (steps <= grid.step_hi[i])
    near = np.abs(grid.x[None, :] - steps[:, None]).argmin(axis=1) if (~inside).any() else i
    return np.where(inside, i, near)


def _eval(run: Run, grid: _Grid, weights, late_fraction) -> tuple[pl.DataFrame, EvalSummary, dict]:
    """Eval against train at the same noise levels: series, summary, and per-bin columns for the table."""
    eg = _Grid.from_bins(run.eval_bins, run.process.num_bins)
    nb = run.process.num_bins
    cols = {"eval_late_mean": np.full(nb, np.nan), "eval_gap": np.full(nb, np.nan)}
    empty = pl.DataFrame(schema={"step": pl.Int64, "bin": pl.Int32, "count": pl.Int64, "eval_mean": pl.Float64,
                                 "train_mean": pl.Float64})
    if eg.W == 0 or grid.W == 0:
        return empty, EvalSummary(eg.W, None, None, None, None, None, None), cols
    es = eg.step_hi
    ti = _match_train(grid, es)
    nb = eg.n.shape[1]
    series = pl.DataFrame({
        "step": np.repeat(es, nb).astype(np.int64),
        "bin": np.tile(np.arange(nb), eg.W).astype(np.int32),
        "count": eg.n.ravel().astype(np.int64),
        "eval_mean": pl.Series(eg.mean.ravel(), nan_to_null=True),
        "train_mean": pl.Series(grid.mean[ti].ravel(), nan_to_null=True),
    }).filter(pl.col("count") > 0)
    s0, s1 = float(grid.step_lo.min()), float(grid.step_hi.max())
    late = es >= s1 - late_fraction * max(s1 - s0, 1.0)
    late[-1] = True
    en, em, em2 = eg.merge(late)
    tn, tm, tm2 = grid.merge(np.unique(ti[late]))
    with np.errstate(invalid="ignore", divide="ignore"):
        cols = {"eval_late_mean": em, "eval_gap": (em - tm) / tm}
    ok = (en > 1) & (tn > 1) & np.isfinite(em) & np.isfinite(tm)
    w = np.where(ok, weights, 0.0)
    if w.sum() <= 0:
        return series, EvalSummary(eg.W, int(es[late].min()), None, None, None, None, None), cols
    w = w / w.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        var_e = np.where(ok, em2 / (en - 1) / en, 0.0)
        var_t = np.where(ok, tm2 / (tn - 1) / tn, 0.0)
    T = float(np.sum(w * np.where(ok, tm, 0.0)))
    gapb = np.where(ok, em - tm, 0.0)
    gap = float(np.sum(w * gapb))
    se = math.sqrt(float(np.sum(w * w * (var_e + var_t))))
    # per eval window: aggregate eval level and gap (same weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        have = (eg.n > 0) & (grid.n[ti] > 0) & ok[None, :]
        ww = np.where(have, w[None, :], 0.0)
        wsum = ww.sum(axis=1)
        e_lvl = (ww * np.where(have, eg.mean, 0.0)).sum(axis=1) / wsum
        t_lvl = (ww * np.where(have, grid.mean[ti], 0.0)).sum(axis=1) / wsum
        g_win = (e_lvl - t_lvl) / t_lvl
    good = np.isfinite(e_lvl) & np.isfinite(g_win)
    # "above its best": the late level against the best stretch of as many consecutive evaluations,
    # like against like (a late average over one lucky point would call a loss that fell at every
    # evaluation "15% above its best" at its own newest step)
    eval_rise = best = None
    gi = np.flatnonzero(good)
    if gi.size:
        k = int(min(max(int(np.sum(late & good)), 1), gi.size))
        blocks = np.convolve(e_lvl[gi], np.ones(k) / k, mode="valid")
        j = int(np.argmin(blocks))
        best = int(gi[j + k - 1])
        if blocks[j] > 0:
            eval_rise = max(float(blocks[-1] / blocks[j] - 1.0), 0.0)
    gap_share = gap / T if T > 0 else None
    # growth since mid-training: early eval windows compare an end-of-window model with a window mean
    # that lags it while the loss falls fast, so the gap there is biased low
    mid = int(np.argmin(np.abs(es - (s0 + s1) / 2)))
    gap_growth = gap_share - float(g_win[mid]) if np.isfinite(g_win[mid]) and gap_share is not None else None
    # bins that carry the gap: significant, largest contributions covering 80% of it
    with np.errstate(invalid="ignore", divide="ignore"):
        zb = gapb / np.sqrt(var_e + var_t)
    contrib = np.where(ok & (zb > 3) & (gapb > 0), w * gapb, 0.0)
    order = np.argsort(-contrib)
    worst = []
    if contrib.sum() > 0:
        acc = np.cumsum(contrib[order]) / contrib.sum()
        worst = sorted(int(b) for b in order[: int(np.searchsorted(acc, 0.8)) + 1] if contrib[b] > 0)
    return series, EvalSummary(
        n_windows=eg.W, late_from_step=int(es[late].min()), gap_share=json_float(gap_share),
        gap_z=json_float(gap / se) if se > 0 else None, eval_rise=json_float(eval_rise),
        best_step=int(es[best]) if best is not None else None, gap_growth=json_float(gap_growth),
        worst_bins=tuple(worst),
    ), cols


def _ema(run: Run, grid: _Grid, weights, late_fraction) -> EmaSummary:
    """EMA against live weights on held-out data at the same steps (and, for context only, against train)."""
    nb = run.process.num_bins
    mg = _Grid.from_bins(run.ema_bins, nb)
    eg = _Grid.from_bins(run.eval_bins, nb)
    if mg.W == 0:
        return EmaSummary(0, 0, False, None, None, None, None, None)
    common = np.intersect1d(mg.step_hi, eg.step_hi) if eg.W else np.zeros(0, np.int64)
    ema_vs_train = None
    if grid.W:
        ti = _match_train(grid, mg.step_hi)
        lvl_m, lvl_t = _levels(mg.n, mg.mean, grid.n[ti], grid.mean[ti], weights)
        ok = np.isfinite(lvl_m) & np.isfinite(lvl_t) & (lvl_t > 0)
        if ok.any():
            ema_vs_train = float(lvl_m[ok][-1] / lvl_t[ok][-1] - 1.0)
    if not common.size:
        return EmaSummary(mg.W, 0, eg.W == 0, None, None, None, None, json_float(ema_vs_train))
    im = np.searchsorted(mg.step_hi, common)
    ie = np.searchsorted(eg.step_hi, common)
    s0 = float(grid.step_lo.min()) if grid.W else float(common.min())
    s1 = float(grid.step_hi.max()) if grid.W else float(common.max())
    late = common >= s1 - late_fraction * max(s1 - s0, 1.0)
    late[-1] = True
    mn, mm, mm2 = _Grid.merge(mg, im[late])
    en, emu, em2 = _Grid.merge(eg, ie[late])
    ok = (mn > 1) & (en > 1) & np.isfinite(mm) & np.isfinite(emu)
    w = np.where(ok, weights, 0.0)
    gap = gap_z = None
    if w.sum() > 0:
        w = w / w.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.where(ok, mm2 / (mn - 1) / mn + em2 / (en - 1) / en, 0.0)
        E = float(np.sum(w * np.where(ok, emu, 0.0)))
        d = float(np.sum(w * np.where(ok, mm - emu, 0.0)))
        se = math.sqrt(float(np.sum(w * w * var)))
        gap = d / E if E > 0 else None
        gap_z = d / se if se > 0 else None
    lm, le = _levels(mg.n[im], mg.mean[im], eg.n[ie], eg.mean[ie], weights)
    fin = np.flatnonzero(np.isfinite(lm) & np.isfinite(le) & (le > 0))
    first = float(lm[fin[0]] / le[fin[0]] - 1.0) if fin.size else None
    return EmaSummary(mg.W, int(common.size), False, int(common[late].min()), json_float(gap), json_float(gap_z),
                      json_float(first), json_float(ema_vs_train))


def _levels(na, ma, nb_, mb, weights) -> tuple[np.ndarray, np.ndarray]:
    """Per row: sampler-weighted levels of two (rows, bins) mean tables over the bins both hold."""
    have = (na > 0) & (nb_ > 0) & np.isfinite(ma) & np.isfinite(mb)
    w = np.where(have, weights[None, :], 0.0)
    ws = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = (w * np.where(have, ma, 0.0)).sum(axis=1) / ws
        b = (w * np.where(have, mb, 0.0)).sum(axis=1) / ws
    return np.where(ws > 0, a, np.nan), np.where(ws > 0, b, np.nan)


def _timesteps(run: Run, steps: pl.DataFrame) -> TimestepSummary:
    if steps.height == 0 or "bad_t" not in steps.columns:
        return TimestepSummary(False, 0, None, 0, None, None, None, None, None)
    bad = steps["bad_t"].fill_null(0).cast(pl.Int64).to_numpy()
    cnt = steps["count"].fill_null(0).cast(pl.Int64).to_numpy()
    nf = steps["nonfinite"].fill_null(0).cast(pl.Int64).to_numpy()
    total = int(bad.sum() + cnt.sum() + nf.sum())
    lo = float(steps["t_min"].cast(pl.Float64).min()) if "t_min" in steps.columns and steps["t_min"].drop_nulls().len() else None
    hi = float(steps["t_max"].cast(pl.Float64).max()) if "t_max" in steps.columns and steps["t_max"].drop_nulls().len() else None
    nb = int(bad.sum())
    idx = np.flatnonzero(bad > 0)
    valid, cause = timestep_cause(run.process, lo, hi)
    return TimestepSummary(
        available=True, bad_samples=nb, share=nb / total if total else None, bad_steps=int(idx.size),
        first_step=int(steps["step"][int(idx[0])]) if idx.size else None, t_min=json_float(lo), t_max=json_float(hi),
        valid=valid, cause=cause if nb else None,
    )


def _grad_flow(steps: pl.DataFrame, late_fraction: float, th: Thresholds) -> GradFlowSummary:
    floor = th.dead_grad_floor
    none = GradFlowSummary(0, 0, None, None, None, None, floor)
    if steps.height == 0 or "grad_norm" not in steps.columns:
        return none
    g = _floats(steps["grad_norm"])
    loss = _floats(steps["loss"])
    ok = np.isfinite(g) & np.isfinite(loss) & (steps["count"].fill_null(0).to_numpy() > 0)
    if not ok.any():
        return none
    step = steps["step"].to_numpy()
    dead = ok & (np.abs(g) <= floor)
    s0, s1 = float(step.min()), float(step.max())
    late = ok & (step >= s1 - late_fraction * max(s1 - s0, 1.0))
    d = np.flatnonzero(dead)
    lr = _floats(steps["lr"]) if "lr" in steps.columns else np.full(step.size, np.nan)
    has_lr = np.isfinite(lr)
    z = np.flatnonzero(has_lr & (lr == 0))
    return GradFlowSummary(
        steps=int(ok.sum()), dead_steps=int(d.size), share=float(d.size / ok.sum()),
        late_share=float(dead[late].sum() / late.sum()) if late.any() else None,
        first_step=int(step[d[0]]) if d.size else None, median=float(np.median(g[ok])), floor=floor,
        lr_steps=int(has_lr.sum()), lr_zero_steps=int(z.size), lr_zero_first=int(step[z[0]]) if z.size else None,
    )


def _early(lc: Lifecycle | None, loss: LossSummary, th: Thresholds) -> str | None:
    """Why findings that need a converged loss are provisional on this reading; None: judge them as final.

    A run that has not finished is early while it is short of ``early_progress`` of
    its planned steps; without a plan, while the trend stretch has too few windows
    to tell whether the loss still falls, or (for a logger that records closes) while
    the loss still falls significantly (the 95% interval of its change over the trend
    stretch lies below 0). A finished run is judged as it stands, unless it closed
    short of ``early_progress`` of its plan: a model trained for a sixth of its plan
    is still far from where it was meant to converge.
    """
    if lc is None:
        return None
    if lc.state == "finished":
        if lc.stopped_short and lc.progress < th.early_progress:  # closed on purpose, but far short of its plan
            return (f"the run stopped at {100 * lc.progress:.0f}% of its plan (closed at step {lc.last_step:,} of "
                    f"{lc.planned_steps:,} planned)")
        return None
    where = {"in_progress": "is in progress", "ended": "ended without a close", "failed": "failed",
             "unknown": "is not known to have finished"}[lc.state]
    if lc.planned_steps and lc.progress is not None:
        if lc.progress < th.early_progress:
            return (f"the run {where} at step {lc.last_step:,} of {lc.planned_steps:,} planned "
                    f"({100 * lc.progress:.0f}%)")
        return None
    if loss.trend_rel is None:
        return f"the run {where} with too few windows yet to tell whether its loss still falls"
    if lc.recorded and loss.trend_hi is not None and loss.trend_hi < 0:
        return (f"the run {where} without a planned length, and its loss still falls "
                f"({100 * loss.trend_rel:.0f}% over steps {loss.trend_from:,}-{loss.trend_to:,})")
    return None


# ----------------------------------------------------------------------------
# Heatmap series and run info


def _bin_series(grid: _Grid, lg: np.ndarray, max_rows: int) -> pl.DataFrame:
    """Windows coarsened to at most `max_rows` time rows, per bin: count, mean, std, excess over the Gaussian L*."""
    nb = grid.n.shape[1]
    if grid.W == 0:
        return pl.DataFrame(schema={"step_lo": pl.Int64, "step_hi": pl.Int64, "bin": pl.Int32, "count": pl.Int64,
                                    "mean": pl.Float64, "std": pl.Float64, "excess": pl.Float64})
    k = min(grid.W, max(int(max_rows), 1))
    starts = stats.batch_starts(grid.W, k)
    m = stats.coarsen_moments(grid.n, grid.mean, grid.m2, starts, axis=0)
    lo = grid.step_lo[starts]
    hi = np.maximum.reduceat(grid.step_hi, starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(m.var)
    return pl.DataFrame({
        "step_lo": np.repeat(lo, nb).astype(np.int64),
        "step_hi": np.repeat(hi, nb).astype(np.int64),
        "bin": np.tile(np.arange(nb), k).astype(np.int32),
        "count": m.count.ravel().astype(np.int64),
        "mean": pl.Series(m.mean.ravel(), nan_to_null=True),
        "std": pl.Series(std.ravel(), nan_to_null=True),
        "excess": pl.Series((m.mean - lg[None, :]).ravel(), nan_to_null=True),
    })


def _run_info(run: Run, grid: _Grid, problems: list[str]) -> RunInfo:
    s = run.steps
    meta = run.meta
    return RunInfo(
        name=run.name,
        path=str(run.path),
        run_id=str(meta.get("run_id", "")),
        process=run.process.kind,
        prediction=run.process.prediction,
        num_bins=run.process.num_bins,
        num_timesteps=run.process.num_timesteps,
        first_step=int(s["step"].min()) if s.height else None,
        last_step=int(s["step"].max()) if s.height else None,
        steps_logged=s.height,
        windows=grid.W,
        eval_windows=int(run.eval_bins["step_lo"].n_unique()) if run.eval_bins.height else 0,
        probe_steps=int(run.probes["step"].n_unique()) if run.probes.height else 0,
        probe_every=meta.get("probe_every"),
        window=meta.get("window"),
        segments=int(run.segments.height),
        ranks=len(run.ranks),
        data_stats=statistics_source(meta),
        empirical_optimum=run.optimum is not None and run.optimum.height > 0,
        problems=tuple(str(p) for p in run.problems) + tuple(problems),
    )


__all__ = [
    "BIN_COLUMNS", "Analysis", "ClipSummary", "EmaSummary", "EvalSummary", "GradFlowSummary", "TimestepSummary", "LossSummary", "NonfiniteSummary", "Phases",
    "ProbeSummary", "ProfileSummary", "RunInfo", "ScheduleInfo", "SpikeSummary", "analyze",
]
