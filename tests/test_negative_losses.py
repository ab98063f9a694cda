"""Negative per-sample losses: refused on the host at once, counted (without a sync) on a device, named by the report."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from diffaudit.analysis import analyze  # noqa: E402
from diffaudit.errors import DataError  # noqa: E402
from diffaudit.load import load_run  # noqa: E402
from diffaudit.logger import RunLogger  # noqa: E402
from diffaudit.noise import named_betas, schedule_from_betas  # noqa: E402

A = torch.from_numpy(schedule_from_betas(named_betas("linear"))[0])


def test_negative_host_losses_are_refused_naming_count_and_range(tmp_path):
    with RunLogger(tmp_path / "r", alphas_cumprod=A, num_bins=10, flush_every=10, window=5) as lg:
        lg.log(0, timesteps=torch.tensor([1, 2, 3, 4]), losses=torch.tensor([0.5, 0.2, 0.1, 0.3]))
        with pytest.raises(DataError, match=r"losses: 2 of 4 per-sample value\(s\) are negative \(-0.5 to -0.25\)"):
            lg.log(1, timesteps=torch.tensor([1, 2, 3, 4]), losses=torch.tensor([-0.5, 0.2, -0.25, float("nan")]))
    assert load_run(tmp_path / "r").steps.height == 1  # the refused step logged nothing


def test_negative_losses_it_cannot_look_at_are_counted_excluded_and_reported(tmp_path, monkeypatch):
    import diffaudit.logger as lgmod

    # as for a CUDA tensor, where the check would cost a sync: the logger counts what it cannot look at
    monkeypatch.setattr(lgmod, "_refuse_negative", lambda x: None)
    g = torch.Generator().manual_seed(0)
    with RunLogger(tmp_path / "r", alphas_cumprod=A, num_bins=10, flush_every=20, window=5, total_steps=60) as lg:
        for s in range(60):
            t = torch.randint(0, 1000, (32,), generator=g)
            x = 0.2 + torch.rand(32, generator=g)
            if s >= 40:
                x[:3] = -x[:3]  # three negative values per step from step 40
            lg.log(s, timesteps=t, losses=x, grad_norm=torch.tensor(0.5), clip_threshold=1.0)
    run = load_run(tmp_path / "r")
    assert int(run.steps["negative"].sum()) == 60 and int(run.steps["count"].sum()) == 60 * 32 - 60
    assert float(run.train_bins["count"].sum()) == 60 * 32 - 60  # left out of every statistic
    assert (run.train_bins["min"].drop_nulls() >= 0).all()
    a = analyze(run)
    f = a.by_id("loss.negative")
    assert f is not None and f.severity == "fail" and a.verdict == "failing"
    assert f.evidence == {"samples": 60, "steps": 20, "first_step": 40}
    assert "60 per-sample losses were negative, on 20 steps, first at step 40" in f.message
