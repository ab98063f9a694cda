"""The AR(1) error of a short mean (diffaudit.stats): exact inflation, effective df, pooled estimate of phi."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from _stats import ar1_correlation
from diffaudit import stats
from diffaudit.errors import InconclusiveError


def ar1(rng, rows, n, phi):
    e = rng.standard_normal((rows, n + 50))
    z = np.empty_like(e)
    z[:, 0] = e[:, 0]
    for j in range(1, n + 50):
        z[:, j] = phi * z[:, j - 1] + np.sqrt(1 - phi**2) * e[:, j]
    return z[:, 50:]


def test_white_noise_is_the_iid_case():
    infl, df = stats.ar1_mean_factors(8, 0.0)
    assert infl == pytest.approx(1.0) and df == pytest.approx(7.0)


def test_inflation_matches_the_variance_of_simulated_means():
    rng = np.random.default_rng(0)
    z = ar1(rng, 20000, 8, 0.9)
    infl, _ = stats.ar1_mean_factors(8, 0.9)
    naive = np.mean(z.var(axis=1, ddof=1)) / 8
    assert np.var(z.mean(axis=1)) / naive == pytest.approx(infl, rel=0.05)


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9])
def test_interval_with_the_true_phi_covers(phi):
    rng = np.random.default_rng(1)
    z = ar1(rng, 4000, 8, phi)
    hits = 0
    for row in z:
        m, se, df = stats.ar1_mean_error(row, phi)
        hits += abs(m) <= sps.t.isf(0.025, df) * se
    assert 0.92 <= hits / len(z) <= 0.985


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9])
def test_pooled_estimate_is_median_unbiased(phi):
    rng = np.random.default_rng(2)
    est = [stats.pooled_ar1(ar1(rng, 20, 30, phi)).phi for _ in range(60)]
    assert np.median(est) == pytest.approx(phi, abs=0.06)


def test_pooled_estimate_needs_values():
    with pytest.raises(InconclusiveError):
        stats.pooled_ar1(np.zeros((3, 4)))
    with pytest.raises(InconclusiveError):
        stats.pooled_ar1(np.full((3, 10), np.nan))  # rows with a gap are left out


# ----------------------------------------------------------------------------
# The O(n^2) forms of the AR(1) factors against the matrix products they replace


def _mean_factors_by_matrices(n, phi):
    S = ar1_correlation(n, phi)
    C = np.eye(n) - 1.0 / n
    CS = C @ S
    tr = float(np.trace(CS))
    return (float(S.sum()) / n**2) / (tr / (n - 1) / n), tr * tr / float(np.trace(CS @ CS))


def _detrender(n, degree):
    t = np.linspace(-1.0, 1.0, n)
    X = np.vander(t, degree + 1)
    return np.eye(n) - X @ np.linalg.pinv(X)


def _expected_lag1_by_matrices(n, degree):
    M = _detrender(n, degree)
    A = np.zeros((n, n))
    A[np.arange(n - 1), np.arange(1, n)] = 0.5
    A = A + A.T
    MAM = M @ A @ M
    phis = np.linspace(0.0, stats.AR1_PHI_MAX, 199)
    rho = [np.trace(MAM @ ar1_correlation(n, p)) / np.trace(M @ ar1_correlation(n, p)) for p in phis]
    return np.maximum.accumulate(rho)


@pytest.mark.parametrize("n", [2, 5, 12, 57, 160])
def test_ar1_factors_match_their_matrix_definitions(n):
    for phi in (0.0, 0.35, 0.9, stats.AR1_PHI_MAX):
        assert stats._ar1_mean_factors(n, phi) == pytest.approx(_mean_factors_by_matrices(n, phi), rel=1e-9)
    for degree in (1, 2):
        if n > degree + 2:
            np.testing.assert_allclose(stats._expected_lag1(n, degree)[1], _expected_lag1_by_matrices(n, degree),
                                       rtol=0, atol=1e-10)
    z = np.random.default_rng(n).standard_normal((3, n))
    np.testing.assert_allclose(stats._detrend(z, 1), z @ _detrender(n, 1).T, atol=1e-12)


def test_ar1_factors_of_a_long_series():
    """20,000 blocks (a 1,000,000-step run; the dense forms needed 3 GB): the known large-n limits."""
    phis, rho = stats._expected_lag1(20_000, 2)
    inflation, df = stats.ar1_mean_factors(20_000, 0.5)
    assert np.all(np.diff(rho) >= 0) and rho[0] == pytest.approx(0.0, abs=1e-3)
    assert np.interp(0.5, phis, rho) == pytest.approx(0.5, abs=2e-3)  # detrending barely biases a long series
    assert inflation == pytest.approx(3.0, rel=1e-3)  # (1 + phi) / (1 - phi) for a long AR(1) series
