"""Amortized cost of the time-sensitivity probe (RunLogger.probe_time) on a real training step.

A probe is one extra forward pass without gradient plus two logger calls, once
every ``time_probe_every`` steps. Timing a whole run with and without it would
put a 0.1% difference inside the noise of a shared machine, so this measures the
two things that make the cost and divides: the median time of a training step
(forward, backward, clip, optimizer, log) and the median time of a probe call,
interleaved so that both see the same machine load. Amortized cost =
probe / (interval x step).

    OMP_NUM_THREADS=1 python benchmarks/bench_time_probe.py            # conv denoiser, CPU
    python benchmarks/bench_time_probe.py --device cuda --batch 128 --side 32

Prints the figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from make_family_corpus import ConvDenoiser  # noqa: E402  the corpus's conv denoiser

from diffaudit.logger import RunLogger  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--side", type=int, default=8, help="image side (square, 3 channels)")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=60, help="interleaved (step, probe) pairs timed")
    ap.add_argument("--every", type=int, default=None, help="probe interval (default: the logger's default)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = ConvDenoiser(3, args.width).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ab = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    sa, ss = ab.sqrt().float().to(dev), (1 - ab).sqrt().float().to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as tmp, RunLogger(Path(tmp) / "r", alphas_cumprod=ab, num_bins=50,
                                                         time_probe_every=1) as lg:
        every = args.every or RunLogger.__init__.__kwdefaults__["time_probe_every"]
        step_t, probe_t = [], []
        for i in range(args.rounds + 5):
            x0 = torch.randn(args.batch, 3, args.side, args.side, device=dev)
            t = torch.randint(0, 1000, (args.batch,), device=dev)
            eps = torch.randn_like(x0)
            x_t = sa[t, None, None, None] * x0 + ss[t, None, None, None] * eps
            sync()
            t0 = time.perf_counter()
            per = ((model(x_t, t.float()) - eps) ** 2).flatten(1).mean(1)
            opt.zero_grad(set_to_none=True)
            per.mean().backward()
            gn = nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            lg.log(i, timesteps=t, losses=per.detach(), grad_norm=gn, clip_threshold=1.0)
            opt.step()
            sync()
            t1 = time.perf_counter()
            lg.probe_time(i, lambda tf: ((model(x_t, tf.float()) - eps) ** 2).flatten(1).mean(1),
                          timesteps=t, losses=per.detach(), every=1)
            sync()
            t2 = time.perf_counter()
            if i >= 5:  # warm-up rounds are not timed
                step_t.append(t1 - t0)
                probe_t.append(t2 - t1)
    step, probe = statistics.median(step_t), statistics.median(probe_t)
    print(f"device {dev}, conv denoiser width {args.width}, batch {args.batch}, {args.side}x{args.side}x3")
    print(f"training step (median of {len(step_t)}): {step * 1e3:.2f} ms")
    print(f"probe call    (median of {len(probe_t)}): {probe * 1e3:.2f} ms = {probe / step:.2f} training steps")
    print(f"amortized cost at time_probe_every={every}: {100 * probe / (every * step):.3f}% of training "
          f"(aim: below 0.5%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
