"""`diffaudit optimum`: the empirical L* of the training set, stored in the run for `report` and `compare`."""

from __future__ import annotations

import hashlib
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from diffaudit import __version__
from diffaudit import optimum as opt
from diffaudit import runformat as rf
from diffaudit.cli import any_stdout, main, output_option, write_output
from diffaudit.datafile import load_samples
from diffaudit.errors import DiffauditError
from diffaudit.load import load_run
from diffaudit.present.document import dumps, optimum_document
from diffaudit.present.text import optimum_table
from diffaudit.reference import above_gaussian_bound, check_training_samples, reference_lstar

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


# ----------------------------------------------------------------------------
# The command


@main.command()
@click.argument("data", type=click.Path(path_type=str))
@click.option("--run", "run_path", required=True, type=click.Path(path_type=str),
              help="The run directory to add the result to (an exported .parquet is read-only).")
@click.option("--samples-per-bin", default=opt.DEFAULT_SAMPLES_PER_BIN, show_default=True, type=click.IntRange(2, None),
              help="Monte Carlo samples (t, x0, eps) per noise bin; the standard error falls as 1/sqrt of it.")
@click.option("--seed", default=opt.DEFAULT_SEED, show_default=True, type=click.IntRange(0, None),
              help="Same seed, same (t, x0, eps) draws, for every estimator and device.")
@click.option("--estimator", type=click.Choice(opt.ESTIMATORS),
              help="exact: every posterior over all N samples; stratified: x0, its nearest candidates and a "
                   "weighted random subset (cdol, dol: for comparison). Default: exact when N*d <= "
                   f"{opt.EXACT_LIMIT:.0e}, else stratified.")
@click.option("--subset", type=click.IntRange(1, None),
              help=f"Subsampled estimators: points per random subset (default min(N, {opt.DEFAULT_SUBSET})).")
@click.option("--key", help="The array of an .npz file that holds the samples (needed when it holds several).")
@click.option("--column", help="The Parquet column that holds the samples (a list column, one sample per row).")
@click.option("--device", help="torch device, e.g. cuda, cuda:1 or cpu. Default: a GPU when torch sees one, else numpy.")
@click.option("--dry-run", is_flag=True, help="Check the inputs and print what would be computed; add nothing to the run.")
@output_option("--json", "json_out", what="the per-bin result (or, with --dry-run, the plan) as JSON")
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
    echo = lambda msg="": click.echo(msg, err=any_stdout(json_out))  # noqa: E731  (stdout stays JSON with --json -)
    if Path(run_path).is_file():
        raise DiffauditError(
            f"{run_path}: an exported .parquet run is read-only; give the run directory it was exported from"
        )
    run = load_run(run_path, allow_empty=True)  # L* needs the schedule only, not logged steps
    process = run.process
    x, problems = check_training_samples(load_samples(data, key=key, column=column), run, name=data)
    n, d = x.shape
    estimator, why = opt.choose_estimator(estimator, subset, n, d)
    backend = opt.backend_name(device)
    k = n if estimator == "exact" else min(n, subset or opt.DEFAULT_SUBSET)
    for p in problems:  # the scaling must be the one the model saw: checked against what the logger recorded
        click.echo(f"warning: {p}", err=True)
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
        if json_out:
            write_output(json_out, dumps(optimum_document(run, info, process, None, None, None)), "JSON plan")
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

    ref = reference_lstar(run)
    bound = ref.gaussian if ref.has_gaussian else None
    if ref.problem:
        click.echo(f"warning: {ref.problem}", err=True)
    if not quiet:
        echo(f"computed in {seconds:.2f} s")
        for line in optimum_table(process, result, bound):
            echo(line)
    if bound is not None:
        above = above_gaussian_bound(result.loss_opt, result.stderr, bound, samples_per_bin)
        if above.size:
            click.echo(f"warning: in bin(s) {', '.join(map(str, above))} L*_emp is above the Gaussian bound, which "
                       "no data with the run's covariance can exceed: are these the training samples, scaled as "
                       "in training?", err=True)
    echo(f"wrote {part}")
    if json_out:
        doc = optimum_document(run, {**info, "seconds": round(seconds, 3)}, process, result, bound, str(part))
        write_output(json_out, dumps(doc), "JSON result")
