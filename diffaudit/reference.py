"""The reference L* of a run: the Bayes-optimal loss each noise bin is measured against.

Two references exist, and every part of diffaudit (the report's per-bin table and
findings, the gate's excess check, ``diffaudit optimum``'s table, the L* unit of
``compare --unit lstar``) reads them through :func:`reference_lstar`:

* the **Gaussian L*** (:func:`diffaudit.optimum.bin_gaussian_optimal_loss`): the
  loss of the best *linear* denoiser, computed from the data statistics the run
  recorded in run.json, its covariance spectrum (``data_spectrum``) when given,
  else the mean per-element variance (``data_var``). It is an upper bound on the
  true L* for any data with that covariance, exact for Gaussian data. When both
  statistics are missing it is unknown (NaN); when they are present but unusable
  (a negative variance, a schedule it cannot be computed on) it is NaN and
  :attr:`Reference.problem` says why, in one line;
* the **empirical L*** of the training set (``diffaudit optimum``, the run's
  ``optimum`` parts): the memorization floor, with its Monte Carlo standard
  error. Rows for bins the process does not have are ignored.

A run converted to L* units (:mod:`diffaudit.units`) carries no data statistics:
its loss already is the ratio, and its references are NaN.

The empirical L* is only as good as the samples it is computed on, so the checks
that tie them to the run live here too: :func:`check_training_samples` (their
dimension and scale against run.json) and :func:`above_gaussian_bound` (bins
whose empirical L* exceeds the Gaussian one, which the run's training data cannot).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from diffaudit.errors import DataError, DiffauditError
from diffaudit.load import Run
from diffaudit.optimum import bin_gaussian_optimal_loss, check_data, mean_variance

SCALE_TOLERANCE = 0.25  # the training samples' variance may differ from the run's data_var by this share
ABOVE_BOUND_SE = 4.0  # the empirical L* is flagged above the Gaussian bound by this many standard errors ...
ABOVE_BOUND_REL = 0.02  # ... and this share of the bound (at high noise the two agree to a fraction of a percent)
ABOVE_BOUND_MIN_SAMPLES = 16  # below this many samples per bin the standard error is too rough to flag anything


@dataclass(frozen=True, eq=False)
class Reference:
    """A run's L* per noise bin (NaN where unknown) and where it came from."""

    gaussian: np.ndarray  # Gaussian L* per bin
    empirical: np.ndarray  # empirical L* per bin (training set, `diffaudit optimum`)
    empirical_se: np.ndarray  # its standard error
    source: str  # what the Gaussian L* is built from: "data_spectrum", "data_var" or "none"
    problem: str | None = None  # why the Gaussian L* is NaN although statistics were given

    @property
    def has_gaussian(self) -> bool:
        return bool(np.isfinite(self.gaussian).any())

    @property
    def has_empirical(self) -> bool:
        return bool(np.isfinite(self.empirical).any())


def lstar_statistics(meta: dict) -> dict | None:
    """The keyword the Gaussian L* takes from run.json: {"spectrum": ...} or {"data_var": ...}; None if neither.
    (Not :func:`diffaudit.datastats.data_statistics`, which computes those numbers from training samples.)"""
    if meta.get("data_spectrum") is not None:
        return {"spectrum": np.asarray(meta["data_spectrum"], np.float64)}
    if meta.get("data_var") is not None:
        return {"data_var": float(meta["data_var"])}
    return None


def statistics_source(meta: dict) -> str:
    """'data_spectrum', 'data_var' or 'none': what the run's Gaussian L* is built from."""
    if meta.get("data_spectrum") is not None:
        return "data_spectrum"
    return "data_var" if meta.get("data_var") is not None else "none"


def data_variance(meta: dict) -> float | None:
    """The mean per-element variance of the run's data (the spectrum's mean when a spectrum is given)."""
    stats = lstar_statistics(meta)
    if stats is None:
        return None
    return float(np.mean(stats["spectrum"])) if "spectrum" in stats else stats["data_var"]


def reference_lstar(run: Run) -> Reference:
    """The run's Gaussian and empirical L* per noise bin (see the module text)."""
    nb = run.process.num_bins
    gaussian, problem = np.full(nb, np.nan), None
    try:
        stats = lstar_statistics(run.meta)
        if stats is not None:
            gaussian = np.asarray(bin_gaussian_optimal_loss(run.process, **stats), np.float64)
    except (DiffauditError, ValueError, TypeError) as e:
        problem = f"Gaussian L* not computed: {e}"
    empirical, se = np.full(nb, np.nan), np.full(nb, np.nan)
    if run.optimum is not None and run.optimum.height:
        o = run.optimum.filter((pl.col("bin") >= 0) & (pl.col("bin") < nb))
        b = o["bin"].to_numpy().astype(np.int64)
        empirical[b] = o["loss_opt"].cast(pl.Float64).fill_null(np.nan).to_numpy()
        se[b] = o["stderr"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    return Reference(gaussian, empirical, se, statistics_source(run.meta), problem)


# ----------------------------------------------------------------------------
# The training set the empirical L* is computed on


def check_training_samples(x, run: Run, *, name: str) -> tuple[np.ndarray, list[str]]:
    """The samples as (N, d), checked against the run, and warnings.

    Raises DataError when their dimension is not the run's ``data_dim`` (checked
    from the shape first) or a value is NaN/Inf. Warns when their per-element
    variance is more than :data:`SCALE_TOLERANCE` off the run's data statistics:
    the scaling must be the one the model saw.
    """
    x = np.asarray(x) if not hasattr(x, "shape") else x
    expected = run.meta.get("data_dim")
    dim = int(np.prod(x.shape[1:])) if len(x.shape) > 1 else 1
    if expected is not None and dim != int(expected):
        raise DataError(f"{name}: training samples have dimension {dim} but the run's data has {int(expected)}")
    try:
        x = check_data(x, name="training samples")
    except DataError as e:
        raise DataError(f"{name}: {e}") from None
    warnings = []
    ref = data_variance(run.meta)
    if ref is not None and ref > 0:
        v = mean_variance(x)
        if abs(v / ref - 1) > SCALE_TOLERANCE:
            warnings.append(f"{name}: the samples' variance per element is {v:.4g} but the run's data had {ref:.4g}; "
                            "are these the training samples, scaled as in training?")
    return x, warnings


def above_gaussian_bound(loss_opt, stderr, gaussian, samples_per_bin: int) -> np.ndarray:
    """Bins whose empirical L* is clearly above the Gaussian L*, which no data with the run's covariance can
    exceed (the best linear denoiser reaches it, so the posterior mean cannot do worse): a sign that the
    samples are not the run's training data, or not scaled as in training."""
    if samples_per_bin < ABOVE_BOUND_MIN_SAMPLES:
        return np.zeros(0, np.int64)
    g = np.asarray(gaussian, np.float64)
    with np.errstate(invalid="ignore"):
        return np.flatnonzero(np.asarray(loss_opt) - ABOVE_BOUND_SE * np.asarray(stderr) > g * (1 + ABOVE_BOUND_REL))
