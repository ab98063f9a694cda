"""The logger's device side: per-noise-level loss moments kept on the device, with no host sync.

:class:`DeviceAccumulator` holds every buffer a :class:`~diffaudit.logger.RunLogger`
fills between two flushes, all on the training device:

* a sample buffer per split (losses, timesteps, step slots, weights), folded into
  the window's per-bin sums once per window or when full (:meth:`reduce`);
* per (split, window, bin): the sums of :mod:`diffaudit.logtables` (``C_*``), and
  min and max by ``scatter_reduce_``; non-finite, negative and impossible-timestep
  samples are counted apart and excluded from the moments;
* a ring of the same sums per training step (the step's loss) and its timestep range;
* columns of scalars given as device tensors (a grad norm), and gradient-probe rows.

Moments are *shifted* sums: each bin accumulates x - K, where K is the bin's mean at
the previous flush (moved on the device by :meth:`restart`), so m2 = S2 - S1^2/n
keeps its digits when the mean is large against the spread.

Nothing here calls ``.item()`` or waits for the device: :meth:`copy_to_host` queues
one ``non_blocking`` copy per buffer into pinned memory and records a CUDA event the
writer thread waits on. Which steps and windows the slots stand for is the caller's
bookkeeping; this class only knows slot indices (the model of edm2's ``training_stats``:
moments on the device, one sync point, no I/O).
"""

from __future__ import annotations

import math

import torch

from diffaudit import runformat as rf
from diffaudit.logtables import C_COUNT, C_S1, NCOL
from diffaudit.noise import EDM_SIGMA_SLACK, Process

SPLITS = rf.SPLITS
EVAL_WINDOWS = 8  # window slots of an evaluation split before the table doubles
PROBE_ROWS = 16  # gradient-probe rows before the table doubles


def bin_of(process: Process, t: torch.Tensor) -> torch.Tensor:
    """The noise bin of each timestep, on t's device (the device twin of :meth:`Process.bin_of`)."""
    nb = process.num_bins
    if process.kind == "vp":
        b = (t.to(torch.int64) * nb).div(process.num_timesteps, rounding_mode="floor")
    elif process.kind == "flow":
        b = torch.floor(t.to(torch.float64) * nb).to(torch.int64)
    else:
        lo, hi = math.log(process.sigma_min), math.log(process.sigma_max)
        u = (torch.log(t.to(torch.float64).clamp_min(1e-300)) - lo) / (hi - lo)
        b = torch.floor(u * nb).to(torch.int64)
    # out-of-range timesteps land in the end bins rather than trigger a device-side assert
    return b.clamp_(0, nb - 1)


def bad_timesteps(process: Process, t: torch.Tensor) -> torch.Tensor:
    """Boolean mask of timesteps that cannot belong to the process (device op, no sync)."""
    tf = t.to(torch.float64)
    if process.kind == "vp":
        ok = (tf >= 0) & (tf < process.num_timesteps) & (tf == torch.floor(tf))
    elif process.kind == "flow":
        ok = (tf >= 0) & (tf <= 1)
    else:
        ok = (tf >= process.sigma_min / EDM_SIGMA_SLACK) & (tf <= process.sigma_max * EDM_SIGMA_SLACK)
    return ~ok  # NaN fails every comparison, so it is bad too


def far_timesteps(process: Process, t: torch.Tensor) -> torch.Tensor:
    """Each timestep moved half the process's noise range away (cyclically), in t's dtype and device."""
    if process.kind == "vp":
        T = process.num_timesteps
        return torch.remainder(t.to(torch.int64) + T // 2, T).to(t.dtype)
    if process.kind == "flow":
        return torch.remainder(t.to(torch.float64) + 0.5, 1.0).to(t.dtype)
    lo, hi = math.log(process.sigma_min), math.log(process.sigma_max)
    u = (torch.log(t.to(torch.float64).clamp_min(1e-300)) - lo) / (hi - lo)
    return torch.exp(lo + torch.remainder(u + 0.5, 1.0) * (hi - lo)).to(t.dtype)


def probe_norms(params: list, coarse_bin: torch.Tensor, losses: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per coarse bin: its sample count and the gradient norm of its mean loss (``autograd.grad``, graph kept)."""
    flat = losses.reshape(-1).float()
    dev = flat.device
    counts = torch.zeros(k, device=dev, dtype=torch.float32).index_add_(0, coarse_bin, torch.ones_like(flat))
    norms = torch.zeros(k, device=dev, dtype=torch.float32)
    for i in range(k):
        sel = (coarse_bin == i).to(flat.dtype) / counts[i].clamp_min(1.0)
        grads = torch.autograd.grad((flat * sel).sum(), params, retain_graph=True, allow_unused=True)
        sq = [g.detach().float().pow(2).sum() for g in grads if g is not None]
        if sq:
            norms[i] = torch.stack(sq).sum().sqrt()
    return counts, norms


class _SampleBuffer:
    """Raw per-sample losses, timesteps and step slots of one window, reduced once per window or when full."""

    def __init__(self, cap: int, device):
        self.cap = cap
        self.n = 0
        self.win = 0  # the window slot the buffered samples belong to
        # float64 timesteps for every process: a fractional vp timestep must stay visible to the check
        self.x = torch.empty(cap, dtype=torch.float64, device=device)
        self.t = torch.empty(cap, dtype=torch.float64, device=device)
        self.s = torch.empty(cap, dtype=torch.int64, device=device)
        self.w = None  # allocated when weights first appear


class DeviceAccumulator:
    """Every device buffer of one logger between flushes; see the module docstring.

    ``reduction``: ``"bincount"`` (CPU: about 10x faster than ``index_add_`` there) or
    ``"index_add"`` (atomics, no sync: the default off the CPU, where ``bincount``
    would sync to size its output). Both are exact and both run on a CPU, so tests
    cover the one a GPU uses.
    """

    def __init__(self, process: Process, device, *, flush_every: int, window: int, buffer_size: int,
                 probe_bins: int, reduction: str | None = None):
        dev = torch.device(device)
        self.process, self.device = process, dev
        nb = process.num_bins
        f64 = dict(dtype=torch.float64, device=dev)
        n_win = flush_every // window + 2
        self.acc = {s: torch.zeros(n_win if s == "train" else EVAL_WINDOWS, NCOL, nb, **f64) for s in SPLITS}
        self.min = {s: torch.full((a.shape[0], nb), math.inf, **f64) for s, a in self.acc.items()}
        self.max = {s: torch.full((a.shape[0], nb), -math.inf, **f64) for s, a in self.acc.items()}
        self.shift = torch.zeros(nb, **f64)
        self._shift_set = False
        self.ring = torch.zeros(NCOL, flush_every, **f64)
        self.tmin = torch.full((flush_every,), math.inf, **f64)
        self.tmax = torch.full((flush_every,), -math.inf, **f64)
        self.reduction = reduction or ("bincount" if dev.type == "cpu" else "index_add")
        if self.reduction not in ("bincount", "index_add"):
            raise ValueError(f"reduction must be 'bincount' or 'index_add', got {self.reduction!r}")
        self.buf = {s: _SampleBuffer(max(1, int(buffer_size)), dev) for s in SPLITS}
        self.scalars: dict[str, torch.Tensor] = {}  # name -> one value per step slot (NaN where not given)
        self.has_weights = False
        self.probe = torch.zeros(PROBE_ROWS, probe_bins, 2, dtype=torch.float32, device=dev)

    def windows(self, split: str) -> int:
        """Window slots ``split`` has before :meth:`grow` (or a flush) is needed."""
        return self.acc[split].shape[0]

    def grow(self, split: str) -> None:
        """Double a split's window table (device only, no sync) rather than flush in the middle of a step."""
        for table, fill in ((self.acc, 0.0), (self.min, math.inf), (self.max, -math.inf)):
            t = table[split]
            table[split] = torch.cat([t, torch.full_like(t, fill)])

    def append(self, split: str, win: int, x: torch.Tensor, t: torch.Tensor, slot: int, wt) -> None:
        """Queue one call's samples (1-d x, t, optional weights) for window slot ``win`` and step slot ``slot``."""
        buf = self.buf[split]
        if buf.n and buf.win != win:
            self.reduce(split)  # the buffered samples belong to the window that just ended
        buf.win = win
        n = x.numel()
        if buf.n + n > buf.cap:
            self.reduce(split)
            if n > buf.cap:  # one call larger than the whole buffer: reduce it directly
                to = dict(device=self.device, non_blocking=True)
                s = torch.full((n,), slot, dtype=torch.int64, device=self.device)
                self._reduce_samples(split, win, x.to(**to), t.to(**to), s, None if wt is None else wt.to(**to))
                return
        lo, hi = buf.n, buf.n + n
        buf.x[lo:hi].copy_(x, non_blocking=True)
        buf.t[lo:hi].copy_(t, non_blocking=True)
        buf.s[lo:hi].fill_(slot)
        if wt is not None:
            if buf.w is None:
                buf.w = torch.zeros(buf.cap, dtype=torch.float64, device=self.device)
            buf.w[lo:hi].copy_(wt, non_blocking=True)
        elif buf.w is not None:
            buf.w[lo:hi].zero_()
        buf.n = hi

    def reduce(self, split: str) -> None:
        """Fold the buffered samples of ``split`` into their window's per-bin sums."""
        buf = self.buf[split]
        if buf.n == 0:
            return
        n = buf.n
        self._reduce_samples(split, buf.win, buf.x[:n], buf.t[:n], buf.s[:n], None if buf.w is None else buf.w[:n])
        buf.n = 0

    def _reduce_samples(self, split: str, win: int, x, t, s, wt) -> None:
        b = bin_of(self.process, t)
        x = x.to(torch.float64)
        bad = bad_timesteps(self.process, t)
        finite = torch.isfinite(x)
        neg = finite & (x < 0) & ~bad  # a squared error is never negative: the wrong tensor, counted apart
        fin = finite & ~bad & ~neg  # a sample at an impossible timestep is counted in bad_t and nowhere else
        finf = fin.to(torch.float64)
        xf = torch.where(fin, x, 0.0)
        if not self._shift_set:
            # first data: shift every bin by their mean, so even the first window avoids cancellation
            self.shift.copy_((xf.sum() / finf.sum().clamp_min(1.0)).expand_as(self.shift))
            self._shift_set = True
        d = torch.where(fin, x - self.shift[b], 0.0)
        if wt is not None:
            wt = torch.where(fin, wt.to(torch.float64), 0.0)
            self.has_weights = True
            wcols = [wt, wt * xf]
        else:
            wcols = [torch.zeros_like(xf)] * 2
        # layout (column, bin), in the order of logtables.C_*: reductions along the last dim
        nonfin = (~finite & ~bad).to(torch.float64)
        src = torch.stack([finf, d, d * d, nonfin, xf, *wcols, bad.to(torch.float64), neg.to(torch.float64)], dim=0)
        acc = self.acc[split][win]
        train = split == "train"
        if self.reduction == "index_add":  # 0.48 ms per 25,600-sample window on an H200
            acc.index_add_(1, b, src)
            if train:
                self.ring.index_add_(1, s, src)
        else:
            acc.add_(torch.stack([torch.bincount(b, weights=c, minlength=acc.shape[1]) for c in src]))
            if train:
                self.ring.add_(torch.stack([torch.bincount(s, weights=c, minlength=self.ring.shape[1]) for c in src]))
        self.min[split][win].scatter_reduce_(0, b, torch.where(fin, x, math.inf), "amin")
        self.max[split][win].scatter_reduce_(0, b, torch.where(fin, x, -math.inf), "amax")
        if train:
            tf = t.to(torch.float64)
            self.tmin.scatter_reduce_(0, s, tf, "amin")
            self.tmax.scatter_reduce_(0, s, tf, "amax")

    def set_scalar(self, name: str, slot: int, value: torch.Tensor) -> bool:
        """Copy a 0-d device tensor into step slot ``slot`` of column ``name``; True if the column is new."""
        col = self.scalars.get(name)
        new = col is None
        if new:
            col = torch.full((self.ring.shape[1],), math.nan, dtype=torch.float64, device=self.device)
            self.scalars[name] = col
        col[slot].copy_(value.detach().reshape(()), non_blocking=True)
        return new

    def set_probe(self, row: int, counts: torch.Tensor, norms: torch.Tensor) -> None:
        """Store one gradient probe (counts and norms per coarse bin) in ``row``; the table doubles when full."""
        if row >= self.probe.shape[0]:
            self.probe = torch.cat([self.probe, torch.zeros_like(self.probe)])  # grows, never flushes mid-step
        self.probe[row, :, 0].copy_(counts, non_blocking=True)
        self.probe[row, :, 1].copy_(norms, non_blocking=True)

    def copy_to_host(self, n: int, n_w: dict, n_p: int) -> tuple[dict, object]:
        """Reduce what is buffered, then one non_blocking copy per buffer (its first n steps, n_w[split]
        windows, n_p probes) into pinned host memory; returns the copies and the CUDA event they complete at."""
        for split in SPLITS:
            self.reduce(split)
        cuda = self.device.type == "cuda"

        def host(src: torch.Tensor) -> torch.Tensor:
            dst = torch.empty(src.shape, dtype=src.dtype, pin_memory=cuda)
            dst.copy_(src, non_blocking=cuda)
            return dst

        tensors = {"ring": host(self.ring[:, :n]), "shift": host(self.shift),
                   "tmin": host(self.tmin[:n]), "tmax": host(self.tmax[:n])}
        for s in SPLITS:
            if n_w[s]:
                tensors[f"acc_{s}"] = host(self.acc[s][: n_w[s]])
                tensors[f"min_{s}"] = host(self.min[s][: n_w[s]])
                tensors[f"max_{s}"] = host(self.max[s][: n_w[s]])
        for name, col in self.scalars.items():
            tensors["dev_" + name] = host(col[:n])
        if n_p:
            tensors["probe"] = host(self.probe[:n_p])
        event = None
        if cuda:
            event = torch.cuda.Event()
            event.record()
        return tensors, event

    def restart(self, n_train_windows: int) -> None:
        """Move each bin's shift to its mean over the flushed training windows, and empty every buffer.

        Queued after :meth:`copy_to_host` on the same stream, so those copies see the values before it.
        """
        if n_train_windows:
            tot = self.acc["train"][:n_train_windows].sum(0)
            cnt = tot[C_COUNT]
            self.shift.add_(torch.where(cnt > 0, tot[C_S1] / cnt.clamp_min(1.0), 0.0))
        for s in SPLITS:
            self.acc[s].zero_()
            self.min[s].fill_(math.inf)
            self.max[s].fill_(-math.inf)
        self.ring.zero_()
        self.tmin.fill_(math.inf)
        self.tmax.fill_(-math.inf)
        for col in self.scalars.values():
            col.fill_(math.nan)
