"""The common unit (loss / own L*): the same denoiser logged as epsilon and as v-prediction reads the same."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import diffaudit
from diffaudit.errors import MismatchError
from diffaudit.logger import RunLogger
from diffaudit.units import conversion_notes, in_lstar_units

SPECTRUM = np.array([2.0, 1.0, 0.5, 0.25, 0.1, 0.05, 0.02, 0.01])


def _log_same_denoiser(tmp_path, linear_alpha_bar):
    """One imperfect linear denoiser (it assumes a 1.5x too large spectrum), its losses logged as eps and as v."""
    rng = np.random.default_rng(0)
    ab = np.asarray(linear_alpha_bar, np.float64)
    lam, wrong = SPECTRUM, 1.5 * SPECTRUM
    runs = {}
    loggers = {p: RunLogger(tmp_path / p, alphas_cumprod=ab, prediction=p, num_bins=20, window=50, flush_every=100,
                            data_spectrum=SPECTRUM) for p in ("epsilon", "v_prediction")}
    for step in range(200):
        t = rng.integers(0, 1000, 512)
        a, s = np.sqrt(ab[t])[:, None], np.sqrt(1 - ab[t])[:, None]
        x0 = rng.normal(size=(512, lam.size)) * np.sqrt(lam)
        eps = rng.normal(size=x0.shape)
        x_t = a * x0 + s * eps
        x0_hat = a * wrong / (a**2 * wrong + s**2) * x_t  # posterior mean under the wrong spectrum
        eps_hat = (x_t - a * x0_hat) / s
        losses = {"epsilon": ((eps_hat - eps) ** 2).mean(1),
                  "v_prediction": (((a * eps_hat - s * x0_hat) - (a * eps - s * x0)) ** 2).mean(1)}
        for p, lg in loggers.items():
            lg.log(step, timesteps=torch.from_numpy(t), losses=torch.from_numpy(losses[p]))
    for p, lg in loggers.items():
        lg.close()
        runs[p] = diffaudit.load_run(tmp_path / p)
    return runs


def _per_bin(run, late=False):
    from diffaudit.load import merge_moments
    import polars as pl

    tb = run.train_bins
    if late:  # the last 20% of the steps
        tb = tb.filter(pl.col("step_lo") >= 0.8 * (tb["step_hi"].max() + 1))
    m = merge_moments(tb.with_columns(pl.lit(0).alias("k")), ["k", "bin"]).sort("bin")
    return m["mean"].to_numpy()


def test_epsilon_and_v_of_one_denoiser_agree_in_lstar_units(tmp_path, linear_alpha_bar):
    runs = _log_same_denoiser(tmp_path, linear_alpha_bar)
    raw_e, raw_v = _per_bin(runs["epsilon"]), _per_bin(runs["v_prediction"])
    assert np.max(raw_v / raw_e) > 100  # raw losses: orders of magnitude apart at high noise
    (ce, conv_e), (cv, conv_v) = in_lstar_units(runs["epsilon"]), in_lstar_units(runs["v_prediction"])
    re, rv = _per_bin(ce), _per_bin(cv)
    # every bin agrees within 2% (sampling noise included), although L* varies up to 2.6x inside a bin
    np.testing.assert_allclose(re, rv, rtol=0.02)
    assert max(conv_e.lstar_spread) > 2
    assert np.all(re[:12] > 1.0)  # the wrong-spectrum denoiser is worse than the best linear one where it matters
    # the converted runs carry one common prediction label, and say what they were
    assert ce.meta["prediction"] == cv.meta["prediction"] and ce.meta["prediction_original"] == "epsilon"
    assert ce.steps["loss"].null_count() == ce.steps.height
    notes = conversion_notes([conv_e, conv_v])
    assert "epsilon, v_prediction" in notes[0] and "steps to reach" in notes[-1]
    assert "inside bin(s) 14-19" in notes[1]


def test_needs_the_data_statistics(tmp_path, linear_alpha_bar):
    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=4) as lg:
        lg.log(0, timesteps=torch.tensor([1, 500]), losses=torch.tensor([1.0, 0.5]))
    with pytest.raises(MismatchError, match="needs the data statistics"):
        in_lstar_units(diffaudit.load_run(tmp_path / "r"))


# ----------------------------------------------------------------------------
# Real runs: the digits MLP trained with epsilon and with v-prediction (sample_logs/families/digits_mlp_units)

UNITS = __import__("pathlib").Path(__file__).resolve().parents[1] / "sample_logs" / "families" / "digits_mlp_units"


def _load(*names):
    return [diffaudit.load_run(UNITS / n) for n in names]


def test_real_eps_and_v_runs_differ_by_orders_of_magnitude_raw_but_not_in_lstar_units():
    eps, v = _load("eps_s00", "v_s00")
    raw_e, raw_v = _per_bin(eps, late=True), _per_bin(v, late=True)
    assert np.max(raw_v / raw_e) > 20  # high noise: the eps loss goes to 0, the v loss does not
    ue, uv = _per_bin(in_lstar_units(eps)[0], late=True), _per_bin(in_lstar_units(v)[0], late=True)
    np.testing.assert_allclose(ue[:8], uv[:8], rtol=0.08)  # low and middle noise: the two models are alike
    assert np.all(ue[15:] > 5 * uv[15:])  # the eps model's implied x0 is far worse at the noisiest levels


def test_gate_in_lstar_units_on_real_runs():
    from diffaudit.gate import compare

    eps, v, v_narrow = _load("eps_s00", "v_s00", "v_narrow4")
    with pytest.raises(MismatchError, match="prediction epsilon vs v_prediction"):
        compare([eps], [v])
    assert compare([eps], [v], unit="lstar").status == "pass"  # v is nowhere worse than eps
    back = compare([v], [eps], unit="lstar")  # eps is worse where its loss / L* explodes: the noisiest bins
    assert back.status == "regression"
    named = {c.bin for c in back.checks if c.regressed and c.bin is not None}
    assert named and min(named) >= 8 and {17, 18, 19} <= named
    assert compare(_load("v_s00", "v_s01", "v_s02"), [v_narrow], unit="lstar").status == "regression"
    assert any("L* units" in n for n in back.notes)
    assert next(c for c in back.checks if c.metric == "steps").status == "off"


def test_compare_command_in_lstar_units():
    from _cli import run_cli

    eps, v = UNITS / "eps_s00", UNITS / "v_s00"
    assert run_cli("compare", eps, v).exit_code == 2  # raw losses of different targets: refused
    assert run_cli("compare", "--unit", "lstar", eps, v).exit_code == 0
    res = run_cli("compare", "--unit", "lstar", v, eps)
    assert res.exit_code == 1 and "L* units" in res.output
