"""TensorBoard export, read back with TensorBoard's own reader."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import diffaudit
from diffaudit.analysis import analyze
from diffaudit.optimum import bin_gaussian_optimal_loss
from diffaudit.present.markdown import report_markdown
from diffaudit.present.tensorboard import bin_label, write_tensorboard

RUN = Path(__file__).resolve().parents[1] / "sample_logs" / "corpus" / "lr_high"


def _read(logdir):
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_per_noise_level_curves_and_findings_read_back(tmp_path):
    run = diffaudit.load_run(RUN)
    a = analyze(run)
    lstar = bin_gaussian_optimal_loss(run.process, spectrum=np.asarray(run.meta["data_spectrum"]))
    counts = write_tensorboard(run, tmp_path, findings_markdown=report_markdown(a, heading=False), lstar=lstar)
    acc = _read(tmp_path)
    tags = acc.Tags()["scalars"]
    assert {"diffaudit/loss", "diffaudit/grad_norm", "diffaudit/clip_rate", "diffaudit/lr"} <= set(tags)
    assert sum(t.startswith("loss_by_noise/") for t in tags) == run.process.num_bins == 20
    # one bin's curve: exactly the run's window means, at each window's last step
    b = 7
    ev = acc.Scalars(f"loss_by_noise/{bin_label(run, b)}")
    want = run.train_bins.filter(pl.col("bin") == b).sort("step_hi")
    assert [e.step for e in ev] == want["step_hi"].to_list()
    np.testing.assert_allclose([e.value for e in ev], want["mean"].to_numpy(), rtol=1e-6)
    ex = acc.Scalars(f"excess_by_noise/{bin_label(run, b)}")
    np.testing.assert_allclose([e.value for e in ex], want["mean"].to_numpy() - lstar[b], rtol=1e-5, atol=1e-7)
    # per-step loss: 1,500 steps, under the point cap, so every step is there
    loss = acc.Scalars("diffaudit/loss")
    assert len(loss) == run.steps.height == counts["diffaudit/loss"]
    np.testing.assert_allclose([e.value for e in loss], run.steps["loss"].to_numpy(), rtol=1e-6)
    text = acc.Tensors("diffaudit/findings")[0].tensor_proto.string_val[0].decode()
    assert "loss.exploding" in text and f"verdict: {a.verdict}" in text


def test_long_runs_are_averaged_in_blocks(tmp_path):
    run = diffaudit.load_run(RUN)
    write_tensorboard(run, tmp_path, max_points=100)
    loss = _read(tmp_path).Scalars("diffaudit/loss")
    assert len(loss) == 100
    # each point is the mean of its block of 15 steps, placed at the block's last step
    x = run.steps["loss"].cast(pl.Float64).to_numpy()
    assert loss[0].step == 14 and loss[0].value == pytest.approx(x[:15].mean(), rel=1e-6)


def test_export_command_writes_tensorboard_and_refuses_nothing_to_do(tmp_path):
    from _cli import run_cli

    res = run_cli("export", RUN, "--tensorboard", tmp_path / "tb")
    assert res.exit_code == 0, res.output
    assert "20 noise levels" in res.output
    assert len([t for t in _read(tmp_path / "tb").Tags()["scalars"] if t.startswith("loss_by_noise/")]) == 20
    assert run_cli("export", RUN).exit_code == 2
    inside = run_cli("export", RUN, "--tensorboard", RUN / "tb")  # never into the run it reads
    assert inside.exit_code == 2 and "never writes into its inputs" in inside.output
