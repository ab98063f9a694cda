"""Reading runs: validate parts, resolve resumed segments, merge ranks, export to one file.

All the ways a run can be damaged are met here, in one place, so every command
behaves the same: a missing or unreadable ``run.json`` or an unknown future
format is fatal (``RunFormatError``, one line naming the file); a damaged part
(truncated, zero bytes, not Parquet, wrong columns) is skipped and listed in
``Run.problems``, or fatal with ``strict=True``; leftover temporary files of a
killed writer are listed and ignored.

Segments (restarts): each logger start is a new segment of its rank. When
segment k of rank r starts at step S, rows of earlier segments of rank r with
step >= S are superseded; a bins window of an earlier segment is dropped if any
of its steps is superseded (its statistics cannot be split).

Ranks: bin statistics of the same window and bin are merged with Chan's
parallel formula in float64; per-step rows are merged into one row per step
(sample-weighted loss, summed counts).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from diffaudit import runformat as rf
from diffaudit.errors import DiffauditError, RunFormatError
from diffaudit.noise import Process

EXPORT_META_KEY = b"diffaudit.run"
EXPORT_SCHEDULE_KEY = b"diffaudit.schedule"
EXPORT_CLOSES_KEY = b"diffaudit.closes"
CLOSES_SCHEMA = {"rank": pl.Int32, "segment": pl.Int32, "status": pl.String, "closed": pl.Float64,
                 "last_step": pl.Int64, "total_steps": pl.Int64, "error": pl.String}
_REQUIRED_META = ("format_version", "process", "num_bins")


@dataclass(frozen=True)
class Problem:
    """Something wrong with a run that did not stop it from loading."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class Run:
    """A loaded run: metadata, schedule, and ranks-merged, segment-resolved frames."""

    path: Path
    meta: dict
    process: Process
    schedule: pl.DataFrame | None
    steps: pl.DataFrame  # one row per optimizer step (train), ranks merged
    bins: pl.DataFrame  # one row per (split, window, bin), ranks merged
    probes: pl.DataFrame  # per-bin gradient norms on probe steps
    optimum: pl.DataFrame | None  # empirical L* per bin from `diffaudit optimum`, if it has run
    segments: pl.DataFrame  # rank, segment, start, end, rows kept
    problems: list[Problem] = field(default_factory=list)
    superseded_rows: int = 0  # rows of earlier segments replaced by a resumed segment
    steps_by_rank: pl.DataFrame | None = None
    # one row per close marker (rank, segment, status, closed, last_step, total_steps, error): which
    # logger segments ended on purpose; a segment without a row was killed or is still running
    closes: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=CLOSES_SCHEMA))
    # newest segment marker's planned total steps per rank (a resume may extend the plan)
    segment_plans: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        p = self.path
        return p.stem if p.suffix == ".parquet" else p.name

    @property
    def ranks(self) -> list[int]:
        return sorted(self.segments["rank"].unique().to_list()) if self.segments.height else []

    @property
    def train_bins(self) -> pl.DataFrame:
        return self.bins.filter(pl.col("split") == "train")

    @property
    def eval_bins(self) -> pl.DataFrame:
        """Held-out data evaluated with the live weights."""
        return self.bins.filter(pl.col("split") == "eval")

    @property
    def ema_bins(self) -> pl.DataFrame:
        """The EMA weights evaluated (on held-out data)."""
        return self.bins.filter(pl.col("split") == "ema")

    @property
    def extra_scalars(self) -> list[str]:
        fixed = set(rf.STEPS_SCHEMA.names) | set(rf.STEPS_OPTIONAL.names) | {"n_ranks"}
        return [c for c in self.steps.columns if c not in fixed]


# ----------------------------------------------------------------------------
# Entry point


def load_run(path, *, strict: bool = False, allow_empty: bool = False) -> Run:
    """Load a run directory or an exported ``.parquet`` file."""
    p = Path(path)
    if not p.exists():
        raise RunFormatError(f"{p}: no such file or directory")
    if p.is_file():
        return _load_export(p)
    if not p.is_dir():
        raise RunFormatError(f"{p}: not a run directory or an exported .parquet file")
    meta = _read_meta(p)
    process, schedule = _read_process(p, meta)
    problems: list[Problem] = []
    files = _list_parts(p, problems)
    tables = {kind: _read_kind(kind, fs, problems, strict) for kind, fs in files.items()}
    run = _assemble(p, meta, process, schedule, tables, problems)
    run.closes, run.segment_plans = _close_markers(p)
    if not allow_empty and run.steps.height == 0 and run.bins.height == 0 and run.probes.height == 0:
        detail = f" ({len(problems)} damaged part(s) skipped)" if problems else ""
        raise RunFormatError(f"{p}: the run has no logged steps yet{detail}")
    return run


# ----------------------------------------------------------------------------
# run.json and schedule


def _read_meta(p: Path) -> dict:
    rj = p / rf.RUN_JSON
    if not rj.exists():
        n_parts = len(list((p / rf.PARTS_DIR).glob("*.parquet"))) if (p / rf.PARTS_DIR).is_dir() else 0
        if n_parts:
            raise RunFormatError(f"{rj}: missing; the directory has {n_parts} part file(s) but no run.json")
        if not any(p.iterdir()):
            raise RunFormatError(f"{p}: empty directory, not a diffaudit run")
        raise RunFormatError(f"{p}: not a diffaudit run (no run.json)")
    try:
        meta = json.loads(rj.read_text())
    except UnicodeDecodeError:
        raise RunFormatError(f"{rj}: not a text file") from None
    except json.JSONDecodeError as e:
        raise RunFormatError(f"{rj}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except OSError as e:
        raise RunFormatError(f"{rj}: cannot be read ({e.strerror})") from None
    return _check_meta(meta, rj)


def _check_meta(meta, where) -> dict:
    if not isinstance(meta, dict):
        raise RunFormatError(f"{where}: expected a JSON object")
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise RunFormatError(f"{where}: missing field(s) {', '.join(missing)}")
    v = meta["format_version"]
    if not isinstance(v, int) or v < 1:
        raise RunFormatError(f"{where}: invalid format_version {v!r}")
    if v > rf.FORMAT_VERSION:
        raise RunFormatError(
            f"{where}: format version {v} is newer than this diffaudit reads ({rf.FORMAT_VERSION}); upgrade diffaudit"
        )
    return meta


def _read_process(p: Path, meta: dict) -> tuple[Process, pl.DataFrame | None]:
    schedule = None
    alpha_bar = one_minus = None
    if meta.get("process") == "vp":
        sf = p / rf.SCHEDULE_FILE
        if not sf.exists():
            raise RunFormatError(f"{sf}: missing; a discrete (vp) run needs its schedule")
        try:
            schedule = pl.read_parquet(sf)
        except Exception as e:
            raise RunFormatError(f"{sf}: cannot be read ({_short(e)})") from None
        alpha_bar, one_minus = _schedule_arrays(schedule, sf)
    try:
        process = Process.from_meta(meta, alpha_bar, one_minus)
    except DiffauditError as e:
        raise RunFormatError(f"{p / rf.RUN_JSON}: {e}") from None
    return process, schedule


def _schedule_arrays(schedule: pl.DataFrame, where) -> tuple[np.ndarray, np.ndarray]:
    for col in ("alpha_bar", "one_minus_alpha_bar"):
        if col not in schedule.columns:
            raise RunFormatError(f"{where}: schedule has no column {col!r}")
    return schedule["alpha_bar"].to_numpy().astype(np.float64), schedule["one_minus_alpha_bar"].to_numpy().astype(np.float64)


# ----------------------------------------------------------------------------
# Parts


def _list_parts(p: Path, problems: list[Problem]) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {k: [] for k in rf.PART_KINDS}
    parts = p / rf.PARTS_DIR
    if not parts.is_dir():
        return files
    for entry in sorted(os.listdir(parts)):
        f = parts / entry
        if entry.endswith(rf.TMP_SUFFIX):
            problems.append(Problem(str(f), "leftover temporary file of an interrupted write, ignored"))
            continue
        m = rf.PART_RE.match(entry)
        if not m or m["kind"] not in files:
            problems.append(Problem(str(f), "unexpected file in parts/, ignored"))
            continue
        files[m["kind"]].append(f)
    return files


def _read_kind(kind: str, files: list[Path], problems: list[Problem], strict: bool) -> pl.DataFrame | None:
    """Read every valid part of one kind into one frame; damaged parts are skipped (or fatal)."""
    if not files:
        return None
    df = _read_fast(kind, files)
    return df if df is not None else _read_careful(kind, files, problems, strict)


def _read_fast(kind: str, files: list[Path]) -> pl.DataFrame | None:
    """One native scan of all parts, or None when anything is unusual (then the careful path runs).

    Every part's footer is read (``read_parquet_schema``, ~0.07 ms a part) and must hold every
    required column; a damaged part makes that or the scan raise. Any of these sends the read to
    the careful path, which finds and names the part.
    """
    union: dict = {}
    try:
        for f in files:
            if f.stat().st_size == 0:
                return None
            schema = pl.read_parquet_schema(f)
            if any(n not in schema for n in rf.SCHEMAS[kind].names):
                return None
            for name, dtype in schema.items():
                union.setdefault(name, dtype)
        return pl.scan_parquet(files, schema=union, missing_columns="insert").collect()
    except Exception:
        return None


def _read_careful(kind: str, files: list[Path], problems: list[Problem], strict: bool) -> pl.DataFrame | None:
    """Check each part by its footer, skip (or fail on) the damaged ones, read the rest.

    A part whose footer is fine but whose pages are not makes the combined scan fail; only then
    are the parts read one by one to find it.
    """
    required = rf.SCHEMAS[kind].names
    union: dict = {}
    good = []
    for f in files:
        schema, why = _footer(f)
        if why is None:
            missing = [n for n in required if n not in schema]
            if missing:
                why = f"not a {kind} part (missing column(s) {', '.join(missing)})"
        if why is None:
            for name, dtype in schema.items():
                union.setdefault(name, dtype)
            good.append(f)
        elif strict:
            raise RunFormatError(f"{f}: damaged part: {why}")
        else:
            problems.append(Problem(str(f), f"damaged part skipped: {why}"))
    if not good:
        return None
    try:
        return pl.scan_parquet(good, schema=union, missing_columns="insert").collect()
    except Exception:
        pass
    frames = []
    for f in good:
        try:
            frames.append(pl.read_parquet(f))
        except Exception as e:
            if strict:
                raise RunFormatError(f"{f}: damaged part: {_short(e)}") from None
            problems.append(Problem(str(f), f"damaged part skipped: {_short(e)}"))
    if not frames:
        return None
    return pl.concat(frames, how="diagonal_relaxed")


def _footer(f: Path):
    """(schema, None) for a part whose footer reads, else (None, why)."""
    try:
        if f.stat().st_size == 0:
            return None, "zero-byte file"
        return pl.read_parquet_schema(f), None
    except Exception as e:
        return None, f"not a readable Parquet file ({_short(e)})"


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:160]


# ----------------------------------------------------------------------------
# Assembly: segments, ranks


def _empty(kind: str) -> pl.DataFrame:
    return pl.from_arrow(rf.SCHEMAS[kind].empty_table())


def _assemble(path, meta, process, schedule, tables, problems, resolved: bool = False) -> Run:
    frames = {k: (t if t is not None and t.height else _empty(k)) for k, t in tables.items()}
    steps, bins, probes = frames["steps"], frames["bins"], frames["probes"]
    steps = _collapse_split_steps(steps, path, problems)
    segs = _segment_starts(steps, bins, None if resolved else _segment_markers(Path(path)))
    n_before = steps.height + bins.height + probes.height
    if not resolved:  # an export holds rows already resolved over segments and merged over ranks
        steps = _supersede(steps, segs, "step")
        bins = _supersede(bins, segs, "step_hi")
        probes = _supersede(probes, segs, "step")
    superseded = n_before - (steps.height + bins.height + probes.height)
    steps_by_rank = _sorted(steps, ["step", "rank"])
    optimum = None
    if frames["optimum"].height:
        # several optimum parts: the newest (highest seq, i.e. last read in name order) wins per bin
        optimum = frames["optimum"].with_row_index("_i").sort("_i").unique("bin", keep="last").drop("_i").sort("bin")
    return Run(
        path=Path(path),
        meta=meta,
        process=process,
        schedule=schedule,
        steps=_merge_step_ranks(steps),
        bins=_merge_bin_ranks(bins),
        probes=probes.sort(["step", "probe_bin", "rank"]),
        optimum=optimum,
        segments=_segment_summary(steps_by_rank, segs),
        problems=problems,
        superseded_rows=superseded,
        steps_by_rank=steps_by_rank,
    )


def _sorted(df: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """df sorted by keys; parts read in name order usually are already, and checking is O(n)."""
    if df.height < 2:
        return df
    k = df.select(keys)
    prev, cur = k.slice(0, df.height - 1), k.slice(1)
    # lexicographic "cur >= prev" row by row, built from the last key to the first
    ok = pl.lit(True)
    for c in reversed(keys):
        ok = (pl.col(c) > pl.col(f"{c}_p")) | ((pl.col(c) == pl.col(f"{c}_p")) & ok)
    both = pl.concat([cur, prev.rename({c: f"{c}_p" for c in keys})], how="horizontal")
    return df if both.select(ok.all()).item() else df.sort(keys)


# A segment of another rank supersedes only if its logger started this much later: the ranks of
# one launch start within seconds of each other, a restart from a checkpoint comes much later.
RESTART_GAP_S = 60.0


def _segment_markers(p: Path) -> dict:
    """(rank, segment) -> creation time, from segments/*.json (a missing or bad marker is skipped)."""
    out = {}
    d = p / rf.SEGMENTS_DIR
    if not d.is_dir():
        return out
    for f in d.iterdir():
        m = rf.SEGMENT_RE.match(f.name)
        if not m:
            continue
        try:
            out[(int(m["rank"]), int(m["segment"]))] = float(json.loads(f.read_text())["created"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return out


def _close_markers(p: Path) -> tuple[pl.DataFrame, dict]:
    """Close markers (segments/close-*.json) as a frame, and each rank's newest planned total_steps."""
    rows, plans = [], {}
    d = p / rf.SEGMENTS_DIR
    if not d.is_dir():
        return pl.DataFrame(schema=CLOSES_SCHEMA), plans
    newest: dict = {}
    for f in sorted(d.iterdir()):
        m = rf.CLOSE_RE.match(f.name)
        sm = rf.SEGMENT_RE.match(f.name)
        if not (m or sm):
            continue
        try:
            obj = json.loads(f.read_text()) if f.is_file() and f.stat().st_size < 1 << 20 else None
        except (OSError, ValueError, RecursionError):
            obj = None
        if not isinstance(obj, dict):
            continue
        rank, seg = int((m or sm)["rank"]), int((m or sm)["segment"])
        if sm:
            ts = obj.get("total_steps")
            if isinstance(ts, int) and not isinstance(ts, bool) and ts > 0 and seg >= newest.get(rank, -1):
                newest[rank], plans[rank] = seg, ts
            continue
        status = obj.get("status")
        if status not in rf.CLOSE_STATUSES:
            continue

        def num(k, typ):
            v = obj.get(k)
            return v if isinstance(v, typ) and not isinstance(v, bool) else None

        err = obj.get("error")
        rows.append({"rank": rank, "segment": seg, "status": status, "closed": num("closed", (int, float)),
                     "last_step": num("last_step", int), "total_steps": num("total_steps", int),
                     "error": err[:500] if isinstance(err, str) else None})
    return pl.DataFrame(rows, schema=CLOSES_SCHEMA), plans


def _segment_starts(steps: pl.DataFrame, bins: pl.DataFrame, created: dict | None = None) -> pl.DataFrame:
    """Per (rank, segment): the first step it logged, and the cutoff where later segments take over.

    A row of segment k of rank r survives iff its step is below the start of every later segment
    of rank r and of every segment of another rank whose logger started RESTART_GAP_S or more
    after k's (a restart on a different set of ranks still supersedes the abandoned rows).
    """
    a = steps.group_by("rank", "segment").agg(pl.col("step").min().alias("start"))
    b = bins.group_by("rank", "segment").agg(pl.col("step_lo").min().alias("start"))
    segs = pl.concat([a, b]).group_by("rank", "segment").agg(pl.col("start").min()).sort("rank", "segment")
    segs = segs.with_columns(pl.col("start").reverse().cum_min().reverse().shift(-1).over("rank").alias("cutoff"))
    if not created or segs["rank"].n_unique() < 2:
        return segs
    rows = segs.to_dicts()
    for r in rows:
        t0 = created.get((r["rank"], r["segment"]))
        if t0 is None:
            continue
        later = [o["start"] for o in rows if o["rank"] != r["rank"]
                 and created.get((o["rank"], o["segment"]), -np.inf) >= t0 + RESTART_GAP_S]
        if later:
            r["cutoff"] = min([c for c in (r["cutoff"], *later) if c is not None])
    return pl.DataFrame(rows, schema=segs.schema)


def _collapse_split_steps(steps: pl.DataFrame, path, problems: list[Problem]) -> pl.DataFrame:
    """Merge rows of one (rank, segment, step) that landed in two parts (a flush() called mid-step)."""
    keys = ["rank", "segment", "step"]
    if steps.height == 0 or steps.select(keys).n_unique() == steps.height:
        return steps
    dup = steps.filter(pl.struct(keys).is_duplicated())
    problems.append(Problem(str(path), f"{dup.select(keys).n_unique()} step(s) were written in two or more parts "
                                       f"(a flush in the middle of a step); their rows were merged"))
    w = pl.col("count").cast(pl.Float64)
    summed = [c for c in ("bad_t",) if c in steps.columns]
    first = [c for c in steps.columns if c not in keys + ["loss", "count", "nonfinite", "time", "clipped", *summed]]
    return (
        steps.group_by(keys, maintain_order=True)
        .agg(
            ((pl.col("loss").cast(pl.Float64) * w).sum() / w.sum()).cast(pl.Float32).alias("loss"),
            pl.col("count").sum().cast(pl.Int32),
            pl.col("nonfinite").sum().cast(pl.Int32),
            pl.col("time").min(),
            pl.col("clipped").drop_nulls().first(),
            *[pl.col(c).sum() for c in summed],
            *[pl.col(c).drop_nulls().first() for c in first],
        )
        .select(steps.columns)
    )


def _supersede(df: pl.DataFrame, segs: pl.DataFrame, step_col: str) -> pl.DataFrame:
    if df.height == 0 or segs.filter(pl.col("cutoff").is_not_null()).height == 0:
        return df
    out = df.join(segs.select("rank", "segment", "cutoff"), on=["rank", "segment"], how="left")
    return out.filter(pl.col("cutoff").is_null() | (pl.col(step_col) < pl.col("cutoff"))).drop("cutoff")


def _segment_summary(steps: pl.DataFrame, segs: pl.DataFrame) -> pl.DataFrame:
    kept = steps.group_by("rank", "segment").agg(
        pl.col("step").min().alias("first_step"), pl.col("step").max().alias("last_step"), pl.len().alias("steps")
    )
    return (
        segs.join(kept, on=["rank", "segment"], how="left")
        .with_columns(pl.col("steps").fill_null(0))
        .sort("rank", "segment")
    )


def _merge_step_ranks(steps: pl.DataFrame) -> pl.DataFrame:
    """One row per step: sample-weighted loss over ranks, summed counts; other scalars from the lowest rank."""
    if steps.height == 0:
        return steps.with_columns(pl.lit(0, pl.Int32).alias("n_ranks")).drop("rank")
    if steps["rank"].n_unique() == 1:
        return _sorted(steps, ["step"]).drop("rank").with_columns(pl.lit(1, pl.Int32).alias("n_ranks"))
    summed = [c for c in ("bad_t",) if c in steps.columns]
    lows = [c for c in ("t_min",) if c in steps.columns]
    highs = [c for c in ("t_max",) if c in steps.columns]
    others = [c for c in steps.columns if c not in ("step", "rank", "loss", "count", "nonfinite", "wloss", "clipped",
                                                     *summed, *lows, *highs)]
    w = pl.col("count").cast(pl.Float64)
    return (
        steps.sort("step", "rank")
        .group_by("step", maintain_order=True)
        .agg(
            ((pl.col("loss").cast(pl.Float64) * w).sum() / w.sum()).cast(pl.Float32).alias("loss"),
            pl.col("count").sum().cast(pl.Int32),
            pl.col("nonfinite").sum().cast(pl.Int32),
            pl.col("wloss").mean(),
            pl.col("clipped").any().alias("clipped"),
            *[pl.col(c).sum() for c in summed],
            *[pl.col(c).min() for c in lows],
            *[pl.col(c).max() for c in highs],
            *[pl.col(c).first() for c in others],
            pl.len().cast(pl.Int32).alias("n_ranks"),
        )
        .select([c for c in steps.columns if c != "rank"] + ["n_ranks"])
    )


def merge_moments(df: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Merge (count, mean, m2, min, max, nonfinite, wsum, wmean) rows sharing ``keys`` with Chan's formula."""
    n = pl.col("count").cast(pl.Float64)
    grand = (pl.col("mean") * n).sum().over(keys) / n.sum().over(keys)
    return (
        df.with_columns(
            pl.col("mean").fill_nan(None).fill_null(0.0),
            pl.col("m2").fill_nan(None).fill_null(0.0),
        )
        .with_columns(grand.alias("_grand"))
        .group_by(keys, maintain_order=True)
        .agg(
            pl.col("count").sum(),
            pl.col("_grand").first().alias("mean"),
            (pl.col("m2").sum() + (n * (pl.col("mean") - pl.col("_grand")) ** 2).sum()).alias("m2"),
            pl.col("min").min(),
            pl.col("max").max(),
            pl.col("nonfinite").sum(),
            pl.col("wsum").sum().alias("wsum"),
            ((pl.col("wmean") * pl.col("wsum")).sum() / pl.col("wsum").sum()).alias("wmean"),
        )
        .with_columns(
            pl.when(pl.col("count") > 0).then(pl.col("mean")).otherwise(None).alias("mean"),
            pl.when(pl.col("count") > 0).then(pl.col("m2")).otherwise(None).alias("m2"),
            pl.when(pl.col("wsum") > 0).then(pl.col("wsum")).otherwise(None).alias("wsum"),
        )
    )


def _merge_bin_ranks(bins: pl.DataFrame) -> pl.DataFrame:
    if bins.height == 0:
        return bins.drop("rank", "segment")
    if bins["rank"].n_unique() == 1:
        return _sorted(bins.drop("rank", "segment"), ["split", "step_lo", "bin"])
    return merge_moments(bins, ["split", "step_lo", "step_hi", "bin"]).sort("split", "step_lo", "bin")


# ----------------------------------------------------------------------------
# Single-file export


def export_run(run: Run, out) -> Path:
    """Write the run as one Parquet file (tables stacked with a ``table`` column; run.json and schedule in metadata)."""
    out = Path(out)
    pieces = []
    for name, df in (
        ("steps", run.steps_by_rank),
        ("bins", _bins_with_rank(run)),
        ("probes", run.probes),
        ("optimum", run.optimum),
    ):
        if df is not None and df.height:
            pieces.append(df.with_columns(pl.lit(name).alias("table")))
    if not pieces:
        raise RunFormatError(f"{run.path}: nothing to export, the run has no rows")
    table = pl.concat(pieces, how="diagonal_relaxed").to_arrow()
    md = {EXPORT_META_KEY: json.dumps(run.meta, default=str).encode()}
    if run.closes.height:
        md[EXPORT_CLOSES_KEY] = json.dumps({"closes": run.closes.to_dicts(), "plans": run.segment_plans}).encode()
    if run.schedule is not None:
        md[EXPORT_SCHEDULE_KEY] = json.dumps(
            {c: run.schedule[c].to_list() for c in ("alpha_bar", "one_minus_alpha_bar")}
        ).encode()
    if out.exists() and not out.is_file():
        raise DiffauditError(f"{out}: exists and is not a regular file; not replacing it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        rf.write_table_atomic(table, out, metadata=md)
    except OSError as e:
        raise DiffauditError(f"{out}: cannot write the export ({e.strerror or e})") from None
    return out


def _bins_with_rank(run: Run) -> pl.DataFrame:
    # exported bins are already merged over ranks and resolved over segments
    return run.bins.with_columns(pl.lit(0, pl.Int32).alias("rank"), pl.lit(1, pl.Int32).alias("segment"))


def _load_export(p: Path) -> Run:
    if p.stat().st_size == 0:
        raise RunFormatError(f"{p}: zero-byte file, not an exported run")
    try:
        pf = pq.ParquetFile(p)
        md = pf.schema_arrow.metadata or {}
    except Exception as e:
        raise RunFormatError(f"{p}: not a readable Parquet file ({_short(e)})") from None
    if EXPORT_META_KEY not in md:
        raise RunFormatError(f"{p}: a Parquet file but not an exported diffaudit run (no {EXPORT_META_KEY.decode()} metadata)")
    try:
        meta = json.loads(md[EXPORT_META_KEY])
    except ValueError as e:
        raise RunFormatError(f"{p}: exported run.json metadata is not valid JSON ({e})") from None
    meta = _check_meta(meta, p)
    schedule = alpha_bar = one_minus = None
    if EXPORT_SCHEDULE_KEY in md:
        s = json.loads(md[EXPORT_SCHEDULE_KEY])
        alpha_bar, one_minus = np.array(s["alpha_bar"], np.float64), np.array(s["one_minus_alpha_bar"], np.float64)
        with np.errstate(divide="ignore"):
            schedule = pl.DataFrame(
                {
                    "t": np.arange(alpha_bar.size, dtype=np.int64),
                    "alpha_bar": alpha_bar,
                    "one_minus_alpha_bar": one_minus,
                    "log_snr": np.log(alpha_bar) - np.log(one_minus),
                }
            )
    try:
        process = Process.from_meta(meta, alpha_bar, one_minus)
        data = pl.from_arrow(pf.read())
    except DiffauditError as e:
        raise RunFormatError(f"{p}: {e}") from None
    except Exception as e:
        raise RunFormatError(f"{p}: cannot be read ({_short(e)})") from None
    tables = {}
    for kind in rf.PART_KINDS:
        sub = data.filter(pl.col("table") == kind)
        keep = [c for c in sub.columns if c != "table" and (c in rf.SCHEMAS[kind].names or sub[c].null_count() < sub.height)]
        tables[kind] = sub.select(keep) if sub.height else None
    run = _assemble(p, meta, process, schedule, tables, [], resolved=True)
    if EXPORT_CLOSES_KEY in md:
        try:
            c = json.loads(md[EXPORT_CLOSES_KEY])
            run.closes = pl.DataFrame(c["closes"], schema=CLOSES_SCHEMA)
            run.segment_plans = {int(k): int(v) for k, v in c.get("plans", {}).items()}
        except Exception as e:  # the data are fine; only the lifecycle is unknown
            run.problems.append(Problem(str(p), f"close markers in the export's metadata are unreadable ({_short(e)})"))
    return run
