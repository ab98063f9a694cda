"""Subprocess used by the fault tests: a training-like loop that logs until killed.

usage: python _worker.py RUN_DIR MODE [ARGS]
  forever FLUSH            log steps 0, 1, 2, ... until SIGKILLed
  crash_at START KILL      log steps START.. and SIGKILL itself at step KILL (value 1.0 + step/1e4)
  resume START END         a new logger on the same directory logs START..END-1 (value 2.0 + step/1e4)
  rank RANK WORLD PORT     torch.distributed (gloo) rank logging random losses; saves its inputs
"""

import os
import signal
import sys
import time

import numpy as np
import torch

from diffaudit.logger import RunLogger
from diffaudit.noise import named_betas, schedule_from_betas

ALPHA_BAR = schedule_from_betas(named_betas("linear"))[0]


def main():
    run_dir, mode, *args = sys.argv[1:]
    if mode == "forever":
        lg = RunLogger(run_dir, alphas_cumprod=ALPHA_BAR, num_bins=20, flush_every=int(args[0]), window=5)
        print("started", flush=True)
        step = 0
        while True:
            t = torch.randint(0, 1000, (32,))
            lg.log(step, timesteps=t, losses=torch.full((32,), step / 1e4), grad_norm=torch.tensor(1.0), lr=1e-3)
            step += 1
    elif mode == "crash_at":
        start, kill = int(args[0]), int(args[1])
        lg = RunLogger(run_dir, alphas_cumprod=ALPHA_BAR, num_bins=10, flush_every=50, window=20)
        for step in range(start, 10**9):
            if step == kill:
                os.kill(os.getpid(), signal.SIGKILL)
            lg.log(step, timesteps=torch.randint(0, 1000, (16,)), losses=torch.full((16,), 1.0 + step / 1e4))
            time.sleep(0.002)  # a training step takes time; the writer keeps up as it would in real training
    elif mode == "resume":
        start, end = int(args[0]), int(args[1])
        with RunLogger(run_dir, alphas_cumprod=ALPHA_BAR, num_bins=10, flush_every=50, window=20) as lg:
            for step in range(start, end):
                lg.log(step, timesteps=torch.randint(0, 1000, (16,)), losses=torch.full((16,), 2.0 + step / 1e4))
    elif mode == "rank":
        rank, world, port = int(args[0]), int(args[1]), args[2]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
        g = torch.Generator().manual_seed(100 + rank)
        ts, xs = [], []
        with RunLogger(run_dir, alphas_cumprod=ALPHA_BAR, num_bins=25, flush_every=40, window=10) as lg:
            for step in range(120):
                t = torch.randint(0, 1000, (48,), generator=g)
                x = (torch.rand(48, generator=g) * (1 + t / 500.0)).float()
                gn = torch.tensor(0.5 + step / 100)
                torch.distributed.all_reduce(gn)  # what DDP does to gradients: same norm on every rank
                lg.log(step, timesteps=t, losses=x, grad_norm=gn, clip_threshold=1.0)
                ts.append(t.numpy())
                xs.append(x.numpy())
        np.savez(os.path.join(run_dir, f"inputs-{rank}.npz"), t=np.concatenate(ts), x=np.concatenate(xs))
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
