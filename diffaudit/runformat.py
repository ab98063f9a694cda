"""The on-disk run format: file names, part schemas, atomic writes (shared by logger and loader).

A run is a directory that is only ever added to:

    run.json                       written once, atomically (os.link of a fsynced temp file)
    schedule.parquet               vp processes: t, alpha_bar, one_minus_alpha_bar, log_snr
    segments/r00000-s0001.json     one marker per logger start and rank
    segments/close-r00000-s0001.json
                                   written by a clean close (or a close after an exception) of
                                   that logger; a segment without one never closed: killed,
                                   crashed, or still running
    parts/<kind>-r<rank>-s<segment>-<seq>.parquet
                                   immutable parts, written to ``.<name>.tmp`` then os.replace'd

Readers ignore ``*.tmp`` files (a writer killed mid-write leaves one behind) and
never see a half-written part, because a part only gets its final name once it
is complete and fsynced.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

from typing import TYPE_CHECKING

from diffaudit.errors import RunFormatError

if TYPE_CHECKING:
    import pyarrow as pa

FORMAT_NAME = "diffaudit-run"
FORMAT_VERSION = 1  # bump on incompatible change; readers refuse newer versions

RUN_JSON = "run.json"
SCHEDULE_FILE = "schedule.parquet"
PARTS_DIR = "parts"
SEGMENTS_DIR = "segments"
TMP_SUFFIX = ".tmp"
PART_KINDS = ("steps", "bins", "probes", "optimum")
PART_RE = re.compile(r"^(?P<kind>[a-z]+)-r(?P<rank>\d{5})-s(?P<segment>\d{4})-(?P<seq>\d{6})\.parquet$")
SEGMENT_RE = re.compile(r"^r(?P<rank>\d{5})-s(?P<segment>\d{4})\.json$")
CLOSE_RE = re.compile(r"^close-r(?P<rank>\d{5})-s(?P<segment>\d{4})\.json$")
CLOSE_STATUSES = ("finished", "failed")  # failed: the logger's `with` block exited with an exception

# What a bins row's `split` says: which weights were evaluated on which data. Overfitting is read
# from "eval" against "train" (same weights, other data); EMA from "ema" against "eval" (same data,
# other weights). Never "ema" against "train": an EMA gap is lag, not overfitting.
# "probe_t" and "probe_true" are the time-sensitivity probe's pair (RunLogger.probe_time): the same
# training samples' loss with the noise level the network is told shifted half the range away, and
# with the true one, both binned by the true noise level.
SPLITS = ("train", "eval", "ema", "probe_t", "probe_true")

# More noise-level bins than this is a mistake (a flow run with t*1000 bins, say), not a resolution:
# the logger and the loader refuse it rather than allocate or draw them.
MAX_BINS = 4096
PARQUET_COMPRESSION = "zstd"

# ----------------------------------------------------------------------------
# Schemas. Columns listed here are required in every part of that kind; steps
# parts may carry extra float64 columns (the user's own scalars). Each column is
# (name, type) with the type named as Arrow prints it (float64 for double); the
# pyarrow schemas (STEPS_SCHEMA, ..., SCHEMAS) are built from these on first use,
# so a reader that never writes or reads through pyarrow never imports it.

STEPS_COLUMNS = (
    ("step", "int64"),
    ("segment", "int32"),
    ("rank", "int32"),
    ("time", "float64"),  # unix seconds when log() was first called for this step
    ("loss", "float32"),  # mean of the finite per-sample losses of the step (all micro-batches)
    ("count", "int32"),  # finite per-sample losses in the step
    ("nonfinite", "int32"),  # NaN/Inf per-sample losses in the step (excluded from loss)
    ("grad_norm", "float32"),  # pre-clip total gradient norm, null if not given
    ("clip_threshold", "float32"),
    ("clipped", "bool"),  # grad_norm > clip_threshold, null if either is missing
    ("lr", "float64"),
    ("loss_scale", "float32"),
    ("wloss", "float32"),  # weighted mean sum(w*l)/sum(w), null without weights
)

# Optional logger columns of steps parts (absent in runs of older loggers): timestep checks.
STEPS_OPTIONAL_COLUMNS = (
    ("bad_t", "int32"),  # samples whose timestep cannot belong to the process (excluded from every statistic)
    ("negative", "int32"),  # finite per-sample losses below 0: not a squared error (excluded from every statistic)
    ("t_min", "float64"),  # smallest and largest raw timestep logged in the step (train split)
    ("t_max", "float64"),
)

BINS_COLUMNS = (
    ("split", "string"),  # one of SPLITS
    ("rank", "int32"),
    ("segment", "int32"),
    ("step_lo", "int64"),  # first and last step that contributed to this window
    ("step_hi", "int64"),
    ("bin", "int32"),
    ("count", "int64"),  # finite samples
    ("mean", "float64"),
    ("m2", "float64"),  # sum of squared deviations from mean (Welford/Chan)
    ("min", "float32"),
    ("max", "float32"),
    ("nonfinite", "int64"),
    ("wsum", "float64"),  # sum of per-sample weights, null without weights
    ("wmean", "float64"),  # weighted mean loss, null without weights
)

PROBES_COLUMNS = (
    ("rank", "int32"),
    ("segment", "int32"),
    ("step", "int64"),
    ("probe_bin", "int32"),
    ("bin_lo", "int32"),  # the probe bin covers fine bins [bin_lo, bin_hi)
    ("bin_hi", "int32"),
    ("count", "int32"),
    ("grad_norm", "float32"),  # norm of the gradient of this bin's mean loss; null if count == 0
)

OPTIMUM_COLUMNS = (
    ("bin", "int32"),
    ("loss_opt", "float64"),
    ("stderr", "float64"),
    ("n", "int64"),
)

COLUMNS = {"steps": STEPS_COLUMNS, "bins": BINS_COLUMNS, "probes": PROBES_COLUMNS, "optimum": OPTIMUM_COLUMNS}
_ARROW_SCHEMAS = {"STEPS_SCHEMA": STEPS_COLUMNS, "BINS_SCHEMA": BINS_COLUMNS, "PROBES_SCHEMA": PROBES_COLUMNS,
                  "OPTIMUM_SCHEMA": OPTIMUM_COLUMNS, "STEPS_OPTIONAL": STEPS_OPTIONAL_COLUMNS}


def names(columns) -> list[str]:
    """The names of a column spec (``STEPS_COLUMNS``, ...)."""
    return [n for n, _ in columns]


def arrow_schema(columns):
    """The pyarrow schema of a column spec."""
    import pyarrow as pa

    types = {"int64": pa.int64, "int32": pa.int32, "float64": pa.float64, "float32": pa.float32, "bool": pa.bool_,
             "string": pa.string}
    return pa.schema([(n, types[t]()) for n, t in columns])


def __getattr__(name: str):
    """STEPS_SCHEMA, BINS_SCHEMA, PROBES_SCHEMA, OPTIMUM_SCHEMA, STEPS_OPTIONAL and SCHEMAS as pyarrow schemas,
    built (and pyarrow imported) on first use."""
    if name in _ARROW_SCHEMAS:
        value = arrow_schema(_ARROW_SCHEMAS[name])
    elif name == "SCHEMAS":
        value = {kind: __getattr__(f"{kind.upper()}_SCHEMA") for kind in COLUMNS}
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


# ----------------------------------------------------------------------------
# Names


def part_name(kind: str, rank: int, segment: int, seq: int) -> str:
    return f"{kind}-r{rank:05d}-s{segment:04d}-{seq:06d}.parquet"


def segment_marker_name(rank: int, segment: int) -> str:
    return f"r{rank:05d}-s{segment:04d}.json"


def close_marker_name(rank: int, segment: int) -> str:
    return f"close-r{rank:05d}-s{segment:04d}.json"


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


# ----------------------------------------------------------------------------
# Atomic writes


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_table_atomic(table: pa.Table, path: Path, metadata: dict | None = None) -> None:
    """Write a Parquet file so that ``path`` either does not exist or is complete."""
    import pyarrow.parquet as pq

    path = Path(path)
    tmp = path.with_name("." + path.name + f".{os.getpid()}" + TMP_SUFFIX)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    with open(tmp, "wb") as f:
        pq.write_table(table, f, compression=PARQUET_COMPRESSION)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_json_exclusive(obj: dict, path: Path) -> bool:
    """Create ``path`` atomically with this JSON unless it exists; return True if this call created it."""
    path = Path(path)
    # serialise first: an object JSON cannot hold fails here, before any file exists
    text = json.dumps(obj, indent=1, sort_keys=True, default=str, allow_nan=False) + "\n"
    tmp = path.with_name("." + path.name + f".{os.getpid()}.{uuid.uuid4().hex[:6]}" + TMP_SUFFIX)
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # fails if path exists: the first writer wins, nothing is overwritten
        created = True
    except FileExistsError:
        created = False
    finally:
        os.unlink(tmp)
    _fsync_dir(path.parent)
    return created


# ----------------------------------------------------------------------------
# Optimum parts (written by `diffaudit optimum`, not by the logger)


def write_optimum_part(run_dir, result, *, metadata: dict) -> Path:
    """Add ``result``, an :class:`~diffaudit.optimum.EmpiricalOptimalLoss`, to a run as a new part; return its path.

    The part is ``optimum-r00000-s0000-<seq>.parquet`` (segment 0: no logger
    segment has it) with the next free ``seq``, so readers, which let the highest
    one win per bin, see the newest result, and earlier parts are never touched.
    The file is complete and fsynced before it gets its name, and the name is taken
    with os.link, which fails instead of overwriting when a concurrent writer took
    the same number first (then the next one is tried). ``metadata`` (how the result
    was computed) is stored as JSON under the schema metadata key ``diffaudit.optimum``,
    with the result's estimator and subset size added.
    """
    run_dir = Path(run_dir)
    if not (run_dir / RUN_JSON).is_file():
        raise RunFormatError(f"{run_dir}: not a run directory (no {RUN_JSON})")
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = result.as_dict()
    table = pa.table(
        {
            "bin": pa.array(cols["bin"], pa.int32()),
            "loss_opt": pa.array(cols["loss_opt"], pa.float64()),
            "stderr": pa.array(cols["stderr"], pa.float64()),
            "n": pa.array(cols["n"], pa.int64()),
        },
        schema=arrow_schema(OPTIMUM_COLUMNS),
)
    info = {**metadata, "estimator": result.estimator, "subset_size": int(result.subset_size)}
    table = table.replace_schema_metadata({"diffaudit.optimum": json.dumps(info, sort_keys=True, default=str)})
    parts = run_dir / PARTS_DIR
    parts.mkdir(exist_ok=True)
    tmp = parts / f".optimum-{os.getpid()}-{uuid.uuid4().hex[:6]}.parquet{TMP_SUFFIX}"
    with open(tmp, "wb") as f:
        pq.write_table(table, f, compression=PARQUET_COMPRESSION)
        f.flush()
        os.fsync(f.fileno())
    try:
        taken = [m for m in map(PART_RE.match, os.listdir(parts)) if m and m["kind"] == "optimum"]
        seq = max((int(m["seq"]) for m in taken if int(m["rank"]) == 0 and int(m["segment"]) == 0), default=-1) + 1
        while True:
            path = parts / part_name("optimum", 0, 0, seq)
            try:
                os.link(tmp, path)  # never replaces: a concurrent writer's part keeps its name
                break
            except FileExistsError:
                seq += 1
    finally:
        os.unlink(tmp)
    _fsync_dir(parts)
    return path
