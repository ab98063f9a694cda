"""``diffaudit calibrate``: measure how much healthy seeds of one configuration differ, for the gate.

One run per side cannot see how another seed would have landed; the gate then
leans on an allowance. :func:`calibrate` measures it on three or more healthy
runs of the user's own configuration that differ only in their seed, exactly as
the gate reads runs:

* the runs are matched on the steps they all logged and regrouped into shared
  blocks; the late window is the gate's (``last:20%``, widened to 8 blocks);
* each run's late level per noise bin, relative to the runs' mean, less its own
  progress lag (:func:`diffaudit.gate.adjusted_levels`): its *deviation*;
* per bin, the deviations' variance pooled across bins with shrinkage towards a
  smooth profile over the noise levels (:func:`diffaudit.stats.pooled_spread`),
  so 3 runs give a bin far more than 2 degrees of freedom where the bins agree;
* the mean over bins (each bin weighted by its precision, as the gate weighs
  it), the steps to reach a loss level (at the level where the
  seeds agree best, :func:`diffaudit.gate.speed_level`) and the clip rate's
  log-odds: their sd over runs, on runs - 1 degrees of freedom (a mean over bins
  is one number per run: pooling cannot give it more).

The result is an :class:`~diffaudit.allowance.Allowance` that says what it was
measured on; :mod:`diffaudit.allowance` writes and reads it.
"""

from __future__ import annotations

import math
import warnings
from datetime import datetime, timezone

import numpy as np

from diffaudit import __version__, gate, stats
from diffaudit.allowance import Allowance, process_fingerprint
from diffaudit.errors import DiffauditError, InconclusiveError, MismatchError
from diffaudit.gate_options import MAX_LAG, MIN_WINDOWS, TOLERANCE, WINDOW, parse_window
from diffaudit.load import Run
from diffaudit.configs import flat_config, seed_like, seed_values, varying_config
from diffaudit.words import process_words

MIN_RUNS = 3  # fewer healthy seeds cannot give a spread worth the name
CLIP_EPS = 0.5  # add-half smoothing of the clip count per run before taking log-odds (a rate of 0 or 1 stays finite)


def calibrate(runs: list[Run], *, window=WINDOW, min_windows: int = MIN_WINDOWS, max_lag: float = MAX_LAG,
              tolerance: float = TOLERANCE, force: bool = False) -> Allowance:
    """The seed allowance measured on ``runs`` (3 or more healthy seeds of one configuration).

    Raises DiffauditError with fewer than 3 runs or runs whose config differs in more than a seed (unless
    ``force``), MismatchError for runs of different processes, InconclusiveError when they share too few steps.
    """
    if len(runs) < MIN_RUNS:
        raise DiffauditError(f"calibrate needs {MIN_RUNS} or more healthy runs of one configuration (different "
                             f"seeds); got {len(runs)}")
    ref = runs[0]
    for r in runs[1:]:
        diff = gate._difference(ref.process, r.process)
        if diff is not None:
            raise MismatchError(f"{ref.name} ({process_words(ref.process)}) and {r.name} ({process_words(r.process)}) "
                                f"differ: {diff}; calibrate on runs of one configuration")
    varying = varying_config(runs)
    if varying and not force:
        shown = "; ".join(f"{k}: {', '.join(map(repr, dict.fromkeys(map(_hashable, v))))}"
                          for k, v in list(varying.items())[:4])
        more = f" (and {len(varying) - 4} more)" if len(varying) > 4 else ""
        raise DiffauditError(f"the runs differ in more than a seed: {shown}{more}; calibrate on seeds of one "
                             "configuration, or pass --force")
    overlap = gate._overlap(runs)
    if overlap is None:
        raise InconclusiveError("the runs have no logged steps in common")
    lo, hi = overlap
    win = parse_window(window)
    notes: list[str] = []
    grid = gate._block_grid(runs, lo, hi)
    sel = gate._select_window(grid, win, lo, hi, min_windows, notes)
    if sel is None:
        raise InconclusiveError(f"no late window: {'; '.join(notes) or 'no matched blocks'}")
    R, nb = len(runs), ref.process.num_bins
    span = float(hi - lo + 1)
    x = 0.5 * (grid.start + np.maximum(grid.end, grid.start)).astype(np.float64)
    late, pooled_blocks = gate.late_levels(grid, sel, R)
    sampling = gate.sampling_variance(runs, int(grid.start[sel[0]]), int(min(grid.end[sel[-1]], hi)), nb)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        scale = np.nanmean(sampling, axis=0) / np.nanmean(late, axis=0) ** 2
    sp = level_spreads(late, pooled_blocks, x[sel], span, scale=scale, max_lag=max_lag, tolerance=tolerance)
    spread = sp.pop("pooling")
    level, speed_sd = _speed(runs, lo, hi, grid, sel)
    clip_sd = _clip(runs, lo, hi)
    measured_on = {
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "diffaudit_version": __version__,
        "noise": process_fingerprint(ref.process),
        "steps": {"first": int(lo), "last": int(hi), "matched": int(hi - lo + 1)},
        "window": {"spec": str(win), "first": int(grid.start[sel[0]]), "last": int(min(grid.end[sel[-1]], hi)),
                   "blocks": int(sel.size)},
        "runs": [{"name": r.name, "path": str(r.path.resolve()), "seed": (r.meta.get("config") or {}).get("seed"),
                  "seeds": seed_values(r.meta.get("config") or {})} for r in runs],
        "config": {k: v for k, v in flat_config(ref.meta.get("config") or {}).items()
                   if not seed_like(k) and k not in varying},
        "pooling": {"prior_df": spread.d0, "own_df": spread.d, "effective_bins": spread.n_eff,
                    "profile_degree": spread.degree},
        "forced": sorted(varying) if varying else [],
    }
    return Allowance(
        **sp,
        speed=speed_sd if speed_sd is not None else 0.0, df_speed=float(R - 1), speed_level=level if speed_sd else None,
        clip=clip_sd if clip_sd is not None else 0.0, df_clip=float(R - 1),
        steps=int(hi - lo + 1), source="(not saved)", measured_on=measured_on,
    )


def level_spreads(late: np.ndarray, pooled_blocks: np.ndarray, x: np.ndarray, span: float, *, scale=None,
                  max_lag: float = MAX_LAG, tolerance: float = TOLERANCE) -> dict:
    """The late-loss part of a calibration, from arrays: ``late`` (runs, bins) each run's late level,
    ``pooled_blocks`` (bins, blocks) the runs' mean block curve over the window at block positions ``x``,
    ``span`` matched steps, ``scale`` (bins) each bin's relative sampling variance. Returns the
    :class:`~diffaudit.allowance.Allowance` fields ``mean``, ``df_mean``, ``bins``, ``df_bins``, ``profile``, ``deviations``,
    ``reference``, and ``pooling`` (the :class:`~diffaudit.stats.PooledSpread`).
    InconclusiveError when fewer than 2 bins were sampled by every run."""
    R = late.shape[0]
    pooled, _, adjusted, elastic, falling, _ = gate.adjusted_levels(late, pooled_blocks, x, span, R,
                                                                    max_lag=max_lag, tolerance=tolerance)
    tested = np.isfinite(pooled) & (pooled > 0) & np.isfinite(adjusted).all(axis=0)
    if tested.sum() < 2:
        raise InconclusiveError(f"only {int(tested.sum())} noise bin(s) were sampled by every run in the late window")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a bin no run sampled: NaN, left out
        center = np.where(tested, np.nanmean(adjusted, axis=0), np.nan)
        dev = np.where(tested[None, :], adjusted - center[None, :], np.nan)
    spread = stats.pooled_spread(dev, scale=scale)
    profile = np.where(tested, spread.prior, np.nan)
    # the mean over bins as the gate takes it: each bin weighted by its precision (1 / the smooth profile's variance)
    per_run = stats.weighted_mean_rows(dev, stats.precision_weights(profile, tested))
    # what another run's late levels are measured against, so that a baseline run outside the calibration can
    # count as one more run (diffaudit.gate.with_baseline: its spreads then rest on runs, not runs - 1, df)
    reference = {"late": _floats(pooled), "late_runs": tuple(_floats(row) for row in late), "center": _floats(center),
                 "elasticity": _floats(elastic), "still_falling": [int(k) for k in np.flatnonzero(falling)],
                 "sampling_scale": _floats(np.full(late.shape[1], np.nan) if scale is None else scale),
                 "max_lag": float(max_lag), "tolerance": float(tolerance)}
    return {"mean": float(np.std(per_run, ddof=1)), "df_mean": float(R - 1),
            "bins": _floats(np.sqrt(spread.var)), "df_bins": _floats(spread.df), "profile": _floats(np.sqrt(profile)),
            "deviations": tuple(_floats(row) for row in dev), "reference": reference, "pooling": spread}


def _floats(a) -> tuple:
    return tuple(float(v) for v in np.asarray(a, np.float64))


def _hashable(v):
    return v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)


def _speed(runs, lo, hi, grid, sel) -> tuple[float, float | None]:
    """(level share where the seeds' crossing steps agree best, sd of their log crossing step there)."""
    span = hi - lo + 1
    size = max(1, span // gate.SPEED_BLOCKS)
    nblocks = -(-span // size)
    curves = []
    for r in runs:
        s = gate._steps_in(r, lo, hi)
        if s.height == 0:
            return gate.SPEED_LEVEL, None
        curves.append(gate.block_means(s["step"].to_numpy(), s["loss"].cast(float).to_numpy(), lo, size, nblocks))
    curves = np.array(curves)
    share = gate.speed_level(curves, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pooled = np.nanmean(curves, axis=0)
    fin = np.flatnonzero(np.isfinite(pooled))
    w0 = int(grid.start[sel[0]])
    late_blocks = [i for i in range(nblocks) if lo + i * size >= w0 and np.isfinite(pooled[i])]
    if fin.size < 3 or not late_blocks:
        return share, None
    early, late = float(pooled[fin[0]]), float(np.mean(pooled[late_blocks]))
    if not early > late:
        return share, None
    cross = np.array([gate._crossing(c, late + share * (early - late), size) for c in curves])
    if not (np.isfinite(cross).all() and np.all(cross > 0)):
        return share, None
    return share, float(np.std(np.log(cross), ddof=1))


def _clip(runs, lo, hi) -> float | None:
    """sd over runs of the log-odds of the share of clipped steps; None when a run logged no clip threshold."""
    logits = []
    for r in runs:
        s = gate._steps_in(r, lo, hi)
        if s.height == 0 or "clipped" not in s.columns:
            return None
        c = s["clipped"].drop_nulls().cast(float).to_numpy()
        if c.size == 0:
            return None
        k, n = float(c.sum()), float(c.size)
        logits.append(math.log((k + CLIP_EPS) / (n - k + CLIP_EPS)))
    return float(np.std(logits, ddof=1))
