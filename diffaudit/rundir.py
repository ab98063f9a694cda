"""The logger's side of a run directory (local or in object storage): create or join, claim a segment,
write parts and the close marker. Torch-free; the file layout is :mod:`diffaudit.runformat`'s.

:class:`RunDir` is what a :class:`~diffaudit.logger.RunLogger` writes through. Every write
is whole or absent: a part is written to a temporary name and renamed (an object is one
upload), run.json and segment markers are created exclusively, so two ranks starting
together cannot both create a run or claim one segment.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from diffaudit import runformat as rf
from diffaudit.errors import RunFormatError
from diffaudit.noise import Process
from diffaudit.store import RemoteStore, is_url, local_path

# run.json fields a resumed logger must agree on with the run it joins
COMPAT_KEYS = ("process", "prediction", "num_bins", "num_timesteps", "sigma_min", "sigma_max", "sigma_data", "schedule_sha")


class RunDir:
    """A run's directory (a path) or prefix (``s3://bucket/run``, ...), as the logger writes it."""

    def __init__(self, path):
        self.remote = RemoteStore(str(path)) if is_url(path) else None
        self.path = local_path(path) if self.remote is None else str(path).rstrip("/")

    def open(self, meta: dict, process: Process, *, rank: int, total_steps: int | None) -> tuple[dict, int]:
        """Create the run (or join an existing one that matches ``meta``) and claim this rank's next segment.

        Returns the run's meta (the existing one when joining) and the segment id. The first write."""
        if self.remote is not None:
            meta = _create_or_join_remote(self.remote, meta, process)
            return meta, _new_remote_segment(self.remote, rank, total_steps)
        meta = _create_or_join_run(self.path, meta, process)
        return meta, _new_segment(self.path, rank, total_steps)

    def write_parts(self, tables: dict[str, pa.Table], *, rank: int, segment: int, seq: int) -> None:
        """Write one flush's parts; bins before steps, so a reader that sees a step also sees its window."""
        for kind in ("bins", "probes", "steps"):
            if kind in tables:
                name = rf.part_name(kind, rank, segment, seq)
                if self.remote is not None:  # one object, one upload: it appears whole or not at all
                    self.remote.put_table(f"{rf.PARTS_DIR}/{name}", tables[kind])
                else:
                    rf.write_table_atomic(tables[kind], self.path / rf.PARTS_DIR / name)

    def write_close_marker(self, marker: dict) -> None:
        """``segments/close-r<rank>-s<segment>.json``: this segment ended on purpose (OSError if it cannot be written)."""
        name = rf.close_marker_name(marker["rank"], marker["segment"])
        if self.remote is not None:
            self.remote.put_json(f"{rf.SEGMENTS_DIR}/{name}", marker)
        else:
            rf.write_json_exclusive(marker, self.path / rf.SEGMENTS_DIR / name)


def schedule_table(process: Process) -> pa.Table:
    """schedule.parquet of a vp process: alpha_bar, 1 - alpha_bar and log-SNR per timestep."""
    om = process.one_minus_alpha_bar
    with np.errstate(divide="ignore"):
        log_snr = np.log(process.alpha_bar) - np.log(om)
    return pa.table(
        {
            "t": pa.array(np.arange(process.num_timesteps, dtype=np.int64)),
            "alpha_bar": pa.array(process.alpha_bar),
            "one_minus_alpha_bar": pa.array(om),
            "log_snr": pa.array(log_snr),
        }
    )


def check_compatible_meta(existing: dict, meta: dict, where) -> None:
    """Refuse to join a run whose run.json is not an object, is newer, or differs on a :data:`COMPAT_KEYS` field."""
    if not isinstance(existing, dict):
        raise RunFormatError(f"{where}: cannot resume into this run, run.json is not a JSON object")
    if existing.get("format_version", 0) > rf.FORMAT_VERSION:
        raise RunFormatError(f"{where}: written by a newer diffaudit (format {existing.get('format_version')})")
    for key in COMPAT_KEYS:
        if existing.get(key) != meta.get(key):
            raise RunFormatError(
                f"{where}: the existing run has {key}={existing.get(key)!r} but this logger has "
                f"{key}={meta.get(key)!r}; log to a new directory"
            )


def _create_or_join_run(path: Path, meta: dict, process: Process) -> dict:
    """Create the run directory (run.json, schedule) or check that an existing one matches."""
    path.mkdir(parents=True, exist_ok=True)
    (path / rf.PARTS_DIR).mkdir(exist_ok=True)
    (path / rf.SEGMENTS_DIR).mkdir(exist_ok=True)
    run_json = path / rf.RUN_JSON
    if not run_json.exists() and process.kind == "vp":
        rf.write_table_atomic(schedule_table(process), path / rf.SCHEDULE_FILE)
    if rf.write_json_exclusive(meta, run_json):
        return meta
    try:
        existing = json.loads(run_json.read_text())
    except (OSError, ValueError) as e:
        raise RunFormatError(f"{run_json}: cannot resume into this run, run.json is unreadable ({e})") from None
    check_compatible_meta(existing, meta, run_json)
    return existing


def _create_or_join_remote(store: RemoteStore, meta: dict, process: Process) -> dict:
    """The object-store form of _create_or_join_run: create run.json (and the schedule) if absent, else check it."""
    if not store.exists(rf.RUN_JSON):
        if process.kind == "vp":
            store.put_table(rf.SCHEDULE_FILE, schedule_table(process))
        store.put_json(rf.RUN_JSON, meta)
        return meta
    try:
        existing = json.loads(store.get(rf.RUN_JSON))
    except (OSError, ValueError) as e:
        raise RunFormatError(f"{store.url}/{rf.RUN_JSON}: cannot resume into this run, run.json is unreadable ({e})") from None
    check_compatible_meta(existing, meta, f"{store.url}/{rf.RUN_JSON}")
    return existing


def _segment_marker(rank: int, seg: int, total_steps: int | None) -> dict:
    return {"rank": rank, "segment": seg, "created": time.time(), "pid": os.getpid(), "host": platform.node(),
            "total_steps": total_steps}


def _new_remote_segment(store: RemoteStore, rank: int, total_steps: int | None) -> int:
    """The next segment id of this rank (one process per rank, so listing then writing cannot race)."""
    taken = [int(m["segment"]) for rel, _ in store.list(rf.SEGMENTS_DIR)
             if (m := rf.SEGMENT_RE.match(rel.rsplit("/", 1)[-1])) and int(m["rank"]) == rank]
    seg = max(taken, default=0) + 1
    store.put_json(f"{rf.SEGMENTS_DIR}/{rf.segment_marker_name(rank, seg)}", _segment_marker(rank, seg, total_steps))
    return seg


def _new_segment(path: Path, rank: int, total_steps: int | None = None) -> int:
    """Claim the next segment id of this rank by creating its marker file exclusively."""
    seg_dir = path / rf.SEGMENTS_DIR
    while True:
        taken = [int(m["segment"]) for f in os.listdir(seg_dir) if (m := rf.SEGMENT_RE.match(f)) and int(m["rank"]) == rank]
        seg = max(taken, default=0) + 1
        if rf.write_json_exclusive(_segment_marker(rank, seg, total_steps), seg_dir / rf.segment_marker_name(rank, seg)):
            return seg
