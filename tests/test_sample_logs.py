"""The committed sample logs: they load, the resumed run resolves its segments, the
generator reproduces them, and every defect run really shows its defect in the numbers.

The numbers asserted here are read from ``sample_logs/`` (real training runs made by
``examples/make_sample_logs.py``); each threshold sits far from both the healthy
and the defect value, so a regenerated corpus passes too, and a corpus where a
defect silently stopped being one fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

import diffaudit
from diffaudit.findings import DETECTORS

REPO = Path(__file__).resolve().parents[1]
LOGS = REPO / "sample_logs"
CORPUS = LOGS / "corpus"
SHOWCASE = ("healthy_seed0", "healthy_seed1", "lr_high", "resumed")
FINDING_IDS = {r.id for r in DETECTORS}
NUM_BINS, T = 20, 1000
LAST = 300  # "late training": the last this many steps


def labels() -> dict:
    return json.loads((CORPUS / "labels.json").read_text())


def corpus_names() -> list[str]:
    return sorted(p.name for p in CORPUS.iterdir() if p.is_dir())


def healthy_names() -> list[str]:
    return [n for n in corpus_names() if n.startswith("healthy_s")]


_cache: dict = {}


def run(name: str):
    """Load a corpus run (or a showcase run with a ``/`` prefix) once per session."""
    if name not in _cache:
        _cache[name] = diffaudit.load_run(LOGS / name[1:] if name.startswith("/") else CORPUS / name)
    return _cache[name]


def per_bin(r, split: str = "train", since: int | None = None, until: int | None = None) -> np.ndarray:
    """Count-weighted mean loss per bin over the windows in [since, until) (default: late training)."""
    if since is None:
        since = int(r.steps["step"].max()) - LAST + 1
    until = until if until is not None else 1 << 62
    b = (
        r.bins.filter((pl.col("split") == split) & (pl.col("step_lo") >= since) & (pl.col("step_lo") < until))
        .group_by("bin")
        .agg(((pl.col("mean") * pl.col("count")).sum() / pl.col("count").sum()).alias("m"))
        .sort("bin")
    )
    assert b["bin"].to_list() == list(range(NUM_BINS))
    return b["m"].to_numpy()


def eval_per_bin(r, step: int) -> np.ndarray:
    b = r.bins.filter((pl.col("split") == "eval") & (pl.col("step_lo") == step)).sort("bin")
    assert b.height == NUM_BINS
    return b["mean"].to_numpy()


def late_loss(r) -> float:
    s = r.steps.filter(pl.col("step") > r.steps["step"].max() - LAST)
    return float(s["loss"].mean())


def healthy_band(fn) -> tuple[float, float]:
    vals = [fn(run(n)) for n in healthy_names()]
    return min(vals), max(vals)


# ----------------------------------------------------------------------------
# The corpus as committed


def test_labels_cover_the_corpus():
    lab = labels()
    assert sorted(lab) == corpus_names()
    assert len(healthy_names()) >= 40  # the gate's seed-to-seed calibration needs 40
    for name, entry in lab.items():
        assert set(entry["expected_findings"]) <= FINDING_IDS, name
        assert set(entry["may_also_find"]) <= FINDING_IDS, name
        if name.startswith("healthy_s") or name == "resumed":
            assert entry["expected_findings"] == [], name
        else:
            assert entry["defect"] != "none", name


@pytest.mark.parametrize("name", [f"/{s}" for s in SHOWCASE] + corpus_names())
def test_committed_run_loads_whole(name):
    r = run(name)
    assert r.problems == []
    steps = r.steps["step"].to_numpy()
    n = int(r.meta["config"]["steps"])
    assert np.array_equal(steps, np.arange(n))  # every step exactly once, none lost
    assert r.meta["num_bins"] == NUM_BINS and r.meta["num_timesteps"] == T
    assert r.meta["prediction"] == "epsilon" and r.meta["process"] == "vp"
    assert 0.1 < r.meta["data_var"] < 1.0 and len(r.meta["data_spectrum"]) == 64
    assert r.train_bins.height == (n // 100) * NUM_BINS  # one row per (100-step window, bin)
    assert r.eval_bins["step_lo"].n_unique() >= 7
    assert r.probes["step"].n_unique() >= 5


def test_sizes_stay_small():
    def size(p: Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())

    for s in SHOWCASE:
        assert size(LOGS / s) < 2_000_000, s
    assert size(LOGS) - size(LOGS / "families") < 10_000_000
    assert size(LOGS / "families") < 25_000_000


def test_showcase_runs_are_corpus_runs():
    for show, corp in [("healthy_seed0", "healthy_s00"), ("healthy_seed1", "healthy_s01"), ("lr_high", "lr_high")]:
        a, b = run("/" + show).steps, run(corp).steps
        assert a["loss"].equals(b["loss"]), show


def test_healthy_runs_differ_only_in_seed():
    base = {k: v for k, v in run("healthy_s00").meta["config"].items() if k not in ("seed", "name")}
    finals = []
    for n in healthy_names():
        cfg = run(n).meta["config"]
        assert {k: v for k, v in cfg.items() if k not in ("seed", "name")} == base, n
        assert cfg["seed"] == int(n[len("healthy_s"):])
        finals.append(late_loss(run(n)))
    finals = np.array(finals)
    assert len(set(finals.round(7))) == len(finals)  # the seeds really are different runs
    assert finals.std() / finals.mean() < 0.05  # ... of the same training


# ----------------------------------------------------------------------------
# The resumed run: killed after step 730, resumed from the step-500 checkpoint


def raw_steps(run_dir: Path, segment: int) -> pl.DataFrame:
    files = sorted((run_dir / "parts").glob(f"steps-r00000-s{segment:04d}-*.parquet"))
    return pl.concat([pl.from_arrow(pq.read_table(f)) for f in files]).sort("step")


@pytest.mark.parametrize("where", ["/resumed", "resumed"])
def test_resumed_run_keeps_segment_two_from_step_500(where):
    r = run(where)
    d = LOGS / where[1:] if where.startswith("/") else CORPUS / where
    s1, s2 = raw_steps(d, 1), raw_steps(d, 2)
    # what the killed process got onto disk: whole parts up to step 599; 600..730 died in its buffer
    assert s1["step"].to_list() == list(range(600))
    assert s2["step"].to_list() == list(range(500, 1500))
    steps = r.steps
    assert steps["step"].to_list() == list(range(1500))
    assert steps.filter(pl.col("step") < 500)["segment"].unique().to_list() == [1]
    assert steps.filter(pl.col("step") >= 500)["segment"].unique().to_list() == [2]
    # the loaded values for 500..599 are segment 2's, and they really differ from the superseded ones
    loaded = steps.filter(pl.col("step").is_between(500, 599))["loss"].to_numpy()
    assert np.array_equal(loaded, s2.filter(pl.col("step") <= 599)["loss"].to_numpy())
    assert not np.allclose(loaded, s1.filter(pl.col("step") >= 500)["loss"].to_numpy())
    before = steps.filter(pl.col("step") < 500)["loss"].to_numpy()
    assert np.array_equal(before, s1.filter(pl.col("step") < 500)["loss"].to_numpy())
    assert r.superseded_rows > 0
    # bins: the 500..599 window is segment 2's too (equal counts per step: window mean = mean of step means)
    w = r.train_bins.filter(pl.col("step_lo") == 500)
    assert w["step_hi"].unique().to_list() == [599] and w["count"].sum() == 100 * 128
    wmean = float((w["mean"] * w["count"]).sum() / w["count"].sum())
    assert wmean == pytest.approx(float(loaded.astype(np.float64).mean()), rel=1e-5)
    assert wmean != pytest.approx(float(s1.filter(pl.col("step") >= 500)["loss"].mean()), rel=1e-3)
    # and training went on as a healthy run does
    assert late_loss(r) < 1.2 * healthy_band(late_loss)[1]


# ----------------------------------------------------------------------------
# The generator reproduces a committed run


def test_generator_reproduces_the_committed_first_steps(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "make_sample_logs.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    new = diffaudit.load_run(tmp_path / "corpus" / "healthy_s00")
    old = run("healthy_s00")
    n = new.steps.height
    assert n == 100
    a, b = new.steps, old.steps.head(n)
    for col in ("loss", "grad_norm", "lr"):
        np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), rtol=1e-5, atol=1e-7, err_msg=col)
    wa = new.train_bins.filter(pl.col("step_hi") < n).sort("bin")
    wb = old.train_bins.filter(pl.col("step_hi") < n).sort("bin")
    assert wa["count"].to_list() == wb["count"].to_list()
    np.testing.assert_allclose(wa["mean"].to_numpy(), wb["mean"].to_numpy(), rtol=1e-5)


# ----------------------------------------------------------------------------
# Each defect shows in the numbers, outside the band of 40 healthy seeds


def test_healthy_runs_are_clean():
    for n in healthy_names():
        s = run(n).steps
        assert s["nonfinite"].sum() == 0, n
        assert s["clipped"].mean() < 0.05, n
        pb = per_bin(run(n))
        assert pb[0] > 0.5 and pb[-1] < 0.02, n  # eps-prediction: hardest at low noise, easy at high noise


def test_lr_high_explodes_and_spikes():
    s = run("lr_high").steps
    loss = s["loss"].to_numpy()
    assert loss[:50].min() < 0.7  # it did learn at first ...
    assert loss.max() > 1e3  # ... then blew up by orders of magnitude
    med = np.array([np.median(loss[max(0, i - 50): i]) for i in range(50, len(loss))])
    assert np.sum(loss[50:] > 2 * med) >= 20  # many spikes, not one
    assert late_loss(run("lr_high")) > 5 * healthy_band(late_loss)[1]  # and it never recovers


def test_no_time_is_worse_only_at_high_noise():
    pb = per_bin(run("no_time"))
    hi_noise = lambda r: float(per_bin(r)[15:].mean())  # noqa: E731
    assert hi_noise(run("no_time")) > 1.5 * healthy_band(hi_noise)[1]
    assert pb[0] / pb[-1] > 20  # not flat: the net reads the noise level off x_t


def test_t_mismatch_is_flat_across_noise_levels():
    flatness = lambda r: float(per_bin(r).max() / per_bin(r).min())  # noqa: E731
    assert flatness(run("t_mismatch")) < 1.3
    assert healthy_band(flatness)[0] > 50


def test_clip_tight_clips_every_step():
    assert run("clip_tight").steps["clipped"].mean() > 0.9
    assert healthy_band(lambda r: float(r.steps["clipped"].mean()))[1] < 0.05


def test_frozen_never_learns():
    r = run("frozen")
    loss = r.steps["loss"].to_numpy()
    assert abs(loss[-LAST:].mean() / loss[:100].mean() - 1) < 0.03
    assert late_loss(r) > 5 * healthy_band(late_loss)[1]


def test_fp16_overflow_has_real_nonfinite_losses_at_t_below_2():
    r = run("fp16_overflow")
    s = r.steps
    assert s["nonfinite"].sum() > 100 and (s["nonfinite"] > 0).mean() > 0.1
    bad = r.bins.filter(pl.col("nonfinite") > 0)
    assert bad["bin"].unique().to_list() == [0]  # sigma rounds to 0 in fp16 only at t = 0, 1
    # 2 timesteps of 1000, 128 samples a step: about 0.256 non-finite per step
    assert 0.15 < s["nonfinite"].sum() / s.height < 0.4


def test_signal_leak_schedule():
    leak = run("signal_leak").schedule["alpha_bar"].to_numpy()[-1]
    ok = run("healthy_s00").schedule["alpha_bar"].to_numpy()[-1]
    assert 0.3 < leak < 0.4 and ok < 1e-4
    assert per_bin(run("signal_leak"))[-1] > 5 * per_bin(run("healthy_s00"))[-1]  # eps is hard to see through the leak


def test_memorize_eval_diverges_from_train():
    r = run("memorize")
    evals = sorted(r.eval_bins["step_lo"].unique().to_list())
    first, last = eval_per_bin(r, evals[0]), eval_per_bin(r, evals[-1])
    train_first = per_bin(r, since=0, until=300)[0]
    assert last[0] > 3 * first[0]  # held-out loss at the lowest noise rises ...
    assert per_bin(r)[0] < 0.5 * train_first  # ... while the train loss there falls
    h = run("healthy_s00")
    hev = sorted(h.eval_bins["step_lo"].unique().to_list())
    assert eval_per_bin(h, hev[-1])[0] < eval_per_bin(h, hev[0])[0]
