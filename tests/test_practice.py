"""Verdicts that hold on real training habits (issue 8), on synthetic runs with known answers.

EMA evaluation next to held-out evaluation of the live weights, runs read while
they train (or after a crash), timesteps in the wrong units, no gradient
flowing, recommendations for the run's prediction type, and the two statistics
that must stay honest on autocorrelated and heavy-tailed noise. Each test plants
one thing of a known size and checks the number and the finding.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

import diffaudit
from _midrun import read_at
from _stats import detect_spikes
from diffaudit.analysis import _Grid, _late_se, _normal_equivalent, _spikes, analyze
from diffaudit.noise import timestep_cause
from diffaudit.findings import CONVERGENCE_FINDINGS, Thresholds, _R, at_or_above, weighting_advice
from diffaudit.lifecycle import lifecycle
from diffaudit.noise import Process
from test_analysis import LS, NB, Sim, healthy_level, write_run


def ids(a, at_least="info") -> set[str]:
    return {f.id for f in at_or_above(a.findings, at_least)}


def _show(a) -> str:
    return "\n".join(f"[{f.severity}] {f.id}: {f.message}" for f in a.findings) or "(no findings)"


# ----------------------------------------------------------------------------
# Evaluation kinds: held-out live weights vs EMA weights


def test_ema_lag_is_not_overfitting(tmp_path):
    """EMA 18% worse than live on held-out data, live within 2% of train: no eval.divergence, EMA lag stated."""
    base = healthy_level(LS)
    sim = Sim(seed=1, eval_every=200, ema_every=200, eval_level=lambda s, b: 1.02 * base(s, b),
              ema_level=lambda s, b: 1.18 * 1.02 * base(s, b))
    a = analyze(diffaudit.load_run(write_run(tmp_path / "r", sim)))
    assert "eval.divergence" not in ids(a), _show(a)
    assert 0.0 < a.eval.gap_share < 0.05  # overfitting is read from the live weights only (2% + window lag)
    f = a.by_id("eval.ema")
    assert f.severity == "info" and "lags" in f.message
    assert f.evidence["gap"] == pytest.approx(0.18, abs=0.045)
    assert f.evidence["gap_z"] > 3
    assert a.verdict == "healthy"


def test_ema_that_helps_is_said_to_help(tmp_path):
    base = healthy_level(LS)
    sim = Sim(seed=2, eval_every=200, ema_every=200, ema_level=lambda s, b: 0.8 * base(s, b))
    f = analyze(diffaudit.load_run(write_run(tmp_path / "r", sim))).by_id("eval.ema")
    assert "helps" in f.message and f.evidence["gap"] == pytest.approx(-0.2, abs=0.045)


def test_ema_only_is_never_read_as_overfitting(tmp_path):
    """Only EMA evaluated, 33% above train (lag): no eval.divergence; the report says it cannot read overfitting."""
    base = healthy_level(LS)
    sim = Sim(seed=3, ema_every=200, ema_level=lambda s, b: 1.33 * base(s, b))
    a = analyze(diffaudit.load_run(write_run(tmp_path / "r", sim)))
    assert "eval.divergence" not in ids(a)
    f = a.by_id("eval.ema")
    assert "cannot be read" in f.message and 0.2 < f.evidence["ema_vs_train"] < 0.45
    assert a.verdict == "healthy"


def test_eval_falling_at_every_evaluation_is_not_above_its_best(tmp_path):
    """The best stretch is the late one when eval loss falls at every evaluation: rise 0, best = last eval step."""
    sim = Sim(seed=4, eval_every=200, eval_level=lambda s, b: 1.4 * healthy_level(LS, tau=2000.0)(s, b))
    a = analyze(diffaudit.load_run(write_run(tmp_path / "r", sim)))
    assert a.eval.eval_rise == 0.0
    assert a.eval.best_step == 1999
    f = a.by_id("eval.divergence")
    assert f is not None and "at its best so far" in f.message and "above its best" not in f.message


def test_eval_rise_compares_averages_of_as_many_evaluations(tmp_path):
    """Eval loss that fell, then rose 30%: the rise is late average over the best average of as many windows."""
    def ev(s, b):
        return LS[b] * 1.5 * np.where(s < 1000, 1.0, 1.3)

    sim = Sim(seed=5, eval_every=100, eval_level=ev)
    a = analyze(diffaudit.load_run(write_run(tmp_path / "r", sim)))
    assert a.eval.eval_rise == pytest.approx(0.30, abs=0.05)
    assert a.eval.best_step < 1000


# ----------------------------------------------------------------------------
# Run lifecycle


def test_lifecycle_states(tmp_path):
    fin = diffaudit.load_run(write_run(tmp_path / "f", Sim(steps=400, total_steps=400, close="finished")))
    lc = lifecycle(fin, now=1e9)
    assert (lc.state, lc.last_step, lc.planned_steps, lc.progress) == ("finished", 399, 400, 1.0)
    assert lc.words == "finished at step 399 of planned 400 (100%)"
    bad = lifecycle(diffaudit.load_run(write_run(tmp_path / "x", Sim(steps=400, total_steps=800, close="failed"))))
    assert bad.state == "failed" and bad.words.endswith("RuntimeError: boom") and "399 of planned 800" in bad.words
    run = diffaudit.load_run(write_run(tmp_path / "p", Sim(steps=400, total_steps=1000)))
    # the steps were logged one second apart, at unix times 0..399, flushed every 1000 steps
    assert lifecycle(run, now=399 + 30).words == "in progress: last write 30 s ago, step 399 of planned 1,000 (40%)"
    late = lifecycle(run, now=399 + 5 * 86400)
    assert late.state == "ended" and late.words.startswith("ended without a close (killed or crashed): last write 5.0 days ago")
    legacy = lifecycle(diffaudit.load_run(write_run(tmp_path / "l", Sim(steps=400))), now=1e9)
    assert legacy.state == "unknown" and not legacy.recorded


def test_stale_after_follows_the_runs_own_cadence(tmp_path):
    run = diffaudit.load_run(write_run(tmp_path / "p", Sim(steps=400, total_steps=1000)))
    lc = lifecycle(run, now=1e9)
    assert lc.cadence == pytest.approx(1000.0)  # 1 s per step, a flush every 1000 steps
    assert lc.stale_after == pytest.approx(10 * 1000.0)
    assert lifecycle(run, now=399 + 9000).state == "in_progress"
    assert lifecycle(run, now=399 + 11000).state == "ended"


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_healthy_run_read_early_is_never_warned(tmp_path, fraction):
    """A healthy run read at 10/25/50% of its planned steps: convergence findings at most provisional info."""
    src = write_run(tmp_path / "full", Sim(seed=7, steps=3000, total_steps=3000, eval_every=250,
                                            level=healthy_level(LS, tau=900.0)))
    mid = read_at(src, int(fraction * 3000) - 1, tmp_path / "mid")
    a = analyze(diffaudit.load_run(mid), now=1e9)
    assert not at_or_above(a.findings, "warn"), _show(a)
    assert a.early and f"({round(100 * fraction)}%)" in a.early
    for f in a.findings:
        if f.id in CONVERGENCE_FINDINGS:
            assert f.provisional and f.message.startswith("provisional, ")
    # the same reading had been judged as final before: the early rule is what holds it
    judged = analyze(diffaudit.load_run(mid), now=1e9, thresholds=Thresholds(early_progress=0.0))
    if fraction <= 0.25:
        assert at_or_above(judged.findings, "warn"), "the early reading would not have warned: the test proves nothing"


def test_a_finished_run_short_of_its_plan_says_so_and_is_provisional(tmp_path):
    """Closed as finished at 30% of the plan: it stopped short, so what needs a converged loss is provisional (a
    model trained for 30% of its plan is not where it was meant to converge); at its plan it is judged as final."""
    sim = Sim(seed=8, steps=1200, total_steps=4000, close="finished", level=lambda s, b: 1.0 + 0 * s)
    a = analyze(diffaudit.load_run(write_run(tmp_path / "r", sim)), now=1e9)
    assert a.early and "stopped at 30% of its plan" in a.early and "stopped at 30%" in a.lifecycle.words
    f = a.by_id("loss.stagnant_above_optimum")
    assert f.provisional and f.severity == "info"
    sim = Sim(seed=8, steps=1200, total_steps=1200, close="finished", level=lambda s, b: 1.0 + 0 * s)
    a = analyze(diffaudit.load_run(write_run(tmp_path / "full", sim)), now=1e9)
    assert a.early is None and a.by_id("loss.stagnant_above_optimum").severity == "fail"


def test_a_blow_up_fails_at_once_even_early(tmp_path):
    sim = Sim(seed=9, steps=2000, total_steps=20000, spikes={1500: 1e4})
    a = analyze(diffaudit.load_run(write_run(tmp_path / "r", sim)), now=1e9)
    assert a.early and "10%" in a.early
    assert a.by_id("loss.exploding").severity == "fail" and a.verdict == "failing"


def test_early_without_a_plan_follows_the_loss(tmp_path):
    """No plan: early while the loss still clearly falls (lifecycle logger), judged once it is flat."""
    falling = Sim(seed=10, steps=2000, total_steps=None, close=None, level=healthy_level(LS, tau=3000.0))
    r = write_run(tmp_path / "a", falling)
    meta = json.loads((r / "run.json").read_text())
    meta["total_steps"] = None  # a lifecycle logger without a plan
    (r / "run.json").write_text(json.dumps(meta))
    a = analyze(diffaudit.load_run(r), now=1e9)
    assert a.early and "still falls" in a.early
    flat = write_run(tmp_path / "b", Sim(seed=11, steps=2000, level=lambda s, b: 1.0 + 0 * s))
    meta = json.loads((flat / "run.json").read_text())
    meta["total_steps"] = None
    (flat / "run.json").write_text(json.dumps(meta))
    b = analyze(diffaudit.load_run(flat), now=1e9)
    assert b.early is None and b.by_id("loss.stagnant_above_optimum").severity == "fail"


def test_report_json_and_html_state_the_lifecycle(tmp_path):
    from click.testing import CliRunner

    from diffaudit.cli import main

    src = write_run(tmp_path / "full", Sim(seed=12, steps=2000, total_steps=2000))
    mid = read_at(src, 499, tmp_path / "mid")
    out = tmp_path / "r.json"
    html = tmp_path / "r.html"
    res = CliRunner().invoke(main, ["report", str(mid), "--json", str(out), "-o", str(html)])
    assert res.exit_code == 0, res.output
    assert "state: ended without a close (killed or crashed)" in res.output
    assert "step 499 of planned 2,000 (25%)" in res.output
    d = json.loads(out.read_text())
    assert d["lifecycle"]["state"] == "ended" and d["lifecycle"]["planned_steps"] == 2000
    assert d["provisional"] == "the run ended without a close at step 499 of 2,000 planned (25%)"
    prov = [f for f in d["findings"] if f["provisional"]]
    assert prov and all(f["severity"] == "info" and "final_severity" in f["evidence"] for f in prov)
    page = html.read_text()
    assert 'id="lifecycle"' in page and "Ended without a close" in page and "provisional</span>" in page
    res = CliRunner().invoke(main, ["summary", str(mid)])
    assert "state: ended without a close" in res.output


# ----------------------------------------------------------------------------
# Timesteps that cannot belong to the process


def _logged_run(path, *, process="flow", scale=1000.0, n=600, seed=0):
    torch = pytest.importorskip("torch")
    from diffaudit.logger import RunLogger

    g = torch.Generator().manual_seed(seed)
    kw = {"process": "flow"} if process == "flow" else {}
    with RunLogger(path, num_bins=10, check_timesteps="count", data_var=0.3, window=50, total_steps=n, **kw) as lg:
        for s in range(n):
            t = torch.rand(64, generator=g)
            loss = 0.3 + 0.7 * t + 0.05 * torch.rand(64, generator=g)  # a healthy-looking flow loss
            lg.log(s, timesteps=t * scale, losses=loss, grad_norm=0.5)
    return diffaudit.load_run(path)


def test_flow_timesteps_scaled_by_1000_fail_and_are_never_blamed_on_the_model(tmp_path):
    a = analyze(_logged_run(tmp_path / "r"), now=1e9)
    f = a.by_id("timesteps.invalid")
    assert f.severity == "fail" and "scaled by 1000" in f.message
    total = 600 * 64
    assert f.evidence["bad_samples"] == a.timesteps.bad_samples
    # t*1000 stays inside [0, 1] only for t <= 0.001: about 99.9% of the samples are refused
    assert f.evidence["share"] == pytest.approx(0.999, abs=0.002)
    assert f.evidence["bad_samples"] > 0.99 * total
    blame = {"bin.above_gaussian_bound", "bins.spread_large", "time_conditioning.broken", "bins.undersampled",
             "loss.stagnant_above_optimum", "grad.imbalance", "memorization", "eval.divergence"}
    assert not blame & ids(a), _show(a)


def test_valid_timesteps_and_old_runs_say_nothing(tmp_path):
    a = analyze(_logged_run(tmp_path / "ok", scale=1.0), now=1e9)
    assert a.timesteps.available and a.timesteps.bad_samples == 0 and "timesteps.invalid" not in ids(a)
    old = analyze(diffaudit.load_run(write_run(tmp_path / "old", Sim(steps=400))))
    assert not old.timesteps.available and "timesteps.invalid" not in ids(old)


@pytest.mark.parametrize("kind,lo,hi,cause", [
    ("flow", 0.2, 998.0, "scaled by 1000"),
    ("vp", 0.0, 0.99, "fractions of the schedule"),
    ("vp", 0.0, 1000.0, ">= T = 1000"),
    ("edm", -3.0, 2.0, "sigma must be positive"),
    ("edm", 0.0, float("inf"), "sigma must be positive"),
    ("edm", 1000.0, 5000.0, "another noise range"),
    ("flow", 0.0, 2000.0, "above 1"),
    ("flow", -0.5, 0.5, "negative flow time"),
    ("vp", float("nan"), 3.0, "non-finite"),
])
def test_timestep_cause_in_words(kind, lo, hi, cause):
    if kind == "vp":
        from diffaudit.noise import named_betas, schedule_from_betas

        ab, om = schedule_from_betas(named_betas("linear"))
        p = Process("vp", "epsilon", 10, ab, om)
    else:
        p = Process(kind, "flow" if kind == "flow" else "edm", 10, sigma_data=0.5)
    said = timestep_cause(p, lo, hi)[1]
    assert cause in said
    assert "negative" not in said or lo < 0


# ----------------------------------------------------------------------------
# No gradient flowing


def test_loss_clamp_dead_gradient_is_named_and_nothing_else_is_blamed(tmp_path):
    """Grad norm exactly 0 on every step (a per-sample loss clamp below every loss): grad.dead fails,
    and neither the learning rate nor the time embedding is blamed for the flat loss."""
    sim = Sim(seed=13, level=lambda s, b: 1.0 + 0 * s, grad_zero=lambda s: np.ones(s.shape, bool))
    a = analyze(diffaudit.load_run(write_run(tmp_path / "r", sim)))
    f = a.by_id("grad.dead")
    assert f.severity == "fail" and f.evidence["share"] == 1.0 and f.evidence["dead_steps"] == 2000
    assert not {"loss.stagnant_above_optimum", "time_conditioning.broken", "bin.above_gaussian_bound",
                "clip.rate_high", "grad.imbalance"} & ids(a), _show(a)
    # the same run with gradients flowing is blamed on the optimizer: the rule is what withholds it
    alive = analyze(diffaudit.load_run(write_run(tmp_path / "alive", Sim(seed=13, level=lambda s, b: 1.0 + 0 * s))))
    assert "loss.stagnant_above_optimum" in ids(alive, "fail") and "grad.dead" not in ids(alive)


def test_dead_gradient_on_a_share_of_steps_warns(tmp_path):
    sim = Sim(seed=14, grad_zero=lambda s: (s % 10) == 0)
    f = analyze(diffaudit.load_run(write_run(tmp_path / "r", sim))).by_id("grad.dead")
    assert f.severity == "warn" and f.evidence["share"] == pytest.approx(0.1)


# ----------------------------------------------------------------------------
# Recommendations checked against the prediction type


def _stub(prediction, log_snr):
    bins = pl.DataFrame({"log_snr": np.asarray(log_snr, np.float64)})
    return SimpleNamespace(run=SimpleNamespace(process="vp", prediction=prediction), bins=bins)


LOG_SNR = np.linspace(8.0, -8.0, 20)  # bin 0 = least noise


@pytest.mark.parametrize("prediction,lagging,names_min_snr", [
    ("epsilon", [0, 1, 2], False),  # min-SNR lowers the weight of low-noise levels for eps
    ("epsilon", [17, 18, 19], True),  # and leaves high-noise ones at 1 while lowering the rest
    ("v_prediction", [0, 1, 2], False),
    ("sample", [0, 1, 2], True),  # for x0 it is min(snr, 5): highest at low noise
    ("sample", [17, 18, 19], False),
])
def test_weighting_advice_matches_the_prediction_type(prediction, lagging, names_min_snr):
    text = weighting_advice(_stub(prediction, LOG_SNR), lagging, "up")
    assert ("(e.g. min-SNR" in text) == names_min_snr, text
    if not names_min_snr:
        assert "not min-SNR" in text


def test_spread_on_low_noise_bins_of_an_eps_run_does_not_recommend_min_snr(tmp_path):
    def level(step, b):
        target = np.where(b < 3, 3.0 * LS[b], 1.02 * LS[b])
        return target + (1.0 - target) * np.exp(-step / 300.0)

    a = analyze(diffaudit.load_run(write_run(tmp_path / "r", Sim(seed=15, level=level))))
    f = a.by_id("bins.spread_large")
    assert f is not None and set(f.bins) <= {0, 1, 2}, _show(a)
    assert "e.g. min-SNR" not in f.recommendation and "not min-SNR" in f.recommendation


# ----------------------------------------------------------------------------
# Honest statistics on real-looking noise


def _ar1(rng, n, phi):
    e = rng.standard_normal(n + 500)
    y = np.empty_like(e)
    y[0] = e[0]
    for i in range(1, e.size):
        y[i] = phi * y[i - 1] + e[i]
    return y[500:] * math.sqrt(1 - phi * phi)


@pytest.mark.parametrize("phi", [0.9, 0.95])
def test_late_excess_z_is_calibrated_under_autocorrelated_windows(phi):
    """Loss exactly at the bound, AR(1) window noise: P(excess_z >= 3) <= 2% (the iid formula: ~25-35%)."""
    rng = np.random.default_rng(int(phi * 100))
    W, R, L = 500, 300, 1.0
    late = np.arange(W) >= W - W // 5
    hits = old = 0
    for _ in range(R):
        m = L + 0.5 * np.exp(-np.arange(W) / 60.0) + 0.03 * _ar1(rng, W, phi)
        n = np.full((W, 1), 500.0)
        g = _Grid(np.arange(W) * 100, np.arange(W) * 100 + 99, np.arange(W) * 100 + 49.5, n, m[:, None],
                  n * 0.25, np.zeros((W, 1)))
        ln, lm, lm2 = g.merge(late)
        se, df = _late_se(g, late, ln, lm2 / (ln - 1))
        hits += _normal_equivalent((lm - L) / se, df)[0] >= 3
        y = m[late]
        old += (y.mean() - L) / (y.std(ddof=1) / math.sqrt(y.size)) >= 3
    assert hits / R <= 0.02
    assert old / R >= 0.15  # what the window-spread formula gave: the test can tell them apart


class _A:
    def __init__(self, s):
        self.spikes = s


def _loss_series(rng, n, df=None, scale=0.05, spikes=()):
    s = np.arange(n)
    ll = np.log(0.1 + 0.9 * np.exp(-s / (n / 6))) + scale * (rng.standard_t(df, n) if df else rng.standard_normal(n))
    for st, f in spikes:
        ll[st] += math.log(f)
    return pl.DataFrame({"step": s, "loss": np.exp(ll), "grad_norm": np.full(n, 0.3)})


def _warns(s) -> bool:
    f = _R["loss.spikes"].check(_A(s), Thresholds())
    return f is not None and f.severity != "info"


@pytest.mark.parametrize("df", [3, 5])
def test_heavy_tailed_healthy_step_noise_does_not_warn(df):
    """Student-t step noise (5% scale, 10,000 steps): <= 5% of healthy runs warn (a fixed z > 8: most of them)."""
    rng = np.random.default_rng(df)
    runs = [_spikes(_loss_series(rng, 10_000, df)) for _ in range(100)]
    assert sum(_warns(s) for s in runs) <= 5
    # the fixed threshold would have found events on nearly every t(3) run
    if df == 3:
        assert np.median([s.threshold for s in runs]) > 20
        fixed = sum(detect_spikes(np.log(_loss_series(rng, 10_000, 3)["loss"].to_numpy())).n_events >= 3
                    for _ in range(20))
        assert fixed >= 15


@pytest.mark.parametrize("df", [None, 5])
def test_an_injected_spike_train_still_warns(df):
    """Eight 20x spikes in 10,000 steps on Gaussian or t(5) noise: every run warns, and the steps are the ones planted."""
    rng = np.random.default_rng(99)
    for _ in range(20):
        at = sorted(int(x) for x in rng.choice(np.arange(300, 9700), 8, replace=False))
        s = _spikes(_loss_series(rng, 10_000, df, spikes=[(k, 20.0) for k in at]))
        assert _warns(s)
        assert {e["step"] for e in s.events} >= set(at[:-1]) or len({e["step"] for e in s.events} & set(at)) >= 7


def test_readme_lists_every_finding_and_the_new_sections():
    from pathlib import Path

    from diffaudit.present.markdown import findings_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert findings_table() in readme  # the table is the rules' own text, so a new id cannot go undocumented
    for needle in ("`timesteps.invalid`", "`grad.dead`", "`eval.ema`", "| `ema` | EMA weights", "| `ended` |",
                   "data_statistics(", "trace(Cov)/d"):
        assert needle in readme, needle


def _stub_run(segments, closes, *, plans=None, total_steps=100, last_time=1000.0):
    from diffaudit.load import CLOSES_SCHEMA

    rows = [{"rank": r, "segment": s, "status": st, "closed": 0.0, "last_step": 9, "total_steps": total_steps,
             "error": "ValueError: x" if st == "failed" else None} for r, s, st in closes]
    return SimpleNamespace(
        meta={"total_steps": total_steps, "flush_every": 10},
        steps=pl.DataFrame({"step": np.arange(10), "time": last_time - 9 + np.arange(10, dtype=np.float64)}),
        segments=pl.DataFrame({"rank": [r for r, _ in segments], "segment": [s for _, s in segments]}),
        closes=pl.DataFrame(rows, schema=CLOSES_SCHEMA), segment_plans=plans or {},
    )


def test_lifecycle_needs_every_ranks_newest_segment_closed():
    both = _stub_run([(0, 1), (1, 1)], [(0, 1, "finished"), (1, 1, "finished")])
    assert lifecycle(both, now=1e4).state == "finished"
    one = _stub_run([(0, 1), (1, 1)], [(0, 1, "finished")])
    lc = lifecycle(one, now=1000.0 + 60)
    assert lc.state == "in_progress" and lc.open_segments == ("r1 s1",)
    assert lifecycle(one, now=1e6).state == "ended"
    # a failed segment that was resumed is history: the newest segment decides
    resumed = _stub_run([(0, 1), (0, 2)], [(0, 1, "failed")], plans={0: 300})
    lc = lifecycle(resumed, now=1000.0 + 60)
    assert lc.state == "in_progress" and lc.planned_steps == 300  # the resumed segment's plan wins
    failed = _stub_run([(0, 1), (1, 1)], [(0, 1, "failed"), (1, 1, "finished")])
    assert lifecycle(failed, now=1e4).state == "failed" and lifecycle(failed, now=1e4).error == "ValueError: x"


def test_learning_rate_zero_is_named(tmp_path):
    """lr = 0 on every step (a frozen model): optim.lr_zero fails, whatever L* says (with a loose bound the
    frozen loss can sit near it); a healthy lr says nothing."""
    a = analyze(diffaudit.load_run(write_run(tmp_path / "r", Sim(seed=16, lr=0.0, level=lambda s, b: 1.0 + 0 * s))))
    f = a.by_id("optim.lr_zero")
    assert f.severity == "fail" and f.evidence["lr_zero_steps"] == 2000 and f.evidence["first_step"] == 0
    assert "optim.lr_zero" not in ids(analyze(diffaudit.load_run(write_run(tmp_path / "h", Sim(seed=16)))))


@pytest.mark.parametrize("ratio,fires", [(1.0, True), (1.4, False)])
def test_time_probe_that_does_not_move_is_named(tmp_path, ratio, fires):
    """Probe pairs whose far-t loss equals the true-t loss: time_conditioning.unused (fail); 40% apart: nothing."""
    pytest.importorskip("diffaudit.timeprobe")
    from test_analysis import _write_split

    path = write_run(tmp_path / "r", Sim(seed=17))
    rng = np.random.default_rng(0)
    ps = np.arange(0, 2000, 250)
    step = np.repeat(ps, 256)
    b = rng.integers(0, NB, size=step.size)
    x = rng.gamma(4.0, 0.25, size=step.size)
    _write_split(path, "probe_true", x, step, b, None, 2000, tag=3)
    _write_split(path, "probe_t", x * ratio, step, b, None, 2000, tag=4)
    a = analyze(diffaudit.load_run(path))
    f = a.by_id("time_conditioning.unused")
    assert (f is not None) == fires, _show(a)
    if fires:
        assert f.severity == "fail" and f.evidence["ignored_share"] == 1.0 and f.evidence["probed_bins"] == NB
        assert 0 not in f.evidence["probe_steps"]  # the untrained first probe is never judged
