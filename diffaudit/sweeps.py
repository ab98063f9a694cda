"""Many runs at once: one row per run in units of L*, configurations with their seed spread, and the best set.

A sweep is read in two steps:

1. **Per run** (:func:`run_row`, a pure function of the run's files): its state,
   verdict and worst findings, and its late loss per noise level as a ratio to
   the Gaussian L* of its own target (so runs with different prediction targets
   share one scale), averaged over all bins and over three noise bands of equal
   numbers of bins ordered by log-SNR (``low``: the noisiest third, ``high``: the
   least noisy), each with a standard error from the analysis's
   autocorrelation-aware per-bin errors. The mean is geometric: a bin whose L*
   is tiny (epsilon prediction at the highest noise levels, where the ratio is
   large and says little) moves it by its log, not by its size. Rows are computed in worker processes
   and cached outside the runs (:func:`cache_dir`), keyed by the run's location,
   the names, sizes and modification times of its files, and the diffaudit
   version: a run that did not change is not read again. A run that cannot be
   read is a row with its error; the sweep never stops on it.
2. **Across runs** (:func:`summarize`): runs whose config differs only in
   seed-like keys (:func:`diffaudit.configs.seed_like`) are one
   configuration, with a mean and a seed spread. The *best set* holds the
   configurations that cannot be told apart from the best at ``alpha``: each is
   tested one-sided against the best (Holm across configurations), with the
   seed spread pooled over every configuration that has seeds (runs - groups
   df), or, where none has, the seed allowance (a ``calibrate`` file, else the
   built-in one). *Effects* say, for each config key that varies, the mean
   ratio per value overall and per band: which setting helps which noise levels.

The per-run rows are plain columns (Parquet, CSV, JSON), so any engine can
read them; computing them is the only step that reads runs, and it can be fanned
out (one :func:`run_row` per run) on any machine that sees the runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from diffaudit import __version__, stats
from diffaudit.analysis import analyze
from diffaudit.configs import flat_config, seed_like
from diffaudit.errors import DiffauditError
from diffaudit.gate import DEFAULT_ALLOWANCE
from diffaudit.load import load_run
from diffaudit.sides import resolve_side
from diffaudit.store import is_url, remote_fingerprint, runs_under

ALPHA = 0.05  # a configuration is out of the best set when it is worse than the best at this level (Holm)
BANDS = ("low", "mid", "high")  # thirds of the bins by log-SNR: low = the noisiest
TIME_DEPENDENT = ("in_progress", "unknown")  # states that change with the clock alone: never cached
ROW_VERSION = 2  # bump when the per-run row changes: cached rows of another version are recomputed

#: the per-run table's columns, with what each means (``--json``, ``--csv`` and ``--parquet`` carry them)
RUN_COLUMNS = {
    "name": "the run's folder (or file) name",
    "path": "where it was read",
    "state": "finished, failed, in_progress, ended, unknown, or unreadable (see error)",
    "last_step": "newest logged training step",
    "planned_steps": "the plan (total_steps), if the logger was given it",
    "verdict": "healthy, warnings or failing (as report says; provisional while early)",
    "provisional": "true while the run is early in its plan: convergence-dependent findings are provisional",
    "worst": "ids of the findings of the worst severity, comma-separated",
    "fails": "findings of severity fail",
    "warns": "findings of severity warn",
    "process": "vp, flow or edm",
    "prediction": "the prediction target",
    "late_loss": "late loss, weighted over bins as the sampler visits them (in the run's own target's units)",
    "late_loss_se": "its standard error",
    "lstar_ratio": "late loss / Gaussian L* of its own target, per bin, geometric mean over bins (1 = the best linear "
                   "denoiser)",
    "lstar_ratio_se": "its standard error (within the run)",
    "ratio_low": "the same over the noisiest third of the bins (lowest log-SNR)",
    "ratio_low_se": "",
    "ratio_mid": "the same over the middle third",
    "ratio_mid_se": "",
    "ratio_high": "the same over the least noisy third (highest log-SNR)",
    "ratio_high_se": "",
    "excess_share": "the late loss above L*, as a share of the late loss",
    "clip_rate": "share of the steps whose gradient was clipped",
    "lstar_note": "why there are no L* units, if there are none",
    "error": "why the run could not be read (its row holds nothing else)",
    "config": "the run's config, flattened (JSON)",
    "bin_ratio": "per noise bin: late loss / L* (a list; JSON and Parquet only)",
}
LIST_COLUMNS = ("bin_ratio",)


# ----------------------------------------------------------------------------
# One run


def _nan_none(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def run_row(path: str) -> dict:
    """The sweep's row for one run (see :data:`RUN_COLUMNS`); a run that cannot be read gives a row with ``error``.

    Never raises for a bad run: every exception becomes the row's error (a sweep of hundreds of runs must not stop
    on one).
    """
    row = {k: None for k in RUN_COLUMNS}
    row.update(name=Path(str(path)).name, path=str(path), state="unreadable", config="{}")
    try:
        return _fill(row, path)
    except DiffauditError as e:
        return {**{k: None for k in RUN_COLUMNS}, "name": row["name"], "path": str(path), "state": "unreadable",
                "config": "{}", "error": str(e)}
    except Exception as e:  # a bug or a damaged file the loader did not foresee: the row says so, the sweep goes on
        why = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return {**{k: None for k in RUN_COLUMNS}, "name": row["name"], "path": str(path), "state": "unreadable",
                "config": "{}", "error": f"{type(e).__name__}: {why}"}


def _fill(row: dict, path) -> dict:
    run = load_run(path)
    a = analyze(run, plots=False)
    lc = a.lifecycle
    rank = {"fail": 2, "warn": 1, "info": 0}
    worst = max((rank[f.severity] for f in a.findings), default=None)
    row.update(
        name=run.name, state=lc.state if lc else "unknown", last_step=lc.last_step if lc else a.run.last_step,
        planned_steps=lc.planned_steps if lc else None, verdict=a.verdict, provisional=a.early is not None,
        worst=",".join(f.id for f in a.findings if worst is not None and worst > 0 and rank[f.severity] == worst) or None,
        fails=sum(f.severity == "fail" for f in a.findings), warns=sum(f.severity == "warn" for f in a.findings),
        process=a.run.process, prediction=a.run.prediction,
        late_loss=_nan_none(a.loss.late_total), excess_share=_nan_none(a.loss.excess_share),
        clip_rate=_nan_none(a.clip.rate) if a.clip.available else None,
        config=json.dumps(flat_config(run.meta.get("config") or {}), sort_keys=True, default=str),
    )
    b = a.bins
    late = b["late_mean"].to_numpy().astype(np.float64)
    se = b["late_se"].to_numpy().astype(np.float64)
    share = b["count_share"].to_numpy().astype(np.float64)
    ok = np.isfinite(late) & np.isfinite(se) & np.isfinite(share)
    if ok.any():
        row["late_loss_se"] = _nan_none(math.sqrt(float(np.sum((share[ok] * se[ok]) ** 2))))
    lstar = b["lstar_gauss"].to_numpy().astype(np.float64)
    if not np.isfinite(lstar).any():
        row["lstar_note"] = ("no data statistics in run.json (data_var or data_spectrum): no L* to divide by"
                             if a.run.data_stats == "none" else "the Gaussian L* could not be computed for this run")
        return row
    with np.errstate(invalid="ignore", divide="ignore"):
        log_ratio, log_se = np.log(late / lstar), se / late  # delta method: se of log(late) = se / late
    good = np.isfinite(log_ratio) & np.isfinite(log_se) & (lstar > 0) & (late > 0)
    order = np.argsort(b["log_snr"].to_numpy().astype(np.float64), kind="stable")  # noisiest first
    thirds = np.array_split(order, 3)

    def mean_se(idx):
        # the geometric mean of the bins' ratios: a bin whose L* is tiny (epsilon at the highest noise) moves it by
        # its log, not by its size, and a run twice as far from L* in every bin has twice the ratio
        idx = idx[good[idx]]
        if idx.size == 0:
            return None, None
        g = math.exp(float(np.mean(log_ratio[idx])))
        return _nan_none(g), _nan_none(g * math.sqrt(float(np.sum(log_se[idx] ** 2))) / idx.size)

    row["lstar_ratio"], row["lstar_ratio_se"] = mean_se(np.arange(log_ratio.size))
    row["bin_ratio"] = [_nan_none(math.exp(v)) if g else None for v, g in zip(log_ratio, good)]
    for band, idx in zip(BANDS, thirds):
        row[f"ratio_{band}"], row[f"ratio_{band}_se"] = mean_se(idx)
    return row


# ----------------------------------------------------------------------------
# Many runs: cached rows, computed in parallel


def cache_dir() -> Path:
    """Where per-run rows are cached: $DIFFAUDIT_CACHE, else $XDG_CACHE_HOME/diffaudit, else ~/.cache/diffaudit."""
    if os.environ.get("DIFFAUDIT_CACHE"):
        return Path(os.environ["DIFFAUDIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "diffaudit"


def fingerprint(path) -> str | None:
    """A key that changes whenever the run's files do: their names, sizes and modification times (in object storage:
    its objects and their sizes); None for a run that cannot be listed (it is not cached)."""
    if is_url(str(path)):
        try:
            items = remote_fingerprint(str(path))
        except DiffauditError:
            return None
        return hashlib.sha256(json.dumps([__version__, ROW_VERSION, str(path), items]).encode()).hexdigest()
    p = Path(path)
    try:
        if p.is_file():
            st = p.stat()
            items = [(p.name, st.st_size, st.st_mtime_ns)]
        else:
            items = []
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames.sort()
                for f in sorted(filenames):
                    st = os.stat(os.path.join(dirpath, f))
                    items.append((os.path.relpath(os.path.join(dirpath, f), p), st.st_size, st.st_mtime_ns))
    except OSError:
        return None
    key = json.dumps([__version__, ROW_VERSION, str(p.resolve()), items])
    return hashlib.sha256(key.encode()).hexdigest()


def _cached(path, directory: Path | None) -> tuple[dict | None, Path | None]:
    if directory is None:
        return None, None
    fp = fingerprint(path)
    if fp is None:
        return None, None
    f = directory / "sweep" / f"{fp}.json"
    try:
        return json.loads(f.read_text()), f
    except (OSError, ValueError):
        return None, f


def _store(f: Path | None, row: dict) -> None:
    if f is None:
        return
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f".{f.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(row))
        os.replace(tmp, f)
    except OSError:  # a read-only cache costs time, never a result
        pass


def run_rows(paths: list, *, jobs: int | None = None, cache: bool = True) -> tuple[list[dict], int]:
    """Every run's row, in the order given, from the cache where the run is unchanged, else computed in ``jobs``
    worker processes; returns (rows, how many came from the cache)."""
    directory = cache_dir() if cache else None
    rows: list[dict | None] = [None] * len(paths)
    todo, targets = [], []
    hits = 0
    for i, p in enumerate(paths):
        row, f = _cached(p, directory)
        if row is not None:
            rows[i] = row
            hits += 1
        else:
            todo.append(i)
            targets.append(f)
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo) or 1))
    if jobs == 1 or len(todo) <= 1:
        fresh = [run_row(str(paths[i])) for i in todo]
    else:
        # spawned, not forked: a fork of a process whose polars threads are running can deadlock in the child
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            fresh = list(pool.map(run_row, [str(paths[i]) for i in todo], chunksize=max(1, len(todo) // (4 * jobs))))
    for i, f, row in zip(todo, targets, fresh):
        rows[i] = row
        # a run that failed to read may be mid-write, and one still training can end without writing a file (its
        # state turns from in progress to ended with time alone): both are read again next time
        if row.get("error") is None and row.get("state") not in TIME_DEPENDENT:
            _store(f, row)
    return rows, hits


# ----------------------------------------------------------------------------
# Across runs: configurations, the best set, effects


@dataclass(frozen=True)
class Sweep:
    """A sweep read: one row per run, one per configuration, the best set, the effects, and what they rest on."""

    runs: pl.DataFrame
    groups: pl.DataFrame
    best: dict  # metric -> {"best": group, "members": [groups], "out": {group: why}}
    effects: dict  # config key -> {value: {"runs": n, "lstar_ratio": m, "ratio_low": ..., ...}}
    varying: tuple[str, ...]  # config keys that vary (seed-like keys left out)
    metric: str  # what ranks: "lstar_ratio", or "late_loss" where some runs have no L*
    notes: tuple[str, ...] = ()
    cached: int = 0
    spread: dict = field(default_factory=dict)  # the seed spread the best set used: {"sd", "df", "source"}


def sweep(specs, *, jobs: int | None = None, cache: bool = True, alpha: float = ALPHA, allowance=None) -> Sweep:
    """Read every run that ``specs`` names (runs, folders of runs, globs, URLs) and summarize them (:class:`Sweep`).

    Raises DiffauditError when a spec matches nothing; a run that cannot be read is a row with its error.
    """
    specs = [specs] if isinstance(specs, (str, os.PathLike)) else list(specs)
    paths = []
    for spec in specs:  # a prefix in object storage may hold one run or a folder of runs
        paths += runs_under(str(spec)) if is_url(str(spec)) else resolve_side(spec, role="sweep")
    seen, unique = set(), []
    for p in paths:
        key = str(p) if is_url(str(p)) else str(Path(p).resolve())
        if key not in seen:
            seen.add(key)
            unique.append(p)
    rows, hits = run_rows(unique, jobs=jobs, cache=cache)
    return summarize(rows, alpha=alpha, allowance=allowance, cached=hits)


def summarize(rows: list[dict], *, alpha: float = ALPHA, allowance=None, cached: int = 0) -> Sweep:
    """Configurations, the best set and the effects from per-run rows (as :func:`run_row` makes them)."""
    configs = [json.loads(r.get("config") or "{}") for r in rows]
    keys = sorted(set().union(*configs)) if configs else []
    varying = tuple(k for k in keys if not seed_like(k)
                    and len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1)
    label, group = [], []
    ids: dict[str, str] = {}
    for c in configs:
        sig = json.dumps({k: c.get(k) for k in keys if not seed_like(k)}, sort_keys=True, default=str)
        ids.setdefault(sig, f"g{len(ids) + 1}")
        group.append(ids[sig])
        label.append(", ".join(f"{k}={_short(c.get(k))}" for k in varying) or "(one configuration)")
    notes = []
    readable = [r for r in rows if r.get("error") is None]
    metric = "lstar_ratio"
    if readable and any(r.get("lstar_ratio") is None for r in readable):
        metric = "late_loss"
        missing = [r["name"] for r in readable if r.get("lstar_ratio") is None]
        notes.append(f"{len(missing)} run(s) have no L* units ({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''}: "
                     "no data statistics in run.json), so runs are ranked by their late loss as logged")
    if metric == "lstar_ratio" and len({(r.get("process"), r.get("prediction")) for r in readable}) > 1:
        notes.append("the runs have different processes or prediction targets: they share one scale only in units of "
                     "L* (each run's loss over the L* of its own target), which is what ranks them")
    if metric == "late_loss" and len({r.get("prediction") for r in readable}) > 1:
        notes.append("the runs have different prediction targets and some lack L*: their late losses are not on one "
                     "scale, so the ranking mixes units")
    errors = [r for r in rows if r.get("error") is not None]
    if errors:
        notes.append(f"{len(errors)} run(s) could not be read and are rows with their error "
                     f"({', '.join(r['name'] for r in errors[:3])}{', …' if len(errors) > 3 else ''})")
    schema = {k: (pl.List(pl.Float64) if k in LIST_COLUMNS
                  else pl.Float64 if k.endswith(("_se", "loss", "ratio", "_low", "_mid", "_high", "share", "rate"))
                  else pl.Int64 if k in ("last_step", "planned_steps", "fails", "warns")
                  else pl.Boolean if k == "provisional" else pl.Utf8) for k in RUN_COLUMNS}
    runs = pl.DataFrame([{k: r.get(k) for k in RUN_COLUMNS} for r in rows], schema=schema, orient="row") \
        if rows else pl.DataFrame(schema=schema)
    runs = runs.with_columns(pl.Series("group", group, dtype=pl.Utf8), pl.Series("label", label, dtype=pl.Utf8),
                             *[pl.Series(k, [_short(c.get(k)) for c in configs], dtype=pl.Utf8) for k in varying])
    groups, spread = _groups(runs, metric, allowance or DEFAULT_ALLOWANCE)
    best = {m: _best_set(groups, m, alpha) for m in ([metric] + ([f"ratio_{b}" for b in BANDS]
                                                                  if metric == "lstar_ratio" else []))}
    return Sweep(runs, groups, best, _effects(runs, varying), varying, metric, tuple(notes), cached, spread)


def _short(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str)


def _groups(runs: pl.DataFrame, metric: str, allowance) -> tuple[pl.DataFrame, dict]:
    """One row per configuration: runs, mean and seed sd of the metric and bands, and the standard error of the mean
    the best set uses (the seed spread pooled over configurations with seeds, relative; else the allowance)."""
    ok = runs.filter(pl.col("error").is_null() & pl.col(metric).is_not_null())
    cols = [metric] + ([f"ratio_{b}" for b in BANDS] if metric == "lstar_ratio" else [])
    out = []
    for g, part in ok.group_by("group", maintain_order=True):
        row = {"group": g[0], "label": part["label"][0], "runs": part["name"].to_list(), "n": part.height}
        for c in cols:
            v = part[c].drop_nulls().to_numpy().astype(np.float64)
            se = part[f"{c}_se"].drop_nulls().to_numpy().astype(np.float64) if f"{c}_se" in part.columns else \
                part["late_loss_se"].drop_nulls().to_numpy().astype(np.float64)
            row[c] = float(v.mean()) if v.size else None
            row[f"{c}_sd"] = float(v.std(ddof=1)) if v.size >= 2 else None
            row[f"{c}_within_se"] = float(math.sqrt(np.sum(se**2)) / se.size) if se.size else None
        out.append(row)
    # the seed spread, relative to each configuration's mean, pooled over every configuration with seeds
    rel, dof = 0.0, 0
    for r in out:
        if r["n"] >= 2 and r.get(f"{metric}_sd") is not None and r[metric]:
            rel += (r["n"] - 1) * (r[f"{metric}_sd"] / r[metric]) ** 2
            dof += r["n"] - 1
    if dof:
        spread = {"sd": math.sqrt(rel / dof), "df": float(dof), "source": "the sweep's own seeds"}
    else:
        sd, df = allowance.equal_mean_sd()  # the metric is an equally weighted (geometric) mean over bins
        spread = {"sd": sd, "df": df,
                  "source": "the calibrated seed allowance" if allowance.calibrated else
                  "the built-in seed allowance (no configuration has seeds)"}
    for r in out:
        for c in cols:
            if r[c] is None:
                r[f"{c}_se"] = None
                continue
            seed = (spread["sd"] * r[c]) ** 2 / r["n"]
            within = (r[f"{c}_within_se"] or 0.0) ** 2 if not dof else 0.0  # seeds' spread already holds it
            r[f"{c}_se"] = math.sqrt(seed + within)
        r["df"] = spread["df"]
    schema_cols = ["group", "label", "runs", "n", "df"] + [x for c in cols for x in (c, f"{c}_sd", f"{c}_se")]
    frame = pl.DataFrame([{k: r.get(k) for k in schema_cols} for r in out]) if out else pl.DataFrame()
    return frame, spread


def _best_set(groups: pl.DataFrame, metric: str, alpha: float) -> dict:
    """The configurations not shown worse than the best (lowest mean) at ``alpha``, Holm across the others."""
    if groups.height == 0 or metric not in groups.columns:
        return {"best": None, "members": [], "out": {}}
    g = groups.filter(pl.col(metric).is_not_null())
    if g.height == 0:
        return {"best": None, "members": [], "out": {}}
    m = g[metric].to_numpy().astype(np.float64)
    se = g[f"{metric}_se"].to_numpy().astype(np.float64)
    df = g["df"].to_numpy().astype(np.float64)
    names = g["group"].to_list()
    b = int(np.argmin(m))
    others = [i for i in range(len(m)) if i != b]
    diff = np.array([m[i] - m[b] for i in others])
    sed = np.array([math.hypot(se[i], se[b]) for i in others])
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(sed > 0, stats.t_sf(diff / np.where(sed > 0, sed, 1.0), df[b]), np.where(diff > 0, 0.0, 1.0))
    q = stats.adjust_pvalues(p, "holm") if len(others) else np.array([])
    members, out = [names[b]], {}
    for i, qi, d in zip(others, q, diff):
        if qi <= alpha:
            out[names[i]] = f"{100 * d / m[b]:+.1f}% above the best, q = {qi:.2g}"
        else:
            members.append(names[i])
    return {"best": names[b], "members": members, "out": out}


def _effects(runs: pl.DataFrame, varying) -> dict:
    """For each varying config key: per value, the runs and their mean L* ratio overall and per band."""
    ok = runs.filter(pl.col("error").is_null())
    cols = [c for c in ["lstar_ratio"] + [f"ratio_{b}" for b in BANDS] if c in ok.columns]
    out = {}
    for k in varying:
        per = {}
        for v, part in ok.group_by(k, maintain_order=True):
            per[str(v[0])] = {"runs": part.height,
                              **{c: _nan_none(part[c].mean()) if part[c].drop_nulls().len() else None for c in cols}}
        out[k] = per
    return out


def write_parquet(s: Sweep, path) -> None:
    """The per-run table as Parquet, written through a temporary file and a rename."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        s.runs.write_parquet(tmp)
        os.replace(tmp, p)
    except OSError as e:
        raise DiffauditError(f"{path}: cannot write the Parquet table ({e.strerror or e})") from None
    finally:
        tmp.unlink(missing_ok=True)


def csv_text(s: Sweep) -> str:
    """The per-run table as CSV (the per-bin list stays in JSON and Parquet: CSV has no lists)."""
    return s.runs.drop([c for c in LIST_COLUMNS if c in s.runs.columns]).write_csv()
