"""RunLogger: per-noise-level loss statistics kept on the device, written as immutable Parquet parts.

Called once per step (or once per micro-batch) inside the user's own training
loop. The hot path, :meth:`RunLogger.log`, only queues device kernels:

* the bin of each timestep is computed on the device,
* count, shifted sum and shifted sum of squares of the per-sample losses are
  ``index_add_``-ed into a float64 buffer per (window, bin); min and max by
  ``scatter_reduce_``; non-finite losses are counted and excluded,
* the step's loss sum and the pre-clip gradient norm (the tensor
  ``clip_grad_norm_`` returns) are written into a device ring buffer.

Nothing in it calls ``.item()``, ``.tolist()``, ``.cpu()`` or otherwise waits
for the device. Every ``flush_every`` steps the buffers are copied with one
``non_blocking`` copy each into pinned host memory, a CUDA event is recorded,
and a background thread waits for that event and writes the Parquet parts.

Why shifted sums: a float64 sum and sum of squares loses the variance to
cancellation when the mean is large against the spread. Each bin keeps a shift
K (its mean at the previous flush, updated on the device) and accumulates
x - K, which keeps m2 = S2 - S1^2/n accurate (the "shifted data" algorithm).

The analyzer never imports this module; it is the only one that imports torch.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import platform
import re
import time
import warnings
import weakref
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from diffaudit import __version__
from diffaudit import runformat as rf
from diffaudit.errors import DataError, RunFormatError, ScheduleError
from diffaudit.logtables import C_COUNT as _C_COUNT, C_S1 as _C_S1, NCOL as _NCOL, Batch, Window, part_tables
from diffaudit.writer import AsyncWriter, WriterClosed
from diffaudit.noise import DEFAULT_PREDICTION, EDM_SIGMA_SLACK, Process, schedule_from_betas, timestep_cause
from diffaudit.store import RemoteStore, is_url, local_path

# the accumulator's columns are diffaudit.logtables.C_*: _reduce_samples stacks them in that order
# the fixed per-step scalars; any other keyword scalar becomes an extra column
_FIXED_SCALARS = ("grad_norm", "clip_threshold", "lr", "loss_scale")
_SPLITS = rf.SPLITS
# names a user scalar may not take: the logger's own columns, and every column name the loader
# or the single-file export uses (a scalar called "bin" could not be told from the bins table)
_RESERVED = (
    frozenset(rf.STEPS_SCHEMA.names)
    | frozenset(rf.STEPS_OPTIONAL.names)
    | frozenset(rf.BINS_SCHEMA.names)
    | frozenset(rf.PROBES_SCHEMA.names)
    | frozenset(rf.OPTIMUM_SCHEMA.names)
    | {"n_ranks", "split", "table"}
) - set(_FIXED_SCALARS)
_SCALAR_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,63}$")


# ----------------------------------------------------------------------------
# Buffers


class _SampleBuffer:
    """Raw per-sample losses, timesteps and step slots on the device, reduced once per window."""

    def __init__(self, cap: int, t_dtype, device):
        self.cap = cap
        self.n = 0
        self.x = torch.empty(cap, dtype=torch.float64, device=device)
        self.t = torch.empty(cap, dtype=t_dtype, device=device)
        self.s = torch.empty(cap, dtype=torch.int64, device=device)
        self.w = None  # allocated when weights first appear


def _refuse_negative(x: torch.Tensor) -> None:
    """A per-sample loss is a mean of squared errors: a negative one means the wrong tensor was logged."""
    xf = x.reshape(-1).to(torch.float64)
    neg = torch.isfinite(xf) & (xf < 0)
    n = int(neg.sum())
    if n:
        v = xf[neg]
        raise DataError(f"losses: {n} of {xf.numel()} per-sample value(s) are negative ({float(v.min()):.6g} to "
                        f"{float(v.max()):.6g}); a per-sample loss is the mean of squared errors (y_hat - y)^2, so "
                        "this is another tensor (a log-likelihood, a baseline-subtracted or signed loss?)")


class RunLogger:
    """Log per-noise-level loss statistics of a diffusion training run to a run directory.

    Use as a context manager, or call :meth:`close` at the end; steps logged
    since the last flush are written then.
    """

    def __init__(
        self,
        path,
        *,
        alphas_cumprod=None,  # discrete (vp) schedule, any length T: torch tensor or numpy array
        betas=None,  # optional betas of the same schedule: gives 1 - alpha_bar without cancellation
        process: str | None = None,  # "vp" (default with a schedule), "flow" (t in [0, 1]), "edm" (t = sigma)
        prediction: str | None = None,  # vp: epsilon | sample | v_prediction; flow: flow; edm: edm | sample
        num_bins: int = 100,  # noise-level bins
        window: int = 100,  # steps per bin-statistics window (means/variances merge exactly across windows)
        flush_every: int = 1000,  # steps between Parquet parts; a crash loses at most this many steps
        sigma_data: float | None = None,  # edm: data standard deviation of the preconditioning
        sigma_min: float = 0.002,  # edm: range of the log-sigma bins
        sigma_max: float = 80.0,
        data_var: float | None = None,  # per-element variance of the training data (Gaussian L* bound)
        data_spectrum=None,  # covariance eigenvalues of the training data (a better L* bound)
        data_dim: int | None = None,  # elements per sample, lets `diffaudit optimum` check its data
        probe_every: int = 1200,  # probe_gradients() acts on steps divisible by this (0 = never)
        probe_bins: int = 10,  # coarse bins the gradient probe splits the batch into
        time_probe_every: int = 250,  # probe_time() acts on steps divisible by this (0 = never); ~0.15% of training
        buffer_size: int = 65536,  # per-sample device buffer (samples); reduced when full or at a window end
        total_steps: int | None = None,  # planned optimizer steps: lets a reader say how far along the run is
        check_timesteps: str = "raise",  # "raise": refuse impossible timesteps given as CPU tensors at once; "count": only count them
        config: dict | None = None,  # free-form run configuration stored in run.json
        rank: int | None = None,  # default: torch.distributed rank, else 0
        world_size: int | None = None,
    ):
        # a local directory, or a prefix in object storage (s3://bucket/run, gs://...): diffaudit.store
        self._remote = RemoteStore(str(path)) if is_url(path) else None
        self.path = local_path(path) if self._remote is None else str(path).rstrip("/")
        # every argument is checked before _open_run writes anything, so a bad one leaves no run behind
        self._check_arguments(num_bins, total_steps, check_timesteps, data_var)
        schedule_meta = self._set_process(process, prediction, num_bins, alphas_cumprod, betas,
                                          sigma_min, sigma_max, sigma_data)
        self._set_cadence(window, flush_every, probe_every, time_probe_every, probe_bins, buffer_size)
        data_meta = self._data_meta(data_var, data_spectrum, data_dim)
        self.total_steps = None if total_steps is None else int(total_steps)
        self.check_timesteps = check_timesteps
        self.rank, self.world_size = _dist_rank(rank, world_size)
        self._open_run(self._run_meta(schedule_meta, data_meta, config))
        self._init_step_state()
        self._start_writer()

    @staticmethod
    def _check_arguments(num_bins, total_steps, check_timesteps, data_var) -> None:
        """Refuse the plain arguments that are out of range, before anything is built from them."""
        if not isinstance(num_bins, (int, np.integer)) or isinstance(num_bins, bool) or not 1 <= num_bins <= rf.MAX_BINS:
            raise DataError(f"num_bins must be an integer from 1 to {rf.MAX_BINS}, got {num_bins!r}")
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, (int, np.integer))
                                        or total_steps < 1):
            raise DataError(f"total_steps must be a positive integer (the planned optimizer steps), got {total_steps!r}")
        if check_timesteps not in ("raise", "count"):
            raise DataError(f"check_timesteps must be 'raise' or 'count', got {check_timesteps!r}")
        if data_var is not None and not (isinstance(data_var, (int, float, np.floating, np.integer))
                                         and math.isfinite(data_var) and data_var > 0):
            raise DataError(f"data_var must be a positive finite number (trace(Cov)/d of the training data), got {data_var!r}")

    def _set_process(self, process, prediction, num_bins, alphas_cumprod, betas, sigma_min, sigma_max, sigma_data) -> dict:
        """Resolve the noise process (and a vp schedule) into ``self.process``; returns the schedule's run.json fields."""
        if process is None:
            process = "vp" if (alphas_cumprod is not None or betas is not None) else None
        if process is None:
            raise ScheduleError("RunLogger needs alphas_cumprod (discrete process) or process='flow' / 'edm'")
        if prediction is None:
            prediction = DEFAULT_PREDICTION.get(process, "")
        src_dtype = None
        alpha_bar = one_minus = None
        if process == "vp":
            if betas is not None:
                alpha_bar, one_minus = schedule_from_betas(_to_numpy(betas))
            if alphas_cumprod is not None:
                given = _to_numpy(alphas_cumprod)
                src_dtype = str(given.dtype)
                if alpha_bar is None:
                    alpha_bar = given.astype(np.float64)
                elif not np.allclose(given, alpha_bar, rtol=1e-5, atol=1e-7):
                    raise ScheduleError("alphas_cumprod and betas describe different schedules")
        self.process = Process(
            kind=process,
            prediction=prediction,
            num_bins=int(num_bins),
            alpha_bar=alpha_bar,
            one_minus_alpha_bar=one_minus,
            sigma_min=sigma_min,
            sigma_max=sigma_max,
            sigma_data=sigma_data,
        )
        return {
            "alphas_cumprod_dtype": src_dtype,
            "schedule_from_betas": betas is not None,
            "schedule_sha": _schedule_hash(alpha_bar),
        }

    def _set_cadence(self, window, flush_every, probe_every, time_probe_every, probe_bins, buffer_size) -> None:
        """How many steps a window, a part and the probe intervals span, and how many samples the device buffer holds."""
        if int(window) < 1 or int(flush_every) < 1:
            raise DataError(f"window and flush_every must be positive, got {window} and {flush_every}")
        self.window = int(window)
        self.flush_every = int(flush_every)
        self.probe_every = int(probe_every)
        self.time_probe_every = int(time_probe_every)
        self.probe_bins = max(1, min(int(probe_bins), self.process.num_bins))
        self._buffer_size = max(1, int(buffer_size))

    @staticmethod
    def _data_meta(data_var, data_spectrum, data_dim) -> dict:
        """The training data's run.json fields (the L* bounds); data_dim defaults to the spectrum's length."""
        if data_spectrum is not None:
            data_spectrum = [float(v) for v in _to_numpy(data_spectrum).ravel()]
            if not data_spectrum or not all(math.isfinite(v) and v >= 0 for v in data_spectrum):
                raise DataError("data_spectrum must be a non-empty list of finite covariance eigenvalues >= 0")
            if data_dim is None:
                data_dim = len(data_spectrum)
        return {
            "data_var": None if data_var is None else float(data_var),
            "data_spectrum": data_spectrum,
            "data_dim": data_dim,
        }

    def _run_meta(self, schedule_meta: dict, data_meta: dict, config) -> dict:
        """run.json of a new run; refuses a config that JSON cannot hold."""
        meta = {
            "format": rf.FORMAT_NAME,
            "format_version": rf.FORMAT_VERSION,
            "run_id": rf.new_run_id(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "diffaudit_version": __version__,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "host": platform.node(),
            **self.process.to_meta(),
            **schedule_meta,
            **data_meta,
            "window": self.window,
            "flush_every": self.flush_every,
            "probe_every": self.probe_every,
            "probe_bins": self.probe_bins,
            "time_probe_every": self.time_probe_every,
            "world_size": self.world_size,
            "total_steps": self.total_steps,
            "config": config or {},
        }
        try:
            json.dumps(meta, allow_nan=False, default=str)
        except (TypeError, ValueError, RecursionError) as e:
            raise DataError(f"config cannot be stored in run.json as JSON ({type(e).__name__}: {e})") from None
        return meta

    def _open_run(self, meta: dict) -> None:
        """Create the run (or join an existing one that matches) and claim this rank's next segment: the first write."""
        if self._remote is not None:
            self.meta = _create_or_join_remote(self._remote, meta, self.process)
            self.segment = _new_remote_segment(self._remote, self.rank, self.total_steps)
        else:
            self.meta = _create_or_join_run(self.path, meta, self.process)
            self.segment = _new_segment(self.path, self.rank, self.total_steps)

    def _init_step_state(self) -> None:
        """Host bookkeeping of the steps, windows and probes not yet flushed; no device buffers yet."""
        self._last_step: int | None = None  # last training step logged (host int, for the close marker)
        self._warned_backwards = False

        # device state, allocated on the first log() when the device is known
        self._device = None
        self._seq = 0
        self._steps: list[int] = []
        self._times: list[float] = []
        self._host_scalars: dict[str, list] = {}
        self._dev_scalar_names: list[str] = []
        self._dev_given: dict[str, list] = {}
        self._windows: dict[str, list[Window]] = {s: [] for s in _SPLITS}
        self._probe_steps: list[int] = []
        self._last_probe_step = None
        self._closed = False
        self.errors: list[str] = []  # writer failures (also warned once)

    def _start_writer(self) -> None:
        """Start the thread that writes the flushed parts, and let atexit close this logger if the script does not."""
        self._writer = AsyncWriter(self._write_item, name=f"diffaudit-writer-{self.rank}")
        _live_loggers.add(self)

    def _put(self, batch) -> None:
        """Hand a batch to the writer; a failure of an earlier write surfaces here, and is recorded and warned
        (a logging failure must never take the training run down)."""
        try:
            self._writer.put(batch)
        except WriterClosed:
            raise RuntimeError("RunLogger: a flush after close()") from None
        except Exception as e:
            self._record_write_error(e)
            self._writer.put(batch)

    def _record_write_error(self, e: BaseException) -> None:
        msg = f"{type(e).__name__}: {e}"
        if not self.errors:
            warnings.warn(f"diffaudit: writing run parts failed ({msg}); training continues", stacklevel=3)
        self.errors.append(msg)

    # ------------------------------------------------------------------------
    # Hot path

    def log(self, step: int, *, timesteps, losses, weights=None, split: str = "train", **scalars) -> None:
        """Record one step's (or micro-batch's) per-sample losses at their timesteps, plus scalars.

        ``losses`` are per-sample, unweighted; NaN/Inf entries are counted as
        non-finite and excluded. Calling again with the same ``step`` adds to
        that step (gradient accumulation). ``split="eval"`` keeps held-out or
        EMA evaluation apart from training. Scalars may be Python numbers or
        0-d tensors (``grad_norm``, ``clip_threshold``, ``lr``, ``loss_scale``,
        or any other name); tensors stay on the device until the flush.

        Costs three or four small device copies: the samples are appended to a
        device buffer and reduced into per-bin statistics once per window.
        """
        if self._closed:
            raise RuntimeError("RunLogger.log() called after close()")
        if split not in _SPLITS:
            raise DataError(f"split must be one of {', '.join(_SPLITS)} ('eval': held-out data with the live "
                            f"weights; 'ema': the EMA weights), got {split!r}")
        if scalars:
            self._check_scalars(split, scalars)
        step = int(step)
        x = losses.detach() if isinstance(losses, torch.Tensor) else torch.as_tensor(losses)
        t = timesteps.detach() if isinstance(timesteps, torch.Tensor) else torch.as_tensor(timesteps)
        if t.numel() != x.numel():
            raise DataError(f"timesteps has {t.numel()} elements but losses has {x.numel()}")
        if self.check_timesteps == "raise" and t.device.type == "cpu":
            self._refuse_bad_timesteps(t)  # on the host already: no sync to check, so fail at the first step
        if x.device.type == "cpu":
            _refuse_negative(x)  # likewise; on a device they are counted (``negative``) and the report names them
        if split == "train":
            if self._last_step is not None and step < self._last_step and not self._warned_backwards:
                self._warned_backwards = True
                warnings.warn(f"diffaudit: the training step went backwards ({self._last_step} -> {step}); log a "
                              f"global step that only increases (an epoch-local counter merges different steps)",
                              stacklevel=2)
            self._last_step = step if self._last_step is None else max(step, self._last_step)
        if self._device is None:
            self._allocate(x.device)
        wt = None
        if weights is not None:
            wt = weights.detach() if isinstance(weights, torch.Tensor) else torch.as_tensor(weights)
            if wt.numel() != x.numel():
                raise DataError(f"weights has {wt.numel()} elements but losses has {x.numel()}")

        key = step // self.window if split == "train" else step
        wins = self._windows[split]
        new_win = not (wins and wins[-1].key == key)
        new_step = split == "train" and not (self._steps and self._steps[-1] == step)
        if new_win and wins:
            self._reduce(split)  # the buffered samples belong to the window that just ended
        # Flushes happen only where a new training step begins, so a step (all its micro-batches)
        # always lands in one part. A full eval table grows instead (no sync), unless no training
        # step is open.
        table_full = new_win and len(wins) >= self._acc[split].shape[0]
        if new_step and (len(self._steps) >= self.flush_every or table_full):
            self.flush()
        elif table_full:
            if split != "train" and self._steps:
                self._grow_eval(split)
            else:
                self.flush()
        self._window_slot(split, key, step)
        slot = self._train_slot(step) if split == "train" else 0
        self._append(split, x.reshape(-1), t.reshape(-1), slot, None if wt is None else wt.reshape(-1))
        if split == "train":
            for name, value in scalars.items():
                self._set_scalar(slot, name, value)

    def _check_scalars(self, split: str, scalars: dict) -> None:
        if scalars and split != "train":
            raise DataError(f"scalars ({', '.join(sorted(scalars))}) can only be logged with split='train'")
        bad = sorted(set(scalars) & _RESERVED)
        if bad:
            raise DataError(f"scalar name(s) {', '.join(bad)} are reserved for the logger's own columns; use another name")
        odd = sorted(n for n in scalars if not _SCALAR_NAME.match(n))
        if odd:
            raise DataError(f"scalar name(s) {', '.join(map(repr, odd))}: use a letter, then letters, digits, '_' or '.' "
                            f"(at most 64)")

    def _bad_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Boolean mask of timesteps that cannot belong to this run's process (device op, no sync)."""
        p = self.process
        tf = t.to(torch.float64)
        if p.kind == "vp":
            ok = (tf >= 0) & (tf < p.num_timesteps) & (tf == torch.floor(tf))
        elif p.kind == "flow":
            ok = (tf >= 0) & (tf <= 1)
        else:
            ok = (tf >= p.sigma_min / EDM_SIGMA_SLACK) & (tf <= p.sigma_max * EDM_SIGMA_SLACK)
        return ~ok  # NaN fails every comparison, so it is bad too

    def _refuse_bad_timesteps(self, t: torch.Tensor) -> None:
        bad = self._bad_timesteps(t.reshape(-1))
        n_bad = int(bad.sum())
        if not n_bad:
            return
        p = self.process
        tf = t.reshape(-1).to(torch.float64)
        lo, hi = float(tf.min()), float(tf.max())
        valid, cause = timestep_cause(p, lo, hi)
        raise DataError(f"timesteps: {n_bad} of {tf.numel()} value(s) cannot belong to this {p.kind} process "
                        f"({valid}; got {lo:.6g} to {hi:.6g}): {cause} "
                        f"(check_timesteps='count' logs them as excluded instead of raising)")

    def _grow_eval(self, split: str) -> None:
        """Double an evaluation split's window table (device only, no sync) rather than flush in the middle of a step."""
        for table, fill in ((self._acc, 0.0), (self._min, math.inf), (self._max, -math.inf)):
            t = table[split]
            table[split] = torch.cat([t, torch.full_like(t, fill)])

    def _append(self, split: str, x, t, slot: int, wt) -> None:
        buf = self._buf[split]
        n = x.numel()
        if buf.n + n > buf.cap:
            self._reduce(split)
            if n > buf.cap:  # one call larger than the whole buffer: reduce it directly
                s = torch.full((n,), slot, dtype=torch.int64, device=self._device)
                nb_ = dict(device=self._device, non_blocking=True)
                wd = None if wt is None else wt.to(**nb_)
                self._reduce_samples(split, x.to(**nb_), t.to(**nb_), s, wd)
                return
        lo, hi = buf.n, buf.n + n
        buf.x[lo:hi].copy_(x, non_blocking=True)
        buf.t[lo:hi].copy_(t, non_blocking=True)
        buf.s[lo:hi].fill_(slot)
        if wt is not None:
            if buf.w is None:
                buf.w = torch.zeros(buf.cap, dtype=torch.float64, device=self._device)
            buf.w[lo:hi].copy_(wt, non_blocking=True)
        elif buf.w is not None:
            buf.w[lo:hi].zero_()
        buf.n = hi

    def _reduce(self, split: str) -> None:
        """Fold the buffered samples of ``split`` into its current window's per-bin statistics."""
        buf = self._buf[split]
        if buf.n == 0:
            return
        n = buf.n
        w = None if buf.w is None else buf.w[:n]
        self._reduce_samples(split, buf.x[:n], buf.t[:n], buf.s[:n], w)
        buf.n = 0

    def _reduce_samples(self, split: str, x, t, s, wt) -> None:
        w = len(self._windows[split]) - 1
        b = self._bin_of(t)
        x = x.to(torch.float64)
        bad = self._bad_timesteps(t)
        finite = torch.isfinite(x)
        neg = finite & (x < 0) & ~bad  # a squared error is never negative: the wrong tensor, counted apart
        fin = finite & ~bad & ~neg  # a sample at an impossible timestep is counted in bad_t and nowhere else
        finf = fin.to(torch.float64)
        xf = torch.where(fin, x, 0.0)
        if not self._shift_set:
            # first data: shift every bin by their mean, so even the first window avoids cancellation
            self._shift.copy_((xf.sum() / finf.sum().clamp_min(1.0)).expand_as(self._shift))
            self._shift_set = True
        d = torch.where(fin, x - self._shift[b], 0.0)
        if wt is not None:
            wt = torch.where(fin, wt.to(torch.float64), 0.0)
            self._has_weights = True
            wcols = [wt, wt * xf]
        else:
            wcols = [torch.zeros_like(xf)] * 2
        # layout (column, bin): reductions along the last dim
        nonfin = (~finite & ~bad).to(torch.float64)
        src = torch.stack([finf, d, d * d, nonfin, xf, *wcols, bad.to(torch.float64), neg.to(torch.float64)], dim=0)
        lo_x = torch.where(fin, x, math.inf)
        hi_x = torch.where(fin, x, -math.inf)
        acc, amin, amax = self._acc[split][w], self._min[split][w], self._max[split][w]
        if self._reduction == "index_add":  # CUDA: atomics, no sync; 0.48 ms per 25,600-sample window on an H200
            acc.index_add_(1, b, src)
            if split == "train":
                self._ring.index_add_(1, s, src)
        else:  # bincount: ~10x faster than index_add_ on CPU; on CUDA it would sync to size its output
            nb = acc.shape[1]
            acc.add_(torch.stack([torch.bincount(b, weights=src[c], minlength=nb) for c in range(src.shape[0])]))
            if split == "train":
                F_ = self._ring.shape[1]
                self._ring.add_(torch.stack([torch.bincount(s, weights=src[c], minlength=F_) for c in range(src.shape[0])]))
        amin.scatter_reduce_(0, b, lo_x, "amin")
        amax.scatter_reduce_(0, b, hi_x, "amax")
        if split == "train":
            tf = t.to(torch.float64)
            self._tmin.scatter_reduce_(0, s, tf, "amin")
            self._tmax.scatter_reduce_(0, s, tf, "amax")

    def probe_gradients(self, model, timesteps, losses, step: int, *, every: int | None = None):
        """Every ``probe_every`` steps: the gradient norm of each coarse noise bin's mean loss.

        Call before ``backward()``, with ``losses`` still attached to the graph.
        Uses ``torch.autograd.grad`` with ``retain_graph=True``, so the training
        gradients (``.grad``) are not touched. Costs about 0.4 + 0.55*K training
        steps for K probe bins; returns the device tensor of K norms, or None on
        steps that are not probed. Not a collective: each rank probes its own batch.
        """
        every = self.probe_every if every is None else int(every)
        step = int(step)
        if every <= 0 or step % every != 0 or step == self._last_probe_step:
            return None
        if self._device is None:
            self._allocate(losses.device)
        self._last_probe_step = step
        params = [p for p in model.parameters() if p.requires_grad]
        t = timesteps if isinstance(timesteps, torch.Tensor) else torch.as_tensor(timesteps)
        b = self._bin_of(t.detach().reshape(-1).to(self._device, non_blocking=True))
        K, nb = self.probe_bins, self.process.num_bins
        pb = (b * K).div(nb, rounding_mode="floor")
        flat = losses.reshape(-1).float()
        counts = torch.zeros(K, device=self._device, dtype=torch.float32).index_add_(0, pb, torch.ones_like(flat))
        norms = torch.zeros(K, device=self._device, dtype=torch.float32)
        for k in range(K):
            sel = (pb == k).to(flat.dtype) / counts[k].clamp_min(1.0)
            grads = torch.autograd.grad((flat * sel).sum(), params, retain_graph=True, allow_unused=True)
            sq = [g.detach().float().pow(2).sum() for g in grads if g is not None]
            if sq:
                norms[k] = torch.stack(sq).sum().sqrt()
        if len(self._probe_steps) >= self._probe.shape[0]:
            self._probe = torch.cat([self._probe, torch.zeros_like(self._probe)])  # grows, never flushes mid-step
        i = len(self._probe_steps)
        self._probe_steps.append(step)
        self._probe[i, :, 0].copy_(counts, non_blocking=True)
        self._probe[i, :, 1].copy_(norms, non_blocking=True)
        return norms

    def probe_time(self, step: int, loss_fn, *, timesteps, losses, every: int | None = None):
        """Every ``time_probe_every`` steps: does the loss depend on the noise level the network is told?

        ``loss_fn(t_far)`` must return the per-sample losses of this step's samples (same x_t, same
        target) with the network conditioned on ``t_far`` instead of the true timesteps, e.g.
        ``lambda tf: ((model(x_t, tf) - target) ** 2).flatten(1).mean(1)``; the logger never needs
        the model's signature. ``t_far`` puts every sample half the noise range away from its true
        level (vp: (t + T/2) mod T; flow: (t + 0.5) mod 1; edm: log sigma shifted half its range).
        It runs under ``torch.no_grad()`` (one forward pass, about a third of a training step) and
        logs both losses binned by the *true* noise level, as the splits ``probe_t`` and
        ``probe_true``. A network that ignores t gives exactly the same loss; one that uses it, a
        much larger one wherever L* varies with t. Returns the far-t losses, or None off probe steps.
        """
        every = self.time_probe_every if every is None else int(every)
        step = int(step)
        if every <= 0 or step % every != 0:
            return None
        t = timesteps.detach() if isinstance(timesteps, torch.Tensor) else torch.as_tensor(timesteps)
        x = losses.detach() if isinstance(losses, torch.Tensor) else torch.as_tensor(losses)
        with torch.no_grad():
            far = loss_fn(self._far_timesteps(t))
        far = far.detach() if isinstance(far, torch.Tensor) else torch.as_tensor(far)
        if far.numel() != x.numel():
            raise DataError(f"probe_time: loss_fn returned {far.numel()} losses for {x.numel()} samples")
        self.log(step, timesteps=t, losses=far.reshape(-1), split="probe_t")
        self.log(step, timesteps=t, losses=x.reshape(-1), split="probe_true")
        return far

    def _far_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Each timestep moved half the process's noise range away (cyclically), in t's dtype and device."""
        p = self.process
        if p.kind == "vp":
            T = p.num_timesteps
            return torch.remainder(t.to(torch.int64) + T // 2, T).to(t.dtype)
        if p.kind == "flow":
            return torch.remainder(t.to(torch.float64) + 0.5, 1.0).to(t.dtype)
        lo, hi = math.log(p.sigma_min), math.log(p.sigma_max)
        u = (torch.log(t.to(torch.float64).clamp_min(1e-300)) - lo) / (hi - lo)
        return torch.exp(lo + torch.remainder(u + 0.5, 1.0) * (hi - lo)).to(t.dtype)

    # ------------------------------------------------------------------------
    # Slots

    def _train_slot(self, step: int) -> int:
        if self._steps and self._steps[-1] == step:
            return len(self._steps) - 1
        self._steps.append(step)
        self._times.append(time.time())
        for v in self._host_scalars.values():
            v.append(None)
        for v in self._dev_given.values():
            v.append(False)
        return len(self._steps) - 1

    def _window_slot(self, split: str, key: int, step: int) -> int:
        wins = self._windows[split]
        if wins and wins[-1].key == key:
            win = wins[-1]
            win.step_lo, win.step_hi = min(win.step_lo, step), max(win.step_hi, step)
            return len(wins) - 1
        wins.append(Window(key, step, step))
        return len(wins) - 1

    def _set_scalar(self, slot: int, name: str, value) -> None:
        if value is None:
            return
        if isinstance(value, torch.Tensor):
            col = self._dev_scalars.get(name)
            if col is None:
                col = torch.full((self.flush_every,), math.nan, dtype=torch.float64, device=self._device)
                self._dev_scalars[name] = col
                self._dev_scalar_names.append(name)
                self._dev_given[name] = [False] * len(self._steps)
            col[slot].copy_(value.detach().reshape(()), non_blocking=True)
            self._dev_given[name][slot] = True
        else:
            col = self._host_scalars.get(name)
            if col is None:
                col = [None] * len(self._steps)
                self._host_scalars[name] = col
            col[slot] = float(value)

    def _t_dtype(self):
        # float64 for every process: a fractional vp timestep must stay visible to the timestep check
        return torch.float64

    def _bin_of(self, t: torch.Tensor) -> torch.Tensor:
        p, nb = self.process, self.process.num_bins
        if p.kind == "vp":
            b = (t.to(torch.int64) * nb).div(p.num_timesteps, rounding_mode="floor")
        elif p.kind == "flow":
            b = torch.floor(t.to(torch.float64) * nb).to(torch.int64)
        else:
            lo, hi = math.log(p.sigma_min), math.log(p.sigma_max)
            u = (torch.log(t.to(torch.float64).clamp_min(1e-300)) - lo) / (hi - lo)
            b = torch.floor(u * nb).to(torch.int64)
        # out-of-range timesteps land in the end bins rather than trigger a device-side assert
        return b.clamp_(0, nb - 1)

    def _allocate(self, device) -> None:
        dev = torch.device(device)
        self._device = dev
        nb = self.process.num_bins
        n_win = self.flush_every // self.window + 2
        n_eval = 8
        f64 = dict(dtype=torch.float64, device=dev)
        self._acc = {s: torch.zeros(n_win if s == "train" else n_eval, _NCOL, nb, **f64) for s in _SPLITS}
        self._min = {s: torch.full((a.shape[0], nb), math.inf, **f64) for s, a in self._acc.items()}
        self._max = {s: torch.full((a.shape[0], nb), -math.inf, **f64) for s, a in self._acc.items()}
        self._shift = torch.zeros(nb, **f64)
        self._shift_set = False
        self._ring = torch.zeros(_NCOL, self.flush_every, **f64)
        self._tmin = torch.full((self.flush_every,), math.inf, **f64)
        self._tmax = torch.full((self.flush_every,), -math.inf, **f64)
        # how window reductions are done (both exact, both tested on CPU): bincount on CPU, index_add_ elsewhere
        self._reduction = "bincount" if dev.type == "cpu" else "index_add"
        self._buf = {s: _SampleBuffer(self._buffer_size, self._t_dtype(), dev) for s in _SPLITS}
        self._dev_scalars: dict[str, torch.Tensor] = {}
        self._has_weights = False
        self._probe = torch.zeros(16, self.probe_bins, 2, dtype=torch.float32, device=dev)

    # ------------------------------------------------------------------------
    # Flush (once every flush_every steps) and the writer thread

    def flush(self) -> None:
        """Hand everything logged so far to the writer thread (no wait on the device)."""
        if self._device is None:
            return
        for split in _SPLITS:
            self._reduce(split)
        n = len(self._steps)
        n_w = {s: len(w) for s, w in self._windows.items()}
        n_p = len(self._probe_steps)
        if n == 0 and not any(n_w.values()) and n_p == 0:
            return
        tensors, event = self._copy_to_host(n, n_w, n_p)
        # the copies are queued on the device stream ahead of the resets, so they see the values before them
        self._restart_accumulators(n_w["train"])
        self._put(self._take_batch(tensors, event))

    def _copy_to_host(self, n: int, n_w: dict, n_p: int) -> tuple[dict, object]:
        """One non_blocking copy per buffer into pinned host memory, and the CUDA event the writer waits for."""
        cuda = self._device.type == "cuda"

        def host(src: torch.Tensor) -> torch.Tensor:
            dst = torch.empty(src.shape, dtype=src.dtype, pin_memory=cuda)
            dst.copy_(src, non_blocking=cuda)
            return dst

        tensors = {"ring": host(self._ring[:, :n]), "shift": host(self._shift),
                   "tmin": host(self._tmin[:n]), "tmax": host(self._tmax[:n])}
        for s in _SPLITS:
            if n_w[s]:
                tensors[f"acc_{s}"] = host(self._acc[s][: n_w[s]])
                tensors[f"min_{s}"] = host(self._min[s][: n_w[s]])
                tensors[f"max_{s}"] = host(self._max[s][: n_w[s]])
        for name in self._dev_scalar_names:
            tensors["dev_" + name] = host(self._dev_scalars[name][:n])
        if n_p:
            tensors["probe"] = host(self._probe[:n_p])
        event = None
        if cuda:
            event = torch.cuda.Event()
            event.record()
        return tensors, event

    def _restart_accumulators(self, n_train_windows: int) -> None:
        """Move each bin's shift to its mean and empty the device accumulators for the next part (device only)."""
        # next shift: the mean of each bin over this flush's training windows (device only)
        if n_train_windows:
            tot = self._acc["train"][:n_train_windows].sum(0)
            cnt = tot[_C_COUNT]
            self._shift.add_(torch.where(cnt > 0, tot[_C_S1] / cnt.clamp_min(1.0), 0.0))
        for s in _SPLITS:
            self._acc[s].zero_()
            self._min[s].fill_(math.inf)
            self._max[s].fill_(-math.inf)
        self._ring.zero_()
        self._tmin.fill_(math.inf)
        self._tmax.fill_(-math.inf)
        for col in self._dev_scalars.values():
            col.fill_(math.nan)

    def _take_batch(self, tensors: dict, event) -> Batch:
        """The host bookkeeping since the last flush, with its host copies, as one batch; starts the next part empty."""
        batch = Batch(
            has_weights=self._has_weights,
            seq=self._seq,
            event=event,
            tensors=tensors,
            steps=self._steps,
            times=self._times,
            host_scalars=self._host_scalars,
            device_scalar_names=list(self._dev_scalar_names),
            device_given=self._dev_given,
            windows=self._windows,
            probe_steps=self._probe_steps,
        )
        self._seq += 1
        self._steps, self._times = [], []
        self._host_scalars = {k: [] for k in self._host_scalars}
        self._dev_given = {k: [] for k in self._dev_given}
        self._windows = {s: [] for s in _SPLITS}
        self._probe_steps = []
        return batch

    def close(self, *, error: BaseException | None = None) -> None:
        """Flush what is left, wait for the writer, record the close, and drop the device buffers.

        The close marker (``segments/close-r<rank>-s<segment>.json``) is what tells a reader that
        this segment ended on purpose: ``finished``, or ``failed`` when ``error`` is given (the
        ``with`` block passes the exception that left it). A run without one was killed or is
        still running.
        """
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            try:
                self._writer.close()
            except Exception as e:  # the last batches' failure: recorded like any other
                self._record_write_error(e)
            _live_loggers.discard(self)
            if self._device is not None:
                self._acc = self._min = self._max = self._buf = self._ring = self._probe = None
                self._tmin = self._tmax = None
                self._dev_scalars, self._device = {}, None
            self._write_close_marker(error)
        if self.errors:
            warnings.warn(f"diffaudit: {len(self.errors)} part(s) could not be written: {self.errors[0]}", stacklevel=2)

    def _write_close_marker(self, error: BaseException | None) -> None:
        marker = {
            "rank": self.rank,
            "segment": self.segment,
            "status": "failed" if error is not None else "finished",
            "closed": time.time(),
            "last_step": self._last_step,
            "total_steps": self.total_steps,
            "error": None if error is None else f"{type(error).__name__}: {error}"[:500],
            "write_errors": len(self.errors),
        }
        try:
            name = rf.close_marker_name(self.rank, self.segment)
            if self._remote is not None:
                self._remote.put_json(f"{rf.SEGMENTS_DIR}/{name}", marker)
            else:
                rf.write_json_exclusive(marker, self.path / rf.SEGMENTS_DIR / name)
        except OSError as e:  # closing must not raise over a marker; the run then reads as never closed
            self.errors.append(f"close marker: {e}")

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(error=exc)

    def _write_item(self, batch: Batch) -> None:
        """The writer thread's sink: wait for the batch's device copies, then write its parts."""
        if batch.event is not None:
            batch.event.synchronize()
        self._write_batch(batch)

    def _write_batch(self, batch: Batch) -> None:
        tables = part_tables(batch, num_bins=self.process.num_bins, rank=self.rank, segment=self.segment)
        # bins before steps: a reader that sees a step also sees its window
        for kind in ("bins", "probes", "steps"):
            if kind in tables:
                name = rf.part_name(kind, self.rank, self.segment, batch.seq)
                if self._remote is not None:  # one object, one upload: it appears whole or not at all
                    self._remote.put_table(f"{rf.PARTS_DIR}/{name}", tables[kind])
                else:
                    rf.write_table_atomic(tables[kind], self.path / rf.PARTS_DIR / name)


# ----------------------------------------------------------------------------
# Helpers


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _schedule_hash(alpha_bar) -> str | None:
    if alpha_bar is None:
        return None
    return hashlib.sha256(np.asarray(alpha_bar, np.float64).round(9).tobytes()).hexdigest()[:16]


def _dist_rank(rank, world_size) -> tuple[int, int]:
    if rank is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), world_size or torch.distributed.get_world_size()
        else:
            rank = int(os.environ.get("RANK", 0))
            world_size = world_size or int(os.environ.get("WORLD_SIZE", 1))
    return int(rank), int(world_size or 1)


_COMPAT_KEYS = ("process", "prediction", "num_bins", "num_timesteps", "sigma_min", "sigma_max", "sigma_data", "schedule_sha")


def _schedule_table(process: Process) -> pa.Table:
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


def _check_compatible_meta(existing: dict, meta: dict, where) -> None:
    if not isinstance(existing, dict):
        raise RunFormatError(f"{where}: cannot resume into this run, run.json is not a JSON object")
    if existing.get("format_version", 0) > rf.FORMAT_VERSION:
        raise RunFormatError(f"{where}: written by a newer diffaudit (format {existing.get('format_version')})")
    for key in _COMPAT_KEYS:
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
        rf.write_table_atomic(_schedule_table(process), path / rf.SCHEDULE_FILE)
    if rf.write_json_exclusive(meta, run_json):
        return meta
    try:
        existing = json.loads(run_json.read_text())
    except (OSError, ValueError) as e:
        raise RunFormatError(f"{run_json}: cannot resume into this run, run.json is unreadable ({e})") from None
    _check_compatible_meta(existing, meta, run_json)
    return existing


def _create_or_join_remote(store: RemoteStore, meta: dict, process: Process) -> dict:
    """The object-store form of _create_or_join_run: create run.json (and the schedule) if absent, else check it."""
    if not store.exists(rf.RUN_JSON):
        if process.kind == "vp":
            store.put_table(rf.SCHEDULE_FILE, _schedule_table(process))
        store.put_json(rf.RUN_JSON, meta)
        return meta
    try:
        existing = json.loads(store.get(rf.RUN_JSON))
    except (OSError, ValueError) as e:
        raise RunFormatError(f"{store.url}/{rf.RUN_JSON}: cannot resume into this run, run.json is unreadable ({e})") from None
    _check_compatible_meta(existing, meta, f"{store.url}/{rf.RUN_JSON}")
    return existing


def _new_remote_segment(store: RemoteStore, rank: int, total_steps: int | None) -> int:
    """The next segment id of this rank (one process per rank, so listing then writing cannot race)."""
    taken = [int(m["segment"]) for rel, _ in store.list(rf.SEGMENTS_DIR)
             if (m := rf.SEGMENT_RE.match(rel.rsplit("/", 1)[-1])) and int(m["rank"]) == rank]
    seg = max(taken, default=0) + 1
    store.put_json(f"{rf.SEGMENTS_DIR}/{rf.segment_marker_name(rank, seg)}",
                   {"rank": rank, "segment": seg, "created": time.time(), "pid": os.getpid(), "host": platform.node(),
                    "total_steps": total_steps})
    return seg


def _new_segment(path: Path, rank: int, total_steps: int | None = None) -> int:
    """Claim the next segment id of this rank by creating its marker file exclusively."""
    seg_dir = path / rf.SEGMENTS_DIR
    while True:
        taken = [int(m["segment"]) for f in os.listdir(seg_dir) if (m := rf.SEGMENT_RE.match(f)) and int(m["rank"]) == rank]
        seg = max(taken, default=0) + 1
        marker = {"rank": rank, "segment": seg, "created": time.time(), "pid": os.getpid(), "host": platform.node(),
                  "total_steps": total_steps}
        if rf.write_json_exclusive(marker, seg_dir / rf.segment_marker_name(rank, seg)):
            return seg


_live_loggers: "weakref.WeakSet[RunLogger]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # a script that forgot close() still gets its last steps written on a normal exit
    for lg in list(_live_loggers):
        try:
            lg.close()
        except Exception:
            pass
