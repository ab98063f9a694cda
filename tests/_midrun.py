"""A run as a reader sees it while it trains: the rows logged up to a step, no close markers.

:func:`read_at` copies a finished run's directory keeping only what existed when
training had reached step ``S``: per-step rows with ``step <= S``, bin windows
that had closed (``step_hi <= S``), probes with ``step <= S``, the segment
markers of segments that had started, and never a close marker (a running
logger has not written one). The empirical-optimum parts (``diffaudit
optimum`` output, computed from the data, not from training) are kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pyarrow.compute as pc

from diffaudit import runformat as rf

_STEP_COLUMN = {"steps": "step", "bins": "step_hi", "probes": "step"}


def planned_steps(run_dir) -> int:
    """The run's planned steps: run.json's total_steps, else its config's "steps", else the last step + 1."""
    meta = json.loads((Path(run_dir) / "run.json").read_text())
    if meta.get("total_steps"):
        return int(meta["total_steps"])
    cfg = meta.get("config") or {}
    if isinstance(cfg.get("steps"), int):
        return int(cfg["steps"])
    last = -1
    for f in (Path(run_dir) / rf.PARTS_DIR).glob("steps-*.parquet"):
        t = pq.read_table(f, columns=["step"])
        if t.num_rows:
            last = max(last, pc.max(t["step"]).as_py())
    return last + 1


def read_at(run_dir, step: int, dest, *, plan: bool = True) -> Path:
    """Copy of ``run_dir`` at ``dest`` holding what a reader saw when training had logged step ``step``.

    ``plan=False``: as if the logger had been given no ``total_steps`` (run.json and segment markers say null).
    """
    src, dst = Path(run_dir), Path(dest)
    if dst.exists():
        shutil.rmtree(dst)
    (dst / rf.PARTS_DIR).mkdir(parents=True)
    (dst / rf.SEGMENTS_DIR).mkdir()
    for name in ("run.json", "schedule.parquet"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    started = set()
    for f in sorted((src / rf.PARTS_DIR).iterdir()):
        m = rf.PART_RE.match(f.name)
        if not m:
            continue
        kind = m["kind"]
        if kind not in _STEP_COLUMN:
            shutil.copy2(f, dst / rf.PARTS_DIR / f.name)
            continue
        t = pq.read_table(f)
        t = t.filter(pc.less_equal(t[_STEP_COLUMN[kind]], step))
        if t.num_rows:
            started.add((int(m["rank"]), int(m["segment"])))
            pq.write_table(t, dst / rf.PARTS_DIR / f.name)
    for f in (src / rf.SEGMENTS_DIR).iterdir() if (src / rf.SEGMENTS_DIR).is_dir() else ():
        m = rf.SEGMENT_RE.match(f.name)
        if m and (int(m["rank"]), int(m["segment"])) in started:
            shutil.copy2(f, dst / rf.SEGMENTS_DIR / f.name)
    if not plan:
        for f in [dst / "run.json", *(dst / rf.SEGMENTS_DIR).glob("r*.json")]:
            obj = json.loads(f.read_text())
            if "total_steps" in obj:
                obj["total_steps"] = None
                f.write_text(json.dumps(obj))
    return dst


def read_points(run_dir, fractions=(0.1, 0.25, 0.5, 1.0)) -> list[tuple[float, int]]:
    """(fraction, last step) of each read point: the step a run of its planned length had reached."""
    total = planned_steps(run_dir)
    return [(f, max(int(round(f * total)) - 1, 0)) for f in fractions]
