"""`diffaudit optimum`: the empirical L* of the training set, stored in the run for `report` and `compare`."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np

from diffaudit import __version__
from diffaudit import optimum as opt
from diffaudit import runformat as rf
from diffaudit.cli import main, write_output
from diffaudit.datafile import load_samples
from diffaudit.errors import DataError, DiffauditError
from diffaudit.load import load_run

EXACT_LIMIT = 2e8  # N*d up to which the default estimator is exact (minutes on 2 cores at the default samples)
SCALE_TOLERANCE = 0.25  # warn when the samples' variance is off the run's data_var by more than this share
ABOVE_BOUND_SE = 4.0  # warn when the empirical L* exceeds the Gaussian bound by this many standard errors
ABOVE_BOUND_REL = 0.02  # ... and by this share of the bound (at high noise the two agree to a fraction of a percent)
ABOVE_BOUND_MIN_SAMPLES = 16  # below this the standard error is too rough to flag anything


# ----------------------------------------------------------------------------
# Inputs


def _load_training_samples(data: str, run, key, column) -> np.ndarray:
    """The samples as (N, d), checked against the run: dimension first (from the shape alone), then NaN/Inf."""
    x = load_samples(data, key=key, column=column)
    expected = run.meta.get("data_dim")
    if expected is not None and x.shape[1] != int(expected):
        raise DataError(f"{data}: training samples have dimension {x.shape[1]} but the run's data has {int(expected)}")
    try:
        return opt.check_data(x, name="training samples")
    except DataError as e:
        raise DataError(f"{data}: {e}") from None


def _choose_estimator(estimator, subset, n: int, d: int) -> tuple[str, str]:
    """(estimator, why it was chosen): exact when N*d is small enough, else stratified (also implied by --subset)."""
    size = f"N*d = {n * d:,}"
    if estimator is not None:
        if estimator == "exact" and subset is not None:
            raise DiffauditError("--subset applies to the subsampled estimators (stratified, cdol, dol), not to exact")
        return estimator, "chosen with --estimator"
    if subset is not None:
        return "stratified", "--subset implies a subsampled estimator"
    if n * d <= EXACT_LIMIT:
        return "exact", f"default: {size} <= {EXACT_LIMIT:.0e}"
    return "stratified", f"default: {size} > {EXACT_LIMIT:.0e}; --estimator exact sums all N points"


def _mean_variance(x: np.ndarray) -> float:
    """Per-element variance averaged over elements (what the logger stores as data_var), in float64 pieces."""
    n, d = x.shape
    rows = max(1, (64 << 20) // (8 * d))
    s, s2 = np.zeros(d), np.zeros(d)
    for i in range(0, n, rows):
        c = np.asarray(x[i : i + rows], dtype=np.float64)
        s += c.sum(axis=0)
        s2 += np.einsum("ij,ij->j", c, c)
    mean = s / n
    return float(np.mean(np.maximum(s2 / n - mean * mean, 0.0)))


def _run_variance(meta: dict) -> float | None:
    if meta.get("data_spectrum") is not None:
        return float(np.mean(np.asarray(meta["data_spectrum"], np.float64)))
    return None if meta.get("data_var") is None else float(meta["data_var"])


def _gaussian_bound(run) -> tuple[np.ndarray | None, str | None]:
    """The Gaussian L* per bin from the run's data_spectrum (or data_var), and a warning when it cannot be computed."""
    spec, var = run.meta.get("data_spectrum"), run.meta.get("data_var")
    try:
        if spec is not None:
            return opt.bin_gaussian_optimal_loss(run.process, spectrum=np.asarray(spec, np.float64)), None
        if var is not None:
            return opt.bin_gaussian_optimal_loss(run.process, data_var=float(var)), None
    except (DiffauditError, ValueError, TypeError) as e:
        return None, f"Gaussian L* not computed: {e}"
    return None, None


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------
# Output


class _Progress:
    """tqdm on stderr, made on the first progress(done, total) call (the estimator knows the total)."""

    def __init__(self, enabled: bool, unit: str):
        self.enabled, self.unit, self.bar = enabled, unit, None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="optimum", unit=self.unit, file=sys.stderr, leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _bin_ranges(process) -> list[str]:
    e = process.bin_edges()
    if process.kind == "vp":  # integer timesteps, the upper edge excluded
        return [f"{int(e[b])}-{int(e[b + 1]) - 1}" for b in range(process.num_bins)]
    return [f"{e[b]:.4g}-{e[b + 1]:.4g}" for b in range(process.num_bins)]


def _table(process, result, bound) -> list[str]:
    unit = {"vp": "t", "flow": "t", "edm": "sigma"}[process.kind]
    ranges = _bin_ranges(process)
    head = f"  {'bin':>4}  {unit + ' range':>15}  {'L*_emp ± stderr':>21}"
    if bound is not None:
        head += f"  {'Gaussian L*':>11}"
    lines = [head]
    for b in range(process.num_bins):
        line = f"  {b:>4}  {ranges[b]:>15}  {result.loss_opt[b]:>10.4g} ± {result.stderr[b]:<8.2g}"
        if bound is not None:
            line += f"  {bound[b]:>11.4g}"
        lines.append(line)
    return lines


def _finite(v):
    v = float(v)
    return v if math.isfinite(v) else None


def _json_doc(run, info: dict, process, result, bound, part) -> dict:
    e = process.bin_edges()
    bins = []
    if result is not None:
        for b in range(process.num_bins):
            bins.append({
                "bin": b, "t_lo": float(e[b]), "t_hi": float(e[b + 1]),
                "loss_opt": _finite(result.loss_opt[b]), "stderr": _finite(result.stderr[b]), "n": int(result.n[b]),
                "lstar_gauss": None if bound is None else _finite(bound[b]),
            })  # fmt: skip
    return {"diffaudit_version": __version__, "run": str(run.path), **info, "part": part, "bins": bins}


# ----------------------------------------------------------------------------
# The command


@main.command()
@click.argument("data", type=click.Path(path_type=str))
@click.option("--run", "run_path", required=True, type=click.Path(path_type=str),
              help="The run directory to add the result to (an exported .parquet is read-only).")
@click.option("--samples-per-bin", default=64, show_default=True, type=click.IntRange(2, None),
              help="Monte Carlo samples (t, x0, eps) per noise bin; the standard error falls as 1/sqrt of it.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, None),
              help="Same seed, same (t, x0, eps) draws, for every estimator and device.")
@click.option("--estimator", type=click.Choice(opt.ESTIMATORS),
              help="exact: every posterior over all N samples; stratified: x0, its nearest candidates and a "
                   "weighted random subset (cdol, dol: for comparison). Default: exact when N*d <= 2e8, else stratified.")
@click.option("--subset", type=click.IntRange(1, None),
              help=f"Subsampled estimators: points per random subset (default min(N, {opt.DEFAULT_SUBSET})).")
@click.option("--key", help="The array of an .npz file that holds the samples (needed when it holds several).")
@click.option("--column", help="The Parquet column that holds the samples (a list column, one sample per row).")
@click.option("--device", help="torch device, e.g. cuda, cuda:1 or cpu. Default: a GPU when torch sees one, else numpy.")
@click.option("--dry-run", is_flag=True, help="Check the inputs and print what would be computed; add nothing to the run.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, allow_dash=True, path_type=str),
              help="Write the per-bin result (or, with --dry-run, the plan) as JSON to this file ('-' for stdout).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no table: print only the part written.")
def optimum(data, run_path, samples_per_bin, seed, estimator, subset, key, column, device, dry_run, json_out, quiet):
    """Compute the empirical L* of the training set DATA per noise bin of RUN and store it in RUN.

    L*_emp is the lowest loss any model can reach on these training samples (the
    loss of the exact posterior mean E[x0|x_t] over them, in the run's prediction
    target): the memorization floor that `report` and `compare` then show beside
    the model's loss. DATA is a .npy, .npz or Parquet file of the samples the
    model was trained on, N x ... (flattened to d values each), scaled exactly
    as in training. Every call adds a new part to RUN; the newest is the one
    read, earlier ones are kept.

    \b
    Example:
      diffaudit optimum train_x.npy --run runs/exp1 --samples-per-bin 128
    """
    echo = lambda msg="": click.echo(msg, err=json_out == "-")  # noqa: E731  (stdout stays JSON with --json -)
    if Path(run_path).is_file():
        raise DiffauditError(
            f"{run_path}: an exported .parquet run is read-only; give the run directory it was exported from"
        )
    run = load_run(run_path, allow_empty=True)  # L* needs the schedule only, not logged steps
    process = run.process
    x = _load_training_samples(data, run, key, column)
    n, d = x.shape
    estimator, why = _choose_estimator(estimator, subset, n, d)
    backend = opt._backend("auto", device).name + (f" ({device})" if device else "")
    k = n if estimator == "exact" else min(n, subset or opt.DEFAULT_SUBSET)

    # the scaling must be the one the model saw: compare with what the logger recorded
    ref = _run_variance(run.meta)
    if ref is not None and ref > 0:
        v = _mean_variance(x)
        if abs(v / ref - 1) > SCALE_TOLERANCE:
            click.echo(f"warning: {data}: the samples' variance per element is {v:.4g} but the run's data had "
                       f"{ref:.4g}; are these the training samples, scaled as in training?", err=True)
    info = {
        "data": {"path": str(data), "name": Path(data).name, "n": n, "d": d, "key": key, "column": column},
        "estimator": estimator, "subset_size": k, "samples_per_bin": samples_per_bin, "seed": seed,
        "backend": backend, "dry_run": dry_run,
    }  # fmt: skip
    if not quiet:
        echo(f"run {run.name}  {process.kind}/{process.prediction}, {process.num_bins} noise bins")
        echo(f"data {Path(data).name}: N = {n:,} samples, d = {d:,}")
        echo(f"estimator {estimator} ({why}), {samples_per_bin} samples per bin, seed {seed}, {backend}")

    if dry_run:
        work = process.num_bins * samples_per_bin * k * d
        echo(f"dry run: would compute {process.num_bins} bins x {samples_per_bin} samples x {k:,} points x {d:,} "
             f"values ({work:.2g} multiply-adds) and add an optimum part to {run.path}; nothing written")
        _emit_json(json_out, _json_doc(run, info, process, None, None, None))
        return

    # exact reports each (query block x data chunk); the subsampled estimators each round of samples
    progress = _Progress(not quiet and sys.stderr.isatty(), "chunk" if estimator == "exact" else "round")
    t0 = time.perf_counter()
    try:
        result = opt.bin_empirical_optimal_loss(
            process, x, samples_per_bin=samples_per_bin, seed=seed, estimator=estimator,
            subset_size=subset, device=device, progress=progress,
        )  # fmt: skip
    finally:
        progress.close()
    seconds = time.perf_counter() - t0
    meta = {
        "samples_per_bin": samples_per_bin, "seed": seed, "n_samples": n, "dim": d,
        "data_file": Path(data).name, "data_sha256": _sha256(data), "data_key": key, "data_column": column,
        "backend": backend, "seconds": round(seconds, 3), "diffaudit_version": __version__,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S%z"),
    }  # fmt: skip
    if estimator == "stratified":
        meta["neighbors"] = min(opt.DEFAULT_NEIGHBORS, n - 1)
    try:
        part = rf.write_optimum_part(run.path, result, metadata=meta)
    except OSError as e:
        raise DiffauditError(f"{run.path}: cannot write the optimum part ({e.strerror or e})") from None

    bound, problem = _gaussian_bound(run)
    if problem:
        click.echo(f"warning: {problem}", err=True)
    if not quiet:
        echo(f"computed in {seconds:.2f} s")
        for line in _table(process, result, bound):
            echo(line)
    if bound is not None and samples_per_bin >= ABOVE_BOUND_MIN_SAMPLES:
        # the best linear denoiser reaches the Gaussian L* on any data with the run's covariance, so the
        # posterior mean cannot do worse: L*_emp clearly above it means the data are not the run's
        above = np.flatnonzero(result.loss_opt - ABOVE_BOUND_SE * result.stderr > bound * (1 + ABOVE_BOUND_REL))
        if above.size:
            click.echo(f"warning: in bin(s) {', '.join(map(str, above))} L*_emp is above the Gaussian bound, which "
                       "no data with the run's covariance can exceed: are these the training samples, scaled as "
                       "in training?", err=True)
    echo(f"wrote {part}")
    _emit_json(json_out, _json_doc(run, {**info, "seconds": round(seconds, 3)}, process, result, bound, str(part)))


def _emit_json(json_out, doc) -> None:
    if not json_out:
        return
    text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
    if json_out == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_output(json_out, text, "JSON result")
