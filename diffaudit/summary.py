"""What a run holds, at a glance: coverage, segments, ranks, losses, and recent loss per noise level."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from diffaudit.lifecycle import Lifecycle, lifecycle
from diffaudit.load import Run, merge_moments

MAX_ROWS = 20  # noise-level rows of the recent-loss table (fine bins merged into at most this many)
RECENT_FRACTION = 0.1  # the last share of statistics windows that counts as recent


@dataclass(frozen=True)
class BinRow:
    bin_lo: int  # fine bins [bin_lo, bin_hi) merged into this row
    bin_hi: int
    t_lo: float  # timestep range of those bins (vp: t, flow: t, edm: sigma)
    t_hi: float
    count: int
    mean: float
    std: float


@dataclass(frozen=True)
class RunSummary:
    name: str
    run_id: str
    process: str
    prediction: str
    num_bins: int
    first_step: int | None
    last_step: int | None
    steps_logged: int
    missing_steps: int  # gaps inside [first_step, last_step]
    segments: int
    ranks: int
    restarts: int  # segments beyond one per rank: each a resume
    superseded_rows: int
    problems: list[str]
    nonfinite: int
    clip_rate: float | None
    first_loss: float | None  # median loss of the first 5% of steps
    last_loss: float | None  # median loss of the last 5% of steps
    eval_windows: int  # held-out data, live weights
    ema_windows: int  # EMA weights' eval windows
    probe_steps: int
    recent_from_step: int | None
    recent: list[BinRow]
    lifecycle: Lifecycle  # the run's state as of the summary (finished, failed, in progress, ended)


def summarize(run: Run, *, max_rows: int = MAX_ROWS, recent_fraction: float = RECENT_FRACTION,
              now: float | None = None) -> RunSummary:
    """Summarize a loaded run; ``recent`` merges the last ``recent_fraction`` of windows into <= max_rows bin groups.

    The lifecycle is read at ``now`` (default: the current time)."""
    s = run.steps
    steps = s["step"].to_numpy() if s.height else np.array([], np.int64)
    first = int(steps.min()) if steps.size else None
    last = int(steps.max()) if steps.size else None
    missing = (last - first + 1 - steps.size) if steps.size else 0
    k = max(1, steps.size // 20)
    clip = s["clipped"].drop_nulls() if s.height else pl.Series([], dtype=pl.Boolean)
    tb = run.train_bins
    recent, recent_from = [], None
    if tb.height:
        his = tb["step_hi"].unique().sort().to_numpy()  # polars: np.unique would import numpy.ma (~15 ms)
        cut = his[int(np.floor((1 - recent_fraction) * (his.size - 1)))]
        recent_from = int(tb.filter(pl.col("step_hi") >= cut)["step_lo"].min())
        recent = _coarse_rows(run, tb.filter(pl.col("step_hi") >= cut), max_rows)
    return RunSummary(
        name=run.name,
        run_id=str(run.meta.get("run_id", "")),
        process=run.process.kind,
        prediction=run.process.prediction,
        num_bins=run.process.num_bins,
        first_step=first,
        last_step=last,
        steps_logged=int(steps.size),
        missing_steps=int(missing),
        segments=int(run.segments.height),
        ranks=len(run.ranks),
        restarts=max(int(run.segments.height) - len(run.ranks), 0),
        superseded_rows=run.superseded_rows,
        problems=[str(p) for p in run.problems],
        nonfinite=int(s["nonfinite"].sum()) if s.height else 0,
        clip_rate=float(clip.mean()) if clip.len() else None,
        first_loss=_median(s["loss"].head(k)) if s.height else None,
        last_loss=_median(s["loss"].tail(k)) if s.height else None,
        eval_windows=int(run.eval_bins["step_lo"].n_unique()) if run.eval_bins.height else 0,
        ema_windows=int(run.ema_bins["step_lo"].n_unique()) if run.ema_bins.height else 0,
        probe_steps=int(run.probes["step"].n_unique()) if run.probes.height else 0,
        recent_from_step=recent_from,
        recent=recent,
        lifecycle=lifecycle(run, now=now),
    )


def _coarse_rows(run: Run, bins: pl.DataFrame, max_rows: int) -> list[BinRow]:
    nb = run.process.num_bins
    groups = min(max_rows, nb)
    edges = run.process.bin_edges()
    g = bins.with_columns(((pl.col("bin") * groups) // nb).alias("g"), pl.lit("x").alias("k"))
    merged = merge_moments(g, ["k", "g"]).sort("g")
    rows = []
    for r in merged.iter_rows(named=True):
        lo = (r["g"] * nb + groups - 1) // groups
        hi = ((r["g"] + 1) * nb + groups - 1) // groups
        n = int(r["count"])
        std = float(np.sqrt(r["m2"] / (n - 1))) if n > 1 and r["m2"] is not None else float("nan")
        rows.append(BinRow(lo, hi, float(edges[lo]), float(edges[hi]), n, float(r["mean"]) if n else float("nan"), std))
    return rows


def _median(x: pl.Series) -> float:
    """The median of the finite and NaN-free values (NaN if none), in polars: numpy's imports numpy.ma (~15 ms)."""
    m = x.cast(pl.Float64).fill_nan(None).median()
    return math.nan if m is None else float(m)
