"""A run as TensorBoard scalars and text, next to the curves researchers already watch.

What is written (one event file under ``logdir``; tags grouped by prefix):

* ``diffaudit/loss``, ``diffaudit/grad_norm``, ``diffaudit/clip_rate``, ``diffaudit/lr`` and every extra
  scalar the user logged (``scalars/<name>``): per-step values, averaged over blocks of steps when the run
  has more than ``max_points`` steps (TensorBoard shows about 1,000 points per curve anyway).
* ``loss_by_noise/<bin> <levels>``: the per-noise-level training loss per statistics window (count-weighted
  means over blocks of windows when there are more than ``max_points``).
* ``excess_by_noise/<bin> <levels>``: the same minus the bin's Gaussian L* (when run.json has data statistics).
* ``diffaudit/findings``: the report's verdict and findings as Markdown text
  (:func:`diffaudit.present.markdown.report_markdown`), at the last step.

The writer is TensorBoard's own (``tensorboard.summary.writer``); no TensorFlow or torch is needed. It is an
optional extra: ``pip install "diffaudit[tensorboard]"``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import polars as pl

from diffaudit.errors import DiffauditError
from diffaudit.load import Run
from diffaudit.words import bin_span

MAX_POINTS = 2000  # points per curve; more are averaged in blocks


def _writer(logdir: Path):
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise DiffauditError('writing TensorBoard files needs the tensorboard package: pip install "diffaudit[tensorboard]"') from None
    return EventFileWriter(str(logdir)), event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2


def _blocks(step: np.ndarray, value: np.ndarray, weight: np.ndarray | None, max_points: int):
    """(step, value) averaged in consecutive blocks so that at most max_points remain; NaN values are skipped."""
    ok = np.isfinite(value)
    step, value = step[ok], value[ok]
    w = np.ones_like(value) if weight is None else np.asarray(weight, np.float64)[ok]
    if step.size <= max_points:
        return step, value
    size = math.ceil(step.size / max_points)
    idx = np.arange(step.size) // size
    sw = np.bincount(idx, weights=w)
    keep = sw > 0
    mean = np.bincount(idx, weights=w * value)[keep] / sw[keep]
    last = np.zeros(idx.max() + 1, np.int64)
    np.maximum.at(last, idx, step)
    return last[keep], mean


def bin_label(run: Run, b: int) -> str:
    """'07 t 350-399' style label of a noise bin (zero-padded so TensorBoard sorts them in order)."""
    p = run.process
    return f"{b:0{len(str(p.num_bins - 1))}d} {bin_span(p.kind, p.bin_edges(), b)}"


def write_tensorboard(run: Run, logdir, *, findings_markdown: str | None = None, lstar=None,
                      max_points: int = MAX_POINTS) -> dict:
    """Write ``run`` into ``logdir`` as TensorBoard events; return {tag: points written}."""
    logdir = Path(logdir)
    try:
        logdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DiffauditError(f"{logdir}: cannot create the TensorBoard directory ({e.strerror or e})") from None
    writer, event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2 = _writer(logdir)
    counts: dict[str, int] = {}
    wall = time.time()

    def scalars(tag: str, step: np.ndarray, value: np.ndarray, weight=None):
        s, v = _blocks(np.asarray(step, np.int64), np.asarray(value, np.float64), weight, max_points)
        for si, vi in zip(s.tolist(), v.tolist()):
            summ = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=vi)])
            writer.add_event(event_pb2.Event(wall_time=wall, step=int(si), summary=summ))
        counts[tag] = int(s.size)

    st = run.steps
    if st.height:
        step = st["step"].to_numpy()
        for col, tag in (("loss", "diffaudit/loss"), ("grad_norm", "diffaudit/grad_norm"), ("lr", "diffaudit/lr")):
            if col in st.columns and st[col].null_count() < st.height:
                scalars(tag, step, st[col].cast(pl.Float64).fill_null(np.nan).to_numpy())
        if "clipped" in st.columns and st["clipped"].null_count() < st.height:
            scalars("diffaudit/clip_rate", step, st["clipped"].cast(pl.Float64).fill_null(np.nan).to_numpy())
        for name in run.extra_scalars:
            scalars(f"scalars/{name}", step, st[name].cast(pl.Float64).fill_null(np.nan).to_numpy())
    tb = run.train_bins
    if tb.height:
        lstar = None if lstar is None else np.asarray(lstar, np.float64)
        for (b,), g in tb.sort("step_hi").group_by("bin", maintain_order=True):
            g = g.filter(pl.col("count") > 0)
            if g.height == 0:
                continue
            label = bin_label(run, int(b))
            s, m, n = g["step_hi"].to_numpy(), g["mean"].to_numpy(), g["count"].to_numpy().astype(np.float64)
            scalars(f"loss_by_noise/{label}", s, m, n)
            if lstar is not None and np.isfinite(lstar[int(b)]):
                scalars(f"excess_by_noise/{label}", s, m - lstar[int(b)], n)
    if findings_markdown:
        last = int(st["step"].max()) if st.height else 0
        meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"))
        tensor = tensor_pb2.TensorProto(dtype=7, string_val=[findings_markdown.encode()],  # 7: DT_STRING
                                        tensor_shape=tensor_shape_pb2.TensorShapeProto())
        summ = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="diffaudit/findings", metadata=meta,
                                                                    tensor=tensor)])
        writer.add_event(event_pb2.Event(wall_time=wall, step=last, summary=summ))
        counts["diffaudit/findings"] = 1
    writer.flush()
    writer.close()
    return counts
