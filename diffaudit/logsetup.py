"""A logger's arguments, checked and turned into its process, cadence and run.json, before anything is written.

Torch-free (a tensor argument is read through its ``detach().cpu().numpy()``), so every
refusal is a plain function a test can call. Each refusal is a one-line
:class:`~diffaudit.errors.DataError` or :class:`~diffaudit.errors.ScheduleError` naming
the argument and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import re
import time
from dataclasses import asdict, dataclass

import numpy as np

from diffaudit import __version__
from diffaudit import runformat as rf
from diffaudit.errors import DataError, ScheduleError
from diffaudit.noise import DEFAULT_PREDICTION, Process, schedule_from_betas

# the fixed per-step scalars; any other keyword scalar becomes an extra column
FIXED_SCALARS = ("grad_norm", "clip_threshold", "lr", "loss_scale")
# names a user scalar may not take: the logger's own columns, and every column name the loader
# or the single-file export uses (a scalar called "bin" could not be told from the bins table)
RESERVED = (
    frozenset(rf.STEPS_SCHEMA.names) | frozenset(rf.STEPS_OPTIONAL.names) | frozenset(rf.BINS_SCHEMA.names)
    | frozenset(rf.PROBES_SCHEMA.names) | frozenset(rf.OPTIMUM_SCHEMA.names) | {"n_ranks", "split", "table"}
) - set(FIXED_SCALARS)
_SCALAR_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,63}$")


@dataclass(frozen=True)
class Cadence:
    """How many steps a window, a part and the probe intervals span, and the device sample buffer's size."""

    window: int  # steps per bin-statistics window
    flush_every: int  # steps per Parquet part
    probe_every: int  # probe_gradients() acts on steps divisible by this (0 = never)
    time_probe_every: int  # probe_time() likewise
    probe_bins: int  # coarse bins of the gradient probe (at most num_bins)
    buffer_size: int  # per-sample device buffer (samples)

    @classmethod
    def of(cls, *, window, flush_every, probe_every, time_probe_every, probe_bins, buffer_size, num_bins) -> "Cadence":
        if int(window) < 1 or int(flush_every) < 1:
            raise DataError(f"window and flush_every must be positive, got {window} and {flush_every}")
        return cls(int(window), int(flush_every), int(probe_every), int(time_probe_every),
                   max(1, min(int(probe_bins), int(num_bins))), max(1, int(buffer_size)))

    def meta(self) -> dict:
        """The run.json fields (the buffer size is the logger's business, not the run's)."""
        return {k: v for k, v in asdict(self).items() if k != "buffer_size"}


def check_arguments(num_bins, total_steps, check_timesteps, data_var) -> None:
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


def check_scalars(split: str, scalars: dict) -> None:
    """Refuse scalars off the train split, and names that are reserved or could not be a column."""
    if split != "train":
        raise DataError(f"scalars ({', '.join(sorted(scalars))}) can only be logged with split='train'")
    bad = sorted(set(scalars) & RESERVED)
    if bad:
        raise DataError(f"scalar name(s) {', '.join(bad)} are reserved for the logger's own columns; use another name")
    odd = sorted(n for n in scalars if not _SCALAR_NAME.match(n))
    if odd:
        raise DataError(f"scalar name(s) {', '.join(map(repr, odd))}: use a letter, then letters, digits, '_' or '.' "
                        f"(at most 64)")


def resolve_process(process, prediction, num_bins, alphas_cumprod, betas, sigma_min, sigma_max,
                    sigma_data) -> tuple[Process, dict]:
    """The noise process (with a vp schedule from alphas_cumprod and/or betas), and the schedule's run.json fields."""
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
            alpha_bar, one_minus = schedule_from_betas(to_numpy(betas))
        if alphas_cumprod is not None:
            given = to_numpy(alphas_cumprod)
            src_dtype = str(given.dtype)
            if alpha_bar is None:
                alpha_bar = given.astype(np.float64)
            elif not np.allclose(given, alpha_bar, rtol=1e-5, atol=1e-7):
                raise ScheduleError("alphas_cumprod and betas describe different schedules")
    proc = Process(kind=process, prediction=prediction, num_bins=int(num_bins), alpha_bar=alpha_bar,
                   one_minus_alpha_bar=one_minus, sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data)
    return proc, {
        "alphas_cumprod_dtype": src_dtype,
        "schedule_from_betas": betas is not None,
        "schedule_sha": schedule_hash(alpha_bar),
    }


def data_meta(data_var, data_spectrum, data_dim) -> dict:
    """The training data's run.json fields (the L* bounds); data_dim defaults to the spectrum's length."""
    if data_spectrum is not None:
        data_spectrum = [float(v) for v in to_numpy(data_spectrum).ravel()]
        if not data_spectrum or not all(math.isfinite(v) and v >= 0 for v in data_spectrum):
            raise DataError("data_spectrum must be a non-empty list of finite covariance eigenvalues >= 0")
        if data_dim is None:
            data_dim = len(data_spectrum)
    return {
        "data_var": None if data_var is None else float(data_var),
        "data_spectrum": data_spectrum,
        "data_dim": data_dim,
    }


def run_meta(process: Process, schedule: dict, data: dict, cadence: Cadence, *, world_size: int,
             total_steps: int | None, config, torch_version: str) -> dict:
    """run.json of a new run; refuses a config that JSON cannot hold."""
    meta = {
        "format": rf.FORMAT_NAME,
        "format_version": rf.FORMAT_VERSION,
        "run_id": rf.new_run_id(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "diffaudit_version": __version__,
        "torch_version": torch_version,
        "python_version": platform.python_version(),
        "host": platform.node(),
        **process.to_meta(),
        **schedule,
        **data,
        **cadence.meta(),
        "world_size": world_size,
        "total_steps": total_steps,
        "config": config or {},
    }
    try:
        json.dumps(meta, allow_nan=False, default=str)
    except (TypeError, ValueError, RecursionError) as e:
        raise DataError(f"config cannot be stored in run.json as JSON ({type(e).__name__}: {e})") from None
    return meta


def to_numpy(x) -> np.ndarray:
    """A numpy array of an array-like or a tensor on any device."""
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def schedule_hash(alpha_bar) -> str | None:
    """A short fingerprint of a vp schedule (alpha_bar to 9 decimals): what a resumed logger must match."""
    if alpha_bar is None:
        return None
    return hashlib.sha256(np.asarray(alpha_bar, np.float64).round(9).tobytes()).hexdigest()[:16]
