"""The Bayes-optimal loss L*: Gaussian closed form and empirical-data estimators.

Every process is x_t = alpha x0 + sigma eps and every target y = c_x x0 + c_eps eps
(the table in :mod:`diffaudit.noise`). L* is the loss of the best possible predictor, per element.

Gaussian data (closed form)
---------------------------
If x0 has covariance eigenvalues lambda_1..lambda_d, in each eigendirection the
optimal predictor is linear and leaves the residual variance

    Var(y) - Cov(y, x_t)^2 / Var(x_t) = (c_x sigma - c_eps alpha)^2 lambda / (alpha^2 lambda + sigma^2).

The mean does not matter (it is known). Where alpha^2 lambda + sigma^2 = 0 nothing
is observed and the residual is the whole variance c_x^2 lambda + c_eps^2 (the
true value at sigma = 0 in a zero-variance direction, not a limit). For EDM the
weight lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2 cancels the
sigma^2 of the x0 residual analytically, so L* stays finite down to sigma = 0.
Nothing is clamped: alpha = 0 (zero terminal SNR) is an ordinary input.

The covariance of a training set is its empirical one (divided by N, not N - 1):
the model is trained on that finite distribution, and among distributions with
that covariance the Gaussian has the largest L*, so the closed form is an upper
bound of the empirical L* below.

Empirical data (the memorization floor)
---------------------------------------
For a training set {x_n} the optimal x0-predictor is the posterior mean
m(x_t) = sum_n w_n x_n with w = softmax_n(-||x_t - alpha x_n||^2 / 2 sigma^2), and

    L*(t) = (c_x - c_eps alpha / sigma)^2 * weight(t) * E ||x0 - m(x_t)||^2 / d,

because y = (c_x - c_eps alpha/sigma) x0 + (c_eps/sigma) x_t and the second term is
known. We estimate the expectation by Monte Carlo over (t, x0, eps): t drawn from
the bin's quadrature nodes (for a discrete process, every timestep of the bin: what
a uniform sampler hits), x0 uniform over the data, eps ~ N(0, I). One sample is one
such triple, so the standard error is the per-sample spread over sqrt(n). At
sigma = 0 (a schedule with beta_0 = 0) x0 is known and eps unobserved, so the
value there is c_eps^2 weight ||eps||^2 / d, not the sigma -> 0 limit.

Precision and memory. The data are kept in float32, centred (the posterior is
translation-equivariant, and centring shrinks the ||x||^2 terms that cancel in
||x_t - alpha x_n||^2). The distances come from one float32 GEMM per chunk;
everything after it (the 1/sigma^2 scaling, the running log-sum-exp, the weights,
the error) is float64: at low noise the logits are of order ||x||^2 / sigma^2 and
float32 could not even order them. The GEMM's own error (~1e-7 ||x||^2) moves a
logit by that over 2 sigma^2, which matters only between points closer than it,
i.e. duplicates, whose contribution to the error is nil. The query's own x0 is
always summed separately in float64 (the "self" term): at low noise the error is
the tiny weight of the *other* points times their distance, and sending x0 through
the float32 GEMM would leave a rounding floor of ~1e-7 |x0| that the eps target's
(alpha/sigma)^2 then amplifies. The log-sum-exp runs online over data chunks (as
in flash attention), so memory is bounded by the chunk sizes, not by N.

Subsampled estimators (after Xu et al. 2025, arXiv 2506.13763)
--------------------------------------------------------------
The exact estimator costs N d per sample. The subsampled ones replace "all other
points" by a random subset R of K of them and always keep the true x0:

* ``dol``: the posterior over {x0} + R, unweighted: the exact L* of a K-point
  training set that contains x0. Fewer competitors make the posterior collapse on
  x0 sooner, so it is biased low, by up to ~100% in the memorization transition.
* ``cdol``: x0 keeps weight 1 and each of the K_q sampled others (drawn uniformly
  without replacement from the N - 1) weighs (N - 1) / K_q, the inverse of its
  inclusion probability. Numerator and denominator of the posterior mean are then
  unbiased Horvitz-Thompson estimates of the full sums, and their ratio is
  consistent. Two biases remain. (a) O(1/K): E||x0 - m_hat||^2 exceeds
  ||x0 - m||^2 by tr Var(m_hat), plus a ratio-bias term; both are estimated from
  the sample itself (delta method: sample variance and covariance of
  p_n (x_n - m_hat) and p_n, with the finite-population factor 1 - K/(N - 1)) and
  subtracted (:meth:`_Posterior.sampling_correction`). This removed the high-noise
  bias (+0.5% at K = 256 on digits) entirely. (b) Rare neighbours: near the
  memorization transition the error comes from one or two near neighbours of x0.
  A uniform subset holds each with probability K/N and, when it does, weights it
  N/K: since the error is quadratic in that weight, its expectation is off by a
  factor N/K. No reweighting of a uniform subset fixes this (dol is off by K/N).
* ``stratified`` (the recommended one): cdol plus a second stratum sampled with
  certainty, the M points nearest to x_t / alpha, summed exactly. "Nearest" is
  ranked by a cheap lower bound of the distance, from a rank-32 PCA projection plus
  the norm of the residual (:class:`_Projection`, cost 33 per point instead of d).
  The rest is sampled as in cdol with weight (N - 1 - M) / K_q. Whatever the
  ranking picks, both strata are unbiased; a good ranking puts the rare, heavy
  neighbours in the exact stratum, which removes bias (b). On sklearn's digits
  (N = 1797, d = 64, K = 256, M = 32, 20 bins of a linear schedule, eps target)
  every bin's bias was below 0.8% of the exact L*, against up to -100% for dol
  and cdol (benchmarks/bench_optimum.py prints the table). The ranking is only as
  good as the projection: on isotropic data (no low-rank structure, e.g. uniform
  noise) it picks neighbours no better than chance and stratified falls back to
  cdol's behaviour in the transition bins; image data are strongly low-rank.

Backends: numpy, or torch on CPU/CUDA (imported only inside the estimator). On a
GPU the prepared data stay resident when they fit in half the free memory, and
float32 products are forced to full precision for the duration of the call (a
training script's TF32 setting would put the distances off by ~1e-3 ||x||^2).

Subsets are shared by the queries of one *round*, i.e. one sample per bin, so the
n samples within a bin use n independent subsets and the per-bin standard error
stays valid, while each round is still one matrix product. The same seed gives
the same (t, x0, eps) for every estimator and backend, so estimators can be
compared sample by sample (``EmpiricalOptimalLoss.values``): common random numbers
make the bias measurable to a fraction of a percent with a few hundred samples.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from diffaudit.errors import DataError, DiffauditError, ScheduleError
from diffaudit.noise import target_coefficients

PREDICTIONS = ("epsilon", "sample", "v_prediction", "flow", "edm")
ESTIMATORS = ("exact", "stratified", "cdol", "dol")
BACKENDS = ("auto", "numpy", "torch")

DEFAULT_SAMPLES_PER_BIN = 64  # Monte Carlo samples (t, x0, eps) per bin
DEFAULT_SEED = 0  # the draws of (t, x0, eps)
DEFAULT_SUBSET = 4096  # points per random subset of the subsampled estimators
DEFAULT_NEIGHBORS = 64  # stratified: nearest candidates per sample that are summed exactly
PCA_RANK = 32  # stratified: rank of the projection that ranks the candidates
PCA_SAMPLE = 4096  # points the projection is fitted on
MEMORY_MB = 512  # working memory of the estimators, not counting the data itself
NEGLIGIBLE_LOG_WEIGHT = -69.0  # exp(-69) ~ 1e-30 of the running max: cannot move the posterior mean
NEGLIGIBLE_WEIGHT = math.exp(NEGLIGIBLE_LOG_WEIGHT)
SPECTRUM_ROUNDOFF = 1e-12  # negative eigenvalues above -1e-12 * max are round-off


EXACT_LIMIT = 2e8  # N*d up to which the default estimator is exact (minutes on 2 cores at the default samples)

__all__ = [
    "EXACT_LIMIT",
    "EmpiricalOptimalLoss",
    "backend_name",
    "bin_empirical_optimal_loss",
    "bin_gaussian_optimal_loss",
    "check_data",
    "choose_estimator",
    "data_spectrum",
    "gaussian_optimal_loss",
    "mean_variance",
    "posterior_mean",
]


# ----------------------------------------------------------------------------
# Inputs


def check_data(data, expected_dim: int | None = None, *, name: str = "training samples") -> np.ndarray:
    """Return the samples as an (N, d) array view (a 1-D array is N scalars), or raise DataError.

    Checks: numeric and real, N >= 1, d >= 1, every value finite, and d ==
    ``expected_dim`` when given. The data are not copied (torch tensors are moved
    to the host).
    """
    if hasattr(data, "detach") and hasattr(data, "cpu"):  # a torch tensor, without importing torch
        data = data.detach().cpu().numpy()
    x = np.asarray(data)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"{name} must be real numbers, got dtype {x.dtype}")
    if x.ndim == 0:
        raise DataError(f"{name} must be an array of shape (N, ...), got a scalar")
    x = x.reshape(x.shape[0], math.prod(x.shape[1:])) if x.ndim > 1 else x.reshape(-1, 1)
    if x.shape[0] == 0:
        raise DataError(f"{name} are empty (N = 0)")
    if x.shape[1] == 0:
        raise DataError(f"{name} have no values per sample (shape {np.asarray(data).shape})")
    if np.issubdtype(x.dtype, np.floating):
        rows = max(1, (64 << 20) // max(1, x.shape[1] * x.itemsize))  # scan in ~64 MB pieces
        for i in range(0, x.shape[0], rows):
            bad = ~np.isfinite(x[i : i + rows])
            if bad.any():
                r, _ = np.nonzero(bad)
                first = i + int(r[0])
                kind = "NaN" if np.isnan(x[first]).any() else "Inf"
                raise DataError(f"{name} contain {kind} (first at sample {first})")
    if expected_dim is not None and x.shape[1] != int(expected_dim):
        raise DataError(f"{name} have dimension {x.shape[1]} but the run's data has {int(expected_dim)}")
    return x


def _check_prediction(prediction: str, sigma_data) -> float | None:
    if prediction not in PREDICTIONS:
        raise ScheduleError(f"unknown prediction {prediction!r}; expected one of {', '.join(PREDICTIONS)}")
    if prediction != "edm":
        return None
    if sigma_data is None:
        raise ScheduleError("prediction 'edm' needs sigma_data (the data standard deviation of its weighting)")
    sd = float(sigma_data)
    if not (math.isfinite(sd) and sd > 0):
        raise ScheduleError(f"sigma_data must be a positive number, got {sigma_data!r}")
    return sd


def _variance_levels(data_var, spectrum) -> tuple[np.ndarray, np.ndarray, int]:
    """Return (distinct variances, multiplicities, d) from a scalar variance or an eigenvalue spectrum."""
    if (data_var is None) == (spectrum is None):
        raise DataError("give exactly one of data_var (one variance for every element) or spectrum (eigenvalues)")
    if data_var is not None:
        v = np.asarray(data_var, dtype=np.float64)
        if v.ndim != 0:
            raise DataError(f"data_var must be a single number, got shape {v.shape}; pass eigenvalues as spectrum")
        if not np.isfinite(v) or v < 0:
            raise DataError(f"data_var must be a finite variance >= 0, got {float(v)}")
        return v.reshape(1), np.ones(1), 1
    lam = np.asarray(spectrum, dtype=np.float64).reshape(-1)
    if lam.size == 0:
        raise DataError("spectrum is empty")
    if not np.all(np.isfinite(lam)):
        raise DataError("spectrum contains NaN or Inf")
    floor = -SPECTRUM_ROUNDOFF * max(float(np.abs(lam).max()), 1e-300)
    if lam.min() < floor:
        raise DataError(f"spectrum has a negative variance {lam.min():.3g}; covariance eigenvalues are >= 0")
    lam = np.maximum(lam, 0.0)  # only round-off of an eigen-solver gets here
    values, counts = np.unique(lam, return_counts=True)
    return values, counts.astype(np.float64), lam.size


def _check_noise(alpha, sigma) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(alpha, dtype=np.float64)
    s = np.asarray(sigma, dtype=np.float64)
    try:
        a, s = np.broadcast_arrays(a, s)
    except ValueError:
        raise ScheduleError(f"alpha and sigma have incompatible shapes {a.shape} and {s.shape}") from None
    for nm, v in (("alpha", a), ("sigma", s)):
        if not np.all(np.isfinite(v)):
            raise ScheduleError(f"{nm} contains NaN or Inf")
        if np.any(v < 0):
            raise ScheduleError(f"{nm} must be >= 0, found {v.min():.3g}")
    return a, s


# ----------------------------------------------------------------------------
# Gaussian data: closed form


def gaussian_optimal_loss(
    alpha,
    sigma,
    *,
    prediction: str,
    data_var=None,  # one variance shared by every element
    spectrum=None,  # or the covariance eigenvalues, length d
    sigma_data=None,  # edm only: the sigma_d of the lambda(sigma) weighting
) -> np.ndarray:
    """Return the per-element L* of Gaussian data at each (alpha_t, sigma_t), float64, broadcast shape.

    L*(t) = (1/d) sum_i (c_x sigma - c_eps alpha)^2 lambda_i / (alpha^2 lambda_i + sigma^2),
    times lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2 for ``prediction="edm"``.
    Finite at alpha = 0 and at sigma = 0 (edm: its limit, 1 for lambda_i > 0).
    """
    sd = _check_prediction(prediction, sigma_data)
    values, counts, d = _variance_levels(data_var, spectrum)
    a, s = _check_noise(alpha, sigma)
    shape = a.shape
    a, s = a.reshape(-1, 1), s.reshape(-1, 1)
    cx, ce = target_coefficients(prediction, a, s)
    out = np.zeros(a.shape[0])
    block = max(1, (8 << 20) // max(1, a.shape[0]))  # bound the (noise levels x variances) temporaries
    for j in range(0, values.size, block):
        lam, cnt = values[None, j : j + block], counts[j : j + block]
        den = a * a * lam + s * s
        if sd is None:
            num = (cx * s - ce * a) ** 2 * lam
            blind = cx * cx * lam + ce * ce  # nothing observed: the whole variance of y remains
        else:
            # (s^2 + sd^2)/(s sd)^2 * s^2 lam / den, with the s^2 cancelled so sigma = 0 is finite
            num = (s * s + sd * sd) * lam / (sd * sd)
            blind = np.where(lam > 0, np.inf, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.where(den > 0, num / np.where(den > 0, den, 1.0), blind)
        if sd is not None:
            v = np.where(num == 0, 0.0, v)  # a zero-variance direction is known exactly: no error to weight
        out += v @ cnt
    return (out / d).reshape(shape)


def data_spectrum(samples) -> np.ndarray:
    """Return the eigenvalues of the samples' covariance (divided by N), length d, descending, float64.

    With N < d the d x d covariance has rank < N; its nonzero eigenvalues are those
    of the N x N Gram matrix of the centred samples, and the rest are padded zeros.
    Samples of any shape (N, ...) are flattened to d values each.
    """
    x = check_data(samples, name="samples")
    n, d = x.shape
    mean = np.zeros(d)
    rows = max(1, (64 << 20) // (8 * d))  # ~64 MB float64 pieces
    for i in range(0, n, rows):
        mean += x[i : i + rows].sum(axis=0, dtype=np.float64)
    mean /= n
    if n >= d:
        cov = np.zeros((d, d))
        for i in range(0, n, rows):
            c = x[i : i + rows].astype(np.float64) - mean
            cov += c.T @ c
        ev = np.linalg.eigvalsh(cov / n)
    else:
        gram = np.zeros((n, n))
        cols = max(1, (64 << 20) // (8 * n))
        for j in range(0, d, cols):
            c = x[:, j : j + cols].astype(np.float64) - mean[j : j + cols]
            gram += c @ c.T
        ev = np.concatenate([np.linalg.eigvalsh(gram / n), np.zeros(d - n)])
    # a Gram or covariance matrix is positive semi-definite: negatives are solver round-off
    return np.sort(np.maximum(ev, 0.0))[::-1].copy()


def _bin_average(process, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Average fn(t) over each bin's quadrature nodes, one vectorised call."""
    nodes, weights, owner = [], [], []
    for b in range(process.num_bins):
        t, w = process.bin_nodes(b)
        nodes.append(t)
        weights.append(w)
        owner.append(np.full(t.size, b))
    t, w, owner = np.concatenate(nodes), np.concatenate(weights), np.concatenate(owner)
    return np.bincount(owner, weights=w * fn(t), minlength=process.num_bins) / np.bincount(
        owner, weights=w, minlength=process.num_bins
    )


def bin_gaussian_optimal_loss(process, *, data_var=None, spectrum=None) -> np.ndarray:
    """Return the Gaussian L* of each noise bin of ``process`` (length num_bins), in the run's recorded units.

    Each bin averages L*(t) over the timesteps a uniform sampler hits in it
    (:meth:`diffaudit.noise.Process.bin_nodes`); for prediction ``edm`` L* carries
    the lambda(sigma) weight, as the recorded loss does.
    """

    def lstar(t):
        a, s = process.alpha_sigma(t)
        return gaussian_optimal_loss(
            a, s, prediction=process.prediction, data_var=data_var, spectrum=spectrum, sigma_data=process.sigma_data
        )

    _variance_levels(data_var, spectrum)  # fail before touching the process
    return _bin_average(process, lstar)


# ----------------------------------------------------------------------------
# Array backends: the estimator is written once against this small interface


class _NumpyOps:
    name = "numpy"
    f32, f64, i64, bool = np.float32, np.float64, np.int64, np.bool_

    def put(self, a, dtype):
        return np.ascontiguousarray(a, dtype=dtype)

    def get(self, a) -> np.ndarray:
        return np.asarray(a)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def copy(self, a):
        return a.copy()

    def cast(self, a, dtype):
        return a.astype(dtype, copy=False)

    def exp(self, a):
        return np.exp(a)

    def rowmax(self, a):
        return a.max(axis=1)

    def rowsum(self, a):
        return a.sum(axis=1)

    def maximum(self, a, b):
        return np.maximum(a, b)

    def where_rows(self, mask):
        return np.flatnonzero(mask)

    def exp_(self, a):
        return np.exp(a, out=a)

    def swap_last(self, a):
        return a.transpose(0, 2, 1)

    def arange(self, lo, hi):
        return np.arange(lo, hi)

    def fits_on_device(self, nbytes) -> bool:
        return False  # host memory: chunks are prepared as they are used

    def full_precision(self):
        return contextlib.nullcontext()


class _TorchOps:
    name = "torch"

    def __init__(self, device):
        import torch  # only here: importing diffaudit.optimum must not import torch

        self.torch = torch
        self.f32, self.f64, self.i64, self.bool = torch.float32, torch.float64, torch.int64, torch.bool
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
            torch.zeros(1, device=self.device)
        except (RuntimeError, AssertionError) as e:
            raise DiffauditError(f"torch device {device!r} is not usable here: {str(e).splitlines()[0]}") from None

    def put(self, a, dtype):
        if isinstance(a, np.ndarray):
            a = self.torch.from_numpy(np.ascontiguousarray(a))
        return a.to(device=self.device, dtype=dtype)

    def get(self, a) -> np.ndarray:
        return a.detach().cpu().numpy()

    def zeros(self, shape, dtype):
        return self.torch.zeros(shape, dtype=dtype, device=self.device)

    def copy(self, a):
        return a.clone()

    def cast(self, a, dtype):
        return a.to(dtype)

    def exp(self, a):
        return self.torch.exp(a)

    def rowmax(self, a):
        return a.amax(dim=1)

    def rowsum(self, a):
        return a.sum(dim=1)

    def maximum(self, a, b):
        return self.torch.maximum(a, b)

    def where_rows(self, mask):
        return self.torch.nonzero(mask).flatten()

    def exp_(self, a):
        return a.exp_()

    def swap_last(self, a):
        return a.transpose(1, 2)

    def arange(self, lo, hi):
        return self.torch.arange(lo, hi, device=self.device)

    def fits_on_device(self, nbytes) -> bool:
        if self.device.type != "cuda":
            return False
        free, _ = self.torch.cuda.mem_get_info(self.device)
        return nbytes < free // 2

    @contextlib.contextmanager
    def full_precision(self):
        """Float32 products in float32, even if the caller's program enabled TF32.

        TF32 keeps 10 mantissa bits: the distances would be off by ~1e-3 ||x||^2,
        enough to reorder near neighbours at mid noise.
        """
        saved = self.torch.get_float32_matmul_precision()
        self.torch.set_float32_matmul_precision("highest")
        try:
            yield
        finally:
            self.torch.set_float32_matmul_precision(saved)


def _backend(backend: str, device):
    """The array backend: numpy, or torch on ``device``.

    "auto" takes torch when a GPU is there to use (or a device is named), numpy
    otherwise: on CPU both end in the same BLAS GEMMs, and numpy was as fast or
    faster on the benchmark (and needs no import of torch).
    """
    if backend not in BACKENDS:
        raise DiffauditError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "numpy":
        if device not in (None, "cpu"):
            raise DiffauditError(f"backend 'numpy' runs on the CPU only, got device {device!r}")
        return _NumpyOps()
    try:
        import torch
    except ImportError:
        if backend == "torch":
            raise DiffauditError("backend 'torch' needs PyTorch, which is not installed") from None
        if device not in (None, "cpu"):
            raise DiffauditError(f"device {device!r} needs PyTorch, which is not installed") from None
        return _NumpyOps()
    if backend == "auto" and device is None and not torch.cuda.is_available():
        return _NumpyOps()
    return _TorchOps(device)


def backend_name(device=None) -> str:
    """Where the empirical L* would run with ``device`` ("numpy", or "torch (cuda:0)"); raises DiffauditError
    for a device that cannot be used."""
    name = _backend("auto", device).name
    return name + (f" ({device})" if device else "")


def choose_estimator(estimator: str | None, subset: int | None, n: int, d: int) -> tuple[str, str]:
    """(estimator, why it was chosen): the one asked for; else exact when N*d <= EXACT_LIMIT, else stratified
    (also implied by a subset size)."""
    size = f"N*d = {n * d:,}"
    if estimator is not None:
        if estimator not in ESTIMATORS:
            raise DiffauditError(f"unknown estimator {estimator!r}; expected one of {', '.join(ESTIMATORS)}")
        if estimator == "exact" and subset is not None:
            raise DiffauditError("--subset applies to the subsampled estimators (stratified, cdol, dol), not to exact")
        return estimator, "chosen with --estimator"
    if subset is not None:
        return "stratified", "--subset implies a subsampled estimator"
    if n * d <= EXACT_LIMIT:
        return "exact", f"default: {size} <= {EXACT_LIMIT:.0e}"
    return "stratified", f"default: {size} > {EXACT_LIMIT:.0e}; --estimator exact sums all N points"


def mean_variance(x: np.ndarray) -> float:
    """Per-element variance averaged over elements (what run.json's data_var holds), in float64 pieces."""
    n, d = x.shape
    rows = max(1, (64 << 20) // (8 * d))
    s, s2 = np.zeros(d), np.zeros(d)
    for i in range(0, n, rows):
        c = np.asarray(x[i : i + rows], dtype=np.float64)
        s += c.sum(axis=0)
        s2 += np.einsum("ij,ij->j", c, c)
    mean = s / n
    return float(np.mean(np.maximum(s2 / n - mean * mean, 0.0)))


# ----------------------------------------------------------------------------
# Empirical data: the posterior mean over a finite set


class _Data:
    """The training samples, centred, served as float32 chunks on the backend's device."""

    def __init__(self, x: np.ndarray, ops):
        self.x, self.ops = x, ops
        self.n, self.d = x.shape
        mean = np.zeros(self.d)
        rows = max(1, (64 << 20) // (8 * self.d))
        for i in range(0, self.n, rows):
            mean += x[i : i + rows].sum(axis=0, dtype=np.float64)
        self.mean32 = (mean / self.n).astype(np.float32)
        # On a GPU with room for it, prepare every chunk once and keep it there: the
        # host-side preparation would otherwise cost more than the GPU's products.
        self.resident = None
        if ops.fits_on_device(self.n * (self.d + 1) * 4):
            self.resident = ops.zeros((self.n, self.d + 1), ops.f32)
            rows = max(1, (64 << 20) // (4 * (self.d + 1)))
            for i in range(0, self.n, rows):
                self.resident[i : i + rows] = self._prepare(slice(i, i + rows))

    def rows(self, idx) -> np.ndarray:
        """Centred float32 rows (host), by slice or index array."""
        return np.asarray(self.x[idx], dtype=np.float32) - self.mean32

    def chunk(self, idx):
        """[x_n, ||x_n||^2] rows on the device as float32, (C, d + 1), for a slice or index array.

        The extra column lets one GEMM with [x_t, -alpha/2] give x_t.x_n - alpha/2 ||x_n||^2,
        saving two float64 passes over the (queries x chunk) matrix.
        """
        if self.resident is not None:
            return self.resident[idx] if isinstance(idx, slice) else self.resident[self.ops.put(idx, self.ops.i64)]
        return self._prepare(idx)

    def _prepare(self, idx):
        c = self.rows(idx)
        aug = np.empty((c.shape[0], self.d + 1), dtype=np.float32)
        aug[:, : self.d] = c
        aug[:, self.d] = np.einsum("ij,ij->i", c, c, dtype=np.float64)
        return self.ops.put(aug, self.ops.f32)


class _Queries:
    """A batch of noisy points x_t = alpha x0 + sigma eps with what the logits need, on the device."""

    def __init__(self, ops, x0: np.ndarray, xt: np.ndarray, alpha: np.ndarray, sigma: np.ndarray):
        self.ops = ops
        self.noiseless = sigma == 0  # posterior is a point mass: handled by the caller
        s2 = np.where(self.noiseless, 1.0, sigma * sigma)
        half_a = np.where(self.noiseless, 0.0, alpha / 2)
        q = np.empty((xt.shape[0], xt.shape[1] + 1), dtype=np.float32)
        q[:, :-1] = xt
        q[:, -1] = -half_a
        self.q = ops.put(q, ops.f32)
        self.x0 = ops.put(x0, ops.f64)
        # logit_n = -||x_t - alpha x_n||^2 / 2 sigma^2 + const = (alpha / sigma^2) (x_t.x_n - alpha/2 ||x_n||^2)
        ca = np.where(self.noiseless, 0.0, alpha / s2)
        self.ca = ops.put(ca, ops.f64)
        # the true x0's own logit, from the same float32-rounded operands the GEMM sees
        x0_32 = x0.astype(np.float32).astype(np.float64)
        sq0 = np.float32(np.einsum("ij,ij->i", x0_32, x0_32)).astype(np.float64)
        g0 = np.einsum("ij,ij->i", q[:, :-1].astype(np.float64), x0_32) + q[:, -1].astype(np.float64) * sq0
        self.self_logit = ops.put(ca * g0, ops.f64)

    def logits(self, aug):
        """-||x_t - alpha x_n||^2 / 2 sigma^2 up to a per-query constant, float64 (B x C).

        ``aug`` is (C, d + 1), rows shared by every query, or (B, C, d + 1), rows per query.
        """
        if aug.ndim == 3:
            g = self.ops.cast((self.q[:, None, :] @ self.ops.swap_last(aug))[:, 0, :], self.ops.f64)
        else:
            g = self.ops.cast(self.q @ aug.T, self.ops.f64)
        g *= self.ca[:, None]
        return g


class _Posterior:
    """Running log-sum-exp state over chunks: max logit M, sum of weights S, weighted sum of rows A.

    With ``moments`` it also keeps, for the *sampled* chunks only, sum p, sum p x,
    sum p^2 and sum p^2 [x, ||x||^2]: what the delta-method correction of a
    subsampled estimate needs (:meth:`sampling_correction`).
    """

    def __init__(self, ops, b: int, d: int, self_logit=None, self_rows=None, *, moments=False):
        self.ops = ops
        if self_logit is None:
            self.m = ops.put(np.full(b, -np.inf), ops.f64)
            self.s = ops.zeros(b, ops.f64)
            self.a = ops.zeros((b, d), ops.f64)
        else:  # start from the true x0 with weight exp(self_logit)
            self.m = ops.copy(self_logit)
            self.s = ops.put(np.ones(b), ops.f64)
            self.a = ops.copy(self_rows)
        self.moments = None
        if moments:
            self.moments = [ops.zeros(b, ops.f64), ops.zeros((b, d), ops.f64), ops.zeros(b, ops.f64),
                            ops.zeros((b, d + 1), ops.f64)]  # fmt: skip

    def _weighted(self, p, aug, live):
        """sum_n p_n aug_n for the ``live`` queries (float32 GEMM, float64 result)."""
        ops = self.ops
        p[p < NEGLIGIBLE_WEIGHT] = 0.0
        p32 = ops.cast(p, ops.f32)
        if aug.ndim == 3:  # per-query rows (B x C x d+1)
            rows = aug if live is None else aug[live]
            return ops.cast(p32[:, None, :] @ rows, ops.f64)[:, 0, :]
        return ops.cast(p32 @ aug, ops.f64)

    def fold(self, logits, aug, *, sampled=False):
        """Add one chunk: ``logits`` (B x C, float64, overwritten) of the rows ``aug[..., :d]``."""
        ops = self.ops
        chunk_max = ops.rowmax(logits)
        m_new = ops.maximum(self.m, chunk_max)
        scale = ops.exp(self.m - m_new)
        logits -= m_new[:, None]
        p = ops.exp_(logits)
        self.s = self.s * scale + ops.rowsum(p)
        self.a *= scale[:, None]
        if self.moments is not None:
            s1, a1, s2, a2 = self.moments
            self.moments = [s1 * scale, a1 * scale[:, None], s2 * scale**2, a2 * (scale**2)[:, None]]
        self.m = m_new
        # Weights below 1e-30 of the running max cannot move the mean. They are zeroed
        # before the float32 GEMM (as denormals they would slow it several-fold), and
        # queries with none left skip it.
        live = ops.where_rows(chunk_max - m_new > NEGLIGIBLE_LOG_WEIGHT)
        if live.shape[0] == 0:
            return
        live = None if live.shape[0] == p.shape[0] else live
        pl = p if live is None else p[live]
        inc = self._weighted(pl, aug, live)
        d = self.a.shape[1]
        if live is None:
            self.a += inc[:, :d]
        else:
            self.a[live] += inc[:, :d]
        if sampled and self.moments is not None:
            s1, a1, s2, a2 = self.moments
            pl2 = pl * pl
            inc2 = self._weighted(pl2, aug, live)
            if live is None:
                s1 += ops.rowsum(pl)
                a1 += inc[:, :d]
                s2 += ops.rowsum(pl2)
                a2 += inc2
            else:
                s1[live] += ops.rowsum(pl)
                a1[live] += inc[:, :d]
                s2[live] += ops.rowsum(pl2)
                a2[live] += inc2

    def mean(self):
        return self.a / self.s[:, None]

    def sampling_correction(self, x0, k, rest):
        """Per-query term to add to ||x0 - m_hat||^2 so that its O(1/K) sampling bias cancels.

        m_hat = N_hat / Z_hat is a ratio of Horvitz-Thompson sums over K of the ``rest``
        points of the sampled stratum (without replacement, finite-population
        factor 1 - K/rest). To second order, E||x0 - m_hat||^2 = ||x0 - m||^2
        - 2 (x0 - m).b + tr Var(m_hat), with the ratio bias b = -Cov(G, Z_hat) / Z^2
        and tr Var(m_hat) = tr Var(G) / Z^2, G = sum p_n (x_n - m). Both are
        estimated from the sample (variances with K - 1), and the sum of the two
        plug-ins is returned with the opposite sign.
        """
        ops = self.ops
        s1, a1, s2, a2 = self.moments
        d = self.a.shape[1]
        m = self.mean()
        kk = ops.put(np.maximum(k, 2).astype(np.float64), ops.f64)
        fpc = ops.put(np.where(k >= 2, np.maximum(1.0 - k / np.maximum(rest, 1), 0.0), 0.0), ops.f64)
        g_mean = (a1 - m * s1[:, None]) / kk[:, None]  # mean of g_n = p_n (x_n - m) over the sample
        g_sq = a2[:, d] - 2 * ops.rowsum(m * a2[:, :d]) + ops.rowsum(m * m) * s2  # sum ||g_n||^2
        var_g = (g_sq - kk * ops.rowsum(g_mean * g_mean)) / (kk - 1)
        cov_gp = ((a2[:, :d] - m * s2[:, None]) - g_mean * s1[:, None]) / (kk - 1)[:, None]
        z2 = self.s * self.s
        tr_var = kk * fpc * var_g / z2
        bias = -(kk * fpc / z2)[:, None] * cov_gp
        return ops.get(2 * ops.rowsum((x0 - m) * bias) - tr_var)


def _chunk_sizes(b: int, d: int, memory_mb: float) -> tuple[int, int]:
    """(queries per batch, data rows per chunk) that keep the temporaries near memory_mb."""
    budget = max(memory_mb, 16) * (1 << 20) / 2
    qb = int(max(1, min(b, budget // (36 * d))))  # x0, A (f64), x_t (f64), q (f32) per query
    rows = int(max(1, budget // (24 * qb + 16 * d)))  # logits, p (f64), p32, g (f32) / data chunk f32+f64
    return qb, rows


class _Projection:
    """A rank-r PCA basis of the data, each point's coordinates in it and its residual norm.

    ||x_t - a x_n||^2 >= ||z_t - a z_n||^2 + (rho_t - a rho_n)^2 (z: coordinates, rho:
    distance to the subspace), which ranks candidate neighbours for r/d of the cost of
    exact distances. The ranking only decides *which* points are summed exactly;
    the estimate stays unbiased in numerator and denominator whatever it picks.
    """

    def __init__(self, data: _Data, rank: int, rng):
        n, d = data.n, data.d
        r = min(rank, d)
        if r >= d:
            basis = np.eye(d)
        else:  # randomized range finder with power iterations (Halko, Martinsson, Tropp 2011)
            pick = np.sort(rng.choice(n, size=min(n, PCA_SAMPLE), replace=False))
            sample = data.rows(pick).astype(np.float64)
            y = sample.T @ (sample @ rng.standard_normal((d, r + 8)))
            for _ in range(2):
                y, _ = np.linalg.qr(y)
                y = sample.T @ (sample @ y)
            qm, _ = np.linalg.qr(y)
            _, _, vt = np.linalg.svd(sample @ qm, full_matrices=False)
            basis = (qm @ vt.T[:, :r]).T
        self.basis = basis  # (r, d), orthonormal rows
        self.zr = np.empty((n, r + 1))  # [z_n, rho_n]
        self.sq = np.empty(n)  # ||x_n||^2
        rows = max(1, (64 << 20) // (8 * d))
        for i in range(0, n, rows):
            c = data.rows(slice(i, i + rows)).astype(np.float64)
            z = c @ basis.T
            self.sq[i : i + rows] = np.einsum("ij,ij->i", c, c)
            self.zr[i : i + rows, :r] = z
            self.zr[i : i + rows, r] = np.sqrt(np.maximum(self.sq[i : i + rows] - np.einsum("ij,ij->i", z, z), 0.0))

    def nearest(self, xt: np.ndarray, alpha: np.ndarray, exclude: np.ndarray, m: int) -> np.ndarray:
        """(B, m) indices with the smallest distance lower bound to x_t / alpha, never ``exclude``."""
        z = xt @ self.basis.T
        rho = np.sqrt(np.maximum(np.einsum("ij,ij->i", xt, xt) - np.einsum("ij,ij->i", z, z), 0.0))
        zt = np.concatenate([z, rho[:, None]], axis=1)
        b, n = xt.shape[0], self.sq.size
        best = np.empty((b, 0), dtype=np.int64)
        best_lb = np.empty((b, 0))
        step = max(m, (32 << 20) // (8 * max(b, 1)))
        for i in range(0, n, step):
            # the lower bound up to the per-query constant ||x_t||^2
            lb = alpha[:, None] ** 2 * self.sq[None, i : i + step] - 2 * alpha[:, None] * (zt @ self.zr[i : i + step].T)
            idx = np.broadcast_to(np.arange(i, min(i + step, n)), lb.shape)
            lb = np.where(idx == exclude[:, None], np.inf, lb)
            lb, idx = np.concatenate([best_lb, lb], axis=1), np.concatenate([best, idx], axis=1)
            keep = np.argpartition(lb, m - 1, axis=1)[:, :m] if lb.shape[1] > m else np.argsort(lb, axis=1)
            best_lb, best = np.take_along_axis(lb, keep, 1), np.take_along_axis(idx, keep, 1)
        return best


def _x0_sq_error(
    ops, data: _Data, n0, x0, xt, alpha, sigma, *, subset=None, neighbors=None, weighted=True, memory_mb,
    on_chunk=None, bias_correction=True,
) -> np.ndarray:
    """||x0 - E[x0 | x_t]||^2 summed over elements, per query (float64).

    The query's own x0 is always the exact "self" term, kept in float64: at low noise
    the error is the tiny weight of the other points times their distance, and
    summing x0 through the float32 GEMM would leave a rounding floor of ~1e-7 |x0|
    instead. ``neighbors`` (B x M) are summed exactly too. The other points come
    from ``subset`` (sorted indices; None: all N, the exact estimator); with
    ``weighted`` each of the K_q usable ones (not x0, not a neighbour) carries
    (N - 1 - M) / K_q, the inverse of its inclusion probability (cdol, stratified;
    1 for the exact estimator); unweighted it is dol.
    """
    q = _Queries(ops, x0, xt, alpha, sigma)
    correct = weighted and subset is not None
    post = _Posterior(ops, x0.shape[0], data.d, q.self_logit, q.x0, moments=correct)
    b, m = x0.shape[0], 0 if neighbors is None else neighbors.shape[1]
    if m:
        aug = data.chunk(neighbors.reshape(-1)).reshape(b, m, data.d + 1)
        post.fold(q.logits(aug), aug)
        nb_sorted = np.sort(neighbors, axis=1)
    size = data.n if subset is None else subset.size
    _, rows = _chunk_sizes(b, data.d, memory_mb)

    def taken(idx: np.ndarray) -> np.ndarray:
        """(B, C) mask of the points of ``idx`` that are already summed exactly (host)."""
        t = idx[None, :] == n0[:, None]
        if m:
            pos = np.minimum(np.stack([np.searchsorted(row, idx) for row in nb_sorted]), m - 1)
            t |= np.take_along_axis(nb_sorted, pos, 1) == idx[None, :]
        return t

    n0_dev = ops.put(n0, ops.i64)

    log_w = np.zeros(b)
    if correct:
        k_q = size - sum(taken(subset[i : i + rows]).sum(axis=1) for i in range(0, size, rows))
        with np.errstate(divide="ignore"):  # an empty stratum weighs nothing: log 0
            log_w = np.log(np.where(k_q > 0, (data.n - 1 - m) / np.maximum(k_q, 1), 0.0))
    log_w = ops.put(log_w, ops.f64)
    for i in range(0, size, rows):
        idx = None if subset is None else subset[i : i + rows]
        aug = data.chunk(slice(i, i + rows) if subset is None else idx)
        lg = q.logits(aug)
        if m:
            lg[ops.put(taken(idx), ops.bool)] = -np.inf  # already summed exactly
        else:  # only x0 to mask: build the mask where the logits are
            idx_dev = ops.arange(i, i + aug.shape[0]) if subset is None else ops.put(idx, ops.i64)
            lg[idx_dev[None, :] == n0_dev[:, None]] = -np.inf
        lg += log_w[:, None]
        post.fold(lg, aug, sampled=True)
        if on_chunk is not None:
            on_chunk()
    err = ops.get(ops.rowsum((q.x0 - post.mean()) ** 2))
    if correct and bias_correction:
        err = err + post.sampling_correction(q.x0, k_q, np.full(b, data.n - 1 - m))
    return np.where(q.noiseless, 0.0, err)  # sigma = 0: x_t = alpha x0 identifies x0 (duplicates are equal)


def posterior_mean(data, x_t, alpha, sigma, *, backend: str = "auto", device=None, memory_mb: float = MEMORY_MB):
    """Return E[x0 | x_t] under the empirical distribution of ``data``, shape (B, d), float64.

    ``x_t`` is (B, ...) with the samples' per-sample shape; ``alpha`` and ``sigma``
    are scalars or length-B arrays with sigma > 0.
    """
    x = check_data(data)
    xt = check_data(x_t, expected_dim=x.shape[1], name="x_t").astype(np.float64)
    a = np.broadcast_to(np.asarray(alpha, np.float64), (xt.shape[0],))
    s = np.broadcast_to(np.asarray(sigma, np.float64), (xt.shape[0],))
    a, s = _check_noise(a, s)
    if np.any(s == 0):
        raise ScheduleError("posterior_mean needs sigma > 0")
    ops = _backend(backend, device)
    dat = _Data(x, ops)
    xt_c = xt - a[:, None] * dat.mean32.astype(np.float64)  # the same point, in centred coordinates
    q = _Queries(ops, np.zeros_like(xt_c), xt_c, a, s)
    post = _Posterior(ops, xt.shape[0], dat.d)
    _, rows = _chunk_sizes(xt.shape[0], dat.d, memory_mb)
    with ops.full_precision():
        for i in range(0, dat.n, rows):
            aug = dat.chunk(slice(i, i + rows))
            post.fold(q.logits(aug), aug)
    return ops.get(post.mean()) + dat.mean32.astype(np.float64)


# ----------------------------------------------------------------------------
# Per-bin estimate


@dataclass(frozen=True)
class EmpiricalOptimalLoss:
    """Per-bin L* of the training set, in the run's recorded units (the ``optimum`` part's columns)."""

    bin: np.ndarray  # int64, 0..num_bins-1
    loss_opt: np.ndarray  # mean of the per-sample values
    stderr: np.ndarray  # per-sample standard deviation / sqrt(n); nan when n == 1
    n: np.ndarray  # samples per bin
    values: np.ndarray  # (num_bins, n) per-sample values: pair them across estimators with the same seed
    estimator: str
    subset_size: int  # points per posterior (N for exact)

    def as_dict(self) -> dict:
        """The columns of the run format's ``optimum`` part."""
        return {"bin": self.bin, "loss_opt": self.loss_opt, "stderr": self.stderr, "n": self.n}


def _draw_times(process, samples_per_bin: int, rng) -> np.ndarray:
    """(samples_per_bin, num_bins) timesteps, each column drawn from its bin's quadrature nodes."""
    cols = []
    for b in range(process.num_bins):
        nodes, w = process.bin_nodes(b)
        cols.append(rng.choice(nodes, size=samples_per_bin, p=w / w.sum()))
    return np.stack(cols, axis=1)


def bin_empirical_optimal_loss(
    process,
    data,
    *,
    samples_per_bin: int = DEFAULT_SAMPLES_PER_BIN,  # Monte Carlo samples (t, x0, eps) per bin
    seed: int = DEFAULT_SEED,  # same seed, same (t, x0, eps) for every estimator and backend
    estimator: str = "exact",  # "exact" (all N points), or subsampled: "stratified", "cdol", "dol"
    subset_size: int | None = None,  # subsampled: points per random subset (default min(N, 4096))
    neighbors: int | None = None,  # stratified: nearest candidates summed exactly (default 64)
    bias_correction: bool = True,  # stratified/cdol: subtract the estimated O(1/K) sampling bias
    backend: str = "auto",  # "auto" (torch on a GPU when there is one, else numpy), "numpy" or "torch"
    device=None,  # torch device; None: cuda when available, else cpu
    progress: Callable[[int, int], None] | None = None,  # called as progress(done, total)
    memory_mb: float = MEMORY_MB,  # working memory for temporaries, not counting the data
) -> EmpiricalOptimalLoss:
    """Return the Monte Carlo estimate of each bin's L* on the empirical distribution of ``data``.

    ``exact`` sums every posterior over all N points (N d per sample; 50 bins x 64
    samples of a CIFAR-sized set take about a minute on 2 cores, a second on a
    GPU); ``stratified`` sums x0, its nearest candidates and a weighted random
    subset (see the module docstring for ``cdol`` and ``dol``, kept for
    comparison). ``data`` is (N, ...) with N >= 1; its dimension is not checked
    against the run (use :func:`check_data` with ``expected_dim``). The result is
    in the units of the run's recorded loss: the target of ``process.prediction``
    and, for ``edm``, its lambda(sigma) weight.
    """
    if estimator not in ESTIMATORS:
        raise DiffauditError(f"unknown estimator {estimator!r}; expected one of {', '.join(ESTIMATORS)}")
    if not isinstance(samples_per_bin, (int, np.integer)) or samples_per_bin < 1:
        raise DiffauditError(f"samples_per_bin must be a positive integer, got {samples_per_bin!r}")
    x = check_data(data)
    n, d = x.shape
    if estimator == "exact":
        if subset_size is not None:
            raise DiffauditError("subset_size applies to the subsampled estimators, not to exact")
        k = n
    else:
        k = min(n, DEFAULT_SUBSET) if subset_size is None else subset_size
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise DiffauditError(f"subset_size must be a positive integer, got {subset_size!r}")
        k = min(int(k), n)
    if estimator != "stratified":
        if neighbors is not None:
            raise DiffauditError("neighbors applies to the stratified estimator only")
        m = 0
    else:
        m = DEFAULT_NEIGHBORS if neighbors is None else neighbors
        if not isinstance(m, (int, np.integer)) or m < 0:
            raise DiffauditError(f"neighbors must be an integer >= 0, got {neighbors!r}")
        m = min(int(m), n - 1)
    ops = _backend(backend, device)
    dat = _Data(x, ops)

    nb, S = process.num_bins, int(samples_per_bin)
    # separate streams, so that every estimator and backend sees the same (t, x0, eps)
    ss_times, ss_eps, ss_subset, ss_proj = np.random.SeedSequence(seed).spawn(4)
    proj = _Projection(dat, PCA_RANK, np.random.default_rng(ss_proj)) if m else None
    rng_t = np.random.default_rng(ss_times)
    times = _draw_times(process, S, rng_t).reshape(-1)  # query q = round * nb + bin
    n0 = rng_t.integers(0, n, size=S * nb)
    rng_eps, rng_sub = np.random.default_rng(ss_eps), np.random.default_rng(ss_subset)
    alpha, sigma = process.alpha_sigma(times)
    cx, ce = process.target_coefficients(times)
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = process.loss_weight(times)
        factor = np.where(sigma > 0, (cx - ce * alpha / np.where(sigma > 0, sigma, 1.0)) ** 2 * weight, 0.0)

    total_q = S * nb
    err = np.empty(total_q)
    eps_sq = np.empty(total_q)
    with ops.full_precision():
        if estimator == "exact":
            qb, rows = _chunk_sizes(total_q, d, memory_mb)
            n_chunks = -(-n // rows)
            total, done = -(-total_q // qb) * n_chunks, 0

            def tick():
                nonlocal done
                done += 1
                if progress is not None:
                    progress(done, total)

            for lo in range(0, total_q, qb):
                sl = slice(lo, min(lo + qb, total_q))
                x0 = dat.rows(n0[sl]).astype(np.float64)
                eps = rng_eps.standard_normal(x0.shape)
                eps_sq[sl] = np.einsum("ij,ij->i", eps, eps)
                xt = alpha[sl, None] * x0 + sigma[sl, None] * eps
                err[sl] = _x0_sq_error(
                    ops, dat, n0[sl], x0, xt, alpha[sl], sigma[sl], memory_mb=memory_mb, on_chunk=tick
                )
        else:
            # rounds in groups: the queries of a group are drawn, and their neighbours ranked, at once
            group, _ = _chunk_sizes(total_q, d, memory_mb / 2)
            group = max(1, group // nb)
            for g0 in range(0, S, group):
                gs = slice(g0 * nb, min(g0 + group, S) * nb)
                x0g = dat.rows(n0[gs]).astype(np.float64)
                eps = rng_eps.standard_normal(x0g.shape)
                eps_sq[gs] = np.einsum("ij,ij->i", eps, eps)
                xtg = alpha[gs, None] * x0g + sigma[gs, None] * eps
                near = proj.nearest(xtg, alpha[gs], n0[gs], m) if m else None
                for r in range(g0, min(g0 + group, S)):
                    sl, rs = slice(r * nb, (r + 1) * nb), slice((r - g0) * nb, (r - g0 + 1) * nb)
                    subset = np.sort(rng_sub.choice(n, size=k, replace=False))  # sorted: contiguous-ish gathers
                    err[sl] = _x0_sq_error(
                        ops, dat, n0[sl], x0g[rs], xtg[rs], alpha[sl], sigma[sl], subset=subset,
                        neighbors=None if near is None else near[rs], weighted=estimator != "dol",
                        memory_mb=memory_mb, bias_correction=bias_correction,
                    )  # fmt: skip
                    if progress is not None:
                        progress(r + 1, S)

    # at sigma = 0, x0 is known but eps is not observed at all: the eps part of the target is left whole
    noiseless = np.where(sigma == 0, ce * ce * weight * eps_sq / d, 0.0)
    values = (factor * err / d + noiseless).reshape(S, nb).T
    loss = values.mean(axis=1)
    stderr = values.std(axis=1, ddof=1) / math.sqrt(S) if S > 1 else np.full(nb, np.nan)
    return EmpiricalOptimalLoss(
        bin=np.arange(nb, dtype=np.int64),
        loss_opt=loss,
        stderr=stderr,
        n=np.full(nb, S, dtype=np.int64),
        values=values,
        estimator=estimator,
        subset_size=k,
    )
