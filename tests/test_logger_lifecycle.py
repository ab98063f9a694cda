"""The logger's lifecycle, evaluation kinds and timestep checks: what a reader needs to read a run honestly."""

import math
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import diffaudit
from diffaudit.datastats import data_statistics, data_var
from diffaudit.errors import DataError
from diffaudit.logger import RunLogger


def _steps(lg, n, *, T=1000, B=16, start=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    for s in range(start, start + n):
        lg.log(s, timesteps=torch.randint(0, T, (B,), generator=g), losses=torch.rand(B, generator=g))


# ----------------------------------------------------------------------------
# Close markers


def test_clean_close_is_recorded_with_last_step_and_plan(tmp_path, linear_alpha_bar):
    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=10, total_steps=500) as lg:
        _steps(lg, 37)
    run = diffaudit.load_run(tmp_path / "r")
    assert run.meta["total_steps"] == 500
    assert run.closes.height == 1
    row = run.closes.row(0, named=True)
    assert (row["status"], row["last_step"], row["total_steps"], row["error"]) == ("finished", 36, 500, None)
    assert run.segment_plans == {0: 500}


def test_exception_in_with_block_is_a_failed_close(tmp_path, linear_alpha_bar):
    with pytest.raises(ZeroDivisionError):
        with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=10) as lg:
            _steps(lg, 5)
            1 / 0
    run = diffaudit.load_run(tmp_path / "r")
    row = run.closes.row(0, named=True)
    assert row["status"] == "failed" and row["error"].startswith("ZeroDivisionError") and row["last_step"] == 4


def test_killed_run_has_no_close_marker(tmp_path):
    code = textwrap.dedent(f"""
        import os, signal, torch
        from diffaudit.logger import RunLogger
        from diffaudit.noise import named_betas, schedule_from_betas
        ab = schedule_from_betas(named_betas("linear"))[0]
        lg = RunLogger({str(tmp_path / 'r')!r}, alphas_cumprod=ab, num_bins=10, flush_every=10, total_steps=100)
        for s in range(25):
            lg.log(s, timesteps=torch.randint(0, 1000, (8,)), losses=torch.rand(8))
        lg.flush(); import time; time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})
    run = diffaudit.load_run(tmp_path / "r")
    assert run.closes.height == 0 and run.segment_plans == {0: 100}
    assert run.steps["step"].max() >= 19


def test_close_markers_survive_export(tmp_path, linear_alpha_bar):
    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=10, total_steps=50) as lg:
        _steps(lg, 10)
    out = diffaudit.load.export_run(diffaudit.load_run(tmp_path / "r"), tmp_path / "r.parquet")
    back = diffaudit.load_run(out)
    assert back.closes.to_dicts() == diffaudit.load_run(tmp_path / "r").closes.to_dicts()
    assert back.segment_plans == {0: 50}


# ----------------------------------------------------------------------------
# Evaluation kinds


def test_eval_and_ema_are_kept_apart(tmp_path, linear_alpha_bar):
    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=4, window=10) as lg:
        for s in range(30):
            t = torch.arange(8) * 125
            lg.log(s, timesteps=t, losses=torch.full((8,), 1.0))
            if s % 10 == 9:
                lg.log(s, timesteps=t, losses=torch.full((8,), 2.0), split="eval")
                lg.log(s, timesteps=t, losses=torch.full((8,), 3.0), split="ema")
    run = diffaudit.load_run(tmp_path / "r")
    assert set(run.train_bins["mean"].unique()) == {1.0}
    assert set(run.eval_bins["mean"].unique()) == {2.0} and run.eval_bins["step_lo"].unique().sort().to_list() == [9, 19, 29]
    assert set(run.ema_bins["mean"].unique()) == {3.0} and run.ema_bins.height == 12
    with pytest.raises(DataError, match="'ema': the EMA weights"):
        lg2 = RunLogger(tmp_path / "r2", alphas_cumprod=linear_alpha_bar, num_bins=4)
        lg2.log(0, timesteps=torch.zeros(2, dtype=torch.long), losses=torch.ones(2), split="valid")


# ----------------------------------------------------------------------------
# Timesteps that cannot belong to the process


@pytest.mark.parametrize(
    "kind,kw,t,cause",
    [
        ("flow", {"process": "flow"}, torch.rand(64) * 1000, "scaled by 1000"),
        ("vp", {}, torch.rand(64), "fractions of the schedule"),
        ("vp", {}, torch.full((64,), 1000), ">= T = 1000"),
        ("edm", {"process": "edm", "sigma_data": 0.5}, -torch.rand(64), "sigma must be positive"),
        ("vp", {}, torch.tensor([5.0, float("nan")] * 32), "non-finite timesteps"),
        ("flow", {"process": "flow"}, torch.tensor([0.5, float("inf")] * 32), "non-finite timesteps"),
    ],
)
def test_impossible_timesteps_on_the_host_are_refused_at_once(tmp_path, linear_alpha_bar, kind, kw, t, cause):
    if kind == "vp":
        kw = {"alphas_cumprod": linear_alpha_bar}
    with RunLogger(tmp_path / "r", num_bins=10, **kw) as lg:
        with pytest.raises(DataError, match=cause):
            lg.log(0, timesteps=t, losses=torch.rand(64))


def test_impossible_timesteps_are_counted_and_excluded(tmp_path):
    """check_timesteps='count' (and every device tensor): counted per step, excluded from every statistic."""
    g = torch.Generator().manual_seed(1)
    with RunLogger(tmp_path / "r", process="flow", num_bins=10, check_timesteps="count", flush_every=7) as lg:
        for s in range(20):
            t = torch.rand(32, generator=g)
            t[:5] *= 1000  # five per step scaled by 1000; some of them still land in [0, 1]
            lg.log(s, timesteps=t, losses=torch.rand(32, generator=g))
            expect_bad = int(((t < 0) | (t > 1)).sum())
            if s == 13:
                kept_bad = expect_bad
    run = diffaudit.load_run(tmp_path / "r")
    row = run.steps.filter(run.steps["step"] == 13).row(0, named=True)
    assert row["bad_t"] == kept_bad and row["count"] == 32 - kept_bad
    assert row["t_max"] > 1 and 0 <= row["t_min"] <= 1
    assert run.train_bins["count"].sum() == 20 * 32 - run.steps["bad_t"].sum()
    assert "bad_t" not in run.extra_scalars


def test_a_step_counter_that_goes_back_is_warned_about(tmp_path, linear_alpha_bar):
    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=10) as lg:
        _steps(lg, 5)
        with pytest.warns(UserWarning, match=r"went backwards \(4 -> 0\)"):
            _steps(lg, 3)  # an epoch-local counter restarting at 0
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once, not every step
            _steps(lg, 3)


# ----------------------------------------------------------------------------
# Options that cannot make a run


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"num_bins": 100_000}, "num_bins must be an integer from 1 to 4096"),
        ({"num_bins": 0}, "num_bins"),
        ({"num_bins": "abc"}, "num_bins"),
        ({"total_steps": 0}, "total_steps must be a positive integer"),
        ({"data_var": float("nan")}, "data_var must be a positive finite number"),
        ({"data_var": -1.0}, "data_var"),
        ({"config": {"x": float("nan")}}, "config cannot be stored in run.json"),
        ({"check_timesteps": "ignore"}, "check_timesteps"),
    ],
)
def test_bad_options_are_refused_and_leave_nothing_behind(tmp_path, linear_alpha_bar, kw, msg):
    with pytest.raises(DataError, match=msg):
        RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, **kw)
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or p.name == "run.json"]
    assert leftovers == []


@pytest.mark.parametrize("name", ["bin", "step_lo", "table", "count", "bad_t", "t_max", "1x", "a b"])
def test_scalar_names_the_format_needs_are_refused(tmp_path, linear_alpha_bar, name):
    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=4) as lg:
        with pytest.raises(DataError, match="scalar name"):
            lg.log(0, timesteps=torch.zeros(2, dtype=torch.long), losses=torch.ones(2), **{name: 1.0})


# ----------------------------------------------------------------------------
# Data statistics


def test_data_var_is_the_mean_per_element_variance_not_the_pooled_one():
    rng = np.random.default_rng(0)
    means = rng.normal(0, 3, 16)  # very different per-element means
    x = means + rng.normal(0, 0.5, (20_000, 16))
    assert data_var(x) == pytest.approx(0.25, rel=0.03)
    assert x.var() > 5  # what x.var() would have claimed (0.25 + the spread of the means)
    st = data_statistics(x.reshape(-1, 4, 4))
    assert st["data_dim"] == 16 and len(st["data_spectrum"]) == 16
    assert st["data_var"] == pytest.approx(np.mean(st["data_spectrum"]), rel=1e-12)
    assert st["data_var"] == pytest.approx(data_var(x), rel=1e-12)
    with pytest.raises(DataError, match="NaN"):
        data_statistics(np.array([[1.0, np.nan], [0.0, 1.0]]))


# ----------------------------------------------------------------------------
# The time-sensitivity probe


@pytest.mark.parametrize("kind", ["vp", "flow", "edm"])
def test_time_probe_pairs_the_far_t_loss_with_the_true_one(tmp_path, linear_alpha_bar, kind):
    kw = {"vp": {"alphas_cumprod": linear_alpha_bar}, "flow": {"process": "flow"},
          "edm": {"process": "edm", "sigma_data": 0.5}}[kind]
    seen = []

    def uses_t(tf):  # a "network" whose loss is the conditioning noise level itself: it depends on t
        seen.append(tf.clone())
        return tf.to(torch.float64) + 1.0

    def ignores_t(tf):
        return torch.full(tf.shape, 2.0, dtype=torch.float64)

    with RunLogger(tmp_path / "r", num_bins=4, time_probe_every=10, **kw) as lg:
        g = torch.Generator().manual_seed(0)
        for s in range(25):
            if kind == "vp":
                t = torch.randint(0, 1000, (16,), generator=g)
            elif kind == "flow":
                t = torch.rand(16, generator=g, dtype=torch.float64)
            else:
                t = torch.exp(torch.randn(16, generator=g, dtype=torch.float64) - 1.2)
            lg.log(s, timesteps=t, losses=torch.full((16,), 2.0))
            out = lg.probe_time(s, uses_t if s < 15 else ignores_t, timesteps=t, losses=torch.full((16,), 2.0))
            assert (out is None) == (s % 10 != 0)
            if kind == "vp" and s == 0:
                assert torch.equal(seen[0], (t + 500) % 1000) and seen[0].dtype == t.dtype
            if kind == "flow" and s == 0:
                assert torch.allclose(seen[0], torch.remainder(t + 0.5, 1.0))
    run = diffaudit.load_run(tmp_path / "r")
    pt = run.bins.filter(run.bins["split"] == "probe_t")
    pr = run.bins.filter(run.bins["split"] == "probe_true")
    assert sorted(pt["step_lo"].unique().to_list()) == [0, 10, 20]
    assert pt["count"].sum() == pr["count"].sum() == 48
    np.testing.assert_allclose(pr["mean"].to_numpy(), 2.0, rtol=1e-12)
    np.testing.assert_allclose(pt.filter(pt["step_lo"] == 20)["mean"].to_numpy(), 2.0, rtol=1e-12)  # ignores t: ratio 1
    assert pt.filter(pt["step_lo"] == 0)["mean"].n_unique() > 1  # the far t reached the loss
    if kind == "edm":
        sig = seen[0].log()
        lo, hi = math.log(0.002), math.log(80.0)
        assert ((sig >= lo - 1e-9) & (sig <= hi + 1e-9)).all()


def test_time_probe_checks_what_loss_fn_returns(tmp_path, linear_alpha_bar):
    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=4) as lg:
        t = torch.randint(0, 1000, (8,))
        with pytest.raises(DataError, match="returned 3 losses for 8 samples"):
            lg.probe_time(0, lambda tf: torch.ones(3), timesteps=t, losses=torch.ones(8))
