"""An Optuna study that prunes a trial on its diffaudit verdict, then ranks the sweep per noise level.

Each trial trains a small epsilon-prediction DDPM (a residual MLP on scikit-learn's 8x8 digits) with its own
learning rate and logs it with ``RunLogger`` into ``OUT/trial_NNN``. Every ``--check-every`` steps, once the
logger has flushed, the objective reads its own run the way ``diffaudit sweep`` does
(:func:`diffaudit.sweeps.run_row`: load, analyze, late loss in units of L*) and

* reports the run's late loss / L* to Optuna (``trial.report``), so Optuna's pruner compares trials on it;
* prunes the trial at once when diffaudit's verdict is ``failing`` (the loss exploded, the network ignores the
  noise level, the losses are not finite ...): no use training it to the end. While a run is early in its plan,
  the findings that need a converged loss are provisional and at most ``info``, so a ``failing`` verdict mid-run
  rests on what does not need convergence.

    python examples/optuna_prune.py --out runs/optuna --trials 8 --steps 600
    diffaudit sweep runs/optuna --sort ratio_low -o sweep.html

The same two lines work in a Ray Tune trainable: read the run with ``run_row`` and
``ray.train.report({"lstar_ratio": row["lstar_ratio"], "failing": row["verdict"] == "failing"})``, with a stopper
such as ``tune.stopper.FunctionStopper(lambda trial_id, result: result["failing"])``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffaudit.datastats import data_statistics
from diffaudit.logger import RunLogger
from diffaudit.noise import named_betas, schedule_from_betas
from diffaudit.sweeps import run_row


class Net(nn.Module):
    def __init__(self, width: int = 128):
        super().__init__()
        self.inp = nn.Linear(64 + 16, width)
        self.blocks = nn.ModuleList([nn.Sequential(nn.SiLU(), nn.Linear(width, width)) for _ in range(2)])
        self.out = nn.Linear(width, 64)

    def forward(self, x, t):
        freqs = torch.exp(torch.linspace(0, 6, 8))
        emb = torch.cat([torch.sin(t[:, None] / 1000 * freqs), torch.cos(t[:, None] / 1000 * freqs)], dim=1)
        h = self.inp(torch.cat([x, emb], dim=1))
        for b in self.blocks:
            h = h + b(h)
        return self.out(h)


def train(trial, out: Path, steps: int, check_every: int) -> float:
    import optuna

    from sklearn.datasets import load_digits

    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
    torch.manual_seed(trial.number)
    x0 = torch.from_numpy(load_digits().data.astype(np.float32) / 8.0 - 1.0)
    betas = named_betas("linear")
    alpha_bar = torch.from_numpy(schedule_from_betas(betas)[0]).float()
    net = Net()
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    run = out / f"trial_{trial.number:03d}"
    with RunLogger(run, alphas_cumprod=alpha_bar, num_bins=20, flush_every=check_every, window=50,
                   total_steps=steps, **data_statistics(x0), config={"lr": lr, "seed": trial.number}) as logger:
        for step in range(steps):
            x = x0[torch.randint(0, len(x0), (128,))]
            t = torch.randint(0, 1000, (128,))
            eps = torch.randn_like(x)
            a = alpha_bar[t][:, None]
            xt = a.sqrt() * x + (1 - a).sqrt() * eps
            per_sample = ((net(xt, t.float()) - eps) ** 2).mean(dim=1)
            opt.zero_grad()
            per_sample.mean().backward()
            gn = torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            logger.log(step, timesteps=t, losses=per_sample.detach(), grad_norm=gn, clip_threshold=1.0, lr=lr)
            opt.step()
            if (step + 1) % check_every == 0 and step + 1 < steps:
                logger.flush()  # the parts so far are on disk: read the run as diffaudit sweep would
                row = run_row(str(run))
                if row["error"] is None and row["lstar_ratio"] is not None:
                    trial.report(row["lstar_ratio"], step)
                if row["verdict"] == "failing":
                    trial.set_user_attr("pruned_because", row["worst"])
                    raise optuna.TrialPruned(f"diffaudit: failing at step {step + 1} ({row['worst']})")
                if trial.should_prune():
                    raise optuna.TrialPruned()
    row = run_row(str(run))
    return row["lstar_ratio"] if row["lstar_ratio"] is not None else float("inf")


def main(argv=None) -> int:
    import optuna

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--check-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--first-lr", type=float, default=None,
                    help="the first trial's learning rate (e.g. 1.0: one far too high, as a sweep's edge often is)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=a.seed))
    if a.first_lr is not None:
        study.enqueue_trial({"lr": a.first_lr})
    study.optimize(lambda tr: train(tr, a.out, a.steps, a.check_every), n_trials=a.trials)
    summary = [{"trial": t.number, "lr": t.params["lr"], "state": t.state.name, "value": t.value,
                "pruned_because": t.user_attrs.get("pruned_because")} for t in study.trials]
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
