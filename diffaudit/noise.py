"""Diffusion processes, noise schedules and noise-level bins (numpy only).

Every process is written as x_t = alpha_t * x0 + sigma_t * eps, every prediction target as
y = c_x * x0 + c_eps * eps (:func:`target_coefficients` has one row per target):

* ``vp``   discrete variance-preserving (DDPM): alpha = sqrt(abar_t), sigma = sqrt(1 - abar_t),
           integer timesteps t in [0, T), bins are equal runs of timesteps.
* ``flow`` rectified flow: alpha = 1 - t, sigma = t, float t in [0, 1], equal-width bins in t.
* ``edm``  Karras et al. (EDM): alpha = 1, sigma = sigma, timesteps *are* sigma, bins equal
           in log sigma between ``sigma_min`` and ``sigma_max``.

The logger (torch) and the analyzer (numpy) must agree exactly on the bin of a
timestep; the torch side re-implements :meth:`Process.bin_of` with the same
integer arithmetic and the tests check both against each other.

Precision: 1 - abar is the noise variance at low noise, where abar is within
1e-4 of 1. Computed as ``1 - abar`` from a float32 abar it keeps only ~3
significant digits there, so when betas are known we use
``-expm1(cumsum(log1p(-beta)))``. A zero-terminal-SNR schedule (abar_T = 0) is
kept as it is: nothing here clamps abar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from diffaudit.errors import ScheduleError

PROCESSES = ("vp", "flow", "edm")
#: prediction targets allowed for each process
PREDICTIONS = {
    "vp": ("epsilon", "sample", "v_prediction"),
    "flow": ("flow",),
    "edm": ("edm", "sample"),
}
DEFAULT_PREDICTION = {"vp": "epsilon", "flow": "flow", "edm": "edm"}

EDM_SIGMA_MIN = 0.002  # EDM paper's sampling range, also the default bin range
EDM_SIGMA_MAX = 80.0
QUAD_POINTS = 16  # quadrature nodes per bin for continuous processes


# ----------------------------------------------------------------------------
# Schedules


def schedule_from_betas(betas) -> tuple[np.ndarray, np.ndarray]:
    """Return (abar, 1 - abar) in float64 from betas, without cancellation near t = 0."""
    b = np.asarray(betas, dtype=np.float64)
    if b.ndim != 1 or b.size == 0:
        raise ScheduleError(f"betas must be a non-empty 1-D array, got shape {b.shape}")
    if not np.all(np.isfinite(b)) or np.any(b < 0) or np.any(b > 1):
        raise ScheduleError("betas must be finite and in [0, 1]")
    with np.errstate(divide="ignore"):  # beta = 1 (zero terminal SNR): log abar = -inf, abar = 0 exactly
        log_abar = np.cumsum(np.log1p(-b))
    return np.exp(log_abar), -np.expm1(log_abar)


def named_betas(name: str, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Betas of the schedules HF diffusers calls ``linear``, ``scaled_linear``, ``squaredcos_cap_v2`` (float64)."""
    T = int(num_timesteps)
    if name == "linear":
        return np.linspace(beta_start, beta_end, T, dtype=np.float64)
    if name == "scaled_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
    if name == "squaredcos_cap_v2":
        def abar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)], dtype=np.float64)
    raise ScheduleError(f"unknown beta schedule {name!r}; expected linear, scaled_linear or squaredcos_cap_v2")


def check_alpha_bar(alpha_bar) -> np.ndarray:
    """Validate an alphas_cumprod array and return it as float64 (never clamped)."""
    a = np.asarray(alpha_bar, dtype=np.float64)
    if a.ndim != 1 or a.size < 2:
        raise ScheduleError(f"alphas_cumprod must be a 1-D array of at least 2 values, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ScheduleError("alphas_cumprod contains NaN or Inf")
    if np.any(a < 0) or np.any(a > 1):
        raise ScheduleError(f"alphas_cumprod must lie in [0, 1]; found values in [{a.min():.3g}, {a.max():.3g}]")
    return a


def log_snr(alpha_bar: np.ndarray, one_minus: np.ndarray) -> np.ndarray:
    """log(abar / (1 - abar)); -inf at zero terminal SNR, +inf where abar == 1 (no noise)."""
    with np.errstate(divide="ignore"):
        return np.log(alpha_bar) - np.log(one_minus)


def target_coefficients(prediction: str, alpha, sigma) -> tuple[np.ndarray, np.ndarray]:
    """(c_x, c_eps) of the target y = c_x x0 + c_eps eps at (alpha, sigma): one row per prediction target."""
    a, s = np.asarray(alpha, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if prediction == "epsilon":
        return np.zeros_like(a), np.ones_like(a)
    if prediction in ("sample", "edm"):
        return np.ones_like(a), np.zeros_like(a)
    if prediction == "v_prediction":
        return -s, a
    return -np.ones_like(a), np.ones_like(a)  # flow: velocity eps - x0


# ----------------------------------------------------------------------------
# The process


@dataclass(frozen=True)
class Process:
    """A diffusion process with its prediction target and noise-level bins."""

    kind: str
    prediction: str
    num_bins: int
    alpha_bar: np.ndarray | None = None  # vp only, float64, length T
    one_minus_alpha_bar: np.ndarray | None = None  # vp only, computed without cancellation when possible
    sigma_min: float = EDM_SIGMA_MIN  # edm only: bin range
    sigma_max: float = EDM_SIGMA_MAX
    sigma_data: float | None = None  # edm only
    _edges: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.kind not in PROCESSES:
            raise ScheduleError(f"unknown process {self.kind!r}; expected one of {', '.join(PROCESSES)}")
        if self.prediction not in PREDICTIONS[self.kind]:
            raise ScheduleError(
                f"prediction {self.prediction!r} is not valid for process {self.kind!r}; "
                f"expected one of {', '.join(PREDICTIONS[self.kind])}"
            )
        if not isinstance(self.num_bins, (int, np.integer)) or self.num_bins < 1:
            raise ScheduleError(f"num_bins must be a positive integer, got {self.num_bins!r}")
        if self.kind == "vp":
            if self.alpha_bar is None:
                raise ScheduleError("process 'vp' needs alphas_cumprod")
            a = check_alpha_bar(self.alpha_bar)
            om = 1.0 - a if self.one_minus_alpha_bar is None else np.asarray(self.one_minus_alpha_bar, np.float64)
            if om.shape != a.shape:
                raise ScheduleError("one_minus_alpha_bar and alpha_bar differ in length")
            if self.num_bins > a.size:
                raise ScheduleError(f"num_bins={self.num_bins} exceeds the {a.size} timesteps of the schedule")
            object.__setattr__(self, "alpha_bar", a)
            object.__setattr__(self, "one_minus_alpha_bar", om)
            edges = np.array([(b * a.size + self.num_bins - 1) // self.num_bins for b in range(self.num_bins + 1)])
        elif self.kind == "flow":
            edges = np.linspace(0.0, 1.0, self.num_bins + 1)
        else:
            if self.sigma_data is None and self.prediction == "edm":
                raise ScheduleError("process 'edm' needs sigma_data")
            if not (0 < self.sigma_min < self.sigma_max):
                raise ScheduleError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
            edges = np.exp(np.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.num_bins + 1))
            edges[0], edges[-1] = self.sigma_min, self.sigma_max
        if self.kind != "vp":
            edges = self._snap_edges(edges)
        object.__setattr__(self, "_edges", edges)

    def _snap_edges(self, edges: np.ndarray) -> np.ndarray:
        """Move each interior edge by a few ulps to the smallest t that :meth:`bin_of` puts in that bin.

        ``bin_of`` is the contract with the logger's device code, so it stays as it
        is; the edges computed by linspace/exp differ from its floating-point
        arithmetic by an ulp or two, which put e.g. t = edges[1] of a 49-bin flow
        process into bin 0. bin_of is monotone in t, so a short walk finds the exact
        boundary.
        """
        e = edges.copy()
        target = np.arange(1, self.num_bins)
        x = e[1:-1]
        for step in (-np.inf, np.inf):  # down until below the bin, then up to its first member
            for _ in range(10_000):
                move = self.bin_of(x) >= target if step < 0 else self.bin_of(x) < target
                if not move.any():
                    break
                x[move] = np.nextafter(x[move], step)
            else:  # pragma: no cover - bin_of is monotone, the walk is a few ulps
                raise ScheduleError("could not place the noise-bin edges consistently with bin_of")
        e[1:-1] = x
        return e

    # -- bins ---------------------------------------------------------------

    @property
    def num_timesteps(self) -> int | None:
        return None if self.alpha_bar is None else int(self.alpha_bar.size)

    def bin_edges(self) -> np.ndarray:
        """Bin edges in timestep units (vp: integer t; flow: t; edm: sigma).

        Bin b holds edges[b] <= t < edges[b+1], exactly as :meth:`bin_of` computes it;
        the last bin also holds t == edges[-1] (flow t = 1, edm sigma_max), and
        timesteps outside the range are clipped into the first or last bin.
        """
        return self._edges.copy()

    def bin_of(self, t) -> np.ndarray:
        """Bin index of each timestep (same arithmetic as the logger's device code)."""
        t = np.asarray(t)
        nb = self.num_bins
        if self.kind == "vp":
            return (t.astype(np.int64) * nb) // self.num_timesteps
        if self.kind == "flow":
            return np.clip(np.floor(t.astype(np.float64) * nb), 0, nb - 1).astype(np.int64)
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        u = (np.log(np.maximum(t.astype(np.float64), 1e-300)) - lo) / (hi - lo)
        return np.clip(np.floor(u * nb), 0, nb - 1).astype(np.int64)

    def alpha_sigma(self, t) -> tuple[np.ndarray, np.ndarray]:
        """(alpha_t, sigma_t) for timesteps t, float64."""
        if self.kind == "vp":
            ti = np.asarray(t, dtype=np.int64)
            return np.sqrt(self.alpha_bar[ti]), np.sqrt(self.one_minus_alpha_bar[ti])
        tf = np.asarray(t, dtype=np.float64)
        if self.kind == "flow":
            return 1.0 - tf, tf
        return np.ones_like(tf), tf

    def bin_nodes(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Quadrature nodes (timesteps) and weights over bin b, for averaging a function of t over the bin.

        vp: every integer timestep of the bin, equal weights (a uniform timestep sampler).
        flow: midpoints uniform in t. edm: midpoints uniform in log sigma.
        """
        e = self._edges
        if self.kind == "vp":
            nodes = np.arange(int(e[b]), int(e[b + 1]))
        elif self.kind == "flow":
            nodes = e[b] + (np.arange(QUAD_POINTS) + 0.5) / QUAD_POINTS * (e[b + 1] - e[b])
        else:
            lo, hi = math.log(e[b]), math.log(e[b + 1])
            nodes = np.exp(lo + (np.arange(QUAD_POINTS) + 0.5) / QUAD_POINTS * (hi - lo))
        return nodes, np.full(nodes.size, 1.0 / nodes.size)

    def bin_centers(self) -> np.ndarray:
        """A representative timestep per bin (vp: middle integer t; flow: middle t; edm: geometric middle sigma)."""
        e = self._edges
        if self.kind == "vp":
            return np.array([(int(e[b]) + int(e[b + 1]) - 1) // 2 for b in range(self.num_bins)])
        if self.kind == "flow":
            return 0.5 * (e[:-1] + e[1:])
        return np.sqrt(e[:-1] * e[1:])

    def log_snr(self, t) -> np.ndarray:
        """log(alpha_t^2 / sigma_t^2) at timesteps t (vp: integers; flow: t in [0, 1]; edm: sigma); +-inf at the ends."""
        a, s = self.alpha_sigma(t)
        with np.errstate(divide="ignore"):
            return 2.0 * (np.log(a) - np.log(s))

    def bin_log_snr(self) -> np.ndarray:
        """log(alpha^2 / sigma^2) at each bin's representative timestep."""
        return self.log_snr(self.bin_centers())

    def target_coefficients(self, t) -> tuple[np.ndarray, np.ndarray]:
        """(c_x, c_eps) of the prediction target y = c_x x0 + c_eps eps at timesteps t (see :func:`target_coefficients`)."""
        return target_coefficients(self.prediction, *self.alpha_sigma(t))

    def loss_weight(self, t) -> np.ndarray:
        """Weight applied to the unweighted x0/eps error in the recorded loss: lambda(sigma) for edm, else 1."""
        a, s = self.alpha_sigma(t)
        if self.prediction == "edm":
            sd = float(self.sigma_data)
            return (s**2 + sd**2) / (s * sd) ** 2
        return np.ones_like(a)

    # -- (de)serialisation ----------------------------------------------------

    def to_meta(self) -> dict:
        """The process fields of run.json (the schedule itself lives in schedule.parquet)."""
        m = {"process": self.kind, "prediction": self.prediction, "num_bins": int(self.num_bins)}
        if self.kind == "vp":
            m["num_timesteps"] = self.num_timesteps
        if self.kind == "edm":
            m.update(sigma_min=self.sigma_min, sigma_max=self.sigma_max, sigma_data=self.sigma_data)
        m["bin_edges"] = [float(x) for x in self._edges]
        return m

    @classmethod
    def from_meta(cls, meta: dict, alpha_bar=None, one_minus=None) -> "Process":
        kind = meta.get("process")
        return cls(
            kind=kind,
            prediction=meta.get("prediction", DEFAULT_PREDICTION.get(kind, "")),
            num_bins=int(meta.get("num_bins", 0)),
            alpha_bar=alpha_bar,
            one_minus_alpha_bar=one_minus,
            sigma_min=float(meta.get("sigma_min", EDM_SIGMA_MIN)),
            sigma_max=float(meta.get("sigma_max", EDM_SIGMA_MAX)),
            sigma_data=meta.get("sigma_data"),
        )

    def same_noise_levels(self, other: "Process") -> bool:
        """True when both processes bin the same noise levels the same way and predict the same target."""
        if (self.kind, self.prediction, self.num_bins) != (other.kind, other.prediction, other.num_bins):
            return False
        if self.kind == "vp":
            return self.alpha_bar.shape == other.alpha_bar.shape and bool(
                np.allclose(self.alpha_bar, other.alpha_bar, rtol=1e-6, atol=1e-9)
            )
        return bool(np.allclose(self._edges, other._edges))


# how far outside [sigma_min, sigma_max] an EDM sigma may lie and still be a noise level of the run
EDM_SIGMA_SLACK = 10.0


def timestep_cause(process, lo: float | None, hi: float | None) -> tuple[str, str]:
    """(the valid range, the likeliest reason timesteps from ``lo`` to ``hi`` fall outside it), in words: what the
    logger says when it refuses them and what the analysis says of a run that logged them."""
    p = process
    if p.kind == "vp":
        valid = f"integers 0 to {p.num_timesteps - 1}"
    elif p.kind == "flow":
        valid = "t in [0, 1]"
    else:
        valid = f"sigma in [{p.sigma_min / EDM_SIGMA_SLACK:g}, {p.sigma_max * EDM_SIGMA_SLACK:g}]"
    if p.kind == "edm" and lo is not None and lo <= 0:
        return valid, "sigma must be positive (pass sigma, not log sigma or t)"
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return valid, "non-finite timesteps (NaN or inf reached the sampler)"
    if p.kind == "flow" and 1 < hi <= 1000.0 and lo >= 0:
        return valid, "they look scaled by 1000 (pass t in [0, 1], not t*1000)"
    if p.kind == "vp" and 0 <= lo and hi < 1:
        return valid, f"they look like fractions of the schedule (pass the integer t, i.e. t*{p.num_timesteps})"
    if p.kind == "vp" and hi >= p.num_timesteps:
        return valid, f"t reaches {hi:g} >= T = {p.num_timesteps} (an off-by-one, or another schedule's length)"
    if p.kind == "vp":
        return valid, "fractional or negative timesteps (pass the integer t the scheduler used)"
    if p.kind == "edm":
        return valid, "another noise range than the run's (check sigma_min and sigma_max)"
    if lo < 0:
        return valid, "negative flow time (pass t in [0, 1])"
    return valid, "flow time above 1: another parametrisation (pass t in [0, 1])"
