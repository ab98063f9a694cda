"""diffaudit.analysis and diffaudit.findings on synthetic runs with known answers.

Each run here is simulated per sample (timesteps drawn uniformly, per-sample
losses Gamma-distributed around a chosen mean per step and noise bin) and
written in the logger's on-disk format with pyarrow, so the analyzer reads it
exactly as it reads a real run, without torch. A test plants one defect of a
known size where it knows it is, then checks the number the analysis computes
and the finding it makes (or, on healthy runs, that no warn/fail fires).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from click.testing import CliRunner

import diffaudit
from diffaudit import runformat as rf
from diffaudit.analysis import BIN_COLUMNS, analyze
from diffaudit.present.document import report_document
from diffaudit.cli import main
from diffaudit.findings import DETECTORS, Thresholds, at_or_above
from diffaudit.present.markdown import findings_table
from diffaudit.noise import Process, named_betas, schedule_from_betas
from diffaudit.optimum import bin_gaussian_optimal_loss

T = 1000
NB = 20
DATA_VAR = 0.3


# ----------------------------------------------------------------------------
# A synthetic run, written in the logger's format


@dataclass
class Sim:
    """What to simulate. `level(step, bin) -> mean loss` over arrays; everything else plain numbers."""

    steps: int = 2000
    batch: int = 64
    window: int = 100
    seed: int = 0
    shape: float = 4.0  # Gamma shape of per-sample losses: coefficient of variation 1/sqrt(shape)
    level: object = None  # callable(step[:, None], bin[None, :]) -> mean; default: decays to 1.02 L*
    t_probs: np.ndarray | None = None  # sampler over the T timesteps (default uniform)
    grad_norm: float = 0.3  # median pre-clip grad norm (lognormal, sd 0.2 in log)
    clip: float | None = 1.0
    clip_prob: object = None  # callable(step) -> probability a step is clipped (overrides grad norms)
    spikes: dict = field(default_factory=dict)  # step -> factor on that step's per-sample losses
    nonfinite: dict = field(default_factory=dict)  # step -> number of NaN per-sample losses
    eval_every: int = 0
    eval_level: object = None  # callable(step, bin) -> eval mean (default: the train level)
    probe_every: int = 0
    probe_scale: object = None  # callable(probe_bin) -> grad norm
    betas: np.ndarray | None = None
    alphas_cumprod: np.ndarray | None = None  # overrides betas; written as given
    dtype: str | None = "float64"
    from_betas: bool = True
    data_var: float | None = DATA_VAR
    optimum: np.ndarray | None = None  # empirical L* per bin
    ema_every: int = 0  # EMA weights evaluated on held-out data (split "ema") every this many steps
    ema_level: object = None  # callable(step, bin) -> EMA eval mean (default: the train level)
    total_steps: int | None = None  # the plan in run.json (then the run reads as written by a lifecycle logger)
    close: str | None = None  # "finished" / "failed": write a close marker for segment 1
    grad_zero: object = None  # callable(step) -> bool array: steps whose pre-clip grad norm is exactly 0
    lr: float = 1e-3  # the logged learning rate of every step


def lstar(betas=None, data_var=DATA_VAR, nb=NB) -> np.ndarray:
    ab, om = schedule_from_betas(named_betas("linear") if betas is None else betas)
    return bin_gaussian_optimal_loss(Process("vp", "epsilon", nb, ab, om), data_var=data_var)


def healthy_level(ls: np.ndarray, tau: float = 400.0, ratio: float = 1.02):
    """Loss that starts at 1 and decays exponentially to ratio * L* in every bin."""

    def level(step, b):
        target = ratio * ls[b]
        return target + (1.0 - target) * np.exp(-step / tau)

    return level


def write_run(path: Path, sim: Sim) -> Path:
    """Simulate `sim` and write it as a run directory; return the path."""
    rng = np.random.default_rng(sim.seed)
    path = Path(path)
    (path / rf.PARTS_DIR).mkdir(parents=True)
    if sim.alphas_cumprod is not None:
        ab = np.asarray(sim.alphas_cumprod, np.float64)
        om = 1.0 - ab
    else:
        ab, om = schedule_from_betas(named_betas("linear") if sim.betas is None else sim.betas)
    proc = Process("vp", "epsilon", NB, ab, om)
    ls = bin_gaussian_optimal_loss(proc, data_var=sim.data_var or DATA_VAR)
    level = sim.level or healthy_level(ls)
    meta = {
        "format": rf.FORMAT_NAME, "format_version": rf.FORMAT_VERSION, "run_id": f"sim{sim.seed}",
        **proc.to_meta(), "alphas_cumprod_dtype": sim.dtype, "schedule_from_betas": sim.from_betas,
        "data_var": sim.data_var, "data_spectrum": None, "window": sim.window, "flush_every": 1000,
        "probe_every": sim.probe_every, "probe_bins": 10, "config": {},
    }
    if sim.total_steps is not None or sim.close is not None:
        meta["total_steps"] = sim.total_steps
    (path / rf.RUN_JSON).write_text(json.dumps(meta))
    with np.errstate(divide="ignore"):
        lsnr = np.log(ab) - np.log(om)
    rf.write_table_atomic(pa.table({"t": np.arange(T), "alpha_bar": ab, "one_minus_alpha_bar": om, "log_snr": lsnr}),
                          path / rf.SCHEDULE_FILE)

    S, B = sim.steps, sim.batch
    step = np.repeat(np.arange(S), B)
    t = rng.choice(T, size=S * B, p=sim.t_probs)
    b = proc.bin_of(t)
    mu = level(step.astype(np.float64), b)
    x = mu * rng.gamma(sim.shape, 1.0 / sim.shape, size=mu.size)
    for s, f in sim.spikes.items():
        x[step == s] *= f
    for s, k in sim.nonfinite.items():
        x[np.flatnonzero(step == s)[:k]] = np.nan
    _write_split(path, "train", x, step, b, sim.window, S, tag=0)
    _write_steps(path, rng, sim, x, step, S)
    if sim.eval_every:
        ev_level = sim.eval_level or level
        es = np.arange(sim.eval_every - 1, S, sim.eval_every)
        n_e = 400
        estep = np.repeat(es, n_e)
        et = rng.integers(0, T, size=estep.size)
        eb = proc.bin_of(et)
        ex = ev_level(estep.astype(np.float64), eb) * rng.gamma(sim.shape, 1.0 / sim.shape, size=estep.size)
        _write_split(path, "eval", ex, estep, eb, None, S, tag=1)
    if sim.ema_every:
        m_level = sim.ema_level or level
        ms = np.arange(sim.ema_every - 1, S, sim.ema_every)
        mstep = np.repeat(ms, 400)
        mb = proc.bin_of(rng.integers(0, T, size=mstep.size))
        mx = m_level(mstep.astype(np.float64), mb) * rng.gamma(sim.shape, 1.0 / sim.shape, size=mstep.size)
        _write_split(path, "ema", mx, mstep, mb, None, S, tag=2)
    if sim.close is not None:
        seg = path / rf.SEGMENTS_DIR
        seg.mkdir(exist_ok=True)
        (seg / rf.segment_marker_name(0, 1)).write_text(json.dumps({"rank": 0, "segment": 1, "created": 0.0,
                                                                      "total_steps": sim.total_steps}))
        (seg / rf.close_marker_name(0, 1)).write_text(json.dumps({
            "rank": 0, "segment": 1, "status": sim.close, "closed": float(S), "last_step": S - 1,
            "total_steps": sim.total_steps, "error": "RuntimeError: boom" if sim.close == "failed" else None}))
    if sim.probe_every:
        ps = np.arange(0, S, sim.probe_every)
        pb = np.tile(np.arange(10), ps.size)
        scale = np.array([sim.probe_scale(k) if sim.probe_scale else 0.5 for k in range(10)])
        g = scale[pb] * np.exp(0.1 * rng.standard_normal(pb.size))
        tbl = pa.table({
            "rank": pa.array(np.zeros(pb.size, np.int32)), "segment": pa.array(np.ones(pb.size, np.int32)),
            "step": pa.array(np.repeat(ps, 10).astype(np.int64)), "probe_bin": pa.array(pb.astype(np.int32)),
            "bin_lo": pa.array((2 * pb).astype(np.int32)), "bin_hi": pa.array((2 * pb + 2).astype(np.int32)),
            "count": pa.array(np.full(pb.size, 12, np.int32)), "grad_norm": pa.array(g.astype(np.float32)),
        })
        rf.write_table_atomic(tbl, path / rf.PARTS_DIR / rf.part_name("probes", 0, 1, 0))
    if sim.optimum is not None:
        tbl = pa.table({"bin": pa.array(np.arange(NB, dtype=np.int32)), "loss_opt": sim.optimum.astype(np.float64),
                        "stderr": np.full(NB, 1e-4), "n": np.full(NB, 1000, np.int64)})
        rf.write_table_atomic(tbl, path / rf.PARTS_DIR / rf.part_name("optimum", 0, 1, 0))
    return path


def _write_split(path, split, x, step, b, window, S, tag):
    key = step // window if window else step
    fin = np.isfinite(x)
    wk, wi = np.unique(key, return_inverse=True)
    flat = wi * NB + b
    size = wk.size * NB
    n = np.bincount(flat[fin], minlength=size).astype(np.float64)
    s1 = np.bincount(flat[fin], x[fin], size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / n
    d = np.where(fin, x - mean[flat], 0.0)
    m2 = np.bincount(flat, d * d, size)
    bad = np.bincount(flat[~fin], minlength=size)
    lo = np.full(wk.size, S)
    hi = np.zeros(wk.size, np.int64)
    np.minimum.at(lo, wi, step)
    np.maximum.at(hi, wi, step)
    mn = np.full(size, np.inf)
    mx = np.full(size, -np.inf)
    np.minimum.at(mn, flat[fin], x[fin])
    np.maximum.at(mx, flat[fin], x[fin])
    keep = (n > 0) | (bad > 0)
    w_of, b_of = np.divmod(np.arange(size), NB)
    k = keep.sum()
    tbl = pa.table({
        "split": pa.array([split] * k), "rank": pa.array(np.zeros(k, np.int32)),
        "segment": pa.array(np.ones(k, np.int32)), "step_lo": pa.array(lo[w_of[keep]].astype(np.int64)),
        "step_hi": pa.array(hi[w_of[keep]].astype(np.int64)), "bin": pa.array(b_of[keep].astype(np.int32)),
        "count": pa.array(n[keep].astype(np.int64)), "mean": pa.array(mean[keep], mask=n[keep] == 0),
        "m2": pa.array(m2[keep], mask=n[keep] == 0), "min": pa.array(mn[keep].astype(np.float32)),
        "max": pa.array(mx[keep].astype(np.float32)), "nonfinite": pa.array(bad[keep].astype(np.int64)),
        "wsum": pa.nulls(k, pa.float64()), "wmean": pa.nulls(k, pa.float64()),
    })
    rf.write_table_atomic(tbl, path / rf.PARTS_DIR / rf.part_name("bins", 0, 1, tag))


def _write_steps(path, rng, sim: Sim, x, step, S):
    fin = np.isfinite(x)
    cnt = np.bincount(step[fin], minlength=S)
    loss = np.bincount(step[fin], x[fin], S) / np.maximum(cnt, 1)
    bad = np.bincount(step[~fin], minlength=S)
    g = sim.grad_norm * np.exp(0.2 * rng.standard_normal(S))
    if sim.grad_zero is not None:
        g = np.where(sim.grad_zero(np.arange(S)), 0.0, g)
    if sim.clip_prob is not None:
        clipped = rng.random(S) < sim.clip_prob(np.arange(S))
        g = np.where(clipped, sim.clip * 1.5, sim.clip * 0.5)
    thr = np.full(S, np.nan if sim.clip is None else sim.clip)
    tbl = pa.table({
        "step": pa.array(np.arange(S, dtype=np.int64)), "segment": pa.array(np.ones(S, np.int32)),
        "rank": pa.array(np.zeros(S, np.int32)), "time": pa.array(np.arange(S, dtype=np.float64)),
        "loss": pa.array(loss.astype(np.float32)), "count": pa.array(cnt.astype(np.int32)),
        "nonfinite": pa.array(bad.astype(np.int32)), "grad_norm": pa.array(g.astype(np.float32)),
        "clip_threshold": pa.array(thr.astype(np.float32), mask=np.isnan(thr)),
        "clipped": pa.array(g > thr, mask=np.isnan(thr)), "lr": pa.array(np.full(S, float(sim.lr))),
        "loss_scale": pa.nulls(S, pa.float32()), "wloss": pa.nulls(S, pa.float32()),
    })
    rf.write_table_atomic(tbl, path / rf.PARTS_DIR / rf.part_name("steps", 0, 1, 0))


def run_of(tmp_path, name="run", **kw) -> diffaudit.load.Run:
    return diffaudit.load_run(write_run(tmp_path / name, Sim(**kw)))


def ids(a, at_least="info") -> set[str]:
    return {f.id for f in at_or_above(a.findings, at_least)}


LS = lstar()


# ----------------------------------------------------------------------------
# Numbers against brute force


def test_late_mean_is_the_mean_of_the_late_samples(tmp_path):
    """Chan-merged per-bin late means equal the plain mean of the simulated samples in the late phase."""
    sim = Sim(seed=3)
    r = diffaudit.load_run(write_run(tmp_path / "r", sim))
    a = analyze(r, late_fraction=0.2)
    # regenerate the same samples
    rng = np.random.default_rng(sim.seed)
    step = np.repeat(np.arange(sim.steps), sim.batch)
    t = rng.choice(T, size=step.size)
    proc = r.process
    b = proc.bin_of(t)
    x = healthy_level(LS)(step.astype(np.float64), b) * rng.gamma(sim.shape, 1 / sim.shape, size=step.size)
    lo, hi = a.phases.late
    assert (lo, hi) == (1600, 1999)  # last 20% of 0..1999, whole windows
    late = (step >= lo) & (step <= hi)
    brute = np.array([x[late & (b == k)].mean() for k in range(NB)])
    np.testing.assert_allclose(a.bins["late_mean"].to_numpy(), brute, rtol=1e-12)
    counts = np.bincount(b, minlength=NB)
    np.testing.assert_array_equal(a.bins["count"].to_numpy(), counts)
    # the impact weights are the late sample shares and the late total is their weighted mean
    share = np.bincount(b[late], minlength=NB) / late.sum()
    np.testing.assert_allclose(a.bins["count_share"].to_numpy(), share, rtol=1e-12)
    assert a.loss.late_total == pytest.approx(float(share @ brute), rel=1e-12)


def test_gaussian_reference_and_excess_share(tmp_path):
    """lstar_gauss is the closed form; excess_share = share * max(late - L*, 0) / late total."""
    a = analyze(run_of(tmp_path))
    np.testing.assert_allclose(a.bins["lstar_gauss"].to_numpy(), LS, rtol=1e-12)
    late = a.bins["late_mean"].to_numpy()
    w = a.bins["count_share"].to_numpy()
    expect = w * np.maximum(late - LS, 0) / float(w @ late)
    np.testing.assert_allclose(a.bins["excess_share"].to_numpy(), expect, rtol=1e-10)
    assert a.loss.excess_share == pytest.approx(expect.sum(), rel=1e-10)


def test_analysis_is_deterministic(tmp_path):
    """Same run, same reading time: the same bytes (the reading time only moves "last write N s ago")."""
    r = run_of(tmp_path, seed=5, eval_every=200, probe_every=500)
    one = json.dumps(report_document(analyze(r, now=1e9)), sort_keys=True)
    two = json.dumps(report_document(analyze(diffaudit.load_run(r.path), now=1e9)), sort_keys=True)
    assert one == two


# ----------------------------------------------------------------------------
# Healthy runs: nothing at warn or fail


@pytest.mark.parametrize("seed", range(12))
def test_healthy_synthetic_runs_raise_no_warning(tmp_path, seed):
    """Decaying to within a few % of L*, with a slow shared drift: 12 seeds, no warn/fail."""
    rng = np.random.default_rng(100 + seed)
    drift = np.cumsum(rng.normal(0, 0.004, 2000))  # a slow random walk of the optimizer, shared by all bins
    base = healthy_level(LS, tau=rng.uniform(150, 300), ratio=rng.uniform(0.95, 1.02))

    def level(step, b):
        return base(step, b) * (1 + 0.02 * np.tanh(drift[step.astype(int)]))

    a = analyze(run_of(tmp_path, seed=seed, level=level, eval_every=200, probe_every=300))
    assert a.verdict in ("healthy",), [f"{f.id}: {f.message}" for f in a.findings]
    assert not at_or_above(a.findings, "warn")


def test_converged_at_lstar_is_convergence_not_stagnation(tmp_path):
    """Flat at L* from the start: loss.converged (info), no stagnation, per-bin trends flat."""
    a = analyze(run_of(tmp_path, level=lambda s, b: LS[b] + 0 * s, steps=4000, batch=512))
    assert "loss.converged" in ids(a)
    assert "loss.stagnant_above_optimum" not in ids(a)
    assert a.loss.stagnant
    assert a.verdict == "healthy"
    # with enough samples most bins are shown flat (equivalence after BY correction over 20 bins)
    assert (a.bins["trend"] == "flat").sum() >= NB // 2


# ----------------------------------------------------------------------------
# One planted defect at a time


def test_frozen_model_is_stagnant_above_optimum(tmp_path):
    """Loss 1.0 at every noise level, all run: stagnant above L* (fail) and flat across bins (fail)."""
    a = analyze(run_of(tmp_path, level=lambda s, b: 1.0 + 0 * s))
    f = a.by_id("loss.stagnant_above_optimum")
    assert f is not None and f.severity == "fail"
    expect = float(np.mean(np.maximum(1.0 - LS, 0)))  # uniform sampler: excess share ~ mean of (1 - L*) / 1
    assert f.evidence["excess_share"] == pytest.approx(expect, abs=0.02)
    assert a.by_id("time_conditioning.broken").severity == "fail"
    assert a.profile.range_ratio < 0.05


def test_increasing_bins_are_found_and_only_those(tmp_path):
    """Bins 0-4 rise 30% over the second half, the others keep falling: loss.increasing lists bins 0-4."""
    base = healthy_level(LS, tau=300)

    def level(step, b):
        rise = np.where((b <= 4) & (step > 1000), 0.3 * (step - 1000) / 1000, 0.0)
        return base(step, b) * (1 + rise)

    a = analyze(run_of(tmp_path, level=level))
    f = a.by_id("loss.increasing")
    assert f is not None and f.severity == "warn"
    assert set(f.bins) == {0, 1, 2, 3, 4}
    rel = a.bins["rel_change"].to_numpy()
    # relative change over steps 1000-1999: +30% of the level the line passes through at the middle
    assert np.all((rel[:5] > 0.15) & (rel[:5] < 0.45))
    assert set(a.bins.filter(pl.col("trend") == "increasing")["bin"].to_list()) == {0, 1, 2, 3, 4}


def test_spikes_and_blowup(tmp_path):
    """Five 6x spikes are loss.spikes (warn) at those steps; one 20x spike is a spike, one 300x a blow-up."""
    spikes = {300: 6.0, 700: 6.0, 1100: 6.0, 1500: 6.0, 1900: 6.0}
    a = analyze(run_of(tmp_path, spikes=spikes, batch=256))  # per-step loss noise ~ 1/sqrt(batch)
    f = a.by_id("loss.spikes")
    assert f is not None and f.severity == "warn"
    assert sorted(f.evidence["steps"]) == sorted(spikes)
    assert all(4.0 < r < 9.0 for r in f.evidence["ratios"])
    assert a.by_id("loss.exploding") is None
    b = analyze(run_of(tmp_path, "b", spikes={800: 20.0}, batch=256))
    f = b.by_id("loss.spikes")
    assert f is not None and f.severity == "warn" and f.evidence["steps"] == [800]
    assert f.evidence["ratios"][0] == pytest.approx(20.0, rel=0.3)
    assert b.by_id("loss.exploding") is None  # one transient 20x spike is not a divergence
    c = analyze(run_of(tmp_path, "c", spikes={800: 300.0}, batch=256))
    f = c.by_id("loss.exploding")
    assert f is not None and f.severity == "fail" and f.evidence["max_ratio_step"] == 800
    assert f.evidence["max_ratio"] == pytest.approx(300.0, rel=0.3)


def test_rare_spikes_are_info(tmp_path):
    """Three 7x spikes in 20,000 steps (1.5 per 10k, under the warn rate of 2): loss.spikes at info."""
    a = analyze(run_of(tmp_path, steps=20000, batch=128, window=500,
                       spikes={5000: 7.0, 11000: 7.0, 17000: 7.0}, level=healthy_level(LS, tau=3000)))
    f = a.by_id("loss.spikes")
    assert f is not None and f.severity == "info", a.findings
    assert sorted(f.evidence["steps"]) == [5000, 11000, 17000]


def test_lasting_rise_is_exploding(tmp_path):
    """The loss triples after step 1700 and stays there: late/best ~3 -> loss.exploding."""
    base = healthy_level(LS)
    a = analyze(run_of(tmp_path, level=lambda s, b: base(s, b) * np.where(s >= 1700, 3.0, 1.0)))
    f = a.by_id("loss.exploding")
    assert f is not None
    assert f.evidence["late_over_best"] == pytest.approx(3.0, rel=0.15)


def test_nonfinite_losses_counted_exactly(tmp_path):
    nf = {10: 2, 500: 1, 1200: 3}
    a = analyze(run_of(tmp_path, nonfinite=nf))
    f = a.by_id("nonfinite.loss")
    assert f is not None and f.severity == "fail"  # 6 / 128,000 samples > 1e-5
    assert f.evidence["samples"] == 6 and f.evidence["steps"] == 3 and f.evidence["first_step"] == 10
    assert sum(f.evidence["bins"].values()) == 6


def test_clip_rate_high_and_rising(tmp_path):
    a = analyze(run_of(tmp_path, clip_prob=lambda s: np.full(s.shape, 0.7)))
    f = a.by_id("clip.rate_high")
    assert f is not None and f.severity == "warn"
    assert f.evidence["late_rate"] == pytest.approx(0.7, abs=0.05)
    assert a.by_id("clip.rate_rising") is None
    b = analyze(run_of(tmp_path, "b", clip_prob=lambda s: np.clip((s - 1000) / 1000, 0, 1) * 0.6))
    f = b.by_id("clip.rate_rising")
    assert f is not None
    assert f.evidence["rise"] == pytest.approx(0.6, abs=0.12)


def test_bound_excess_severity_follows_impact(tmp_path):
    """100x above L* in the two noisiest bins is tiny in absolute terms (info); 60% above in mid bins is not."""
    def tiny(step, b):
        return np.where(b >= 18, 100 * LS[b], LS[b]) + 0 * step

    a = analyze(run_of(tmp_path, level=tiny))
    f = a.by_id("bin.above_gaussian_bound")
    assert f is not None and f.severity == "info" and set(f.bins) == {18, 19}

    def mid(step, b):
        return np.where((b >= 2) & (b <= 8), 1.6 * LS[b], LS[b]) + 0 * step

    b = analyze(run_of(tmp_path, "b", level=mid))
    f = b.by_id("bin.above_gaussian_bound")
    assert f is not None and f.severity in ("warn", "fail") and set(f.bins) == set(range(2, 9))
    w = b.bins["count_share"].to_numpy()
    late = b.bins["late_mean"].to_numpy()
    expect = float(np.sum((w * (late - LS))[2:9]) / (w @ late))
    assert f.evidence["excess_share"] == pytest.approx(expect, rel=1e-9)


def test_lagging_bins_are_spread(tmp_path):
    """Bins 0-2 stop improving at half their gap while the rest converge: bins.spread_large names them."""
    base = healthy_level(LS, tau=250)

    def level(step, b):
        lag = 0.5 * (1.0 - LS[b]) * (b <= 2)
        return np.maximum(base(step, b), LS[b] * 1.02 + lag)

    a = analyze(run_of(tmp_path, level=level))
    f = a.by_id("bins.spread_large")
    assert f is not None and set(f.bins) == {0, 1, 2}


def test_undersampled_bins(tmp_path):
    p = np.ones(T)
    p[900:] = 0.05  # bins 18 and 19 get 5% of a uniform share
    a = analyze(run_of(tmp_path, t_probs=p / p.sum()))
    f = a.by_id("bins.undersampled")
    assert f is not None and set(f.bins) == {18, 19}
    cov = a.bins["coverage"].to_numpy()
    assert cov[18] == pytest.approx(0.05 * NB / (18 + 0.1), rel=0.3)


def test_undersampled_is_not_judged_on_tiny_runs_and_is_info_for_designed_samplers(tmp_path):
    torch = pytest.importorskip("torch")
    import diffaudit
    from diffaudit.logger import RunLogger

    g = torch.Generator().manual_seed(0)
    # EDM's log-normal sampler (P_mean -1.2, P_std 1.2) leaves the end bins thin by design
    with RunLogger(tmp_path / "edm", process="edm", sigma_data=0.5, num_bins=20, flush_every=500) as lg:
        for step in range(1500):
            sigma = torch.exp(torch.randn(64, generator=g) * 1.2 - 1.2)
            lg.log(step, timesteps=sigma, losses=0.3 + 0.01 * torch.rand(64, generator=g))
    f = analyze(diffaudit.load_run(tmp_path / "edm")).by_id("bins.undersampled")
    assert f is not None and f.severity == "info" and 0 in f.bins
    # five steps of batch 16 over 100 bins: a thin bin there is chance, not a finding
    with RunLogger(tmp_path / "tiny", process="flow", num_bins=100) as lg:
        for step in range(5):
            lg.log(step, timesteps=torch.rand(16, generator=g), losses=torch.rand(16, generator=g))
    assert analyze(diffaudit.load_run(tmp_path / "tiny")).by_id("bins.undersampled") is None


def test_eval_divergence_in_low_noise_bins(tmp_path):
    """Eval loss in bins 0-2 rises to 2x train over the run: eval.divergence names those bins."""
    base = healthy_level(LS)

    def ev(step, b):
        return base(step, b) * np.where(b <= 2, 1 + step / 2000, 1.0)

    a = analyze(run_of(tmp_path, eval_every=200, eval_level=ev))
    f = a.by_id("eval.divergence")
    assert f is not None
    assert set(f.bins) <= {0, 1, 2}
    assert a.eval.eval_rise > 0.05
    healthy = analyze(run_of(tmp_path, "h", eval_every=200))
    assert healthy.by_id("eval.divergence") is None
    assert abs(healthy.eval.gap_share) < 0.05


def test_grad_imbalance_from_probe(tmp_path):
    a = analyze(run_of(tmp_path, probe_every=250, probe_scale=lambda k: 10.0 if k == 0 else 0.5))
    f = a.by_id("grad.imbalance")
    assert f is not None and set(f.bins) == {0, 1}
    assert f.evidence["max_over_median"] == pytest.approx(20.0, rel=0.1)
    b = analyze(run_of(tmp_path, "b", probe_every=250, probe_scale=lambda k: 1.0 + 0.3 * k))
    assert b.by_id("grad.imbalance") is None


def test_memorization_needs_the_empirical_optimum(tmp_path):
    """Train loss at low noise close to an empirical L* far below the Gaussian bound: memorization."""
    emp = LS * np.where(np.arange(NB) < 5, 0.1, 0.9)
    lvl = np.where(np.arange(NB) < 5, 0.2 * LS, LS)
    a = analyze(run_of(tmp_path, level=lambda s, b: lvl[b] + 0 * s, optimum=emp))
    f = a.by_id("memorization")
    assert f is not None and set(f.bins) == set(range(5))
    np.testing.assert_allclose(a.bins["lstar_emp"].to_numpy(), emp)
    b = analyze(run_of(tmp_path, "b", level=lambda s, b: lvl[b] + 0 * s))
    assert b.by_id("memorization") is None  # without `diffaudit optimum` it cannot be said


# ----------------------------------------------------------------------------
# Schedules


def test_signal_leak_terminal_snr(tmp_path):
    betas = np.linspace(1e-4, 0.002, T)
    ab, om = schedule_from_betas(betas)
    a = analyze(run_of(tmp_path, betas=betas, level=healthy_level(lstar(betas))))
    f = a.by_id("schedule.terminal_snr")
    assert f is not None and f.severity == "fail"
    assert f.evidence["terminal_snr"] == pytest.approx(ab[-1] / om[-1], rel=1e-12)
    healthy = analyze(run_of(tmp_path, "h"))
    assert healthy.by_id("schedule.terminal_snr") is None
    assert healthy.schedule.terminal_snr == pytest.approx(4.04e-5, rel=0.01)


def test_non_monotone_schedule(tmp_path):
    ab = schedule_from_betas(named_betas("linear"))[0].copy()
    ab[500], ab[501] = ab[501], ab[500]
    a = analyze(run_of(tmp_path, alphas_cumprod=ab, from_betas=False))
    f = a.by_id("schedule.non_monotone")
    assert f is not None and f.evidence["first_t"] == 501 and f.evidence["n_increases"] == 1


def test_float32_alpha_bar_precision(tmp_path):
    """alpha_bar given as float32 without betas: 1 - alpha_bar_0 = 1e-4 has relative error 6e-8 * abar / 1e-4."""
    ab = schedule_from_betas(named_betas("linear"))[0]
    a = analyze(run_of(tmp_path, alphas_cumprod=ab.astype(np.float32).astype(np.float64), dtype="float32",
                       from_betas=False))
    f = a.by_id("schedule.precision")
    assert f is not None and f.severity == "info"
    om0 = 1.0 - float(np.float32(ab[0]))
    assert f.evidence["rel_error"] == pytest.approx(6.0e-8 * (1 - om0) / om0, rel=1e-9)
    b = analyze(run_of(tmp_path, "b", alphas_cumprod=ab.astype(np.float16).astype(np.float64), dtype="float16",
                       from_betas=False))
    f = b.by_id("schedule.precision")
    assert f is not None and f.severity == "fail"  # alpha_bar_0 rounds to 1: sigma = 0 at t = 0
    assert f.evidence["zero_noise_steps"] >= 1
    c = analyze(run_of(tmp_path, "c"))
    assert c.by_id("schedule.precision") is None  # from betas, in float64


# ----------------------------------------------------------------------------
# The rules' documentation


def test_every_rule_is_documented_and_ids_are_unique():
    got = [r.id for r in DETECTORS]
    assert len(got) == len(set(got))
    for r in DETECTORS:
        assert f"`{r.id}`" in findings_table() and r.fires and r.title
    required = {
        "loss.exploding", "loss.increasing", "loss.spikes", "nonfinite.loss", "nonfinite.grad", "clip.rate_high",
        "clip.rate_rising", "loss.stagnant_above_optimum", "loss.converged", "bin.above_gaussian_bound",
        "time_conditioning.broken", "bins.spread_large", "grad.imbalance", "bins.undersampled", "eval.divergence",
        "schedule.non_monotone", "schedule.terminal_snr", "schedule.precision",
    }
    assert required <= set(got)


def test_bin_table_columns_are_documented(tmp_path):
    a = analyze(run_of(tmp_path, eval_every=200, probe_every=500))
    assert set(a.bins.columns) == set(BIN_COLUMNS)
    assert a.bins.height == NB


def test_thresholds_change_the_verdict(tmp_path):
    """A rule compares its number with a threshold: moving the threshold across the number flips it."""
    r = run_of(tmp_path, clip_prob=lambda s: np.full(s.shape, 0.3))
    assert analyze(r).by_id("clip.rate_high").severity == "info"
    assert analyze(r, thresholds=replace(Thresholds(), clip_warn=0.25)).by_id("clip.rate_high").severity == "warn"


# ----------------------------------------------------------------------------
# The command line


def _cli(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in res.output
    return res


def test_cli_report_text_json_and_fail_on(tmp_path):
    path = write_run(tmp_path / "r", Sim(clip_prob=lambda s: np.full(s.shape, 0.8)))
    res = _cli("report", path)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    # a synthetic run written without close markers or plan: its state is unknown, said before the verdict
    assert lines[1].startswith("state: unknown: this run's logger recorded no close or plan")
    assert lines[2].startswith("verdict: warnings")
    i = next(k for k, ln in enumerate(lines) if ln.startswith("[WARN] clip.rate_high: "))
    assert lines[i + 1].startswith("  -> ")
    assert _cli("report", path, "--fail-on", "warn").exit_code == 1
    assert _cli("report", path, "--fail-on", "fail").exit_code == 0
    out = tmp_path / "r.json"
    assert _cli("report", path, "--json", out).exit_code == 0
    d = json.loads(out.read_text())
    assert {"diffaudit_version", "run", "verdict", "findings", "bins"} <= set(d)
    assert d["verdict"] == "warnings"
    f = next(f for f in d["findings"] if f["id"] == "clip.rate_high")
    assert set(f) == {"id", "severity", "title", "message", "recommendation", "evidence", "bins", "provisional"}
    assert f["provisional"] is False
    assert len(d["bins"]) == NB and set(d["bins"][0]) == set(BIN_COLUMNS)
    assert "NaN" not in out.read_text()
    res = _cli("report", path, "--json", "-")
    assert res.exit_code == 0
    # stdout carries only the JSON when --json - (the text report goes to stderr)
    assert json.loads(res.stdout)["verdict"] == "warnings"


def test_cli_every_output_takes_a_file_or_stdout_and_only_one_takes_stdout(tmp_path):
    path = write_run(tmp_path / "r", Sim(clip_prob=lambda s: np.full(s.shape, 0.8)))
    md = tmp_path / "out" / "summary.md"  # folders are made
    res = _cli("report", path, "--markdown", md, "--json", "-")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["verdict"] == "warnings"  # stdout holds the JSON alone
    text = md.read_text()
    assert text.startswith("## diffaudit report: r ") and "`clip.rate_high`" in text and "**verdict: warnings" in text
    res = _cli("report", path, "--markdown", "-")
    assert res.stdout.startswith("## diffaudit report") and "verdict: warnings" not in res.stdout.split("\n")[0]
    res = _cli("report", path, "--json", "-", "--markdown", "-")
    assert res.exit_code == 2
    assert "--json and --markdown both write to stdout" in res.output
    assert not list(tmp_path.glob("**/.*.tmp"))  # written through a temporary file that is renamed, none left


def test_cli_report_exported_parquet(tmp_path):
    path = write_run(tmp_path / "r", Sim())
    out = tmp_path / "r.parquet"
    assert _cli("export", path, "-o", out).exit_code == 0
    a = json.loads(_cli("report", path, "--json", "-").stdout)
    b = json.loads(_cli("report", out, "--json", "-").stdout)
    assert a["findings"] == b["findings"] and a["bins"] == b["bins"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (("report", "/nonexistent/run"), "no such file or directory"),
        (("report", "{empty}"), "empty directory"),
        (("report", "{notrun}"), "not a Parquet file"),
    ],
    ids=["missing", "empty-dir", "not-parquet"],
)
def test_cli_report_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notrun").write_text("hello")
    args = [a.format(empty=tmp_path / "empty", notrun=tmp_path / "notrun") for a in args]
    res = _cli(*args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert needle in lines[0] or "not a readable Parquet file" in lines[0], lines[0]


def test_cli_report_unwritable_json_is_exit_2(tmp_path):
    path = write_run(tmp_path / "r", Sim(steps=1000))
    (tmp_path / "blocker").write_text("a file, not a directory")
    res = _cli("report", path, "--json", tmp_path / "blocker" / "x.json")
    assert res.exit_code == 2 and res.output.strip().splitlines()[-1].startswith("error: "), res.output


def test_cli_report_html(tmp_path):
    pytest.importorskip("diffaudit.present.html")
    path = write_run(tmp_path / "r", Sim(steps=1000, eval_every=200, probe_every=250))
    out = tmp_path / "r.html"
    res = _cli("report", path, "-o", out)
    assert res.exit_code == 0, res.output
    html = out.read_text()
    assert html.startswith("<!") and "clip" in html.lower()


_SAMPLES = Path(__file__).resolve().parents[1] / "sample_logs"


@pytest.mark.parametrize("name", ["corpus/clip_tight", "corpus/fp16_overflow", "corpus/frozen", "corpus/healthy_s00",
                                  "lr_high", "resumed", "families/patches_edm/lr_high", "families/shapes_mlp/overflow",
                                  "families/digits_conv_flow/no_time"])
def test_an_analysis_without_plots_finds_what_a_whole_one_finds(name):
    """The gate's findings rule analyses each run with plots=False: no detector may read what that leaves out,
    on runs whose findings are of every kind (clipping, overflow, frozen, healthy, exploding, restarts, EDM)."""
    run = diffaudit.load_run(_SAMPLES / name)
    whole, lean = analyze(run, now=2e9), analyze(run, now=2e9, plots=False)
    assert whole.findings and json.dumps(report_document(whole)["findings"], sort_keys=True) == json.dumps(
        report_document(lean)["findings"], sort_keys=True)
    assert whole.verdict == lean.verdict
    assert lean.series.height == 0 and lean.series.columns[:3] == ["step_lo", "step_hi", "steps"]
    assert lean.bin_series.height == 0 and "excess" in lean.bin_series.columns
    assert whole.series.height > 0 and whole.bin_series.height > 0
