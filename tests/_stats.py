"""One-series conveniences over diffaudit.stats, for the tests: the package itself reads many series at once
(``stats.correlations``) or one series at several thresholds (``stats.robust_z`` then ``stats.spikes_at``)."""

from __future__ import annotations

import numpy as np

from diffaudit import stats


def detect_spikes(x, *, window: int = stats.SPIKE_WINDOW, threshold: float = stats.SPIKE_THRESHOLD,
                  side: str = "upper") -> stats.Spikes:
    """Spikes of one per-step series: robust z beyond ``threshold`` (non-finite points dropped first)."""
    return stats.spikes_at(stats.robust_z(x, window=window), threshold, side)


def integrated_autocorr_time(y, *, conservative: bool = False) -> float:
    """tau of one series (NaNs dropped): Geyer's, or with ``conservative`` the largest over block means."""
    tau, _, cons = stats._correlation(y)
    return cons if conservative else tau


def ar1_correlation(n: int, phi: float) -> np.ndarray:
    """The n x n correlation matrix phi^|i-j| of an AR(1) series."""
    i = np.arange(int(n))
    return float(phi) ** np.abs(i[:, None] - i[None, :])


def ar1_rows(rng, rows: int, n: int, phi: float) -> np.ndarray:
    """(rows, n) stationary AR(1) series with unit variance and coefficient phi (each row starts in its
    stationary law): the synthetic block noise of the gate's simulations (tests and benchmarks/gate_power.py)."""
    e = rng.standard_normal((rows, n))
    z = np.empty_like(e)
    z[:, 0] = e[:, 0]
    for j in range(1, n):
        z[:, j] = phi * z[:, j - 1] + np.sqrt(1 - phi**2) * e[:, j]
    return z
