"""The Parquet tables of one logger flush, from host copies of the device accumulators: pure functions, no torch.

:class:`PartLedger` is the host bookkeeping of the part being filled (which step each
ring slot holds, which window each accumulator slot, the scalars given as numbers).

:class:`Batch` is what a flush hands to the writer thread: the host copies of the
device buffers (``tensors``: arrays or CPU tensors, read through ``np.asarray``) and
the host bookkeeping of the steps, windows and probes since the last flush. The
functions here turn one batch into the ``steps``, ``bins`` and ``probes`` parts of
:mod:`diffaudit.runformat`; they compute, they do not write (the logger's writer
thread does), so a test can build a batch by hand and check every column.

The accumulator's columns (``C_*``) are sums per (window, bin): the count of finite
samples, the sums of deviations from the bin's shift and of their squares (mean and
m2 without cancellation), non-finite samples, the raw sum, weights, samples at
impossible timesteps and negative losses (those three excluded from the others).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from diffaudit import runformat as rf

C_COUNT, C_S1, C_S2, C_NONFINITE, C_RAW, C_W, C_WX, C_BADT, C_NEG = range(9)
NCOL = 9


@dataclass
class Window:
    """Host-side bookkeeping for one accumulator slot."""

    key: int  # train: step // window; eval: the eval step
    step_lo: int
    step_hi: int


@dataclass
class Batch:
    """Everything one flush hands to the writer thread."""

    seq: int
    event: object  # torch.cuda.Event or None
    tensors: dict  # name -> host tensor (pinned on CUDA)
    steps: list  # step numbers, one per ring slot
    times: list
    host_scalars: dict  # name -> list per ring slot (None where not given)
    device_scalar_names: list
    device_given: dict  # name -> list per ring slot: True where a tensor was logged (NaN is a value, not a gap)
    windows: dict = field(default_factory=dict)  # split -> list[Window]
    probe_steps: list = field(default_factory=list)
    has_weights: bool = False



class PartLedger:
    """The host bookkeeping of the part being filled: its steps (one ring slot each, with the wall time and
    the scalars given as numbers), which device-tensor scalars each step was given, its windows per split
    (one accumulator slot each) and its probe steps. :meth:`batch` hands it over with the host copies."""

    def __init__(self, host_names=(), device_names=()):
        self.steps: list[int] = []
        self.times: list[float] = []
        # a column seen in an earlier part stays known, so every later part has it (null where not given)
        self.host_scalars: dict[str, list] = {k: [] for k in host_names}
        self.device_given: dict[str, list] = {k: [] for k in device_names}
        self.windows: dict[str, list[Window]] = {s: [] for s in rf.SPLITS}
        self.probe_steps: list[int] = []

    def empty(self) -> bool:
        return not (self.steps or self.probe_steps or any(self.windows.values()))

    def train_slot(self, step: int, now: float) -> int:
        """The ring slot of training step ``step``: the last one again (gradient accumulation), or a new one."""
        if self.steps and self.steps[-1] == step:
            return len(self.steps) - 1
        self.steps.append(step)
        self.times.append(now)
        for v in self.host_scalars.values():
            v.append(None)
        for v in self.device_given.values():
            v.append(False)
        return len(self.steps) - 1

    def window_slot(self, split: str, key: int, step: int) -> int:
        """The accumulator slot of the window ``key`` of ``split`` (train: step // window; eval: the step)."""
        wins = self.windows[split]
        if wins and wins[-1].key == key:
            win = wins[-1]
            win.step_lo, win.step_hi = min(win.step_lo, step), max(win.step_hi, step)
        else:
            wins.append(Window(key, step, step))
        return len(wins) - 1

    def set_host_scalar(self, slot: int, name: str, value: float) -> None:
        self.host_scalars.setdefault(name, [None] * len(self.steps))[slot] = float(value)

    def given_on_device(self, slot: int, name: str) -> None:
        """Step slot ``slot`` was given device scalar ``name`` (a NaN it holds is then a value, not a gap)."""
        self.device_given.setdefault(name, [False] * len(self.steps))[slot] = True

    def next(self) -> "PartLedger":
        """An empty ledger for the next part, knowing this one's scalar columns."""
        return PartLedger(self.host_scalars, self.device_given)

    def batch(self, *, seq: int, event, tensors: dict, device_scalar_names: list, has_weights: bool) -> Batch:
        return Batch(seq=seq, event=event, tensors=tensors, steps=self.steps, times=self.times,
                     host_scalars=self.host_scalars, device_scalar_names=list(device_scalar_names),
                     device_given=self.device_given, windows=self.windows, probe_steps=self.probe_steps,
                     has_weights=has_weights)


def part_tables(batch: Batch, *, num_bins: int, rank: int, segment: int) -> dict[str, pa.Table]:
    """Every part one flush writes: kind -> table (a kind with nothing to write is absent)."""
    shift = np.asarray(batch.tensors["shift"])
    tables = {}
    if batch.steps:
        tables["steps"] = steps_table(batch, rank=rank, segment=segment)
    rows = [bins_rows(batch, s, shift, rank=rank, segment=segment) for s in rf.SPLITS if f"acc_{s}" in batch.tensors]
    if rows:
        tables["bins"] = pa.concat_tables(rows)
    if batch.probe_steps:
        tables["probes"] = probes_table(batch, num_bins=num_bins, rank=rank, segment=segment)
    return tables


def steps_table(batch: Batch, *, rank: int, segment: int) -> pa.Table:
    """The steps part of one flush: one row per optimizer step (loss, counts, the step's scalars)."""
    ring = np.asarray(batch.tensors["ring"]).T  # (slot, column)
    tmin, tmax = np.asarray(batch.tensors["tmin"]), np.asarray(batch.tensors["tmax"])
    n = len(batch.steps)
    count = ring[:, C_COUNT]
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = np.where(count > 0, ring[:, C_RAW] / np.maximum(count, 1), np.nan)
        wloss = ring[:, C_WX] / ring[:, C_W] if batch.has_weights else np.full(n, np.nan)
    # a scalar that was not logged is null; a NaN that was logged (a blown-up grad norm) stays NaN
    vals, given = {}, {}
    for name in batch.device_scalar_names:
        vals[name] = np.asarray(batch.tensors["dev_" + name]).astype(np.float64)
        given[name] = np.array(batch.device_given[name], dtype=bool)
    for name, hv in batch.host_scalars.items():
        g = np.array([v is not None for v in hv], dtype=bool)
        a = np.array([np.nan if v is None else v for v in hv], dtype=np.float64)
        if name in vals:
            vals[name], given[name] = np.where(g, a, vals[name]), given[name] | g
        else:
            vals[name], given[name] = a, g

    def column(name, typ):
        v = vals.pop(name, np.full(n, np.nan))
        g = given.pop(name, np.zeros(n, dtype=bool))
        return v, g, pa.array(v.astype(typ.to_pandas_dtype()), type=typ, mask=~g)

    gn, gn_given, gn_col = column("grad_norm", pa.float32())
    thr, thr_given, thr_col = column("clip_threshold", pa.float32())
    with np.errstate(invalid="ignore"):
        clipped = gn > thr
    clipped_known = gn_given & thr_given & np.isfinite(gn)
    cols = {
        "step": pa.array(batch.steps, pa.int64()),
        "segment": pa.array(np.full(n, segment, np.int32)),
        "rank": pa.array(np.full(n, rank, np.int32)),
        "time": pa.array(batch.times, pa.float64()),
        "loss": _f32(loss),
        "count": pa.array(count.astype(np.int32)),
        "nonfinite": pa.array(ring[:, C_NONFINITE].astype(np.int32)),
        "grad_norm": gn_col,
        "clip_threshold": thr_col,
        "clipped": pa.array(clipped, mask=~clipped_known),
        "lr": column("lr", pa.float64())[2],
        "loss_scale": column("loss_scale", pa.float32())[2],
        "wloss": _f32(wloss),
        "bad_t": pa.array(ring[:, C_BADT].astype(np.int32)),
        "negative": pa.array(ring[:, C_NEG].astype(np.int32)),
        "t_min": _nullable(np.where(np.isfinite(tmin), tmin, np.nan), pa.float64()),
        "t_max": _nullable(np.where(np.isfinite(tmax), tmax, np.nan), pa.float64()),
    }
    for name in sorted(vals):
        cols[name] = column(name, pa.float64())[2]
    return pa.table(cols)

def bins_rows(batch: Batch, split: str, shift: np.ndarray, *, rank: int, segment: int) -> pa.Table:
    """The bins rows of one split of one flush: count, mean, m2 (from the shifted sums), min, max per (window, bin)."""
    acc = np.moveaxis(np.asarray(batch.tensors[f"acc_{split}"]), 1, 2)  # (window, bin, column)
    amin = np.asarray(batch.tensors[f"min_{split}"])
    amax = np.asarray(batch.tensors[f"max_{split}"])
    wins = batch.windows[split]
    n_w, nb = acc.shape[:2]
    keep = (acc[:, :, C_COUNT] > 0) | (acc[:, :, C_NONFINITE] > 0)
    wi, bi = np.nonzero(keep)
    a = acc[wi, bi]
    n = a[:, C_COUNT]
    with np.errstate(invalid="ignore", divide="ignore"):
        s1n = np.where(n > 0, a[:, C_S1] / np.maximum(n, 1), np.nan)
        mean = shift[bi] + s1n
        m2 = np.where(n > 0, np.maximum(a[:, C_S2] - a[:, C_S1] * s1n, 0.0), np.nan)
        wmean = np.where(a[:, C_W] > 0, a[:, C_WX] / a[:, C_W], np.nan)
    has_w = batch.has_weights
    return pa.table(
        {
            "split": pa.array([split] * len(wi), pa.string()),
            "rank": pa.array(np.full(len(wi), rank, np.int32)),
            "segment": pa.array(np.full(len(wi), segment, np.int32)),
            "step_lo": pa.array(np.array([wins[i].step_lo for i in wi], np.int64)),
            "step_hi": pa.array(np.array([wins[i].step_hi for i in wi], np.int64)),
            "bin": pa.array(bi.astype(np.int32)),
            "count": pa.array(n.astype(np.int64)),
            "mean": _nullable(mean, pa.float64()),
            "m2": _nullable(m2, pa.float64()),
            "min": _f32(np.where(np.isfinite(amin[wi, bi]), amin[wi, bi], np.nan)),
            "max": _f32(np.where(np.isfinite(amax[wi, bi]), amax[wi, bi], np.nan)),
            "nonfinite": pa.array(a[:, C_NONFINITE].astype(np.int64)),
            "wsum": _nullable(a[:, C_W] if has_w else np.full(len(wi), np.nan), pa.float64()),
            "wmean": _nullable(wmean if has_w else np.full(len(wi), np.nan), pa.float64()),
        }
    )

def probes_table(batch: Batch, *, num_bins: int, rank: int, segment: int) -> pa.Table:
    """The probes part of one flush: the gradient norm of each coarse noise bin on each probe step."""
    probe = np.asarray(batch.tensors["probe"])
    P, K = probe.shape[:2]
    nb = num_bins
    edges = [(k * nb + K - 1) // K for k in range(K + 1)]  # fine bins b with b*K//nb == k
    cnt = probe[:, :, 0].ravel()
    norm = probe[:, :, 1].ravel().astype(np.float64)
    return pa.table(
        {
            "rank": pa.array(np.full(P * K, rank, np.int32)),
            "segment": pa.array(np.full(P * K, segment, np.int32)),
            "step": pa.array(np.repeat(np.array(batch.probe_steps, np.int64), K)),
            "probe_bin": pa.array(np.tile(np.arange(K, dtype=np.int32), P)),
            "bin_lo": pa.array(np.tile(np.array(edges[:-1], np.int32), P)),
            "bin_hi": pa.array(np.tile(np.array(edges[1:], np.int32), P)),
            "count": pa.array(cnt.astype(np.int32)),
            "grad_norm": _f32(np.where(cnt > 0, norm, np.nan)),
        }
    )


def _f32(a: np.ndarray) -> pa.Array:
    return _nullable(a, pa.float32())


def _nullable(a: np.ndarray, typ) -> pa.Array:
    """NaN becomes null: a missing value is not a number, and the loader tells them apart."""
    a = np.asarray(a, dtype=np.float64)
    return pa.array(a.astype(typ.to_pandas_dtype()), type=typ, mask=np.isnan(a))
