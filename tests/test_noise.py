"""Schedules and bins: precision of 1 - abar, zero terminal SNR, diffusers parity, bin edges."""

import math

import numpy as np
import pytest

from diffaudit import optimum as opt
from diffaudit.errors import ScheduleError
from diffaudit.noise import Process, log_snr, named_betas, schedule_from_betas

SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def _exact_one_minus_abar(betas, n):
    """1 - prod(1 - beta) for the first n steps, in 50-digit arithmetic from the float64 betas."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(50):
        acc, out = mpmath.mpf(1), []
        for b in betas[:n]:
            acc *= 1 - mpmath.mpf(float(b))
            out.append(float(1 - acc))
    return np.array(out)


def _zero_terminal_snr(betas):
    """Lin et al. 2023, Algorithm 1: shift and scale sqrt(abar) so that its last value is exactly 0."""
    s = np.sqrt(np.cumprod(1 - betas))
    s0, st = s[0], s[-1]
    s = (s - st) * s0 / (s0 - st)
    abar = s**2
    return 1 - np.concatenate([abar[:1], abar[1:] / abar[:-1]])


# ----------------------------------------------------------------------------
# Precision near t = 0


@pytest.mark.parametrize("name", SCHEDULES)
def test_one_minus_abar_has_no_cancellation_near_t0(name):
    betas = named_betas(name)
    exact = _exact_one_minus_abar(betas, 100)
    _, one_minus = schedule_from_betas(betas)
    ours = np.max(np.abs(one_minus[:100] / exact - 1))
    naive = np.max(np.abs((1 - np.cumprod(1 - betas))[:100] / exact - 1))
    assert ours < 2e-15  # a few ulps
    assert naive > 100 * ours  # 1 - cumprod keeps ~12 of 16 digits at t = 0
    naive32 = 1 - np.cumprod((1 - betas).astype(np.float32), dtype=np.float32)[:100]
    assert np.max(np.abs(naive32 / exact - 1)) > 1e-5  # and a float32 pipeline ~4 digits


def test_schedule_keeps_zero_terminal_snr_exactly():
    betas = named_betas("linear")
    betas[-1] = 1.0
    abar, one_minus = schedule_from_betas(betas)
    assert abar[-1] == 0.0 and one_minus[-1] == 1.0
    assert log_snr(abar, one_minus)[-1] == -np.inf


def test_zero_terminal_snr_gives_finite_optimal_loss_without_clamping():
    betas = _zero_terminal_snr(named_betas("scaled_linear", beta_start=0.00085, beta_end=0.012))
    abar, one_minus = schedule_from_betas(betas)
    assert abar[-1] == 0.0 and betas[-1] == 1.0
    for prediction in ("epsilon", "sample", "v_prediction"):
        p = Process("vp", prediction, 20, alpha_bar=abar, one_minus_alpha_bar=one_minus)
        assert p.alpha_bar[-1] == 0.0  # not clamped to 1e-10 or similar
        a, s = p.alpha_sigma(np.arange(1000))
        assert a[-1] == 0.0 and s[-1] == 1.0
        lstar = opt.gaussian_optimal_loss(a, s, prediction=prediction, data_var=0.25)
        assert np.all(np.isfinite(lstar))
        # at the terminal step x_t = eps: eps is known exactly, x0 (and v = -x0 there) not at all
        assert lstar[-1] == {"epsilon": 0.0, "sample": 0.25, "v_prediction": 0.25}[prediction]
        assert np.all(np.isfinite(opt.bin_gaussian_optimal_loss(p, data_var=0.25)))


# ----------------------------------------------------------------------------
# Parity with HF diffusers


@pytest.fixture(scope="module")
def ddpm_scheduler():
    diffusers = pytest.importorskip("diffusers")
    return diffusers.DDPMScheduler


@pytest.mark.parametrize("name", SCHEDULES)
def test_named_betas_match_diffusers(name, ddpm_scheduler):
    sched = ddpm_scheduler(num_train_timesteps=1000, beta_schedule=name)
    ours = named_betas(name)
    np.testing.assert_allclose(sched.betas.numpy(), ours, rtol=1e-6, atol=0)  # diffusers rounds in float32
    abar, _ = schedule_from_betas(ours)
    # diffusers multiplies 1000 float32 factors; allow its accumulated rounding, not more
    np.testing.assert_allclose(sched.alphas_cumprod.numpy(), abar, rtol=5e-5, atol=0)


def test_zero_terminal_snr_rescale_matches_diffusers(ddpm_scheduler):
    sched = ddpm_scheduler(num_train_timesteps=1000, beta_schedule="linear", rescale_betas_zero_snr=True)
    abar, _ = schedule_from_betas(_zero_terminal_snr(named_betas("linear")))
    assert sched.alphas_cumprod.numpy()[-1] == 0.0 and abar[-1] == 0.0
    np.testing.assert_allclose(sched.alphas_cumprod.numpy()[:-1], abar[:-1], rtol=1e-3)


def test_unknown_schedule_is_a_one_line_error():
    with pytest.raises(ScheduleError, match="unknown beta schedule 'cosine'"):
        named_betas("cosine")


# ----------------------------------------------------------------------------
# Bins


def _assert_inside(process, t):
    e = process.bin_edges()
    b = process.bin_of(t)
    nb = process.num_bins
    assert np.all((b >= 0) & (b < nb))
    lo, hi = e[b], e[b + 1]
    last = b == nb - 1
    assert np.all((lo <= t) & ((t < hi) | (last & (t <= hi)))), t[~((lo <= t) & ((t < hi) | (last & (t <= hi))))]


@pytest.mark.parametrize("num_bins", [1, 3, 7, 10, 37, 49, 50, 100, 333, 1000])
def test_vp_bins_contain_their_timesteps(num_bins, linear_alpha_bar):
    p = Process("vp", "epsilon", num_bins, alpha_bar=linear_alpha_bar)
    t = np.arange(1000)
    _assert_inside(p, t)
    assert np.all(np.bincount(p.bin_of(t), minlength=num_bins) > 0)  # no empty bin


@pytest.mark.parametrize("kind", ["flow", "edm"])
@pytest.mark.parametrize("num_bins", [1, 3, 7, 10, 37, 49, 50, 100, 333])
def test_continuous_bins_contain_their_timesteps_even_at_the_edges(kind, num_bins):
    p = Process(kind, kind, num_bins, sigma_data=0.5)
    e = p.bin_edges()
    # the edges themselves and their float neighbours are where a rounding slip shows
    t = np.concatenate([e, np.nextafter(e[1:], -np.inf), np.nextafter(e[:-1], np.inf)])
    rng = np.random.default_rng(num_bins)
    if kind == "flow":
        t = np.concatenate([t, rng.random(2000), np.linspace(0, 1, 1001)])
    else:
        lo, hi = math.log(p.sigma_min), math.log(p.sigma_max)
        t = np.concatenate([t, np.exp(rng.uniform(lo, hi, 2000)), np.exp(np.linspace(lo, hi, 1001))])
    t = t[(t >= e[0]) & (t <= e[-1])]
    _assert_inside(p, t)
    np.testing.assert_array_equal(p.bin_of(e[:-1]), np.arange(num_bins))  # edge b opens bin b


@pytest.mark.parametrize("kind", ["vp", "flow", "edm"])
def test_bin_nodes_lie_in_their_bin(kind, linear_alpha_bar):
    prediction = {"vp": "epsilon", "flow": "flow", "edm": "edm"}[kind]
    p = Process(kind, prediction, 13, alpha_bar=linear_alpha_bar if kind == "vp" else None, sigma_data=0.5)
    for b in range(13):
        nodes, w = p.bin_nodes(b)
        np.testing.assert_array_equal(p.bin_of(nodes), b)
        assert w.sum() == pytest.approx(1.0)


def test_edges_stay_where_the_design_puts_them():
    # the snap to bin_of's arithmetic moves an edge by ulps, never more
    p = Process("edm", "edm", 64, sigma_data=0.5)
    want = np.exp(np.linspace(math.log(0.002), math.log(80.0), 65))
    np.testing.assert_allclose(p.bin_edges(), want, rtol=1e-14)
    f = Process("flow", "flow", 49)
    np.testing.assert_allclose(f.bin_edges(), np.linspace(0, 1, 50), rtol=0, atol=1e-15)
