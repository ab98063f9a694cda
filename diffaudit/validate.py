"""The run boundary: run.json parsed into a checked structure, parts checked against their schema and invariants.

Everything a run holds was written by someone else (a logger of another version,
a script, a copy, an attacker who names runs in CI), so nothing read from disk is
used before it is checked here. Two outcomes only:

- ``run.json`` (or an export's metadata) that breaks the format is fatal: one
  :class:`~diffaudit.errors.RunFormatError` line naming the file and the field.
- A part that breaks its schema or an invariant is *damaged*: the loader skips it
  and names it (fatal with ``--strict``). :func:`schema_violation` and
  :func:`first_violations` (over the rules of :func:`invariants`) say why, in words.

Reads are bounded: files are opened only if they are regular files (a FIFO would
block forever), JSON only up to :data:`MAX_JSON_BYTES` and :data:`MAX_JSON_DEPTH`,
and a part's rows to what the run's steps, windows and bins can produce
(:func:`max_part_rows`): the careful reader refuses a part whose footer claims more
before reading a page, and the fast reader, one scan of all parts, stops after that
many rows per part in all, so a decompression bomb is never materialised.
Schemas are checked as (name, type name) pairs (:func:`schema_violation`), from
pyarrow's view of a part (:func:`arrow_types`) or polars' (:func:`polars_types`).
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import polars as pl

from diffaudit import runformat as rf
from diffaudit.errors import RunFormatError
from diffaudit.noise import PREDICTIONS, PROCESSES

if TYPE_CHECKING:
    import pyarrow as pa

MAX_JSON_BYTES = 64 << 20  # run.json with a data_spectrum of 10^6 eigenvalues is ~25 MB
MAX_JSON_DEPTH = 100  # nesting of run.json (the user's config included), markers and export metadata
MAX_SCHEDULE_ROWS = 10_000_000  # timesteps of a discrete schedule
ROWS_MARGIN = 2  # footer row counts up to this multiple of what the logger can write are accepted
ROWS_FLOOR = 65_536  # ... and never fewer than this many (small runs, hand-written parts)
DEFAULT_WINDOW, DEFAULT_FLUSH_EVERY = 100, 1000
FLOAT32_MAX = 3.4028234663852886e38  # losses are logged as float32: no mean of them lies beyond  # the logger's defaults, for run.json without them


# ----------------------------------------------------------------------------
# Regular files only, bounded


def open_regular(path, what: str = "file"):
    """Open ``path`` for binary reading if it is a regular file; else RunFormatError.

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer;
    the type is then checked on the open descriptor (no race with a swap after a stat).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise RunFormatError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RunFormatError(f"{path}: not a regular file ({file_kind(st.st_mode)}); not read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a plain file"


def read_json_file(path, what: str = "file"):
    """The JSON value of a regular file of at most MAX_JSON_BYTES; RunFormatError (one line) otherwise."""
    with open_regular(path, what) as f:
        data = f.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise RunFormatError(f"{path}: larger than {MAX_JSON_BYTES >> 20} MiB; not a diffaudit {what}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RunFormatError(f"{path}: not a text file") from None
    return loads(text, path)


def loads(text, where):
    """json.loads with its failures (syntax, huge integers, deep nesting) as one RunFormatError line."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise RunFormatError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as e:
        raise RunFormatError(f"{where}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except (ValueError, TypeError) as e:  # e.g. an integer of more digits than Python converts
        raise RunFormatError(f"{where}: not valid JSON ({str(e).splitlines()[0][:120]})") from None
    if json_depth(obj) > MAX_JSON_DEPTH:
        raise RunFormatError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return obj


def json_depth(obj) -> int:
    """Nesting depth of a parsed JSON value (iterative: no recursion limit to hit)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            o = list(o.values())
        if isinstance(o, list):
            deepest = max(deepest, d)
            if d > MAX_JSON_DEPTH:
                return d
            stack.extend((x, d + 1) for x in o)
    return deepest


# ----------------------------------------------------------------------------
# run.json


@dataclass(frozen=True)
class RunMeta:
    """run.json after checking: the fields the readers use, typed; ``raw`` is the whole object."""

    format_version: int
    process: str
    prediction: str | None
    num_bins: int
    num_timesteps: int | None = None
    sigma_min: float | None = None
    sigma_max: float | None = None
    sigma_data: float | None = None
    data_var: float | None = None
    data_spectrum: tuple | None = None
    data_dim: int | None = None
    window: int = DEFAULT_WINDOW
    flush_every: int = DEFAULT_FLUSH_EVERY
    probe_every: int | None = None
    probe_bins: int | None = None
    world_size: int | None = None
    total_steps: int | None = None
    config: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict, repr=False)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _show(v) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, float) else repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


# field -> (check, words) for the optional fields; None is allowed for every one of them
_CHECKS = {
    "num_timesteps": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "sigma_min": (lambda v: _is_num(v) and v > 0, "a positive number"),
    "sigma_max": (lambda v: _is_num(v) and v > 0, "a positive number"),
    "sigma_data": (lambda v: _is_num(v) and v > 0, "a positive number"),
    "data_var": (lambda v: _is_num(v) and v > 0, "a positive finite number or null"),
    "data_spectrum": (lambda v: isinstance(v, list) and len(v) > 0 and all(_is_num(x) and x >= 0 for x in v),
                      "a non-empty list of finite numbers >= 0, or null"),
    "data_dim": (lambda v: _is_int(v) and v >= 1, "a positive integer or null"),
    "window": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "flush_every": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "probe_every": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 or null"),
    "probe_bins": (lambda v: _is_int(v) and v >= 1, "a positive integer or null"),
    "world_size": (lambda v: _is_int(v) and v >= 1, "a positive integer or null"),
    "total_steps": (lambda v: _is_int(v) and v >= 1, "a positive integer or null"),
    "config": (lambda v: isinstance(v, dict), "a JSON object"),
    "run_id": (lambda v: isinstance(v, str), "a string"),
    "created": (lambda v: isinstance(v, str), "a string"),
    "format": (lambda v: v == rf.FORMAT_NAME, f"{rf.FORMAT_NAME!r}"),
    "schedule_from_betas": (lambda v: isinstance(v, bool), "true or false"),
    "alphas_cumprod_dtype": (lambda v: isinstance(v, str), "a string"),
}


def parse_meta(obj, where) -> RunMeta:
    """Check a run's metadata (run.json or an export's copy); RunFormatError naming ``where`` and the field."""
    if not isinstance(obj, dict):
        raise RunFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in ("format_version", "process", "num_bins") if k not in obj]
    if missing:
        raise RunFormatError(f"{where}: missing field(s) {', '.join(missing)}")
    v = obj["format_version"]
    if not _is_int(v) or v < 1:
        raise RunFormatError(f"{where}: format_version must be a positive integer, got {_show(v)}")
    if v > rf.FORMAT_VERSION:
        raise RunFormatError(
            f"{where}: format version {v} is newer than this diffaudit reads ({rf.FORMAT_VERSION}); upgrade diffaudit"
        )
    process = obj["process"]
    if not isinstance(process, str) or process not in PROCESSES:
        got = repr(process) if isinstance(process, str) else _show(process)
        raise RunFormatError(f"{where}: unknown process {got}; expected one of {', '.join(PROCESSES)}")
    nb = obj["num_bins"]
    if not _is_int(nb) or not 1 <= nb <= rf.MAX_BINS:
        raise RunFormatError(f"{where}: num_bins must be an integer from 1 to {rf.MAX_BINS}, got {_show(nb)}")
    pred = obj.get("prediction")
    if pred is not None and (not isinstance(pred, str) or pred not in PREDICTIONS[process]):
        got = repr(pred) if isinstance(pred, str) else _show(pred)
        raise RunFormatError(f"{where}: prediction {got} is not valid for process {process!r}; expected one of "
                             f"{', '.join(PREDICTIONS[process])}")
    for key, (ok, words) in _CHECKS.items():
        val = obj.get(key)
        if val is not None and not ok(val):
            raise RunFormatError(f"{where}: {key} must be {words}, got {_show(val)}")
    lo, hi = obj.get("sigma_min"), obj.get("sigma_max")
    if lo is not None and hi is not None and not lo < hi:
        raise RunFormatError(f"{where}: sigma_min must be below sigma_max, got {_show(lo)} and {_show(hi)}")
    spec = obj.get("data_spectrum")

    def get(k, default=None):
        val = obj.get(k)
        return default if val is None else val

    return RunMeta(
        format_version=v, process=process, prediction=pred, num_bins=nb,
        num_timesteps=obj.get("num_timesteps"), sigma_min=lo, sigma_max=hi, sigma_data=obj.get("sigma_data"),
        data_var=obj.get("data_var"), data_spectrum=None if spec is None else tuple(spec),
        data_dim=obj.get("data_dim"), window=get("window", DEFAULT_WINDOW),
        flush_every=get("flush_every", DEFAULT_FLUSH_EVERY), probe_every=obj.get("probe_every"),
        probe_bins=obj.get("probe_bins"), world_size=obj.get("world_size"), total_steps=obj.get("total_steps"),
        config=get("config", {}), raw=obj,
    )  # fmt: skip


# ----------------------------------------------------------------------------
# Parts: bounded row counts


def max_part_rows(kind: str, meta: RunMeta) -> int:
    """The most rows one part of ``kind`` can hold in this run, with a margin (see the logger's flush rules).

    A flush happens every ``flush_every`` training steps: a steps part holds at most
    that many rows; a bins part one row per bin for each of at most
    ``flush_every // window + 2`` training windows and, per evaluation split, one
    window per evaluated step; a probes part ``probe_bins`` rows per probed step; an
    optimum part one row per bin.
    """
    nb, fe = meta.num_bins, meta.flush_every
    if kind == "steps":
        n = fe
    elif kind == "bins":
        n = nb * (fe // meta.window + 2 + 2 * (fe + 2))
    elif kind == "probes":
        n = (fe + 2) * (meta.probe_bins or nb)
    else:
        n = nb
    return max(ROWS_MARGIN * n, ROWS_FLOOR)


def max_export_rows(size_bytes: int) -> int:
    """The most rows an exported file of this size may claim: logged rows do not compress below ~1 byte each."""
    return max(4 * size_bytes, ROWS_FLOOR)


# ----------------------------------------------------------------------------
# Parts: schema


_INTEGERS = frozenset(f"{s}int{b}" for s in ("", "u") for b in (8, 16, 32, 64))
_FLOATS = frozenset({"float16", "float32", "float64"})
_STRINGS = frozenset({"string", "large_string", "string_view"})


def _arrow_name(t) -> str:
    return {"double": "float64", "float": "float32", "halffloat": "float16"}.get(str(t), str(t))


def arrow_types(schema) -> list[tuple[str, str]]:
    """(name, type name) of each column of a pyarrow schema, types named as the format names them."""
    return [(f.name, _arrow_name(f.type)) for f in schema]


def polars_types(schema) -> list[tuple[str, str]]:
    """(name, type name) of each column of a polars schema, types named as the format (and Arrow) name them."""
    named = {"boolean": "bool", "str": "string", "utf8": "string"}
    out = []
    for n, dtype in schema.items():
        t = str(dtype).lower()
        out.append((n, named.get(t, t)))
    return out


def _fits(expected: str, got: str) -> bool:
    """Whether a stored column type can stand for the schema's type without changing meaning."""
    if expected == got:
        return True
    if expected in _INTEGERS:
        return got in _INTEGERS
    if expected in _FLOATS:
        return got in _FLOATS or got in _INTEGERS
    if expected == "string":
        return got in _STRINGS
    return False


# Names a user scalar in a steps part may not have: another table's columns, the export's `table`,
# the loader's own. An old logger accepted some; the column is dropped (and named), the steps kept.
RESERVED_STEPS_EXTRAS = frozenset(
    {n for cols in rf.COLUMNS.values() for n, _ in cols} - set(rf.names(rf.STEPS_COLUMNS))
    - set(rf.names(rf.STEPS_OPTIONAL_COLUMNS)) | {"table", "n_ranks", "_part"}
)


def schema_violation(kind: str, columns: list[tuple[str, str]]) -> tuple[str | None, list[str]]:
    """(why the part is damaged or None, reserved extra columns to drop) from its footer's schema, given as
    (name, type name) pairs (:func:`arrow_types` or :func:`polars_types`)."""
    required = dict(rf.COLUMNS[kind])
    names = [n for n, _ in columns]
    missing = [n for n in required if n not in names]
    if missing:
        return f"not a {kind} part (missing column(s) {', '.join(missing)})", []
    if len(set(names)) != len(names):
        return "a column name appears twice", []
    optional = dict(rf.STEPS_OPTIONAL_COLUMNS) if kind == "steps" else {}
    drop = []
    for name, typ in columns:
        want = required.get(name, optional.get(name))
        if want is not None:
            if not _fits(want, typ):
                return f"column {name!r} has type {typ}, expected {want}", []
        elif kind != "steps":
            drop.append(name)  # not a column of this kind: never read
        else:
            if name in RESERVED_STEPS_EXTRAS or name.startswith("_"):
                drop.append(name)
            elif not (typ in _FLOATS or typ in _INTEGERS or typ in ("bool", "null")):
                return f"logged scalar {name!r} has type {typ}, expected a number", []
    return None, drop


def conform(kind: str, table: pa.Table, drop: list[str]) -> pa.Table:
    """The part with its known columns cast to the schema's types (checked by :func:`schema_violation`)."""
    import pyarrow as pa  # the careful reader's: the fast reader never imports pyarrow

    if drop:
        table = table.drop_columns(drop)
    known = {f.name: f.type for f in rf.SCHEMAS[kind]}
    if kind == "steps":
        known.update({f.name: f.type for f in rf.STEPS_OPTIONAL})
    cols, names = [], []
    for name, col in zip(table.column_names, table.columns):
        want = known.get(name)
        if want is None and kind == "steps" and not pa.types.is_boolean(col.type):
            want = pa.float64()  # a user scalar: a number
        if want is not None and col.type != want:
            try:
                col = col.cast(want)  # a safe cast: an integer out of the column's range raises
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise ValueError(f"column {name!r} does not fit {_arrow_name(want)} ({str(e).splitlines()[0][:80]})") from None
        cols.append(col)
        names.append(name)
    return pa.table(cols, names=names)


# ----------------------------------------------------------------------------
# Parts: invariants


def _finite(c: str) -> pl.Expr:
    return pl.col(c).is_not_null() & pl.col(c).is_finite()


def invariants(kind: str, meta: RunMeta, *, export: bool = False) -> list[tuple[str, pl.Expr]]:
    """(words, expression true on a row that breaks it) for every invariant of a part of ``kind``.

    The name's rank and segment are checked against the columns by the loader (an
    export has neither); here: what any row of the kind must satisfy.
    """
    nb = meta.num_bins
    nn = lambda *cs: [(f"{c} is missing (null)", pl.col(c).is_null()) for c in cs]  # noqa: E731
    if kind == "steps":
        rules = nn("step", "rank", "segment", "count", "nonfinite") + [
            ("count < 0", pl.col("count") < 0),
            ("nonfinite < 0", pl.col("nonfinite") < 0),
            ("loss is not finite where count > 0", (pl.col("count") > 0) & ~_finite("loss")),
        ]
        return rules
    if kind == "bins":
        # min and max are the float32 extremes of the same finite samples the mean and m2 come from
        ranged = (pl.col("count") > 0) & _finite("min") & _finite("max")
        slack = 1e-5 * pl.max_horizontal(pl.col("min").abs(), pl.col("max").abs()).cast(pl.Float64) + 1e-12
        return nn("split", "rank", "segment", "step_lo", "step_hi", "bin", "count") + [
            (f"split is not one of {', '.join(rf.SPLITS)}", ~pl.col("split").is_in(list(rf.SPLITS))),
            (f"bin outside 0..{nb - 1}", (pl.col("bin") < 0) | (pl.col("bin") >= nb)),
            ("step_lo > step_hi", pl.col("step_lo") > pl.col("step_hi")),
            ("count < 0", pl.col("count") < 0),
            ("nonfinite < 0", pl.col("nonfinite") < 0),
            ("mean is not finite where count > 0", (pl.col("count") > 0) & ~_finite("mean")),
            ("m2 is negative or not finite where count > 0",
             (pl.col("count") > 0) & ~(_finite("m2") & (pl.col("m2") >= 0))),
            ("mean beyond the float32 range of a logged loss", pl.col("mean").abs() > FLOAT32_MAX),
            ("mean outside [min, max]", ranged & ((pl.col("mean") < pl.col("min") - slack)
                                                  | (pl.col("mean") > pl.col("max") + slack))),
            ("m2 larger than count * (max - min)^2 allows",
             ranged & (pl.col("m2") > pl.col("count") * (pl.col("max") - pl.col("min")).cast(pl.Float64) ** 2
                       * (1 + 1e-6) + slack ** 2 * pl.col("count"))),
            ("wsum < 0", pl.col("wsum") < 0),
        ]
    if kind == "probes":
        return nn("rank", "segment", "step", "probe_bin", "bin_lo", "bin_hi", "count") + [
            ("probe_bin < 0", pl.col("probe_bin") < 0),
            (f"bin_lo..bin_hi outside 0..{nb}",
             (pl.col("bin_lo") < 0) | (pl.col("bin_hi") > nb) | (pl.col("bin_lo") > pl.col("bin_hi"))),
            ("count < 0", pl.col("count") < 0),
            ("grad_norm < 0", pl.col("grad_norm") < 0),
        ]
    return nn("bin", "n") + [  # optimum
        (f"bin outside 0..{nb - 1}", (pl.col("bin") < 0) | (pl.col("bin") >= nb)),
        ("n < 0", pl.col("n") < 0),
        ("loss_opt is negative or not finite where n > 0",
         (pl.col("n") > 0) & ~(_finite("loss_opt") & (pl.col("loss_opt") >= 0))),
        ("stderr < 0", pl.col("stderr") < 0),
    ]


def first_violations(df: pl.DataFrame, rules: list[tuple[str, pl.Expr]], by: str = "_part") -> dict:
    """{group: words of the first rule its rows break} over the groups ``by`` of ``df``."""
    if df.height == 0 or not rules:
        return {}
    flags = df.select(pl.col(by), *[r.fill_null(False).alias(f"_r{i}") for i, (_, r) in enumerate(rules)])
    bad = flags.group_by(by).agg(*[pl.col(f"_r{i}").sum() for i in range(len(rules))])
    out = {}
    for row in bad.iter_rows():
        g, counts = row[0], row[1:]
        for (words, _), n in zip(rules, counts):
            if n:
                out[g] = f"{n} row(s) break the format: {words}"
                break
    return out
