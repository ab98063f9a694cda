"""RunLogger: per-noise-level loss statistics kept on the device, written as immutable Parquet parts.

Called once per step (or once per micro-batch) inside the user's own training
loop. The hot path, :meth:`RunLogger.log`, only queues device kernels: the
samples go to a device buffer that is folded into per-(window, bin) moments once
per window, the step's loss sums and its scalars stay on the device. Nothing in
it calls ``.item()``, ``.tolist()``, ``.cpu()`` or otherwise waits for the device.
Every ``flush_every`` steps the buffers are copied with one ``non_blocking`` copy
each into pinned host memory, and a background thread waits for the copies and
writes the Parquet parts.

The logger is the policy; each job is its own part:

* :mod:`diffaudit.logsetup`: the arguments, checked, into a process, a cadence and run.json;
* :mod:`diffaudit.accumulator`: the device buffers and their reductions (no sync);
* :mod:`diffaudit.logtables`: a flush's host copies into the steps, bins and probes tables;
* :mod:`diffaudit.writer`: the bounded queue and the thread that writes them;
* :mod:`diffaudit.rundir`: the run directory (or object-store prefix) they are written to.

What stays here: which step and window each call belongs to, when to flush (only
where a new training step begins, so a step lands in one part), what is refused
at once and what is counted, and that a failed write never takes training down.

The analyzer never imports this module, nor the accumulator: they are the only ones that import torch.
"""

from __future__ import annotations

import atexit
import os
import time
import warnings
import weakref

import torch

from diffaudit import runformat as rf
from diffaudit.accumulator import DeviceAccumulator, bad_timesteps, bin_of, far_timesteps, probe_norms
from diffaudit.errors import DataError
from diffaudit.logsetup import Cadence, check_arguments, check_scalars, data_meta, resolve_process, run_meta
from diffaudit.logtables import Batch, PartLedger, part_tables
from diffaudit.noise import timestep_cause
from diffaudit.rundir import RunDir
from diffaudit.writer import AsyncWriter, WriterClosed

_SPLITS = rf.SPLITS


class RunLogger:
    """Log per-noise-level loss statistics of a diffusion training run to a run directory.

    Use as a context manager, or call :meth:`close` at the end; steps logged
    since the last flush are written then.
    """

    def __init__(
        self,
        path,  # a local directory, or a prefix in object storage (s3://bucket/run, gs://...)
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
        self._dir = RunDir(path)
        self.path = self._dir.path
        # every argument is checked before the run directory is touched, so a bad one leaves no run behind
        check_arguments(num_bins, total_steps, check_timesteps, data_var)
        self.process, schedule = resolve_process(process, prediction, num_bins, alphas_cumprod, betas,
                                                 sigma_min, sigma_max, sigma_data)
        self.cadence = Cadence.of(window=window, flush_every=flush_every, probe_every=probe_every,
                                  time_probe_every=time_probe_every, probe_bins=probe_bins,
                                  buffer_size=buffer_size, num_bins=num_bins)
        data = data_meta(data_var, data_spectrum, data_dim)
        self.total_steps = None if total_steps is None else int(total_steps)
        self.check_timesteps = check_timesteps
        self.rank, self.world_size = _dist_rank(rank, world_size)
        meta = run_meta(self.process, schedule, data, self.cadence, world_size=self.world_size,
                        total_steps=self.total_steps, config=config, torch_version=torch.__version__)
        self.meta, self.segment = self._dir.open(meta, self.process, rank=self.rank, total_steps=self.total_steps)

        self._acc: DeviceAccumulator | None = None  # allocated on the first log(), when the device is known
        self._last_step: int | None = None  # last training step logged (for the close marker)
        self._warned_backwards = False
        self._last_probe_step = None
        self._closed = False
        self.errors: list[str] = []  # writer failures (also warned once)
        self._seq = 0
        self._part = PartLedger()  # the steps, windows and probes of the part being filled
        self._writer = AsyncWriter(self._write_item, name=f"diffaudit-writer-{self.rank}")
        _live_loggers.add(self)  # atexit closes this logger if the script does not

    def __getattr__(self, name: str):
        """``window``, ``flush_every``, ``probe_every``, ... read from the cadence, as they were before it existed."""
        cadence = self.__dict__.get("cadence")
        if cadence is not None and name in Cadence.__dataclass_fields__:
            return getattr(cadence, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

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
            check_scalars(split, scalars)
        step = int(step)
        x, t, wt = (_detached(v) for v in (losses, timesteps, weights))
        for name, v in (("timesteps", t), ("weights", wt)):
            if v is not None and v.numel() != x.numel():
                raise DataError(f"{name} has {v.numel()} elements but losses has {x.numel()}")
        if self.check_timesteps == "raise" and t.device.type == "cpu":
            _refuse_bad_timesteps(self.process, t)  # on the host already: no sync to check, so fail at the first step
        if x.device.type == "cpu":
            _refuse_negative(x)  # likewise; on a device they are counted (``negative``) and the report names them
        if split == "train":
            self._note_train_step(step)
        if self._acc is None:
            self._allocate(x.device)

        part = self._part
        key = step // self.cadence.window if split == "train" else step
        wins = part.windows[split]
        new_win = not (wins and wins[-1].key == key)
        new_step = split == "train" and not (part.steps and part.steps[-1] == step)
        # Flushes happen only where a new training step begins, so a step (all its micro-batches)
        # always lands in one part. A full eval table grows instead (no sync), unless no training
        # step is open.
        table_full = new_win and len(wins) >= self._acc.windows(split)
        if new_step and (len(part.steps) >= self.cadence.flush_every or table_full):
            self.flush()
        elif table_full:
            if split != "train" and part.steps:
                self._acc.grow(split)
            else:
                self.flush()
        part = self._part  # a new one after a flush
        win = part.window_slot(split, key, step)
        slot = part.train_slot(step, time.time()) if split == "train" else 0
        self._acc.append(split, win, x.reshape(-1), t.reshape(-1), slot, None if wt is None else wt.reshape(-1))
        for name, value in scalars.items():
            if isinstance(value, torch.Tensor):  # stays on the device until the flush
                self._acc.set_scalar(name, slot, value)
                part.given_on_device(slot, name)
            elif value is not None:
                part.set_host_scalar(slot, name, value)

    def _note_train_step(self, step: int) -> None:
        if self._last_step is not None and step < self._last_step and not self._warned_backwards:
            self._warned_backwards = True
            warnings.warn(f"diffaudit: the training step went backwards ({self._last_step} -> {step}); log a "
                          f"global step that only increases (an epoch-local counter merges different steps)",
                          stacklevel=3)
        self._last_step = step if self._last_step is None else max(step, self._last_step)

    def probe_gradients(self, model, timesteps, losses, step: int, *, every: int | None = None):
        """Every ``probe_every`` steps: the gradient norm of each coarse noise bin's mean loss.

        Call before ``backward()``, with ``losses`` still attached to the graph.
        Uses ``torch.autograd.grad`` with ``retain_graph=True``, so the training
        gradients (``.grad``) are not touched. Costs about 0.4 + 0.55*K training
        steps for K probe bins; returns the device tensor of K norms, or None on
        steps that are not probed. Not a collective: each rank probes its own batch.
        """
        every = self.cadence.probe_every if every is None else int(every)
        step = int(step)
        if every <= 0 or step % every != 0 or step == self._last_probe_step:
            return None
        if self._acc is None:
            self._allocate(losses.device)
        self._last_probe_step = step
        params = [p for p in model.parameters() if p.requires_grad]
        t = _detached(timesteps).reshape(-1).to(self._acc.device, non_blocking=True)
        k, nb = self.cadence.probe_bins, self.process.num_bins
        coarse = (bin_of(self.process, t) * k).div(nb, rounding_mode="floor")
        counts, norms = probe_norms(params, coarse, losses, k)
        self._acc.set_probe(len(self._part.probe_steps), counts, norms)
        self._part.probe_steps.append(step)
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
        every = self.cadence.time_probe_every if every is None else int(every)
        step = int(step)
        if every <= 0 or step % every != 0:
            return None
        t, x = _detached(timesteps), _detached(losses)
        with torch.no_grad():
            far = _detached(loss_fn(far_timesteps(self.process, t)))
        if far.numel() != x.numel():
            raise DataError(f"probe_time: loss_fn returned {far.numel()} losses for {x.numel()} samples")
        self.log(step, timesteps=t, losses=far.reshape(-1), split="probe_t")
        self.log(step, timesteps=t, losses=x.reshape(-1), split="probe_true")
        return far

    def _allocate(self, device) -> None:
        c = self.cadence
        self._acc = DeviceAccumulator(self.process, device, flush_every=c.flush_every, window=c.window,
                                      buffer_size=c.buffer_size, probe_bins=c.probe_bins)

    # ------------------------------------------------------------------------
    # Flush (once every flush_every steps), close, and the writer's sink

    def flush(self) -> None:
        """Hand everything logged so far to the writer thread (no wait on the device)."""
        if self._acc is None:
            return
        part = self._part
        if part.empty():
            return
        n_w = {s: len(w) for s, w in part.windows.items()}
        tensors, event = self._acc.copy_to_host(len(part.steps), n_w, len(part.probe_steps))
        # the copies are queued on the device stream ahead of the resets, so they see the values before them
        self._acc.restart(n_w["train"])
        batch = part.batch(seq=self._seq, event=event, tensors=tensors, device_scalar_names=list(self._acc.scalars),
                           has_weights=self._acc.has_weights)
        self._seq, self._part = self._seq + 1, part.next()
        self._put(batch)

    def _put(self, batch: Batch) -> None:
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
            self._acc = None
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
            self._dir.write_close_marker(marker)
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
        self._dir.write_parts(tables, rank=self.rank, segment=self.segment, seq=batch.seq)


# ----------------------------------------------------------------------------
# Helpers


def _detached(v):
    """A tensor (detached) of a tensor or an array-like; None stays None."""
    if v is None:
        return None
    return v.detach() if isinstance(v, torch.Tensor) else torch.as_tensor(v)


def _refuse_bad_timesteps(process, t: torch.Tensor) -> None:
    """Timesteps on the host already that cannot belong to the process: refused at once (no sync to check)."""
    tf = t.reshape(-1).to(torch.float64)
    n_bad = int(bad_timesteps(process, tf).sum())
    if not n_bad:
        return
    lo, hi = float(tf.min()), float(tf.max())
    valid, cause = timestep_cause(process, lo, hi)
    raise DataError(f"timesteps: {n_bad} of {tf.numel()} value(s) cannot belong to this {process.kind} process "
                    f"({valid}; got {lo:.6g} to {hi:.6g}): {cause} "
                    f"(check_timesteps='count' logs them as excluded instead of raising)")


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


def _dist_rank(rank, world_size) -> tuple[int, int]:
    if rank is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), world_size or torch.distributed.get_world_size()
        else:
            rank = int(os.environ.get("RANK", 0))
            world_size = world_size or int(os.environ.get("WORLD_SIZE", 1))
    return int(rank), int(world_size or 1)


_live_loggers: "weakref.WeakSet[RunLogger]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # a script that forgot close() still gets its last steps written on a normal exit
    for lg in list(_live_loggers):
        try:
            lg.close()
        except Exception:
            pass
