"""Two processes launched as users launch them (torchrun, accelerate launch): one run, statistics merged exactly."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

torch = pytest.importorskip("torch")

import diffaudit
from diffaudit.load import merge_moments

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "accelerate_loop.py"
STEPS = 60


def _check_merged(run_dir: Path, inputs: Path, world: int):
    run = diffaudit.load_run(run_dir)
    assert run.problems == []
    assert sorted(run.ranks) == list(range(world))
    assert run.closes.height == world and set(run.closes["status"]) == {"finished"}
    assert run.steps["step"].to_list() == list(range(STEPS)) and set(run.steps["n_ranks"]) == {world}
    t = np.concatenate([np.load(inputs / f"rank{r}.npz")["t"].ravel() for r in range(world)])
    x = np.concatenate([np.load(inputs / f"rank{r}.npz")["loss"].ravel() for r in range(world)])
    b = run.process.bin_of(t)
    got = merge_moments(run.train_bins.with_columns(pl.lit(0).alias("k")), ["k", "bin"]).sort("bin")
    for row in got.iter_rows(named=True):
        v = x[b == row["bin"]]
        assert row["count"] == v.size
        assert row["mean"] == pytest.approx(v.mean(), rel=1e-9)
        assert row["m2"] == pytest.approx(((v - v.mean()) ** 2).sum(), rel=1e-6)  # the losses were float32
    # the per-step loss is the sample-weighted mean over the ranks' micro-batches
    per_step = np.mean([np.load(inputs / f"rank{r}.npz")["loss"] for r in range(world)], axis=(0, 2))
    np.testing.assert_allclose(run.steps["loss"].to_numpy(), per_step, rtol=1e-5)


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1"}


@pytest.mark.slow
def test_torchrun_two_ranks_log_one_run(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           str(SCRIPT), "--out", str(tmp_path / "run"), "--steps", str(STEPS), "--no-accelerate",
           "--save-inputs", str(tmp_path / "inputs")]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_merged(tmp_path / "run", tmp_path / "inputs", 2)


@pytest.mark.slow
def test_accelerate_launch_two_processes_log_one_run(tmp_path):
    pytest.importorskip("accelerate")
    exe = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    assert exe, "accelerate is installed but its launcher is not on PATH"
    # `accelerate launch --cpu` starts one process unless an mpirun hostfile is configured; `--multi_gpu` starts
    # the processes through torchrun, and the script's Accelerator(cpu=True) joins them with gloo on a CPU machine
    cmd = [exe, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", "29532",
           str(SCRIPT), "--out", str(tmp_path / "run"), "--steps", str(STEPS), "--save-inputs", str(tmp_path / "inputs")]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_merged(tmp_path / "run", tmp_path / "inputs", 2)
