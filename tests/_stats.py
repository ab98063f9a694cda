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
