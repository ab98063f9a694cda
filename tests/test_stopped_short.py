"""A run closed normally, but far short of its plan, is said to have stopped short and judged as provisional."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from _cli import run_cli  # noqa: E402

from diffaudit.analysis import analyze  # noqa: E402
from diffaudit.load import load_run  # noqa: E402
from diffaudit.logger import RunLogger  # noqa: E402
from diffaudit.noise import named_betas, schedule_from_betas  # noqa: E402


def _run(path, steps, planned):
    """Losses that stay well above the Gaussian L* (data_var 1: L* of epsilon is alpha_bar): an untrained model."""
    g = torch.Generator().manual_seed(0)
    a = torch.from_numpy(schedule_from_betas(named_betas("linear"))[0])
    with RunLogger(path, alphas_cumprod=a, num_bins=10, flush_every=50, window=10, total_steps=planned,
                   data_var=1.0) as lg:
        for s in range(steps):
            t = torch.randint(0, 1000, (64,), generator=g)
            lg.log(s, timesteps=t, losses=1.5 * (0.8 + 0.4 * torch.rand(64, generator=g)), grad_norm=torch.tensor(0.5),
                   clip_threshold=1.0)
    return load_run(path)


def test_a_run_closed_at_17_percent_of_its_plan_is_provisional(tmp_path):
    a = analyze(_run(tmp_path / "short", 500, 3000))
    assert a.lifecycle.state == "finished" and a.lifecycle.stopped_short
    assert "stopped at 17% of its plan" in a.lifecycle.words
    assert a.early is not None and "stopped at 17% of its plan" in a.early
    # the findings that need a converged loss are provisional (at most info); none of them fails the run
    assert all(f.severity == "info" for f in a.findings if f.provisional)
    assert not any(f.id == "loss.stagnant_above_optimum" and f.severity == "fail" for f in a.findings)
    res = run_cli("report", tmp_path / "short")
    assert "stopped at 17% of its plan" in res.output, res.output


def test_the_same_run_closed_at_its_plan_is_judged_as_final(tmp_path):
    a = analyze(_run(tmp_path / "done", 500, 500))
    assert a.lifecycle.state == "finished" and not a.lifecycle.stopped_short and a.early is None
    assert "stopped" not in a.lifecycle.words
    assert any(f.severity == "fail" and not f.provisional for f in a.findings)  # flat far above L*: judged now
