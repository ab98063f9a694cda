"""RunLogger on CPU: statistics against numpy, bins against noise.Process, accumulation, probe, dtypes."""

import math

import numpy as np
import polars as pl
import pytest

torch = pytest.importorskip("torch")

import diffaudit
from diffaudit.logger import RunLogger
from diffaudit.noise import named_betas, schedule_from_betas


def _ref_stats(t, x, process):
    """Per-bin count/mean/var over all samples, float64, the slow obvious way."""
    b = process.bin_of(t)
    out = {}
    for k in np.unique(b):
        v = x[b == k]
        v = v[np.isfinite(v)]
        out[int(k)] = (v.size, v.mean(), v.var(ddof=0) * v.size)
    return out


def _merged(run):
    from diffaudit.load import merge_moments

    tb = run.train_bins.with_columns(pl.lit(0).alias("k"))
    return {r["bin"]: (r["count"], r["mean"], r["m2"]) for r in merge_moments(tb, ["k", "bin"]).iter_rows(named=True)}


@pytest.mark.parametrize("reduction", ["bincount", "index_add"])
@pytest.mark.parametrize(
    "flush_every,window,buffer_size",
    [(1000, 100, 65536), (37, 10, 65536), (5, 50, 65536), (100, 20, 100), (100, 20, 50)],
)
def test_bin_statistics_match_numpy(tmp_path, linear_alpha_bar, flush_every, window, buffer_size, reduction):
    rng = np.random.default_rng(0)
    T, B, steps = 1000, 64, 300
    ts = rng.integers(0, T, (steps, B))
    xs = (rng.gamma(2.0, 0.05, (steps, B)) + 0.01 * (ts / T)).astype(np.float32)
    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=50, flush_every=flush_every,
                   window=window, buffer_size=buffer_size) as lg:
        lg._allocate(torch.device("cpu"))
        lg._acc.reduction = reduction  # both reduction strategies (index_add is the CUDA default), run on the CPU
        for s in range(steps):
            lg.log(s, timesteps=torch.from_numpy(ts[s]), losses=torch.from_numpy(xs[s]))
    run = diffaudit.load_run(tmp_path / "r")
    ref = _ref_stats(ts.ravel(), xs.ravel().astype(np.float64), run.process)
    got = _merged(run)
    assert set(got) == set(ref)
    for k, (n, m, m2) in ref.items():
        assert got[k][0] == n
        assert got[k][1] == pytest.approx(m, rel=1e-12)
        assert got[k][2] == pytest.approx(m2, rel=1e-9)
    assert run.steps["step"].to_list() == list(range(steps))
    np.testing.assert_allclose(run.steps["loss"].to_numpy(), xs.astype(np.float64).mean(1), rtol=1e-6)


def test_large_mean_small_variance_keeps_precision(tmp_path, linear_alpha_bar):
    # 1000 + N(0, 1e-3^2): a float32 sum/sum-of-squares gives garbage (even negative) variances here
    rng = np.random.default_rng(1)
    T, B, steps = 1000, 256, 200
    ts = rng.integers(0, T, (steps, B))
    xs = 1000.0 + 1e-3 * rng.standard_normal((steps, B))
    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=10, flush_every=50, window=25) as lg:
        for s in range(steps):
            lg.log(s, timesteps=torch.from_numpy(ts[s]), losses=torch.from_numpy(xs[s]))
    run = diffaudit.load_run(tmp_path / "r")
    ref = _ref_stats(ts.ravel(), xs.ravel(), run.process)
    got = _merged(run)
    for k, (n, m, m2) in ref.items():
        assert got[k][2] == pytest.approx(m2, rel=1e-6)
    x32 = torch.from_numpy(xs.ravel()).float()
    naive = (x32 * x32).sum() / x32.numel() - (x32.sum() / x32.numel()) ** 2
    assert abs(float(naive) - 1e-6) / 1e-6 > 0.5  # the naive float32 formula gets not even the first digit


@pytest.mark.parametrize(
    "kind,kwargs,make_t",
    [
        ("vp", {}, lambda rng, n: rng.integers(0, 1000, n)),
        ("flow", {"process": "flow"}, lambda rng, n: rng.random(n)),
        ("edm", {"process": "edm", "sigma_data": 0.5}, lambda rng, n: np.exp(rng.normal(-1.2, 1.2, n))),
    ],
)
def test_device_bins_match_process_bin_of(tmp_path, linear_alpha_bar, kind, kwargs, make_t):
    rng = np.random.default_rng(2)
    t = make_t(rng, 5000)
    if kind == "vp":
        kwargs = {"alphas_cumprod": linear_alpha_bar}
    with RunLogger(tmp_path / kind, num_bins=37, **kwargs) as lg:
        lg.log(0, timesteps=torch.from_numpy(t), losses=torch.ones(t.size))
    run = diffaudit.load_run(tmp_path / kind)
    want = np.bincount(run.process.bin_of(t), minlength=37)
    got = np.zeros(37, np.int64)
    tb = run.train_bins
    got[tb["bin"].to_numpy()] = tb["count"].to_numpy()
    np.testing.assert_array_equal(got, want)


def test_nonfinite_losses_are_counted_and_excluded(tmp_path, linear_alpha_bar):
    t = torch.tensor([5, 5, 5, 900, 900])
    x = torch.tensor([0.5, float("nan"), float("inf"), 0.1, -float("inf")])
    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=10) as lg:
        lg.log(0, timesteps=t, losses=x)
        lg.log(1, timesteps=t, losses=torch.tensor([0.7, 0.7, 0.7, 0.3, 0.3]))
    run = diffaudit.load_run(tmp_path / "r")
    s = run.steps
    assert s["nonfinite"].to_list() == [3, 0]
    assert s["loss"][0] == pytest.approx(0.3)  # mean of the finite ones
    b = {r["bin"]: r for r in run.train_bins.iter_rows(named=True)}
    assert b[0]["nonfinite"] == 2 and b[0]["count"] == 4 and b[0]["mean"] == pytest.approx((0.5 + 0.7 * 3) / 4)
    assert b[9]["nonfinite"] == 1 and math.isfinite(b[9]["m2"]) and b[9]["max"] == pytest.approx(0.3)


def test_gradient_accumulation_and_scalars(tmp_path, linear_alpha_bar):
    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=10) as lg:
        for step in range(3):
            for micro in range(4):  # four micro-batches per optimizer step
                lg.log(step, timesteps=torch.full((8,), 100 * micro), losses=torch.full((8,), float(micro)))
            lg.log(step, timesteps=torch.zeros(0, dtype=torch.long), losses=torch.zeros(0),
                   grad_norm=torch.tensor(2.0 + step), clip_threshold=2.5, lr=1e-3, ema_decay=0.999)
    s = diffaudit.load_run(tmp_path / "r").steps
    assert s["count"].to_list() == [32, 32, 32]
    assert s["loss"].to_list() == pytest.approx([1.5] * 3)
    assert s["grad_norm"].to_list() == pytest.approx([2.0, 3.0, 4.0])
    assert s["clipped"].to_list() == [False, True, True]
    assert s["ema_decay"].to_list() == pytest.approx([0.999] * 3)


def test_nan_grad_norm_is_kept_apart_from_not_logged(tmp_path, linear_alpha_bar):
    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=4) as lg:
        for step, gn in enumerate([torch.tensor(0.5), torch.tensor(float("nan")), None, torch.tensor(float("inf")), 2.0]):
            kw = {} if gn is None else {"grad_norm": gn}
            lg.log(step, timesteps=torch.tensor([1]), losses=torch.tensor([1.0]), clip_threshold=1.0, **kw)
    s = diffaudit.load_run(tmp_path / "r").steps
    g = s["grad_norm"]
    assert g[0] == 0.5 and math.isnan(g[1]) and g[2] is None and g[3] == math.inf and g[4] == 2.0
    assert s["clipped"].to_list() == [False, None, None, None, True]


def test_weights_recorded_apart_from_loss(tmp_path, linear_alpha_bar):
    x = torch.tensor([1.0, 3.0])
    w = torch.tensor([3.0, 1.0])
    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=1) as lg:
        lg.log(0, timesteps=torch.tensor([1, 2]), losses=x, weights=w)
    run = diffaudit.load_run(tmp_path / "r")
    assert run.steps["loss"][0] == pytest.approx(2.0)  # unweighted
    assert run.steps["wloss"][0] == pytest.approx(1.5)
    assert run.train_bins["wmean"][0] == pytest.approx(1.5)


def test_eval_split_kept_apart(tmp_path, linear_alpha_bar):
    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=4) as lg:
        for s in range(10):
            lg.log(s, timesteps=torch.tensor([10, 600]), losses=torch.tensor([1.0, 1.0]))
            if s % 5 == 4:
                for _ in range(3):  # an evaluation pass over several batches at the same step
                    lg.log(s, timesteps=torch.tensor([10, 600]), losses=torch.tensor([2.0, 4.0]), split="eval")
    run = diffaudit.load_run(tmp_path / "r")
    ev = run.eval_bins.sort("step_lo", "bin")
    assert ev["step_lo"].to_list() == [4, 4, 9, 9]
    assert ev["count"].to_list() == [3, 3, 3, 3]
    assert ev["mean"].to_list() == [2.0, 4.0, 2.0, 4.0]
    assert run.steps.height == 10 and run.steps["loss"].to_list() == [1.0] * 10


def test_probe_gradients_per_bin_and_leaves_grads_alone(tmp_path, linear_alpha_bar):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x = torch.randn(64, 5)
    t = torch.randint(0, 1000, (64,))

    def losses():
        return (model(x).squeeze(1) - t.float() / 1000) ** 2

    ref = losses().mean()
    ref.backward()
    want_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=20, probe_every=10, probe_bins=4) as lg:
        per = losses()
        assert lg.probe_gradients(model, t, per, step=3) is None  # not a probe step
        norms = lg.probe_gradients(model, t, per, step=10)
        per.mean().backward()
        lg.log(10, timesteps=t, losses=per)
    for p, g in zip(model.parameters(), want_grads):
        torch.testing.assert_close(p.grad, g)  # the probe did not touch the training gradients
    pb = t * 4 // 1000
    for k in range(4):
        lk = losses()[pb == k].mean()
        gk = torch.autograd.grad(lk, list(model.parameters()))
        assert float(norms[k]) == pytest.approx(float(torch.sqrt(sum((g**2).sum() for g in gk))), rel=1e-5)
    pr = diffaudit.load_run(tmp_path / "r").probes
    assert pr["step"].unique().to_list() == [10]
    assert pr["grad_norm"].to_list() == pytest.approx(norms.tolist(), rel=1e-6)
    assert pr["bin_lo"].to_list() == [0, 5, 10, 15] and pr["bin_hi"].to_list() == [5, 10, 15, 20]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_half_precision_losses(tmp_path, linear_alpha_bar, dtype):
    model = torch.nn.Linear(8, 8)
    x = torch.randn(32, 8)
    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=5) as lg:
        with torch.autocast("cpu", dtype=dtype):
            out = model(x)
            per = ((out - x) ** 2).mean(1)
        assert per.dtype == dtype or per.dtype == torch.float32
        per = per.to(dtype)
        per[0] = torch.tensor(float("inf"), dtype=dtype)  # what an fp16 overflow looks like
        lg.log(0, timesteps=torch.randint(0, 1000, (32,)), losses=per)
    s = diffaudit.load_run(tmp_path / "r").steps
    assert s["nonfinite"][0] == 1 and s["count"][0] == 31
    assert s["loss"][0] == pytest.approx(per[1:].double().mean().item(), rel=1e-6)


def test_diffusers_schedule_accepted_as_is(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    for name in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=name)
        with RunLogger(tmp_path / name, alphas_cumprod=sched.alphas_cumprod, num_bins=100, prediction="v_prediction") as lg:
            lg.log(0, timesteps=torch.randint(0, 1000, (16,)), losses=torch.rand(16))
        run = diffaudit.load_run(tmp_path / name)
        assert run.meta["alphas_cumprod_dtype"] == "float32"
        ref = schedule_from_betas(named_betas(name))[0]
        np.testing.assert_allclose(run.process.alpha_bar, ref, atol=1e-6)


def test_betas_give_exact_one_minus_alpha_bar(tmp_path):
    betas = named_betas("linear")
    with RunLogger(tmp_path / "r", betas=betas, num_bins=10) as lg:
        lg.log(0, timesteps=torch.tensor([0]), losses=torch.tensor([1.0]))
    run = diffaudit.load_run(tmp_path / "r")
    assert run.process.one_minus_alpha_bar[0] == betas[0]  # exact: -expm1(log1p(-b0)) == b0
    assert run.meta["schedule_from_betas"] is True


def test_resume_with_a_different_schedule_is_refused(tmp_path, linear_alpha_bar):
    from diffaudit.errors import RunFormatError

    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=10) as lg:
        lg.log(0, timesteps=torch.tensor([0]), losses=torch.tensor([1.0]))
    with pytest.raises(RunFormatError, match="prediction"):
        RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=10, prediction="sample")


def test_bad_arguments_raise_one_line_errors(tmp_path, linear_alpha_bar):
    from diffaudit.errors import DiffauditError

    with pytest.raises(DiffauditError, match="prediction 'flow' is not valid"):
        RunLogger(tmp_path / "a", alphas_cumprod=linear_alpha_bar, prediction="flow")
    with pytest.raises(DiffauditError, match="needs alphas_cumprod"):
        RunLogger(tmp_path / "b")
    with RunLogger(tmp_path / "c", alphas_cumprod=linear_alpha_bar, num_bins=10) as lg:
        with pytest.raises(DiffauditError, match="timesteps has 3 elements but losses has 2"):
            lg.log(0, timesteps=torch.tensor([1, 2, 3]), losses=torch.tensor([1.0, 2.0]))


def test_a_step_never_splits_across_parts(tmp_path, linear_alpha_bar):
    # gradient accumulation with a probe on the second micro-batch and evals in between: the probe
    # table (16) and the eval table (8) fill mid-step many times; each step must stay one row
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=10, flush_every=1000,
                   window=10, probe_every=5, probe_bins=2) as lg:
        for step in range(100):
            for micro in range(2):
                t = torch.randint(0, 1000, (8,))
                per = (model(torch.randn(8, 4)).squeeze(1)) ** 2
                if micro == 1:
                    lg.probe_gradients(model, t, per, step)
                lg.log(step, timesteps=t, losses=per.detach(), grad_norm=torch.tensor(1.0) if micro else None)
                lg.log(step * 10 + micro, timesteps=t, losses=torch.ones(8), split="eval")
    run = diffaudit.load_run(tmp_path / "r")
    s = run.steps
    assert s["step"].to_list() == list(range(100))
    assert s["count"].unique().to_list() == [16] and s["grad_norm"].null_count() == 0
    assert run.probes["step"].n_unique() == 20
    ev = run.eval_bins
    assert ev["step_lo"].n_unique() == 200 and ev["count"].sum() == 1600


def test_reserved_scalar_names_and_eval_scalars_are_refused(tmp_path, linear_alpha_bar):
    from diffaudit.errors import DataError

    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=10) as lg:
        for name in ("loss", "count", "rank", "segment", "time", "n_ranks"):
            with pytest.raises(DataError, match="reserved"):
                lg.log(0, timesteps=torch.tensor([1]), losses=torch.tensor([1.0]), **{name: 1.0})
        with pytest.raises(DataError, match="only be logged with split='train'"):
            lg.log(0, timesteps=torch.tensor([1]), losses=torch.tensor([1.0]), split="eval", eval_metric=0.5)
        lg.log(0, timesteps=torch.tensor([1]), losses=torch.tensor([1.0]), ema_loss=0.9)  # any other name is fine
    assert diffaudit.load_run(tmp_path / "r").steps["ema_loss"].to_list() == [0.9]


def test_the_cadence_reads_as_the_loggers_own_attributes(tmp_path, linear_alpha_bar):
    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=10, window=7, flush_every=21,
                   probe_bins=50) as lg:
        assert (lg.window, lg.flush_every, lg.probe_bins) == (7, 21, 10)  # probe bins capped at the bins
        with pytest.raises(AttributeError, match="no attribute 'windw'"):
            lg.windw
