"""One scale for runs with different prediction targets: the loss in units of its own L*.

Why: an epsilon-prediction loss and a v-prediction loss of the same denoiser
differ by orders of magnitude at the same noise level (at low noise the eps loss
is ~1 and the x0 loss ~1e-4), so comparing them bin by bin says nothing.

What is exact: write x_t = a x0 + s eps and the target y = c_x x0 + c_e eps.
For any network, the error of its target and the error of the x0 it implies are
proportional at each t: y_hat - y = (c_x - c_e a / s)(x0_hat - x0). So the
per-sample loss of every target is f_y(t) times the x0 error, and the same holds
for the best possible loss: L*_y(t) = f_y(t) L*_x0(t). Their ratio
loss_y(t) / L*_y(t) = loss_x0(t) / L*_x0(t) does not depend on the target. With
the Gaussian L* bound of run.json it is "how many times the best linear
denoiser's loss": 1 is as good as the best linear denoiser, below 1 is better.

What is approximate: the logger keeps per-bin statistics, not per-t ones, so a
bin's ratio is mean(loss_y) / mean(L*_y) over the bin's timesteps. That equals
the per-t ratio when the ratio is constant across the bin; otherwise the two
targets weight the bin's timesteps differently (by f_y(t)). ``lstar_spread``
per bin says how much L*_y varies inside the bin (max/min over its timesteps):
near 1 the bin's ratio is target-independent whatever the model does; large
spreads (eps at the lowest noise levels) mean the conversion leans on the ratio
being smooth in t. :func:`conversion_notes` states both.

The converted run keeps its schedule, bins and steps; bins' mean, m2, min and
max are divided by the bin's L* (m2 by its square: exact for sufficient
statistics); the per-step loss, a mix of noise levels with no common unit, is
dropped (null), so checks that need it say so instead of comparing mixed units.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import polars as pl

from diffaudit.errors import MismatchError
from diffaudit.load import Run
from diffaudit.optimum import gaussian_optimal_loss
from diffaudit.reference import lstar_statistics, reference_lstar
from diffaudit.words import bin_ranges

UNIT = "lstar"  # run.meta["unit"] of a converted run
COMMON_PREDICTION = "loss / Gaussian L* (target-independent)"


@dataclass(frozen=True)
class Conversion:
    """How one run was put in L* units."""

    run: str
    prediction: str  # the run's own target
    lstar: tuple[float, ...]  # per bin, in the run's own units (bin average)
    lstar_spread: tuple[float, ...]  # per bin: max / min of L*(t) over the bin's timesteps


def _lstar_per_bin(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """The run's Gaussian L* per bin (its reference) and, per bin, max / min of L*(t) over the bin's timesteps."""
    kw = lstar_statistics(run.meta)
    if kw is None:
        raise MismatchError(f"{run.path}: comparing in L* units needs the data statistics in run.json "
                            f"(data_var or data_spectrum; see diffaudit.datastats.data_statistics)")
    ref = reference_lstar(run)
    if ref.problem:
        raise MismatchError(f"{run.path}: {ref.problem}")
    p = run.process
    lstar = ref.gaussian
    spread = np.ones(p.num_bins)
    for b in range(p.num_bins):
        t, _ = p.bin_nodes(b)
        a, s = p.alpha_sigma(t)
        v = np.asarray(gaussian_optimal_loss(a, s, prediction=p.prediction, sigma_data=p.sigma_data, **kw))
        v = v[np.isfinite(v) & (v > 0)]
        spread[b] = float(v.max() / v.min()) if v.size else np.nan
    return lstar, spread


def in_lstar_units(run: Run) -> tuple[Run, Conversion]:
    """The run with each bin's loss statistics divided by that bin's Gaussian L* (its own target's)."""
    if run.meta.get("unit") == UNIT:
        raise MismatchError(f"{run.path}: already in L* units")
    if run.process.kind == "vp" and run.schedule is None:
        raise MismatchError(f"{run.path}: comparing in L* units needs the run's schedule (schedule.parquet)")
    lstar, spread = _lstar_per_bin(run)
    if not np.all(np.isfinite(lstar) & (lstar > 0)):
        bad = np.flatnonzero(~(np.isfinite(lstar) & (lstar > 0)))
        raise MismatchError(f"{run.path}: L* is zero or undefined in bin(s) {', '.join(map(str, bad[:8]))}; "
                            f"its losses cannot be put in L* units there")
    bins = _attach(run.bins, lstar)
    cols = [pl.col(c) / pl.col("_L") for c in ("mean", "min", "max", "wmean") if c in bins.columns]
    if "m2" in bins.columns:
        cols.append(pl.col("m2") / pl.col("_L") ** 2)
    bins = bins.with_columns(cols).with_columns(
        [pl.col(c).cast(run.bins.schema[c]) for c in ("mean", "m2", "min", "max", "wmean") if c in bins.columns]
    ).drop("_L")
    steps = run.steps.with_columns(pl.lit(None, pl.Float32).alias("loss"), pl.lit(None, pl.Float32).alias("wloss"))
    meta = {**run.meta, "unit": UNIT, "prediction_original": run.meta.get("prediction"),
            "prediction": COMMON_PREDICTION, "data_var": None, "data_spectrum": None}
    out = dataclasses.replace(run, meta=meta, bins=bins, steps=steps, optimum=None)
    return out, Conversion(run=str(run.path), prediction=str(run.process.prediction),
                           lstar=tuple(float(v) for v in lstar), lstar_spread=tuple(float(v) for v in spread))


def _attach(bins: pl.DataFrame, lstar: np.ndarray) -> pl.DataFrame:
    table = pl.DataFrame({"bin": np.arange(lstar.size, dtype=np.int32), "_L": lstar})
    return bins.join(table, on="bin", how="left").select([*bins.columns, "_L"])


def conversion_notes(conversions: list[Conversion], *, spread_warn: float = 2.0) -> list[str]:
    """What the common unit assumed, in a few lines for the verdict's notes."""
    preds = sorted({c.prediction for c in conversions})
    notes = [f"compared in L* units (loss / the Gaussian L* of each run's own target, {', '.join(preds)}): "
             f"exact per timestep; per bin exact when the ratio is constant across the bin's timesteps"]
    worst = {}
    for c in conversions:
        for b, s in enumerate(c.lstar_spread):
            if np.isfinite(s) and s >= spread_warn:
                worst[b] = max(worst.get(b, 0.0), s)
    if worst:
        bins = sorted(worst)
        notes.append(f"L* varies {max(worst.values()):.3g}x inside bin(s) {bin_ranges(bins)}: there the two targets weight "
                     f"the bin's timesteps differently, and the comparison leans on the ratio being smooth in t")
    notes.append("steps to reach a loss level: not compared (the per-step loss mixes noise levels and has no common unit)")
    return notes
