"""A diffusers-style training loop under HF accelerate (or torchrun), logged with diffaudit.

Every process logs its own micro-batch's per-sample losses with its own
RunLogger on the same run directory: the logger reads the rank from
torch.distributed, each rank writes its own parts, and the analyzer merges them
exactly. No ``accelerator.gather`` and no collective is needed for logging.

    accelerate launch --multi_gpu --num_processes 2 examples/accelerate_loop.py --out runs/acc   # CPU: gloo
    torchrun --nproc_per_node 2 examples/accelerate_loop.py --out runs/tr --no-accelerate
    diffaudit report runs/acc

``--save-inputs DIR`` writes each rank's timesteps and per-sample losses, so a
test can check the merged statistics against a single float64 computation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffaudit.datastats import data_statistics
from diffaudit.logger import RunLogger


def data() -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.from_numpy(load_digits().data.astype(np.float32) / 8.0 - 1.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64, help="per process")
    ap.add_argument("--no-accelerate", action="store_true", help="plain torch.distributed (for torchrun)")
    ap.add_argument("--save-inputs", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    if args.no_accelerate:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank = dist.get_rank()
        accelerator = None
    else:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True)
        rank = accelerator.process_index

    torch.manual_seed(0)  # the same initial weights on every rank
    x = data()
    model = nn.Sequential(nn.Linear(64 + 1, 128), nn.SiLU(), nn.Linear(128, 64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if accelerator is not None:
        model, opt = accelerator.prepare(model, opt)
    else:
        model = nn.parallel.DistributedDataParallel(model)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    g = torch.Generator().manual_seed(1000 + rank)  # each rank draws its own batches
    saved_t, saved_l = [], []
    # every rank opens the same run; the rank comes from torch.distributed
    with RunLogger(args.out, alphas_cumprod=abar, betas=betas, prediction="epsilon", num_bins=10, window=20,
                   flush_every=50, total_steps=args.steps, **data_statistics(x)) as logger:
        for step in range(args.steps):
            x0 = x[torch.randint(len(x), (args.batch,), generator=g)]
            t = torch.randint(1000, (args.batch,), generator=g)
            eps = torch.randn(x0.shape, generator=g)
            a, s = abar[t].sqrt().float()[:, None], (1 - abar[t]).sqrt().float()[:, None]
            pred = model(torch.cat([a * x0 + s * eps, t[:, None].float() / 1000], 1))
            per_sample = ((pred - eps) ** 2).mean(1)  # this process's micro-batch, unweighted
            opt.zero_grad()
            if accelerator is not None:
                accelerator.backward(per_sample.mean())
                gn = accelerator.clip_grad_norm_(model.parameters(), 1.0)
            else:
                per_sample.mean().backward()
                gn = nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            logger.log(step, timesteps=t, losses=per_sample.detach(), grad_norm=gn, clip_threshold=1.0, lr=1e-3)
            opt.step()
            saved_t.append(t.numpy())
            saved_l.append(per_sample.detach().double().numpy())
    if args.save_inputs is not None:
        args.save_inputs.mkdir(parents=True, exist_ok=True)
        np.savez(args.save_inputs / f"rank{rank}.npz", t=np.stack(saved_t), loss=np.stack(saved_l))
    if accelerator is not None:
        accelerator.end_training()
    else:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
