"""Where a run lives: a local directory, or a prefix in object storage (s3://, gs://, ...).

Object stores have no rename and no exclusive create, but they have what the run
format needs: an object written in one upload appears whole or not at all. So a
part is one object written once, exactly as a local part is one file renamed into
place; a killed writer leaves no partial part, and the crash and resume
guarantees hold unchanged. Every rank writes its own parts under the same prefix.

What differs: ``run.json`` is created if absent (check, then put), not
exclusively; two ranks that start at the same moment may both write it, with
the same process and schedule (each checks the other's compatibility when it
reads it back), so the race costs nothing but the run id. The filesystem and its
credentials come from pyarrow (``pyarrow.fs.FileSystem.from_uri``): the usual
environment (AWS_* variables, AWS_ENDPOINT_URL for S3-compatible servers,
GOOGLE_APPLICATION_CREDENTIALS, ...).

pyarrow is imported only when a remote location is opened: reading a local run never needs it.

Readers (every command) copy a remote run into a local cache once
(:func:`sync_run`): parts are immutable, so a later read fetches only the objects
that are new, and the local loader reads the copy.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

from diffaudit.errors import RunFormatError
from diffaudit.runformat import PARQUET_COMPRESSION

CACHE_ENV = "DIFFAUDIT_CACHE"  # where remote runs are copied (default ~/.cache/diffaudit/runs)


def is_url(path) -> bool:
    """True for 's3://bucket/run' and the like; a local path (or file://) is not a URL here."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


def local_path(path) -> Path:
    """A local path from a path or a file:// URL."""
    s = str(path)
    return Path(s[len("file://"):]) if s.startswith("file://") else Path(s)


def _fs(url: str):
    import pyarrow.fs as pafs  # object storage only: a local run never needs it

    try:
        return pafs.FileSystem.from_uri(url)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... with the reason
        raise RunFormatError(f"{url}: cannot open this location ({str(e).splitlines()[0][:200]})") from None


class RemoteStore:
    """A run's prefix in object storage: put whole objects, read, list."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.fs, self.root = _fs(self.url)

    def _p(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def exists(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self._p(rel)).type != pafs.FileType.NotFound

    def put(self, rel: str, data: bytes) -> None:
        with self.fs.open_output_stream(self._p(rel)) as f:  # one upload: the object appears whole or not at all
            f.write(data)

    def get(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self._p(rel)) as f:
            return f.read()

    def list(self, rel: str = "") -> list[tuple[str, int]]:
        """(path relative to the run, size) of every object under ``rel``."""
        import pyarrow.fs as pafs

        base = self._p(rel)
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except OSError as e:
            raise RunFormatError(f"{self.url}: cannot list ({str(e).splitlines()[0][:200]})") from None
        n = len(self.root) + 1
        return sorted((i.path[n:], i.size) for i in infos if i.type == pafs.FileType.File)

    def put_json(self, rel: str, obj: dict) -> None:
        self.put(rel, (json.dumps(obj, indent=1, sort_keys=True, default=str, allow_nan=False) + "\n").encode())

    def put_table(self, rel: str, table) -> None:
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(table, buf, compression=PARQUET_COMPRESSION)
        self.put(rel, buf.getvalue())


def cache_dir(url: str) -> Path:
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "diffaudit" / "runs")
    name = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    tail = "".join(c if c.isalnum() or c in "-_." else "_" for c in url.rstrip("/").rsplit("/", 1)[-1])[:60]
    return root / name / (tail or "run")  # the run keeps its own name in every output


def sync_run(url: str, dest: Path | None = None) -> Path:
    """Copy the run at ``url`` into a local folder (new objects only) and return that folder.

    Parts, run.json and the schedule are written once, so an object already in the copy with the
    same size is not fetched again; markers are small and fetched when new. Files are written
    through a temporary name and a rename, so a local reader never sees half an object.
    """
    store = RemoteStore(url)
    objects = store.list()
    if not any(rel == "run.json" for rel, _ in objects):
        raise RunFormatError(f"{url}: no run here (no run.json under this prefix)")
    dest = Path(dest) if dest is not None else cache_dir(url)
    for rel, size in objects:
        if rel.endswith(".tmp") or rel.startswith("."):
            continue
        target = dest / rel
        if target.is_file() and target.stat().st_size == size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(store.get(rel))
        os.replace(tmp, target)
    return dest


def runs_under(url: str) -> list[str]:
    """The runs a prefix in object storage names: itself when it holds a run.json, else every sub-prefix one level
    down that holds one (a folder of runs). RunFormatError when there is neither."""
    objects = RemoteStore(url).list()
    if any(rel == "run.json" for rel, _ in objects):
        return [url.rstrip("/")]
    names = sorted({rel.split("/", 1)[0] for rel, _ in objects if rel.count("/") == 1 and rel.endswith("/run.json")})
    if not names:
        raise RunFormatError(f"{url}: no run here (no run.json under this prefix, nor one level down)")
    return [f"{url.rstrip('/')}/{n}" for n in names]


def remote_fingerprint(url: str) -> list:
    """(object, size) of every object of the run at ``url``: parts are written once, so a new or longer list means
    a changed run."""
    return RemoteStore(url).list()
