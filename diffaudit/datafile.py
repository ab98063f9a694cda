"""Training samples from a file: ``.npy``, ``.npz`` or Parquet, as one (N, d) float array.

``diffaudit optimum`` needs the very samples a model was trained on, in the
scaling it saw; they come in whatever container the user saved them in. Every
format ends in the same shape, one row per sample with its elements flattened
(an (N, 32, 32, 3) image array becomes (N, 3072)), and every way a file can be
unusable ends in one :class:`~diffaudit.errors.DataError` line that names the
file. Values are not checked here (NaN, dimension against a run): that is
:func:`diffaudit.optimum.check_data`'s job, once, for every source of data.

Large ``.npy`` files are memory-mapped, not read: the estimators stream them
in chunks, so a data set larger than RAM still works (at disk speed).
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from diffaudit.errors import DataError

EXTENSIONS = (".npy", ".npz", ".parquet")
MMAP_BYTES = 256 << 20  # .npy files above this are memory-mapped instead of read into memory
NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"

__all__ = ["EXTENSIONS", "load_samples"]


def load_samples(path, *, key: str | None = None, column: str | None = None) -> np.ndarray:
    """Return the samples in ``path`` as an (N, d) float array (float32 unless stored as float64).

    ``key`` picks one array of an ``.npz`` (needed when it holds several);
    ``column`` picks one column of a Parquet file (a list column, one sample per
    row, or a numeric one). Without ``column``, a Parquet file with one list
    column gives its rows, and otherwise its numeric columns give one element each.
    """
    p = Path(path)
    ext = p.suffix.lower()
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if not p.is_file():
        raise DataError(f"{p}: not a file")
    if ext not in EXTENSIONS:
        what = f"'{p.suffix}'" if p.suffix else "no extension"
        raise DataError(f"{p}: unknown file type ({what}); expected {', '.join(EXTENSIONS)}")
    if key is not None and ext != ".npz":
        raise DataError(f"{p}: --key picks an array of an .npz file; this is a {ext} file")
    if column is not None and ext != ".parquet":
        raise DataError(f"{p}: --column picks a column of a Parquet file; this is a {ext} file")
    if ext == ".npy":
        x = _read_npy(p)
    elif ext == ".npz":
        x = _read_npz(p, key)
    else:
        x = _read_parquet(p, column)
    return _as_samples(x, p)


# ----------------------------------------------------------------------------
# Containers


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:160]


def _magic(p: Path, ext: str, expected: bytes, what: str) -> None:
    """Refuse a file whose first bytes are not the container's, before numpy guesses (it would try a pickle)."""
    try:
        with open(p, "rb") as f:
            head = f.read(len(expected))
    except OSError as e:
        raise DataError(f"{p}: cannot be read ({e.strerror or e})") from None
    if not head:
        raise DataError(f"{p}: empty file (0 bytes)")
    if head != expected:
        raise DataError(f"{p}: not a valid {ext} file (no {what} header)")


def _read_npy(p: Path) -> np.ndarray:
    _magic(p, ".npy", NPY_MAGIC, "NumPy")
    try:
        big = p.stat().st_size > MMAP_BYTES
        return np.load(p, mmap_mode="r" if big else None, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):  # an object array: only a pickle could rebuild it
            raise DataError(f"{p}: holds Python objects, not numbers (an object array)") from None
        raise DataError(f"{p}: not a valid .npy file ({_short(e)})") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{p}: not a valid .npy file ({_short(e)})") from None


def _read_npz(p: Path, key: str | None) -> np.ndarray:
    _magic(p, ".npz", ZIP_MAGIC, "zip")
    try:
        with np.load(p, allow_pickle=False) as z:
            names = list(z.files)
            if not names:
                raise DataError(f"{p}: the .npz file holds no arrays")
            if key is None:
                if len(names) > 1:
                    raise DataError(f"{p}: holds {len(names)} arrays ({', '.join(names)}); pick one with --key")
                key = names[0]
            elif key not in names:
                raise DataError(f"{p}: no array {key!r}; it holds {', '.join(names)}")
            x = z[key]
            if not isinstance(x, np.ndarray):  # numpy hands back the raw bytes of a member that is no .npy
                raise DataError(f"{p}: member {key!r} is not a NumPy array")
            return x
    except DataError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(f"{p}: array {key!r} holds Python objects, not numbers (an object array)") from None
        raise DataError(f"{p}: not a valid .npz file ({_short(e)})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{p}: not a valid .npz file ({_short(e)})") from None


def _read_parquet(p: Path, column: str | None) -> np.ndarray:
    try:
        with open(p, "rb") as f:  # a file object: the path is never taken for a dataset or a pattern
            table = pq.read_table(f)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{p}: not a valid Parquet file ({_short(e)})") from None
    if column is not None:
        if column not in table.column_names:
            raise DataError(f"{p}: no column {column!r}; it has {', '.join(table.column_names) or 'none'}")
        table = table.select([column])
    if table.num_columns == 0:
        raise DataError(f"{p}: the Parquet file has no columns")
    lists = [f.name for f in table.schema if _is_list(f.type)]
    if lists:
        if table.num_columns > 1:
            raise DataError(
                f"{p}: has list column(s) {', '.join(lists)} beside other columns; pick the samples with --column"
            )
        return _list_column(table.column(0), p)
    bad = [f"{f.name} ({f.type})" for f in table.schema if not _is_number(f.type)]
    if bad:
        raise DataError(f"{p}: non-numeric column(s) {', '.join(bad)}; pick the samples with --column")
    for name in table.column_names:
        if table.column(name).null_count:
            raise DataError(f"{p}: column {name!r} has missing values (null)")
    if table.num_rows == 0:
        raise DataError(f"{p}: no samples (N = 0)")
    return np.column_stack([table.column(n).to_numpy() for n in table.column_names])


def _is_list(t) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _is_number(t) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _list_column(col, p: Path) -> np.ndarray:
    """One sample per row of a (possibly nested) list column; every row must have the same shape."""
    arr = col.combine_chunks()
    n = len(arr)
    if n == 0:
        raise DataError(f"{p}: no samples (N = 0)")
    shape = []
    while _is_list(arr.type):
        if len(arr) == 0:
            raise DataError(f"{p}: samples have no values (empty lists)")
        if arr.null_count:
            raise DataError(f"{p}: the list column has missing values (null lists)")
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        odd = np.flatnonzero(lengths != lengths[0])
        if odd.size:
            r = int(odd[0]) // (len(arr) // n)  # the sample that list belongs to
            raise DataError(
                f"{p}: ragged lists: sample {r} has a list of {int(lengths[odd[0]])} values where sample 0 "
                f"has {int(lengths[0])}; every sample needs the same shape"
            )
        shape.append(int(lengths[0]))
        arr = arr.flatten()
    if not _is_number(arr.type):
        raise DataError(f"{p}: the list column holds {arr.type}, not numbers")
    if arr.null_count:
        raise DataError(f"{p}: the list column has missing values (null)")
    return arr.to_numpy(zero_copy_only=False).reshape(n, *shape)


# ----------------------------------------------------------------------------
# One shape for every container


def _as_samples(x: np.ndarray, p: Path) -> np.ndarray:
    if x.dtype.names is not None:
        raise DataError(f"{p}: a structured array ({x.dtype}); save the samples as one plain numeric array")
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"{p}: holds {x.dtype} values, not real numbers")
    if x.ndim == 0:
        raise DataError(f"{p}: a single number; expected an N x d array of samples")
    if x.ndim == 1:
        raise DataError(
            f"{p}: a 1-D array of {x.shape[0]} values; expected an N x d array of samples "
            f"(reshape to ({x.shape[0]}, 1) if each sample is one number)"
        )
    if x.shape[0] == 0:
        raise DataError(f"{p}: no samples (N = 0, shape {x.shape})")
    d = math.prod(x.shape[1:])
    if d == 0:
        raise DataError(f"{p}: samples have no values (shape {x.shape})")
    x = x.reshape(x.shape[0], d)  # a view for C-ordered arrays, memory maps included
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)  # integers (e.g. uint8 pixels) and float16: exact or as exact as stored
    return x
