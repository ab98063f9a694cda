"""Where a run stands: finished, failed, still training, or ended without a close.

A reader looks at a run while it trains far more often than after, and a running,
a crashed and a finished run hold the same kind of files. The logger tells them
apart: ``RunLogger.close()`` writes a close marker per (rank, segment) with the
status ``finished`` (or ``failed``, with the exception, when the ``with`` block
left on one), and ``total_steps`` records the planned number of optimizer steps.

:func:`lifecycle` reads them:

``finished``
    the newest segment of every rank closed cleanly.
``failed``
    the newest segment of some rank closed on an exception (its text is shown).
``in_progress``
    some rank's newest segment has no close marker and the run wrote recently:
    its newest logged step started less than ``stale_after`` seconds ago.
``ended``
    no close marker and no write for much longer than the run's own write
    cadence: killed, crashed without Python unwinding, or the machine went away.
``unknown``
    the run was written by a logger that recorded neither closes nor a plan
    (run.json has no ``total_steps`` key): whether it still runs cannot be told.

*Write cadence.* Rows reach the disk when the logger flushes, every
``flush_every`` steps; the cadence is the median time between logged steps
times ``flush_every``. A run counts as ended after ``STALE_CADENCES`` cadences
without a new step, and never sooner than ``STALE_MIN_S`` (a checkpoint save or
an evaluation pass pauses training for minutes). The times are the steps' own
``time`` column, so an exported single file reads the same as the directory.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from dataclasses import dataclass

import polars as pl

STATES = ("finished", "failed", "in_progress", "ended", "unknown")
STALE_CADENCES = 10.0  # no new step for this many write cadences: the run has ended
STALE_MIN_S = 900.0  # ... and never sooner than 15 minutes
DEFAULT_FLUSH_EVERY = 300
STOPPED_SHORT = 0.99  # a run that closed before this share of its planned steps stopped short of its plan


@dataclass(frozen=True)
class Lifecycle:
    """The state of a run when it was read, and the numbers behind it."""

    state: str  # one of STATES
    recorded: bool  # the logger records closes and plans (else the state is "unknown")
    last_step: int | None  # newest logged training step
    planned_steps: int | None  # the newest plan (total_steps) of any rank, if given
    progress: float | None  # (last_step + 1) / planned_steps
    last_write: float | None  # unix time of the newest logged step
    since_write: float | None  # seconds from then to the reading
    cadence: float | None  # seconds between the run's writes (flushes), estimated
    stale_after: float | None  # seconds without a write after which the run counts as ended
    open_segments: tuple[str, ...] = ()  # "r0 s2": newest segments without a close marker
    error: str | None = None  # the exception a failed close recorded
    read_at: float | None = None  # unix time of the reading

    @property
    def stopped_short(self) -> bool:
        """Closed normally, but short of its planned steps (a run cut short on purpose, or a wrong plan)."""
        return self.state == "finished" and self.progress is not None and self.progress < STOPPED_SHORT

    @property
    def words(self) -> str:
        """One line: the state and its evidence."""
        if self.last_step is None:
            step = "no step written yet" + (f" of {self.planned_steps:,} planned" if self.planned_steps else "")
        else:
            step = f"step {self.last_step:,}"
            if self.planned_steps:
                step += f" of planned {self.planned_steps:,} ({100 * (self.progress or 0):.0f}%)"
        what = "started" if self.last_step is None else "last write"
        ago = f"{what} {_duration(self.since_write)} ago" if self.since_write is not None else ""
        if self.state == "finished":
            short = f": stopped at {100 * self.progress:.0f}% of its plan" if self.stopped_short else ""
            return "finished" + (f" at {step}" if step else "") + short
        if self.state == "failed":
            return f"failed at {step or 'an unknown step'}: {self.error or 'no error recorded'}"
        if self.state == "in_progress":
            return "in progress: " + ", ".join(x for x in (ago, step) if x)
        if self.state == "ended":
            cad = f" (it wrote every ~{_duration(self.cadence)})" if self.cadence else ""
            return (f"ended without a close (killed or crashed): {ago or 'no write time known'}{cad}"
                    + (f", {step}" if step else ""))
        return ("unknown: this run's logger recorded no close or plan, so running and ended look alike"
                + (f"; {ago}" if ago else "") + (f", {step}" if step else ""))

    def as_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["open_segments"] = list(self.open_segments)
        out["words"] = self.words
        for k, v in out.items():
            if isinstance(v, float) and not math.isfinite(v):
                out[k] = None
        return out


def _duration(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    s = max(float(s), 0.0)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def _created(meta: dict) -> float | None:
    """run.json's creation time (unix seconds), or None."""
    c = meta.get("created")
    if not isinstance(c, str):
        return None
    try:
        return datetime.strptime(c, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def _newest_segments(run) -> dict[int, int]:
    """rank -> its newest segment, from the rows and the close markers."""
    newest: dict[int, int] = {}
    frames = [run.segments.select("rank", "segment")] if run.segments.height else []
    if run.closes.height:
        frames.append(run.closes.select("rank", "segment"))
    for f in frames:
        for r, s in f.iter_rows():
            if r is None or s is None:
                continue
            newest[int(r)] = max(newest.get(int(r), -1), int(s))
    return newest


def lifecycle(run, *, now: float | None = None, flush_every: int | None = None) -> Lifecycle:
    """The run's state when read at ``now`` (default: the current time)."""
    now = time.time() if now is None else float(now)
    meta = run.meta or {}
    steps = run.steps
    last_step = int(steps["step"].max()) if steps.height else None
    # the newest plan wins: each rank's newest segment marker (a resume may extend it), else run.json's
    plans = [int(v) for v in (run.segment_plans or {}).values() if v]
    ts = meta.get("total_steps")
    planned = max(plans) if plans else (int(ts) if isinstance(ts, int) and not isinstance(ts, bool) and ts > 0
                                        else None)
    progress = (last_step + 1) / planned if planned and last_step is not None else None
    recorded = "total_steps" in meta or run.closes.height > 0 or bool(run.segment_plans)

    last_write = cadence = None
    if steps.height and "time" in steps.columns:
        # in polars: numpy's median imports numpy.ma (~15 ms of a `summary`'s start-up)
        t = steps["time"].cast(pl.Float64).drop_nulls()
        t = t.filter(t.is_finite()).sort()
        if t.len():
            last_write = float(t[-1])
            dt = t.diff().drop_nulls()
            dt = dt.filter(dt > 0)
            if dt.len():
                fe = flush_every or meta.get("flush_every") or DEFAULT_FLUSH_EVERY
                cadence = float(dt.median()) * float(fe)
    if last_write is None:  # no step written yet: the run's creation is its last sign of life
        last_write = _created(meta)
    since = now - last_write if last_write is not None else None
    stale_after = max(STALE_CADENCES * cadence, STALE_MIN_S) if cadence else STALE_MIN_S

    newest = _newest_segments(run)
    closes = {(int(r["rank"]), int(r["segment"])): r for r in run.closes.iter_rows(named=True)}
    open_segs, failed = [], None
    for rank, seg in sorted(newest.items()):
        c = closes.get((rank, seg))
        if c is None:
            open_segs.append(f"r{rank} s{seg}")
        elif c["status"] == "failed" and failed is None:
            failed = c
    if failed is not None:
        state = "failed"
    elif newest and not open_segs:
        state = "finished"
    elif not recorded:
        state = "unknown"
    elif since is not None and since <= stale_after:
        state = "in_progress"
    else:
        state = "ended"
    return Lifecycle(
        state=state, recorded=recorded, last_step=last_step, planned_steps=planned, progress=progress,
        last_write=last_write, since_write=since, cadence=cadence, stale_after=stale_after,
        open_segments=tuple(open_segs), error=(failed or {}).get("error"), read_at=now,
    )


__all__ = ["Lifecycle", "STATES", "STALE_CADENCES", "STALE_MIN_S", "lifecycle"]
