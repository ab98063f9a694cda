"""Crash safety: SIGKILL at random moments, kill-and-resume, two ranks under torch.distributed."""

import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

pytest.importorskip("torch")

import diffaudit
from diffaudit.load import merge_moments

WORKER = str(Path(__file__).with_name("_worker.py"))


def _spawn(*args):
    return subprocess.Popen([sys.executable, WORKER, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_sigkill_at_random_moments_never_leaves_an_unreadable_run(tmp_path):
    rnd = random.Random(1234)
    trials = 20
    for batch in range(0, trials, 10):  # ten processes at a time: two cores, most time is torch import
        procs = []
        for i in range(batch, batch + 10):
            flush = rnd.choice([3, 7, 20])
            p = _spawn(tmp_path / f"run{i}", "forever", flush)
            procs.append((i, flush, p))
        for i, flush, p in procs:
            assert p.stdout.readline().strip() == b"started"
        start = time.monotonic()
        for i, flush, p in sorted(procs, key=lambda _: rnd.random()):
            delay = rnd.uniform(0.05, 1.5)
            time.sleep(max(0.0, start + delay - time.monotonic()))
            p.send_signal(signal.SIGKILL)
            p.wait()
            assert p.returncode == -signal.SIGKILL
        for i, flush, p in procs:
            path = tmp_path / f"run{i}"
            try:
                run = diffaudit.load_run(path, allow_empty=True)
            except Exception as e:  # pragma: no cover - the assertion message is the point
                pytest.fail(f"trial {i}: killed run does not load: {e}")
            steps = run.steps["step"].to_list()
            # only whole flushes land, in order: the steps that exist are 0..n-1 with n a multiple of flush
            assert steps == list(range(len(steps))), f"trial {i}: steps not contiguous from 0"
            assert len(steps) % flush == 0, f"trial {i}: a partial flush of {len(steps) % flush} steps was read"
            assert run.steps["loss"].to_numpy() == pytest.approx(np.arange(len(steps)) / 1e4, abs=1e-7)
            assert all("temporary" in p.message for p in run.problems), run.problems
            tb = run.train_bins
            if tb.height:
                assert tb["step_hi"].max() <= (steps[-1] if steps else -1) + flush


def test_kill_at_730_and_resume_from_500_keeps_each_step_once(tmp_path):
    run_dir = tmp_path / "run"
    p = _spawn(run_dir, "crash_at", 0, 730)
    p.wait(timeout=120)
    assert p.returncode == -signal.SIGKILL
    before = diffaudit.load_run(run_dir)
    landed = before.steps["step"].to_list()
    # flush_every=50: steps 700..729 were never flushed; flushes still queued for the writer may be lost too
    assert landed == list(range(len(landed))) and len(landed) % 50 == 0 and 500 <= len(landed) <= 700
    p = _spawn(run_dir, "resume", 500, 1000)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()
    run = diffaudit.load_run(run_dir)
    steps = run.steps
    assert steps["step"].to_list() == list(range(1000))  # every step exactly once
    seg = steps["segment"].to_numpy()
    assert (seg[:500] == 1).all() and (seg[500:] == 2).all()
    want = np.where(np.arange(1000) < 500, 1.0, 2.0) + np.arange(1000) / 1e4
    np.testing.assert_allclose(steps["loss"].to_numpy(), want, rtol=1e-6)
    # bin windows: none of segment 1 reaches into the resumed range, and their means match their segment
    tb = run.train_bins
    assert tb.filter(pl.col("step_hi") >= 500)["mean"].min() > 2.0
    assert tb.filter(pl.col("step_hi") < 500)["mean"].max() < 2.0
    assert run.superseded_rows > 0
    assert run.segments.height == 2


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_two_ranks_merge_exactly(tmp_path):
    run_dir = tmp_path / "ddp"
    port = _free_port()
    procs = [_spawn(run_dir, "rank", r, 2, port) for r in (0, 1)]
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err.decode()[-2000:]
    run = diffaudit.load_run(run_dir)
    assert run.ranks == [0, 1]
    assert len(list((run_dir / "parts").glob("steps-r00001-*"))) > 0  # each rank wrote its own parts
    t = np.concatenate([np.load(run_dir / f"inputs-{r}.npz")["t"] for r in (0, 1)])
    x = np.concatenate([np.load(run_dir / f"inputs-{r}.npz")["x"] for r in (0, 1)]).astype(np.float64)
    b = run.process.bin_of(t)
    merged = merge_moments(run.train_bins.with_columns(pl.lit(0).alias("k")), ["k", "bin"]).sort("bin")
    for r in merged.iter_rows(named=True):
        v = x[b == r["bin"]]
        assert r["count"] == v.size
        assert abs(r["mean"] - v.mean()) / abs(v.mean()) < 1e-9
        assert abs(r["m2"] / r["count"] - v.var()) / v.var() < 1e-9
    s = run.steps
    assert s.height == 120 and s["n_ranks"].unique().to_list() == [2] and s["count"].unique().to_list() == [96]
    # per-step loss is the sample-weighted mean over both ranks
    per_step = x.reshape(2, 120, 48).transpose(1, 0, 2).reshape(120, -1).mean(1)
    np.testing.assert_allclose(s["loss"].to_numpy(), per_step, rtol=1e-6)


def test_resume_on_fewer_ranks_supersedes_the_abandoned_ranks(tmp_path):
    import json

    from diffaudit.logger import RunLogger
    from diffaudit.noise import named_betas, schedule_from_betas
    import torch

    a = schedule_from_betas(named_betas("linear"))[0]
    run_dir = tmp_path / "run"
    for rank in (0, 1):  # a two-rank launch that ran to step 999
        with RunLogger(run_dir, alphas_cumprod=a, num_bins=4, flush_every=100, rank=rank, world_size=2) as lg:
            for step in range(1000):
                lg.log(step, timesteps=torch.tensor([5]), losses=torch.tensor([1.0]))
    with RunLogger(run_dir, alphas_cumprod=a, num_bins=4, flush_every=100, rank=0, world_size=1) as lg:
        for step in range(500, 800):  # restarted later from the step-500 checkpoint, on one rank
            lg.log(step, timesteps=torch.tensor([5]), losses=torch.tensor([2.0]))
    marker = run_dir / "segments" / "r00000-s0002.json"
    m = json.loads(marker.read_text())
    m["created"] += 3600  # the restart came an hour later (the test cannot wait RESTART_GAP_S)
    marker.write_text(json.dumps(m))
    run = diffaudit.load_run(run_dir)
    s = run.steps
    assert s["step"].to_list() == list(range(800))  # rank 1's abandoned steps 500..999 are gone
    assert s.filter(pl.col("step") >= 500)["loss"].unique().to_list() == [2.0]
    assert s.filter(pl.col("step") < 500)["n_ranks"].unique().to_list() == [2]
