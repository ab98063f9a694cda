"""The Bayes-optimal loss L*: Gaussian closed form and empirical-data estimators.

Every process is x_t = alpha x0 + sigma eps and every target y = c_x x0 + c_eps eps
(DESIGN.md section 3). L* is the loss of the best possible predictor, per element.

Gaussian data (closed form)
---------------------------
If x0 has covariance eigenvalues lambda_1..lambda_d, in each eigendirection the
optimal predictor is linear and leaves the residual variance

    Var(y) - Cov(y, x_t)^2 / Var(x_t) = (c_x sigma - c_eps alpha)^2 lambda / (alpha^2 lambda + sigma^2).

The mean does not matter (it is known). Where alpha^2 lambda + sigma^2 = 0 nothing
is observed and the residual is the whole variance c_x^2 lambda + c_eps^2 (this
is the true value at sigma = 0 for a zero-variance direction, not a limit). For
EDM the lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2 weight cancels
the sigma^2 of the x0 residual analytically, so L* stays finite down to sigma = 0.
Nothing is clamped: alpha = 0 (zero terminal SNR) is an ordinary input.

The covariance of a training set is its empirical one (divided by N, not N - 1):
the model is trained on that finite distribution, and with the same covariance the
Gaussian is the worst case, so this L* bounds the empirical L* below from above.

Empirical data (the memorization floor)
---------------------------------------
For a training set {x_n} the optimal x0-predictor is the posterior mean
m(x_t) = sum_n w_n x_n with w = softmax_n(-||x_t - alpha x_n||^2 / 2 sigma^2), and

    L*(t) = (c_x - c_eps alpha / sigma)^2 * weight(t) * E ||x0 - m(x_t)||^2 / d,

because y = (c_x - c_eps alpha/sigma) x0 + (c_eps/sigma) x_t and the second term is
known. We estimate the expectation by Monte Carlo over (t, x0, eps): t drawn from
the bin's quadrature nodes (for a discrete process, every timestep of the bin: what
a uniform sampler hits), x0 uniform over the data, eps ~ N(0, I). One sample is one
such triple, so the standard error is the per-sample spread over sqrt(n).

Precision and memory. The data are stored once, centred, in float32 (the
posterior is translation-equivariant; centring shrinks ||x||^2 and so the
cancellation in ||x_t||^2 - 2 alpha x_t.x_n + alpha^2 ||x_n||^2). The distance
matrix is one float32 GEMM per chunk; everything after it (scaling by 1/sigma^2,
the running log-sum-exp, the weights, the error) is float64. At low noise the
logits are of order ||x||^2 / sigma^2 and a float32 logit would be off by whole
units; the float32 GEMM error (about 1e-7 ||x||^2) only matters when two data
points are closer than that error, i.e. for exact duplicates, whose contribution to
the error is zero anyway. The log-sum-exp runs online over data chunks (as in
flash attention), so memory is bounded by the chunk sizes, not by N.

Subsampled estimators (Xu et al. 2025, arXiv 2506.13763)
--------------------------------------------------------
The exact estimator costs N d per sample. For a large set we replace the sum over
all N by a random subset R of K points, and always keep the true x0 (index n0):

* ``dol``: the posterior over R + {x0}, unweighted. It is the exact L* of a
  K-point training set that contains x0; fewer competitors make the posterior
  collapse on x0 sooner, so it is biased *low*, increasingly so at mid noise.
* ``cdol`` (corrected): the self term keeps weight 1 and each of the other K_q
  sampled points (K_q = |R minus {n0}|, drawn uniformly from the other N - 1)
  weight (N - 1) / K_q. Numerator sum_n w_n x_n and denominator sum_n w_n of the
  posterior are then *unbiased* estimates of the full-data sums, and their ratio
  (a self-normalised importance-sampling estimate of m) is consistent with a
  bias of O(1/K). Keeping the self term exact is what makes it work at low noise,
  where plain subsampling (x0 not in R) would report a large error because the
  posterior collapses onto the wrong point.

The residual O(1/K) bias of cdol is mostly positive: E||x0 - m_hat||^2 exceeds
||x0 - m||^2 by the variance of m_hat. :func:`bin_empirical_optimal_loss` returns
the per-sample values, so its bias against the exact estimator can be measured
with common random numbers (same seed: identical t, x0 and eps); the benchmark
prints it per bin for sklearn's digits.

Subsets are shared by the queries of one *round*, i.e. one sample per bin, so the
n samples within a bin use n independent subsets and the per-bin standard error
stays valid, while each round is still one matrix product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from diffaudit.errors import DataError, DiffauditError, ScheduleError

PREDICTIONS = ("epsilon", "sample", "v_prediction", "flow", "edm")
ESTIMATORS = ("exact", "dol", "cdol")
BACKENDS = ("auto", "numpy", "torch")

DEFAULT_SUBSET = 4096  # points per random subset of the dol/cdol estimators
MEMORY_MB = 512  # working memory of the estimators, not counting the data itself
NEGLIGIBLE_LOG_WEIGHT = -69.0  # exp(-69) ~ 1e-30 of the running max: cannot move the posterior mean
SPECTRUM_ROUNDOFF = 1e-12  # negative eigenvalues above -1e-12 * max are round-off


__all__ = [
    "EmpiricalOptimalLoss",
    "bin_empirical_optimal_loss",
    "bin_gaussian_optimal_loss",
    "check_data",
    "data_spectrum",
    "gaussian_optimal_loss",
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
    x = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(-1, 1)
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


def _coefficients(prediction: str, a: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(c_x, c_eps) of the target at (alpha, sigma): the rows of DESIGN.md's table."""
    if prediction == "epsilon":
        return np.zeros_like(a), np.ones_like(a)
    if prediction in ("sample", "edm"):
        return np.ones_like(a), np.zeros_like(a)
    if prediction == "v_prediction":
        return -s, a
    return -np.ones_like(a), np.ones_like(a)  # flow velocity eps - x0


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
    cx, ce = _coefficients(prediction, a, s)
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
    f32, f64 = np.float32, np.float64

    def put(self, a, dtype):
        return np.ascontiguousarray(a, dtype=dtype)

    def get(self, a) -> np.ndarray:
        return np.asarray(a)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

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


class _TorchOps:
    name = "torch"

    def __init__(self, device):
        import torch  # only here: importing diffaudit.optimum must not import torch

        self.torch = torch
        self.f32, self.f64 = torch.float32, torch.float64
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


def _backend(backend: str, device):
    if backend not in BACKENDS:
        raise DiffauditError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "numpy":
        if device not in (None, "cpu"):
            raise DiffauditError(f"backend 'numpy' runs on the CPU only, got device {device!r}")
        return _NumpyOps()
    try:
        import torch  # noqa: F401
    except ImportError:
        if backend == "torch":
            raise DiffauditError("backend 'torch' needs PyTorch, which is not installed") from None
        if device not in (None, "cpu"):
            raise DiffauditError(f"device {device!r} needs PyTorch, which is not installed") from None
        return _NumpyOps()
    return _TorchOps(device)


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

    def rows(self, idx) -> np.ndarray:
        """Centred float32 rows (host), by slice or index array."""
        return np.asarray(self.x[idx], dtype=np.float32) - self.mean32

    def chunk(self, idx):
        """(rows on device as float32, their squared norms as float64) for a slice or index array."""
        c = self.rows(idx)
        sq = np.einsum("ij,ij->i", c, c, dtype=np.float64)
        return self.ops.put(c, self.ops.f32), self.ops.put(sq, self.ops.f64)


class _Queries:
    """A batch of noisy points x_t = alpha x0 + sigma eps with what the logits need, on the device."""

    def __init__(self, ops, x0: np.ndarray, xt: np.ndarray, alpha: np.ndarray, sigma: np.ndarray):
        self.ops = ops
        self.noiseless = sigma == 0  # posterior is a point mass: handled by the caller
        s2 = np.where(self.noiseless, 1.0, sigma * sigma)
        q32 = xt.astype(np.float32)  # the GEMM operand; the self term below uses the same rounded x_t
        self.q = ops.put(q32, ops.f32)
        self.x0 = ops.put(x0, ops.f64)
        self.ca = ops.put(np.where(self.noiseless, 0.0, alpha / s2), ops.f64)  # logit = ca x_t.x_n - cb ||x_n||^2
        self.cb = ops.put(np.where(self.noiseless, 0.0, alpha * alpha / (2 * s2)), ops.f64)
        self.self_logit = ops.put(
            np.where(
                self.noiseless,
                0.0,
                (alpha / s2) * np.einsum("ij,ij->i", q32.astype(np.float64), x0)
                - alpha * alpha / (2 * s2) * np.einsum("ij,ij->i", x0, x0),
            ),
            ops.f64,
        )

    def logits(self, xc, sq):
        """-||x_t - alpha x_n||^2 / 2 sigma^2 up to a per-query constant, float64 (B x C)."""
        g = self.ops.cast(self.q @ xc.T, self.ops.f64)
        return g * self.ca[:, None] - self.cb[:, None] * sq[None, :]


class _Posterior:
    """Running log-sum-exp state over chunks: max logit M, sum of weights S, weighted sum of rows A."""

    def __init__(self, ops, b: int, d: int, self_logit=None, self_rows=None):
        self.ops = ops
        if self_logit is None:
            self.m = ops.put(np.full(b, -np.inf), ops.f64)
            self.s = ops.zeros(b, ops.f64)
            self.a = ops.zeros((b, d), ops.f64)
        else:  # start from the true x0 with weight exp(self_logit)
            self.m = self_logit.clone() if hasattr(self_logit, "clone") else self_logit.copy()
            self.s = ops.put(np.ones(b), ops.f64)
            self.a = self_rows.clone() if hasattr(self_rows, "clone") else self_rows.copy()

    def fold(self, logits, xc):
        ops = self.ops
        m_new = ops.maximum(self.m, ops.rowmax(logits))
        scale = ops.exp(self.m - m_new)
        p = ops.exp(logits - m_new[:, None])
        self.s = self.s * scale + ops.rowsum(p)
        self.a *= scale[:, None]
        # rows whose whole chunk weighs < 1e-30 of their max cannot move the mean: skip their GEMM
        live = ops.where_rows(ops.rowmax(logits) - m_new > NEGLIGIBLE_LOG_WEIGHT)
        if live.shape[0] == p.shape[0]:
            self.a += ops.cast(ops.cast(p, ops.f32) @ xc, ops.f64)
        elif live.shape[0] > 0:
            self.a[live] += ops.cast(ops.cast(p[live], ops.f32) @ xc, ops.f64)
        self.m = m_new

    def mean(self):
        return self.a / self.s[:, None]


def _chunk_sizes(b: int, d: int, memory_mb: float) -> tuple[int, int]:
    """(queries per batch, data rows per chunk) that keep the temporaries near memory_mb."""
    budget = max(memory_mb, 16) * (1 << 20) / 2
    qb = int(max(1, min(b, budget // (36 * d))))  # x0, A (f64), x_t (f64), q (f32) per query
    rows = int(max(1, budget // (24 * qb + 16 * d)))  # logits, p (f64), p32, g (f32) / data chunk f32+f64
    return qb, rows


def _x0_sq_error(ops, data: _Data, x0, xt, alpha, sigma, *, memory_mb, on_chunk=None) -> np.ndarray:
    """||x0 - E[x0 | x_t]||^2 summed over elements, exact posterior over all N points (float64, per query)."""
    q = _Queries(ops, x0, xt, alpha, sigma)
    post = _Posterior(ops, x0.shape[0], data.d)
    _, rows = _chunk_sizes(x0.shape[0], data.d, memory_mb)
    for i in range(0, data.n, rows):
        xc, sq = data.chunk(slice(i, i + rows))
        post.fold(q.logits(xc, sq), xc)
        if on_chunk is not None:
            on_chunk()
    err = ops.get(ops.rowsum((q.x0 - post.mean()) ** 2))
    return np.where(q.noiseless, 0.0, err)  # sigma = 0: x_t = alpha x0 identifies x0 (duplicates are equal)


def _x0_sq_error_subset(ops, data: _Data, n0, x0, xt, alpha, sigma, subset, *, corrected, memory_mb) -> np.ndarray:
    """Like :func:`_x0_sq_error` over ``subset`` plus each query's own x0 (dol, or cdol when corrected)."""
    q = _Queries(ops, x0, xt, alpha, sigma)
    post = _Posterior(ops, x0.shape[0], data.d, q.self_logit, q.x0)
    _, rows = _chunk_sizes(x0.shape[0], data.d, memory_mb)
    n0_dev = ops.put(n0.astype(np.int64), ops.torch.int64) if ops.name == "torch" else n0.astype(np.int64)
    k_q = subset.size - np.isin(n0, subset)  # sampled points other than x0, per query
    log_w = ops.put(np.log((data.n - 1) / np.maximum(k_q, 1)), ops.f64)
    for i in range(0, subset.size, rows):
        idx = subset[i : i + rows]
        xc, sq = data.chunk(idx)
        lg = q.logits(xc, sq)
        idx_dev = ops.put(idx.astype(np.int64), ops.torch.int64) if ops.name == "torch" else idx
        lg[n0_dev[:, None] == idx_dev[None, :]] = -np.inf  # x0 is already the self term
        if corrected:
            lg = lg + log_w[:, None]
        post.fold(lg, xc)
    err = ops.get(ops.rowsum((q.x0 - post.mean()) ** 2))
    return np.where(q.noiseless, 0.0, err)


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
    for i in range(0, dat.n, rows):
        xc, sq = dat.chunk(slice(i, i + rows))
        post.fold(q.logits(xc, sq), xc)
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
    samples_per_bin: int = 64,  # Monte Carlo samples (t, x0, eps) per bin
    seed: int = 0,  # same seed, same (t, x0, eps) for every estimator and backend
    estimator: str = "exact",  # "exact" (all N points), "dol" or "cdol" (random subsets, see module docstring)
    subset_size: int | None = None,  # dol/cdol: points per random subset (default min(N, 4096))
    backend: str = "auto",  # "auto" (torch when installed), "numpy" or "torch"
    device=None,  # torch device; None: cuda when available, else cpu
    progress: Callable[[int, int], None] | None = None,  # called as progress(done, total)
    memory_mb: float = MEMORY_MB,  # working memory for temporaries, not counting the data
) -> EmpiricalOptimalLoss:
    """Return the Monte Carlo estimate of each bin's L* on the empirical distribution of ``data``.

    ``data`` is (N, ...) with N >= 1; its dimension is not checked against the run
    (use :func:`check_data` with ``expected_dim``). The result is in the units of
    the run's recorded loss: the target of ``process.prediction`` and, for ``edm``,
    its lambda(sigma) weight.
    """
    if estimator not in ESTIMATORS:
        raise DiffauditError(f"unknown estimator {estimator!r}; expected one of {', '.join(ESTIMATORS)}")
    if not isinstance(samples_per_bin, (int, np.integer)) or samples_per_bin < 1:
        raise DiffauditError(f"samples_per_bin must be a positive integer, got {samples_per_bin!r}")
    x = check_data(data)
    n, d = x.shape
    if estimator == "exact":
        if subset_size is not None:
            raise DiffauditError("subset_size applies to the dol and cdol estimators, not to exact")
        k = n
    else:
        k = min(n, DEFAULT_SUBSET) if subset_size is None else subset_size
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise DiffauditError(f"subset_size must be a positive integer, got {subset_size!r}")
        k = min(int(k), n)
    ops = _backend(backend, device)
    dat = _Data(x, ops)

    nb, S = process.num_bins, int(samples_per_bin)
    ss_times, ss_eps, ss_subset = np.random.SeedSequence(seed).spawn(3)
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
            err[sl] = _x0_sq_error(ops, dat, x0, xt, alpha[sl], sigma[sl], memory_mb=memory_mb, on_chunk=tick)
    else:
        for r in range(S):
            sl = slice(r * nb, (r + 1) * nb)
            x0 = dat.rows(n0[sl]).astype(np.float64)
            eps = rng_eps.standard_normal(x0.shape)
            eps_sq[sl] = np.einsum("ij,ij->i", eps, eps)
            xt = alpha[sl, None] * x0 + sigma[sl, None] * eps
            subset = np.sort(rng_sub.choice(n, size=k, replace=False))  # sorted: contiguous-ish gathers
            err[sl] = _x0_sq_error_subset(
                ops, dat, n0[sl], x0, xt, alpha[sl], sigma[sl], subset,
                corrected=estimator == "cdol", memory_mb=memory_mb,
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
