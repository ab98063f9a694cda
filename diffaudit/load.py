"""Reading runs: validate parts, resolve resumed segments, merge ranks, export to one file.

All the ways a run can be damaged are met here, in one place, so every command
behaves the same (the checks themselves live in :mod:`diffaudit.validate`): a
missing, unreadable or ill-typed ``run.json`` or an unknown future format is fatal
(``RunFormatError``, one line naming the file and the field); a damaged part
(truncated, zero bytes, not Parquet, not a regular file, a link out of the run,
wrong columns or types, more rows than the run can produce, a row breaking an
invariant, a copy of another part) is skipped and listed in ``Run.problems``, or
fatal with ``strict=True``; leftover temporary files of a killed writer are listed
and ignored. Paths are literal: parts are read by explicit file list, never by
pattern.

Segments (restarts): each logger start is a new segment of its rank. When
segment k of rank r starts at step S, rows of earlier segments of rank r with
step >= S are superseded; a bins window of an earlier segment is dropped if any
of its steps is superseded (its statistics cannot be split).

Ranks: bin statistics of the same window and bin are merged with Chan's
parallel formula in float64; per-step rows are merged into one row per step
(sample-weighted loss, summed counts).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from diffaudit import runformat as rf
from diffaudit.errors import DiffauditError, RunFormatError
from diffaudit.noise import Process
from diffaudit.store import is_url, local_path, sync_run
from diffaudit.validate import (MAX_SCHEDULE_ROWS, RunMeta, arrow_types, conform, file_kind, first_violations,
                                invariants, loads, max_export_rows, max_part_rows, open_regular, parse_meta,
                                polars_types, read_json_file, schema_violation)

if TYPE_CHECKING:
    import pyarrow as pa

EXPORT_META_KEY = b"diffaudit.run"
EXPORT_SCHEDULE_KEY = b"diffaudit.schedule"
EXPORT_CLOSES_KEY = b"diffaudit.closes"
CLOSES_SCHEMA = {"rank": pl.Int32, "segment": pl.Int32, "status": pl.String, "closed": pl.Float64,
                 "last_step": pl.Int64, "total_steps": pl.Int64, "error": pl.String}
MAX_MARKER_BYTES = 1 << 20  # a segment or close marker is a few hundred bytes


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
    info: RunMeta | None = None  # run.json as checked by the loader (``meta`` is the same object, untyped)

    @property
    def name(self) -> str:
        p = self.path
        return p.stem if p.suffix == ".parquet" else p.name

    @property
    def ranks(self) -> list[int]:
        return sorted(self.segments["rank"].unique().to_list()) if self.segments.height else []

    @property
    def train_bins(self) -> pl.DataFrame:
        return self.split_bins("train")

    @property
    def eval_bins(self) -> pl.DataFrame:
        """Held-out data evaluated with the live weights."""
        return self.split_bins("eval")

    @property
    def ema_bins(self) -> pl.DataFrame:
        """The EMA weights evaluated (on held-out data)."""
        return self.split_bins("ema")

    def split_bins(self, split: str) -> pl.DataFrame:
        """The bins rows of one split, in their order. A loaded run's bins are sorted by split, so a split's rows
        are one stretch of them, returned as a view (no copy: the train rows of a long run are most of its
        memory); rows of a split spread among others' are filtered out, as any frame's would be."""
        b = self.bins
        hit = (b["split"] == split).fill_null(False)
        n = int(hit.sum())
        if n == b.height:
            return b
        if n == 0:
            return b.clear()
        first = int(hit.arg_max())
        if hit.slice(first, n).all():
            return b.slice(first, n)
        return b.filter(hit)

    @property
    def extra_scalars(self) -> list[str]:
        fixed = set(rf.names(rf.STEPS_COLUMNS)) | set(rf.names(rf.STEPS_OPTIONAL_COLUMNS)) | {"n_ranks"}
        return [c for c in self.steps.columns if c not in fixed]


# ----------------------------------------------------------------------------
# Entry point


def load_run(path, *, strict: bool = False, allow_empty: bool = False, cache: dict | None = None) -> Run:
    """Load a run directory or an exported ``.parquet`` file (the path is literal: no glob).

    A URL (``s3://bucket/run``, ``gs://...``) is read through a local copy of its new objects
    (:func:`diffaudit.store.sync_run`); ``file://`` is a local path.
    """
    if is_url(path):
        return load_run(sync_run(str(path)), strict=strict, allow_empty=allow_empty, cache=cache)
    p = local_path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise RunFormatError(f"{p}: no such file or directory") from None
    except OSError as e:
        raise RunFormatError(f"{p}: cannot be read ({e.strerror or e})") from None
    if stat.S_ISREG(st.st_mode):
        return _load_export(p, strict, allow_empty)
    if not stat.S_ISDIR(st.st_mode):
        raise RunFormatError(f"{p}: not a run directory or an exported .parquet file ({file_kind(st.st_mode)})")
    info = _read_meta(p)
    process, schedule = _read_process(p, info)
    problems: list[Problem] = []
    files = _list_parts(p, problems, strict)
    tables = _read_kinds(files, info, problems, strict, cache)
    markers = _segment_markers(p, problems)
    run = _assemble(p, info.raw, process, schedule, tables, problems, markers=markers, files=files, strict=strict)
    run.info = info
    run.closes, run.segment_plans = _close_markers(p, problems)
    if not allow_empty and run.steps.height == 0 and run.bins.height == 0 and run.probes.height == 0:
        detail = f" ({len(problems)} problem(s), first: {problems[0]})" if problems else ""
        raise RunFormatError(f"{p}: the run has no logged steps yet{detail}")
    return run


def _read_kinds(files: dict, info: RunMeta, problems: list[Problem], strict: bool, cache) -> dict:
    """Every kind of part, two kinds read side by side (polars reads without the GIL); problems are kept in kind
    order, and the first error in kind order is raised."""
    found = {kind: [] for kind in files}
    with ThreadPoolExecutor(max_workers=min(2, max(len(files), 1))) as pool:
        futures = {}
        for kind, fs in files.items():
            first = _first_part(kind, fs) if cache is None and len(fs) > FAST_READ_MIN_PARTS else None
            futures[kind] = pool.submit(_read_kind, kind, fs, info, found[kind], strict, cache, first)
        tables = {kind: f.result() for kind, f in futures.items()}
    for kind in files:
        problems.extend(found[kind])
    return tables


def _damaged(problems: list[Problem], strict: bool, where, why: str) -> None:
    """A damaged part (or table of an export): fatal with --strict, else skipped and named."""
    if strict:
        raise RunFormatError(f"{where}: damaged part: {why}")
    problems.append(Problem(str(where), f"damaged part skipped: {why}"))


# ----------------------------------------------------------------------------
# run.json and schedule


def _read_meta(p: Path) -> RunMeta:
    rj = p / rf.RUN_JSON
    if not os.path.lexists(rj):
        try:
            n_parts = sum(1 for e in os.listdir(p / rf.PARTS_DIR) if e.endswith(".parquet"))
        except OSError:
            n_parts = 0
        if n_parts:
            raise RunFormatError(f"{rj}: missing; the directory has {n_parts} part file(s) but no run.json")
        try:
            empty = not os.listdir(p)
        except OSError as e:
            raise RunFormatError(f"{p}: cannot be listed ({e.strerror or e})") from None
        if empty:
            raise RunFormatError(f"{p}: empty directory, not a diffaudit run")
        raise RunFormatError(f"{p}: not a diffaudit run (no run.json)")
    return parse_meta(read_json_file(rj, "run.json"), rj)


def _read_process(p: Path, info: RunMeta) -> tuple[Process, pl.DataFrame | None]:
    schedule = None
    alpha_bar = one_minus = None
    if info.process == "vp":
        sf = p / rf.SCHEDULE_FILE
        if not os.path.lexists(sf):
            raise RunFormatError(f"{sf}: missing; a discrete (vp) run needs its schedule")
        schedule = _read_schedule(sf)
        alpha_bar, one_minus = _schedule_arrays(schedule, sf)
        if info.num_timesteps is not None and info.num_timesteps != alpha_bar.size:
            raise RunFormatError(f"{sf}: {alpha_bar.size} timesteps but run.json says num_timesteps "
                                 f"{info.num_timesteps}")
    return _process(info, alpha_bar, one_minus, p / rf.RUN_JSON), schedule


def _process(info: RunMeta, alpha_bar, one_minus, where) -> Process:
    try:
        return Process.from_meta(info.raw, alpha_bar, one_minus)
    except DiffauditError as e:
        raise RunFormatError(f"{where}: {e}") from None
    except (ValueError, TypeError, OverflowError) as e:
        raise RunFormatError(f"{where}: not a usable process ({_short(e)})") from None


def _read_schedule(sf: Path) -> pl.DataFrame:
    """The schedule file: a regular file, at most MAX_SCHEDULE_ROWS rows (counted from its footer, before any
    page is read), float alpha_bar and one_minus_alpha_bar columns."""
    open_regular(sf, "schedule").close()  # a FIFO or a directory is named, not opened by polars
    try:
        with _polars_read():
            lf = pl.scan_parquet(sf, glob=False, hive_partitioning=False)
            n = lf.select(pl.len()).collect().item()
            schema = lf.collect_schema()
    except _ReadFailed as e:
        raise RunFormatError(f"{sf}: cannot be read ({e})") from None
    if n > MAX_SCHEDULE_ROWS:
        raise RunFormatError(f"{sf}: {n:,} rows, more timesteps than any schedule has ({MAX_SCHEDULE_ROWS:,})")
    types = dict(polars_types(schema))
    for col in ("alpha_bar", "one_minus_alpha_bar"):
        if col not in types:
            raise RunFormatError(f"{sf}: schedule has no column {col!r}")
        if not schema[col].is_float():
            raise RunFormatError(f"{sf}: schedule column {col!r} has type {types[col]}, expected float64")
    try:
        with _polars_read():
            return lf.collect()
    except _ReadFailed as e:
        raise RunFormatError(f"{sf}: cannot be read ({e})") from None


def _schedule_arrays(schedule: pl.DataFrame, where) -> tuple[np.ndarray, np.ndarray]:
    for col in ("alpha_bar", "one_minus_alpha_bar"):
        if col not in schedule.columns:
            raise RunFormatError(f"{where}: schedule has no column {col!r}")
    return schedule["alpha_bar"].to_numpy().astype(np.float64), schedule["one_minus_alpha_bar"].to_numpy().astype(np.float64)


# ----------------------------------------------------------------------------
# Parts


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _list_parts(p: Path, problems: list[Problem], strict: bool) -> dict[str, list[Path]]:
    """The part files of each kind, by name; links out of the run and non-regular files are named, not read."""
    files: dict[str, list[Path]] = {k: [] for k in rf.PART_KINDS}
    parts = p / rf.PARTS_DIR
    try:
        if not stat.S_ISDIR(os.stat(parts).st_mode):
            problems.append(Problem(str(parts), "not a directory; no parts read"))
            return files
        entries = sorted(os.listdir(parts))
    except FileNotFoundError:
        return files
    except OSError as e:
        raise RunFormatError(f"{parts}: cannot be listed ({e.strerror or e})") from None
    root = os.path.realpath(p)
    for entry in entries:
        f = parts / entry
        if entry.endswith(rf.TMP_SUFFIX):
            problems.append(Problem(str(f), "leftover temporary file of an interrupted write, ignored"))
            continue
        m = rf.PART_RE.match(entry)
        if not m or m["kind"] not in files:
            problems.append(Problem(str(f), "unexpected file in parts/, ignored"))
            continue
        if os.path.islink(f) and not _inside(os.path.realpath(f), root):
            _damaged(problems, strict, f, f"a symbolic link to {os.path.realpath(f)}, outside the run; not followed")
            continue
        try:
            mode = os.stat(f).st_mode
        except OSError as e:
            _damaged(problems, strict, f, f"cannot be read ({e.strerror or e})")
            continue
        if not stat.S_ISREG(mode):
            _damaged(problems, strict, f, f"not a regular file ({file_kind(mode)}); not read")
            continue
        files[m["kind"]].append(f)
    return files


class _Damage(Exception):
    """Why one part cannot be used (internal to the part reader)."""


def _footer_rows(pf) -> int:
    return _metadata_rows(pf.metadata)


def _read_part(kind: str, f: Path, limit: int) -> tuple[pa.Table, list[str]]:
    """One part, opened once: its footer checked (row count, schema) before any page is read, then cast to the schema.

    pyarrow, not a polars scan: a damaged page raises a Python exception here, where polars'
    streaming reader can panic (and print a Rust backtrace) before it does.
    """
    import pyarrow.parquet as pq  # the careful reader's: a run its own logger wrote never needs pyarrow

    try:
        fh = open_regular(f)
    except RunFormatError as e:
        raise _Damage(str(e).split(": ", 1)[-1]) from None
    with fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise _Damage("zero-byte file")
        try:
            pf = pq.ParquetFile(fh)
            n = _footer_rows(pf)
            schema = pf.schema_arrow
        except Exception as e:
            raise _Damage(f"not a readable Parquet file ({_short(e)})") from None
        if n > limit:
            raise _Damage(f"{n:,} rows, more than a {kind} part of this run can hold ({limit:,}); not read")
        why, drop = schema_violation(kind, arrow_types(schema))
        if why:
            raise _Damage(why)
        try:
            table = pf.read(use_threads=False).replace_schema_metadata(None)  # small parts: threads cost more
        except Exception as e:
            raise _Damage(f"not a readable Parquet file ({_short(e)})") from None
    try:
        return conform(kind, table, drop), drop
    except ValueError as e:
        raise _Damage(str(e)) from None


FAST_READ_MIN_PARTS = 1  # a single part is read by the careful reader either way


def _first_part(kind: str, files: list[Path]) -> tuple[list[str], list[str], list] | None:
    """(column names, dropped columns, (name, dtype) pairs) of the first part of one kind when its schema passes the careful reader's
    checks: the schema the fast reader holds every other part to. None sends the kind to the part-by-part
    reader, which then names what is wrong.

    Polars reads this footer and, as it reads their pages, every other part's (:func:`_read_all_at_once`), in
    its own threads: checking each in Python first held the GIL for ~0.15 s per 1,000 parts, and pyarrow, which
    parsed them, takes ~0.07 s to import.
    """
    try:
        with _polars_read():
            schema = pl.read_parquet_schema(files[0])  # raises on a duplicate column name, among others
    except _ReadFailed:
        return None
    why, drop = schema_violation(kind, polars_types(schema))
    if why:
        return None
    return list(schema), list(drop), list(schema.items())


def _metadata_rows(md) -> int:
    # the file's count and its row groups' could disagree in a forged footer: the larger one is what a read costs
    return max(md.num_rows, sum(md.row_group(i).num_rows for i in range(md.num_row_groups)))


FAST_READ_GROUP = 64  # parts per polars read of the fast reader (~64,000 rows of a part of 1,000 rows)


def _read_all_at_once(kind: str, files: list[Path], first: tuple, limit: int) -> tuple[pl.DataFrame, list[str]] | None:
    """Every part of one kind in multi-threaded polars reads of FAST_READ_GROUP parts each, held to the first
    part's schema (:func:`_first_part`). None sends the caller to the part-by-part reader; so does any error of
    a read.

    Polars raises for a part whose columns or types differ from the first of its read's (a column missing, an
    extra one, another type), and the first part of each read after the first is held to the run's first part
    here, as the careful reader needs to see them. Each row's part comes from its file's path. Each read stops
    after ``limit`` rows per part in all, so a part whose footer claims far more rows than a part can hold (a
    decompression bomb) costs no more than parts at the limit would; any part over its limit sends the kind to
    the careful reader, which refuses that part unread and names it. Polars can panic on a damaged page,
    printing from Rust: its stderr is silenced for the read, and the part-by-part reader (pyarrow, which
    raises instead) takes over.

    Memory: a read of many parts holds one small chunk per part and column; a frame in one chunk per column
    needs those and the copy at once, and the allocator keeps the freed small chunks a while (about twice the
    kind's size in all). A group at a time, each made one chunk as it is read, costs one group's worth above
    the frame, which keeps one chunk per group.
    """
    names, drop, schema = first
    paths = [str(f) for f in files]
    keep = [n for n in names if n not in drop]
    pieces = []
    try:
        with _polars_read():
            for lo in range(0, len(paths), FAST_READ_GROUP):
                group = paths[lo:lo + FAST_READ_GROUP]
                if lo and list(pl.read_parquet_schema(group[0]).items()) != schema:
                    return None
                df = (pl.scan_parquet(group, glob=False, hive_partitioning=False, include_file_paths="_path",
                                      n_rows=limit * len(group) + 1)
                      .select(*keep, (pl.col("_path").cast(pl.Enum(group)).to_physical().cast(pl.Int32)
                                      + lo).alias("_part"))
                      .collect())
                counts = np.bincount(df["_part"].to_numpy() - lo, minlength=len(group))
                if counts.size != len(group) or counts.max(initial=0) > limit:
                    return None
                # one chunk per column and group, on this kind's thread: every later step reads the columns
                df = df.with_columns(_cast_to_format(kind, df.select(keep)))
                pieces.append(_unfilled(df).rechunk())
                del df
            df = pl.concat(pieces, rechunk=False)
    except _ReadFailed:
        return None
    return df, list(drop)


def _unfilled(df: pl.DataFrame) -> pl.DataFrame:
    """df with each column that holds only nulls (no weights logged, no loss scale: whole columns of many runs)
    made anew, its values never written: the pages of such a column are never touched, and cost no memory."""
    empty = [c for c in df.columns if df[c].null_count() == df.height > 0]
    if not empty:
        return df
    return df.with_columns(pl.Series(c, dtype=df.schema[c]).extend_constant(None, df.height) for c in empty)


def _cast_to_format(kind: str, df: pl.DataFrame) -> list[pl.Expr]:
    """The casts :func:`diffaudit.validate.conform` makes, in polars: known columns to the format's types,
    a logged scalar to a float (strict: a value that does not fit raises)."""
    known = dict(_format_dtypes(kind))
    out = []
    for name, dtype in df.schema.items():
        want = known.get(name)
        if want is None and kind == "steps" and dtype != pl.Boolean:
            want = pl.Float64
        if want is not None and dtype != want:
            out.append(pl.col(name).cast(want, strict=True))
    return out


@functools.lru_cache(maxsize=None)
def _format_dtypes(kind: str) -> tuple:
    columns = rf.COLUMNS[kind] + (rf.STEPS_OPTIONAL_COLUMNS if kind == "steps" else ())
    return tuple((n, _POLARS[t]) for n, t in columns)


_POLARS = {"int64": pl.Int64, "int32": pl.Int32, "float64": pl.Float64, "float32": pl.Float32, "bool": pl.Boolean,
           "string": pl.String}


_SILENCE = threading.Lock()
_silenced = [0, -1]  # readers inside _silenced_stderr, and the saved descriptor of the real stderr


class _ReadFailed(Exception):
    """A polars read failed: its error or panic, in words (internal to this module)."""


@contextlib.contextmanager
def _polars_read():
    """A polars read, its stderr silenced (:func:`_silenced_stderr`); any error it raises, its PanicException (a
    BaseException) included, comes out as :class:`_ReadFailed`. Interrupts and MemoryError pass unchanged."""
    with _silenced_stderr():
        try:
            yield
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except BaseException as e:
            raise _ReadFailed(_short(e)) from None


@contextlib.contextmanager
def _silenced_stderr():
    """File descriptor 2 to /dev/null while any reader is inside (output written from native code, which Python
    cannot catch). Counted under a lock: two kinds read side by side must not save each other's /dev/null."""
    with _SILENCE:
        if _silenced[0] == 0:
            try:
                saved = os.dup(2)
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 2)
                os.close(null)
                _silenced[1] = saved
            except OSError:
                _silenced[1] = -1
        _silenced[0] += 1
    try:
        yield
    finally:
        with _SILENCE:
            _silenced[0] -= 1
            if _silenced[0] == 0 and _silenced[1] >= 0:
                os.dup2(_silenced[1], 2)
                os.close(_silenced[1])
                _silenced[1] = -1


# Columns that identify a row: a later part repeating rows of an earlier one is a copy, not new data.
_ROW_KEYS = {
    "steps": ["rank", "segment", "step", "time"],
    "bins": ["split", "rank", "segment", "step_lo", "step_hi", "bin", "count", "mean"],
    "probes": ["rank", "segment", "step", "probe_bin", "count", "grad_norm"],
}


def _read_kind(kind: str, files: list[Path], info: RunMeta, problems: list[Problem], strict: bool,
               cache: dict | None = None, first: tuple | None = None) -> pl.DataFrame | None:
    """Every usable part of one kind in one frame (column ``_part``: index into ``files``); damaged parts named.

    With ``first`` (the first part's schema, from :func:`_first_part`) all parts are read at once when they
    share it; otherwise each part's footer is checked first (regular file, row count, schema), the parts that
    pass are read and stacked;
    then every row is checked against the format's invariants and a part with any bad row is
    dropped whole.
    """
    if not files:
        return None
    limit = max_part_rows(kind, info)
    fast = _read_all_at_once(kind, files, first, limit) if first is not None else None
    if fast is not None:
        df, dropped = fast
        _note_dropped(kind, dropped, files, problems)
    else:
        df = _read_part_by_part(kind, files, limit, problems, strict, cache)
    if df is None:
        return None
    return _check_rows(kind, df, files, info, problems, strict)


def _note_dropped(kind: str, dropped, files: list[Path], problems: list[Problem]) -> None:
    if dropped:
        what = (f"logged scalar(s) {', '.join(sorted(dropped))} have names reserved for the format's own columns"
                if kind == "steps" else f"column(s) {', '.join(sorted(dropped))} are not columns of a {kind} part")
        problems.append(Problem(str(files[0].parent), f"{what}; ignored"))


@dataclass(frozen=True)
class _Decoded:
    """A part read before (the careful reader's cache): its rows are ``frame[offset:offset + rows]``, where
    ``frame`` holds the rows of a group of parts decoded together, in one chunk per column."""

    frame: pl.DataFrame
    offset: int
    rows: int
    drop: tuple
    names: tuple  # the part's own columns (its group's frame may have more)


def _read_part_by_part(kind: str, files: list[Path], limit: int, problems: list[Problem], strict: bool,
                       cache: dict | None) -> pl.DataFrame | None:
    """The careful reader: each part on its own (pyarrow), a damaged one named and skipped.

    Parts are stacked FAST_READ_GROUP at a time into frames of one chunk per column, as they are read (a long
    run's thousands of small Arrow tables would cost a third more than their rows, and a second copy to
    stack). With a ``cache`` (``diffaudit watch``: parts are immutable), a part read before is not read again:
    the cache holds it as its place in the frame of its group, and a group whose parts are all there, in order,
    is that frame again (no copy); a group with a new part is stacked anew from its old frame's rows and the new
    part's.
    """
    dropped, frames, columns = set(), [], {}

    def key_of(f):
        try:
            st = os.stat(f)
        except OSError:
            return None
        return (str(f), st.st_size, st.st_mtime_ns, limit)

    def read(f):
        key = key_of(f) if cache is not None else None
        if key is not None and key in cache:  # a part read before (same name, size, mtime) is not read again
            return key, cache[key]
        try:
            got = _read_part(kind, f, limit)
        except _Damage as d:
            got = d
        if key is not None and isinstance(got, _Damage):
            cache[key] = got
        return key, got

    # pyarrow reads without the GIL: a few threads hide the per-file cost of many small parts
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for lo in range(0, len(files), FAST_READ_GROUP):
            group = files[lo:lo + FAST_READ_GROUP]
            results = list(pool.map(read, group)) if len(group) > 8 else [read(f) for f in group]
            good = []  # (index into files, cache key, what was read or cached)
            for i, (f, (key, got)) in enumerate(zip(group, results), lo):
                if isinstance(got, _Damage):
                    _damaged(problems, strict, f, str(got))
                    continue
                good.append((i, key, got))
                dropped.update(got.drop if isinstance(got, _Decoded) else got[1])
            if good:
                frames.append(_stack_group(good, cache, columns))
    _note_dropped(kind, dropped, files, problems)
    _release_arrow_memory()
    if not frames:
        return None
    # one frame: parts with other user scalars get nulls for the columns they lack; the columns in the order
    # of their first appearance, `_part` after the first part's own
    return pl.concat(frames, how="diagonal_relaxed", rechunk=False).select(list(columns))


def _release_arrow_memory() -> None:
    """Hand the pages pyarrow's allocator kept from the parts it decoded (their rows are in polars frames now)
    back to the system: mimalloc keeps some for reuse (~16 MB after the 2,000 parts of 1,000,000 steps)."""
    import pyarrow as pa

    with contextlib.suppress(AttributeError):  # pyarrow < 9
        pa.default_memory_pool().release_unused()


def _stack_group(good: list, cache: dict | None, columns: dict) -> pl.DataFrame:
    """One group's usable parts in one frame (one chunk per column), `_part` their index into the kind's files;
    their cache entries pointed at it. ``columns`` gathers the column names in order of first appearance."""
    idx = [i for i, _, _ in good]
    got = [g for _, _, g in good]
    rows = [g.rows if isinstance(g, _Decoded) else g[0].num_rows for g in got]
    first = got[0]
    if (isinstance(first, _Decoded) and all(isinstance(g, _Decoded) and g.frame is first.frame for g in got)
            and [g.offset for g in got] == np.cumsum([0] + rows[:-1]).tolist() and sum(rows) == first.frame.height):
        frame = first.frame  # the same parts as the last time: their frame as it is
    else:
        pieces = [g.frame.slice(g.offset, g.rows) if isinstance(g, _Decoded) else pl.from_arrow(g[0]) for g in got]
        frame = _unfilled(pl.concat(pieces, how="diagonal_relaxed", rechunk=True) if len(pieces) > 1
                          else pieces[0].rechunk())
        del pieces
        if cache is not None:
            offset = 0
            for (_, key, g), n in zip(good, rows):
                if key is not None:
                    drop, names = ((g.drop, g.names) if isinstance(g, _Decoded)
                                   else (tuple(g[1]), tuple(g[0].column_names)))
                    cache[key] = _Decoded(frame, offset, n, drop, names)
                offset += n
    for g in got:  # the columns of each part as it was read (its group's frame may have more)
        for name in (g.names if isinstance(g, _Decoded) else g[0].column_names):
            columns.setdefault(name, None)
        columns.setdefault("_part", None)
    return frame.with_columns(pl.Series("_part", np.repeat(np.array(idx, np.int32), rows), pl.Int32))


def _part_spans(kind: str, df: pl.DataFrame, rules: list[tuple[str, pl.Expr]], names: dict | None) -> pl.DataFrame:
    """One pass over the rows, one row per part: ``_bad`` (some row breaks an invariant, or holds another rank or
    segment than ``names`` gives the part), and for parts with ranks its rank, segment and step span."""
    broken = pl.any_horizontal([r.fill_null(False) for _, r in rules]).any().alias("_bad") if rules else pl.lit(False)
    aggs = [broken]
    if names is not None:
        lo, hi = ("step_lo", "step_hi") if kind == "bins" else ("step", "step")
        aggs += [pl.col("rank").first(), pl.col("segment").first(), pl.col(lo).min().alias("lo"),
                 pl.col(hi).max().alias("hi"), pl.col("rank").n_unique().alias("nr"),
                 pl.col("segment").n_unique().alias("ns"), pl.col("rank").min().alias("rmin"),
                 pl.col("rank").max().alias("rmax"), pl.col("segment").min().alias("smin"),
                 pl.col("segment").max().alias("smax")]
    # streaming: the invariants are evaluated a morsel at a time, not as whole-column temporaries (~0.1 s and
    # ~180 MB of fresh pages less for a 1,000,000-row kind)
    span = df.lazy().group_by("_part").agg(aggs).collect(engine="streaming")
    if names is None:
        return span
    name_rank = pl.col("_part").replace_strict({i: r for i, (r, _) in names.items()}, return_dtype=pl.Int64)
    name_seg = pl.col("_part").replace_strict({i: g for i, (_, g) in names.items()}, return_dtype=pl.Int64)
    elsewhere = ((pl.col("rmin") != name_rank) | (pl.col("rmax") != name_rank)  # nulls: the "missing" rules' job
                 | (pl.col("smin") != name_seg) | (pl.col("smax") != name_seg)).fill_null(False)
    return span.with_columns(pl.col("_bad") | elsewhere)


def _overlapping_parts(df: pl.DataFrame, span: pl.DataFrame) -> pl.DataFrame:
    """The rows of the parts whose steps overlap another part's of the same rank and segment: only those can
    repeat another part's rows (a row's keys hold its rank, segment and step), so the copy check looks at
    them alone. A logger writes no overlapping parts; a copied or re-sent part overlaps its original."""
    span = span.sort("rank", "segment", "lo")
    part, rank, seg = span["_part"].to_numpy(), span["rank"].to_numpy(), span["segment"].to_numpy()
    start, end = span["lo"].to_numpy(), span["hi"].to_numpy()
    mixed = (span["nr"].to_numpy() > 1) | (span["ns"].to_numpy() > 1)  # rows of several ranks: check it whole
    same = np.r_[False, (rank[1:] == rank[:-1]) & (seg[1:] == seg[:-1])]
    reach = np.empty(end.size, end.dtype)  # the furthest step any earlier part of the group reaches
    for i in range(end.size):
        reach[i] = max(reach[i - 1], end[i - 1]) if same[i] else np.iinfo(np.int64).min
    group = np.cumsum(~same)  # one id per (rank, segment)
    overlapping = np.zeros(int(group.max()) + 1 if group.size else 0, bool)
    overlapping[group[same & (start <= reach)]] = True  # a group in which some part overlaps an earlier one
    hit = overlapping[group] | mixed  # all of such a group's parts are checked
    if not hit.any():
        return df.clear()
    if hit.all():
        return df
    return df.filter(pl.col("_part").is_in(part[hit].tolist()))


def _check_rows(kind: str, df: pl.DataFrame, files: list[Path], info: RunMeta, problems: list[Problem],
                strict: bool) -> pl.DataFrame:
    """Every row against the format's invariants; a part with any bad row, or repeating another's rows, is dropped.

    One pass finds the parts with a bad row (usually none); the words for each come from those parts' rows alone.
    """
    rules = invariants(kind, info)
    names = None
    if kind != "optimum":
        named = [rf.PART_RE.match(f.name) for f in files]
        names = {i: (int(m["rank"]), int(m["segment"])) for i, m in enumerate(named)}
        by_part = lambda key: pl.col("_part").replace_strict(  # noqa: E731
            {i: int(m[key]) for i, m in enumerate(named)}, return_dtype=pl.Int32)
    span = _part_spans(kind, df, rules, names)
    suspect = span.filter(pl.col("_bad"))["_part"].to_list()
    bad = {}
    if suspect:
        if names is not None:
            rules.insert(0, ("rows of another rank or segment than the file name says (a part of another run, or "
                             "a renamed file)", (pl.col("rank") != by_part("rank")) | (pl.col("segment") != by_part("segment"))))
        bad = first_violations(df.filter(pl.col("_part").is_in(suspect)), rules)
    if kind in _ROW_KEYS:
        keys = _ROW_KEYS[kind]
        first = _overlapping_parts(df, span).select(pl.col("_part"), pl.col("_part").min().over(keys).alias("_first"))
        copies = (first.filter(pl.col("_first") < pl.col("_part")).group_by("_part")
                  .agg(pl.len().alias("n"), pl.col("_first").min()))
        for part, n, src in copies.iter_rows():
            bad.setdefault(part, f"repeats {n} row(s) of {files[src].name} (a copied or duplicated part)")
    for part in sorted(bad):
        _damaged(problems, strict, files[part], bad[part])
    return df.filter(~pl.col("_part").is_in(list(bad))) if bad else df


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:160]


# ----------------------------------------------------------------------------
# Assembly: segments, ranks


def _empty(kind: str) -> pl.DataFrame:
    return pl.DataFrame(schema={n: _POLARS[t] for n, t in rf.COLUMNS[kind]})


def _assemble(path, meta, process, schedule, tables, problems, resolved: bool = False, markers: dict | None = None,
              files: dict | None = None, strict: bool = False) -> Run:
    frames = {k: (t if t is not None and t.height else _empty(k)) for k, t in tables.items()}
    steps, bins, probes = frames["steps"], frames["bins"], frames["probes"]
    steps = _collapse_split_steps(steps, path, problems, (files or {}).get("steps"))
    steps, bins, probes = (df.drop("_part") if "_part" in df.columns else df for df in (steps, bins, probes))
    segs = _segment_starts(steps, bins, None if resolved else markers)
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
        opt = frames["optimum"]
        opt = opt.drop("_part") if "_part" in opt.columns else opt
        optimum = opt.with_row_index("_i").sort("_i").unique("bin", keep="last").drop("_i").sort("bin")
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


ORDER_CHECK_STRETCH = 1 << 16  # rows compared with the row before at a time (the copies it makes: a stretch's)


def _sorted(df: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """df sorted by keys; parts read in name order usually are already, and checking is O(n), a stretch of rows at
    a time (each row against the one before it, across stretches too)."""
    if df.height < 2:
        return df
    k = df.select(keys)
    # lexicographic "cur >= prev" row by row, built from the last key to the first
    ok = pl.lit(True)
    for c in reversed(keys):
        ok = (pl.col(c) > pl.col(f"{c}_p")) | ((pl.col(c) == pl.col(f"{c}_p")) & ok)
    for a in range(0, df.height - 1, ORDER_CHECK_STRETCH):
        sub = k.slice(a, ORDER_CHECK_STRETCH + 1)
        prev, cur = sub.slice(0, sub.height - 1), sub.slice(1)
        both = pl.concat([cur, prev.rename({c: f"{c}_p" for c in keys})], how="horizontal")
        if not both.select(ok.all()).item():
            return df.sort(keys)
    return df


# A segment of another rank supersedes only if its logger started this much later: the ranks of
# one launch start within seconds of each other, a restart from a checkpoint comes much later.
RESTART_GAP_S = 60.0


def _small_json(f: Path, problems: list[Problem], what: str):
    """A marker's JSON object, or None (named in problems) when it is not a small regular file of a JSON object."""
    try:
        with open_regular(f, what) as fh:
            data = fh.read(MAX_MARKER_BYTES + 1)
        if len(data) > MAX_MARKER_BYTES:
            raise RunFormatError(f"{f}: larger than {MAX_MARKER_BYTES >> 20} MiB")
        obj = loads(data.decode("utf-8", errors="replace"), f)
    except RunFormatError as e:
        problems.append(Problem(str(f), f"{what} unreadable ({str(e).split(': ', 1)[-1]}), ignored"))
        return None
    if not isinstance(obj, dict):
        problems.append(Problem(str(f), f"{what} is not a JSON object, ignored"))
        return None
    return obj


def _marker_files(p: Path, problems: list[Problem]) -> list[Path]:
    d = p / rf.SEGMENTS_DIR
    try:
        return [d / e for e in sorted(os.listdir(d))]
    except FileNotFoundError:
        return []
    except OSError as e:
        problems.append(Problem(str(d), f"cannot be listed ({e.strerror or e}); segment markers ignored"))
        return []


def _segment_markers(p: Path, problems: list[Problem] | None = None) -> dict:
    """(rank, segment) -> creation time, from segments/*.json (a missing or bad marker is named and skipped)."""
    problems = [] if problems is None else problems
    out = {}
    for f in _marker_files(p, problems):
        m = rf.SEGMENT_RE.match(f.name)
        if not m:
            continue
        obj = _small_json(f, problems, "segment marker")
        created = None if obj is None else obj.get("created")
        if isinstance(created, (int, float)) and not isinstance(created, bool) and np.isfinite(created):
            out[(int(m["rank"]), int(m["segment"]))] = float(created)
        elif obj is not None:
            problems.append(Problem(str(f), "segment marker without a valid 'created' time, ignored"))
    return out


def _close_markers(p: Path, problems: list[Problem] | None = None) -> tuple[pl.DataFrame, dict]:
    """Close markers (segments/close-*.json) as a frame, and each rank's newest planned total_steps."""
    problems = [] if problems is None else problems
    rows, plans = [], {}
    newest: dict = {}
    for f in _marker_files(p, []):  # a listing failure is already named by _segment_markers
        m = rf.CLOSE_RE.match(f.name)
        sm = rf.SEGMENT_RE.match(f.name)
        if not (m or sm):
            continue
        obj = _small_json(f, [] if sm else problems, "close marker")  # segment markers: named once, above
        if obj is None:
            continue
        rank, seg = int((m or sm)["rank"]), int((m or sm)["segment"])
        if sm:
            ts = obj.get("total_steps")
            if isinstance(ts, int) and not isinstance(ts, bool) and ts > 0 and seg >= newest.get(rank, -1):
                newest[rank], plans[rank] = seg, ts
            continue
        status = obj.get("status")
        if status not in rf.CLOSE_STATUSES:
            problems.append(Problem(str(f), "close marker with an unknown status, ignored"))
            continue

        def num(k, typ):
            v = obj.get(k)
            ok = isinstance(v, typ) and not isinstance(v, bool) and np.isfinite(v) and abs(v) < 2**62
            return v if ok else None

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


def _has_repeated_keys(df: pl.DataFrame, keys: list[str]) -> bool:
    """Whether two rows share ``keys``: O(n) when the rows are already in key order (parts read in name order
    usually are), a stretch of rows at a time; a hash of every key otherwise."""
    ascending = in_order = True  # every row strictly after the one before it, by the keys in order; or after or same
    for a in range(0, df.height - 1, ORDER_CHECK_STRETCH):
        sub = df.slice(a, ORDER_CHECK_STRETCH + 1)
        cols = [sub[k].to_numpy() for k in keys]
        same_as_previous = np.ones(sub.height - 1, bool)
        after = np.zeros(sub.height - 1, bool)
        for c in reversed(cols):  # lexicographic: the first key decides, ties go to the next
            after = (c[1:] > c[:-1]) | ((c[1:] == c[:-1]) & after)
            same_as_previous &= c[1:] == c[:-1]
        ascending = ascending and bool(after.all())
        in_order = in_order and bool((after | same_as_previous).all())
        if not in_order:
            break
    if ascending:
        return False  # strictly increasing: no repeat
    if in_order:
        return True  # in order, and some row repeats the one before it
    return df.select(keys).n_unique() != df.height


def _collapse_split_steps(steps: pl.DataFrame, path, problems: list[Problem], files=None) -> pl.DataFrame:
    """Merge rows of one (rank, segment, step) found more than once, and say why there were several.

    The logger itself splits a step over two parts only when flush() is called in the middle of it:
    then the step is the last of one part and the first of the next. A step number repeated
    anywhere else means the step counter went backwards (an epoch-local counter, say): different
    steps share a number, and their rows are merged because they cannot be told apart.
    """
    keys = ["rank", "segment", "step"]
    if steps.height == 0 or not _has_repeated_keys(steps, keys):
        return steps
    dup = steps.filter(pl.struct(keys).is_duplicated())
    if "_part" in steps.columns:
        span = steps.group_by("_part").agg(pl.col("step").min().alias("_lo"), pl.col("step").max().alias("_hi"))
        g = (dup.group_by(keys).agg(pl.len().alias("n"), pl.col("_part").n_unique().alias("np"),
                                    pl.col("_part").min().alias("p0"), pl.col("_part").max().alias("p1"))
             .join(span.rename({"_part": "p0", "_hi": "hi0"}).drop("_lo"), on="p0")
             .join(span.rename({"_part": "p1", "_lo": "lo1"}).drop("_hi"), on="p1"))
        split = (pl.col("n") == 2) & (pl.col("np") == 2) & (pl.col("hi0") == pl.col("step")) & (pl.col("lo1") == pl.col("step"))
        back = g.filter(~split).sort(keys)
        n_split = g.height - back.height
        if back.height:
            r = back.row(0, named=True)
            where = f" ({files[r['p1']].name})" if files else ""
            problems.append(Problem(str(path), f"the step counter went backwards: {back.height} step number(s) of "
                                               f"rank {r['rank']} segment {r['segment']} were logged again later "
                                               f"(first: step {r['step']}{where}); log() looks like it is given an "
                                               f"epoch-local counter, and rows sharing a step number were merged"))
    else:
        n_split = dup.select(keys).n_unique()
    if n_split:
        problems.append(Problem(str(path), f"{n_split} step(s) were written in two or more parts "
                                           f"(a flush in the middle of a step); their rows were merged"))
    w = pl.col("count").cast(pl.Float64)
    summed = [c for c in ("bad_t", "negative") if c in steps.columns]
    lows = [c for c in ("t_min",) if c in steps.columns]
    highs = [c for c in ("t_max",) if c in steps.columns]
    first = [c for c in steps.columns
             if c not in keys + ["loss", "count", "nonfinite", "time", "clipped", *summed, *lows, *highs]]
    return (
        steps.group_by(keys, maintain_order=True)
        .agg(
            ((pl.col("loss").cast(pl.Float64) * w).sum() / w.sum()).cast(pl.Float32).alias("loss"),
            pl.col("count").sum().cast(pl.Int32),
            pl.col("nonfinite").sum().cast(pl.Int32),
            pl.col("time").min(),
            pl.col("clipped").drop_nulls().first(),
            *[pl.col(c).sum() for c in summed],
            *[pl.col(c).min() for c in lows],
            *[pl.col(c).max() for c in highs],
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
    summed = [c for c in ("bad_t", "negative") if c in steps.columns]
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


def _load_export(p: Path, strict: bool = False, allow_empty: bool = True) -> Run:
    """An exported run: its metadata checked like run.json, each of its tables like a part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open_regular(p, "exported run") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise RunFormatError(f"{p}: zero-byte file, not an exported run")
        try:
            pf = pq.ParquetFile(fh)
            md = pf.schema_arrow.metadata or {}
            n = _footer_rows(pf)
        except Exception as e:
            raise RunFormatError(f"{p}: not a readable Parquet file ({_short(e)})") from None
        if EXPORT_META_KEY not in md:
            raise RunFormatError(f"{p}: a Parquet file but not an exported diffaudit run (no {EXPORT_META_KEY.decode()} metadata)")
        info = parse_meta(loads(md[EXPORT_META_KEY], f"{p} (run metadata)"), f"{p} (run metadata)")
        alpha_bar, one_minus, schedule = _export_schedule(p, md, info)
        process = _process(info, alpha_bar, one_minus, p)
        if n > max_export_rows(size):
            raise RunFormatError(f"{p}: its footer claims {n:,} rows, far more than a {size:,}-byte export of a run "
                                 f"can hold; not read")
        typ = pf.schema_arrow.field("table").type if "table" in pf.schema_arrow.names else None
        if typ is None or not (pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_dictionary(typ)):
            raise RunFormatError(f"{p}: an exported run needs a string column 'table' (which table each row is from)")
        try:
            data = pl.from_arrow(pf.read().replace_schema_metadata(None))  # polars panics on non-UTF-8 metadata
        except Exception as e:
            raise RunFormatError(f"{p}: cannot be read ({_short(e)})") from None
    problems: list[Problem] = []
    data = data.with_columns(pl.col("table").cast(pl.String))
    unknown = data.filter(~pl.col("table").is_in(list(rf.PART_KINDS)) | pl.col("table").is_null())
    if unknown.height:
        names = ", ".join(repr(v) for v in unknown["table"].unique().sort(nulls_last=True).head(3).to_list())
        _damaged(problems, strict, p, f"{unknown.height} row(s) with an unknown table value ({names}); ignored")
    tables = {kind: _export_table(p, data.filter(pl.col("table") == kind), kind, info, problems, strict)
              for kind in rf.PART_KINDS}
    run = _assemble(p, info.raw, process, schedule, tables, problems, resolved=True)
    run.info = info
    if EXPORT_CLOSES_KEY in md:
        try:
            c = loads(md[EXPORT_CLOSES_KEY], p)
            run.closes = pl.DataFrame(c["closes"], schema=CLOSES_SCHEMA)
            run.segment_plans = {int(k): int(v) for k, v in c.get("plans", {}).items()}
        except Exception as e:  # the data are fine; only the lifecycle is unknown
            run.problems.append(Problem(str(p), f"close markers in the export's metadata are unreadable ({_short(e)})"))
    if not allow_empty and run.steps.height == 0 and run.bins.height == 0 and run.probes.height == 0:
        detail = f" ({len(problems)} problem(s), first: {problems[0].message})" if problems else ""
        raise RunFormatError(f"{p}: the exported run holds no usable rows{detail}")
    return run


def _export_schedule(p: Path, md: dict, info: RunMeta):
    """(alpha_bar, one_minus_alpha_bar, schedule frame) from an export's metadata; all None without one."""
    if EXPORT_SCHEDULE_KEY not in md:
        if info.process == "vp":
            raise RunFormatError(f"{p}: a discrete (vp) run exported without its schedule")
        return None, None, None
    s = loads(md[EXPORT_SCHEDULE_KEY], f"{p} (schedule metadata)")
    try:
        if not isinstance(s, dict):
            raise ValueError(f"a JSON object expected, got {type(s).__name__}")
        a = np.array(s["alpha_bar"], np.float64)
        om = np.array(s["one_minus_alpha_bar"], np.float64)
        if a.ndim != 1 or om.shape != a.shape or not 0 < a.size <= MAX_SCHEDULE_ROWS:
            raise ValueError("alpha_bar and one_minus_alpha_bar must be lists of numbers of one length")
    except KeyError as e:
        raise RunFormatError(f"{p}: the exported schedule has no {e.args[0]!r}") from None
    except (ValueError, TypeError, OverflowError) as e:
        raise RunFormatError(f"{p}: the exported schedule is not usable ({_short(e)})") from None
    with np.errstate(divide="ignore", invalid="ignore"):
        schedule = pl.DataFrame({"t": np.arange(a.size, dtype=np.int64), "alpha_bar": a, "one_minus_alpha_bar": om,
                                 "log_snr": np.log(a) - np.log(om)})
    return a, om, schedule


def _export_table(p: Path, sub: pl.DataFrame, kind: str, info: RunMeta, problems, strict) -> pl.DataFrame | None:
    """The rows of one table of an export, checked like a part of that kind (or None, named, when damaged)."""
    if sub.height == 0:
        return None
    names = rf.names(rf.COLUMNS[kind])
    keep = [c for c in sub.columns if c != "table" and (c in names or sub[c].null_count() < sub.height)]
    sub = sub.select(keep)
    # stacking tables gave shared columns a common type (a float `bin` beside a float scalar): undo it if exact
    for c, typ in rf.COLUMNS[kind]:
        if c in sub.columns and typ.startswith("int") and sub[c].dtype.is_float():
            v = sub[c].drop_nulls()
            if v.len() == 0 or bool((v.is_finite() & (v == v.floor())).all()):
                sub = sub.with_columns(pl.col(c).cast(pl.Int64, strict=False))
    where = f"{p} (table {kind})"
    table = sub.to_arrow()
    why, drop = schema_violation(kind, arrow_types(table.schema))
    if why is None:
        try:
            table = conform(kind, table, drop)
        except Exception as e:
            why = f"a column does not fit its type ({_short(e)})"
    if why is None:
        bad = first_violations(pl.from_arrow(table).with_columns(pl.lit(0).alias("_part")), invariants(kind, info))
        why = bad.get(0)
    if why is not None:
        _damaged(problems, strict, where, why)
        return None
    if drop:
        what = (f"logged scalar(s) {', '.join(sorted(drop))} have names reserved for the format's own columns"
                if kind == "steps" else f"column(s) {', '.join(sorted(drop))} are not columns of a {kind} table")
        problems.append(Problem(where, f"{what}; ignored"))
    return pl.from_arrow(table)
