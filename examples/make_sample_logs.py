"""Train small DDPM denoisers on scikit-learn's 8x8 digits and log them with diffaudit.

Every run under ``sample_logs/`` comes from this script: real training, on CPU, on
real data that an installed package ships (``sklearn.datasets.load_digits``:
1,797 images, d = 64, scaled to [-1, 1], 15% held out for evaluation). Healthy
runs differ only in their seed; each defect run is one real change to the
training code that makes training worse, with the finding we expect the
analyzer to report (``sample_logs/corpus/labels.json``).

    python examples/make_sample_logs.py                 # everything (a few minutes on 2 cores)
    python examples/make_sample_logs.py --runs healthy --seeds 5
    python examples/make_sample_logs.py --runs lr_high no_time --out /tmp/logs
    python examples/make_sample_logs.py --quick --out /tmp/q   # first steps of healthy seed 0 only

Determinism: one intra-op thread per process, ``torch.manual_seed`` for the
weights and a ``torch.Generator`` for batches, timesteps and noise, so a run
is a function of its seed (bit-for-bit on one machine and torch build).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffaudit.datastats import data_statistics
from diffaudit.logger import RunLogger

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "sample_logs"

# ----------------------------------------------------------------------------
# Training defaults (every run starts from these; a defect changes one thing)

T = 1000  # diffusion timesteps
BETA_START, BETA_END = 1e-4, 0.02  # DDPM linear schedule
NUM_BINS = 20  # noise-level bins the logger keeps
FLUSH_EVERY = 300  # steps between Parquet parts (the resumed run's kill lands between two)
STEPS = 1500  # optimizer steps of a run
BATCH = 128
LR = 5e-3  # AdamW peak learning rate
WARMUP = 100  # linear warm-up steps, then cosine decay to LR_FLOOR * LR
LR_FLOOR = 0.1
WEIGHT_DECAY = 0.0
CLIP = 1.0  # grad-norm clip threshold
WIDTH, DEPTH, TEMB = 128, 2, 32  # MLP width, residual blocks, time-embedding size
EVAL_EVERY = 200  # steps between held-out evaluations
EVAL_REPEATS = 4  # noise draws per held-out image (stratified over t)
PROBE_EVERY = 300  # gradient probe interval: 5 probes in a 1,500-step run
HOLDOUT = 0.15  # share of the digits kept for evaluation
SPLIT_SEED = 20240607  # the train/eval split is the same for every run
KILL_AT, CHECKPOINT_AT = 730, 500  # the resumed run: SIGKILL after this step; resume from here
QUICK_STEPS = 100  # --quick: stop every run here (same schedule, so the steps match the full run)


@dataclass(frozen=True)
class RunSpec:
    """One training run: the defaults above, changed by at most one defect."""

    name: str
    seed: int = 0
    defect: str = "none"
    expected_findings: tuple[str, ...] = ()
    may_also_find: tuple[str, ...] = ()  # findings that are true of this run too (not false positives)
    steps: int = STEPS
    lr: float = LR
    warmup: int = WARMUP
    clip: float = CLIP
    use_time: bool = True  # False: the network never sees t
    beta_end: float = BETA_END
    t_mismatch: bool = False  # the sample is noised at a different t than the one the net (and logger) sees
    fp16_schedule: bool = False  # x0-parameterised net converted to eps with an fp16 copy of the schedule
    train_subset: int | None = None  # keep only this many training images (memorisation)
    eval_every: int = EVAL_EVERY
    probe_every: int = PROBE_EVERY


def healthy(seed: int, name: str | None = None) -> RunSpec:
    return RunSpec(name=name or f"healthy_s{seed:02d}", seed=seed)


DEFECTS = {
    # Peak lr 50x the healthy one (same warm-up and decay): as the warm-up
    # climbs the loss first falls, then rises, jumps by orders of magnitude and
    # spikes for hundreds of steps; the network ends up dead (loss ~1 at every
    # noise level, the loss of predicting zero).
    "lr_high": RunSpec(
        "lr_high", defect="peak learning rate 50x too high (0.25)", lr=50 * LR,
        expected_findings=("loss.exploding", "loss.spikes"),
        may_also_find=("loss.stagnant_above_optimum", "time_conditioning.broken", "clip.rate_high",
                       "bin.above_gaussian_bound"),
    ),
    # The time embedding is never added. Measured: the net recovers the noise
    # level from x_t itself (d = 64 is plenty), so the per-bin loss keeps its
    # shape and is only worse at high noise (about 2.5x healthy in bins 15-19).
    # Not flat, so no single-run finding is required; `compare` against the
    # healthy seeds should call it a regression.
    "no_time": RunSpec(
        "no_time", defect="time conditioning removed (the network gets no t)", use_time=False,
        may_also_find=("time_conditioning.broken", "bin.above_gaussian_bound"),
    ),
    # The sample is noised at one timestep while the network is conditioned on,
    # and the loss is logged under, another one drawn independently (a stale or
    # re-drawn ``t``): the logged loss carries no information about the noise level.
    "t_mismatch": RunSpec(
        "t_mismatch", defect="network conditioned on (and loss logged under) an independent t", t_mismatch=True,
        expected_findings=("time_conditioning.broken",),
        may_also_find=("loss.stagnant_above_optimum", "bin.above_gaussian_bound"),  # high-noise bins sit far above L*
    ),
    # Clipping at 0.01 clips every step; AdamW normalises the scale away, so the
    # run still learns: the finding is the clip rate itself.
    "clip_tight": RunSpec(
        "clip_tight", defect="grad clip threshold 0.01", clip=0.01,
        expected_findings=("clip.rate_high",),
    ),
    # lr = 0: the weights never move; the loss stays at its initial level.
    "frozen": RunSpec(
        "frozen", defect="learning rate 0 (weights never update)", lr=0.0,
        expected_findings=("loss.stagnant_above_optimum",),
        # an untrained net's loss is flat across t, and above the best linear denoiser
        may_also_find=("time_conditioning.broken", "bin.above_gaussian_bound"),
    ),
    # alphas_cumprod stored in float16 (e.g. a buffer caught by model.half()):
    # abar rounds to exactly 1.0 for t = 0, 1, so sigma = sqrt(1 - abar) = 0 and
    # the eps = (x_t - sqrt(abar) x0_hat) / sigma conversion divides by zero.
    # Steps whose grads are non-finite are skipped, as GradScaler does.
    "fp16_overflow": RunSpec(
        "fp16_overflow", defect="fp16 schedule: sigma rounds to 0 at t<2, eps conversion overflows",
        fp16_schedule=True, expected_findings=("nonfinite.loss",),
        # the skipped steps have NaN gradients; the x0 -> eps conversion amplifies errors by
        # 1/sigma at low t: big, clipped gradients dominated by the lowest-noise bins
        may_also_find=("nonfinite.grad", "clip.rate_high", "loss.spikes", "grad.imbalance",
                       "bin.above_gaussian_bound"),
    ),
    # Linear betas ending at 0.002: abar_T = 0.35, the last timestep still
    # carries most of the signal (terminal SNR 0.54 instead of 4e-5).
    "signal_leak": RunSpec(
        "signal_leak", defect="linear betas end at 0.002: terminal abar 0.35", beta_end=0.002,
        expected_findings=("schedule.terminal_snr",),
    ),
    # 20 training images and 4,000 steps: the train loss keeps falling while
    # the held-out loss at the low noise levels rises.
    "memorize": RunSpec(
        "memorize", defect="20 training images, 4,000 steps", train_subset=20, steps=4000,
        expected_findings=("eval.divergence",),
    ),
}


# ----------------------------------------------------------------------------
# Data, schedule and model


def load_data(train_subset: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, eval) float32 tensors of flattened digits scaled to [-1, 1]; the split never changes."""
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32) / 8.0 - 1.0  # pixel values are 0..16
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_eval = int(round(HOLDOUT * len(x)))
    train, held = x[perm[n_eval:]], x[perm[:n_eval]]
    if train_subset is not None:
        train = train[:train_subset]
    return torch.from_numpy(train), torch.from_numpy(held)


def linear_schedule(beta_end: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(betas, alphas_cumprod) in float64 for the DDPM linear schedule."""
    betas = torch.linspace(BETA_START, beta_end, T, dtype=torch.float64)
    return betas, torch.cumprod(1.0 - betas, 0)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoidal embedding of integer timesteps, (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h, e):
        return h + self.fc2(nn.functional.silu(self.fc1(nn.functional.silu(h + e))))


class Denoiser(nn.Module):
    """Residual MLP on the flattened image with a sinusoidal time embedding added in every block.

    No normalisation layers (a LayerNorm version shrugs off even a 50x learning rate).
    """

    def __init__(self, d: int = 64, width: int = WIDTH, depth: int = DEPTH, temb: int = TEMB, use_time: bool = True):
        super().__init__()
        self.use_time, self.temb = use_time, temb
        self.inp = nn.Linear(d, width)
        self.time = nn.Sequential(nn.Linear(temb, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(width, d))

    def forward(self, x, t):
        h = self.inp(x)
        e = self.time(timestep_embedding(t, self.temb)) if self.use_time else 0.0
        for blk in self.blocks:
            h = blk(h, e)
        return self.out(h)


# ----------------------------------------------------------------------------
# One training step's loss


class Diffusion:
    """Forward process and the per-sample eps-prediction loss of one run."""

    def __init__(self, spec: RunSpec):
        self.betas, abar = linear_schedule(spec.beta_end)
        self.alphas_cumprod = abar
        self.sqrt_ab = abar.sqrt().float()
        self.sqrt_1mab = (-torch.expm1(torch.log1p(-self.betas).cumsum(0))).sqrt().float()
        self.fp16 = spec.fp16_schedule
        if self.fp16:
            ab16 = abar.to(torch.float16)
            self.sqrt_ab16, self.sqrt_1mab16 = ab16.sqrt(), (1 - ab16).sqrt()

    def per_sample_loss(self, model, x0, t, eps, t_noise=None, t_cond=None) -> torch.Tensor:
        """Mean over pixels of (eps_hat - eps)^2, one value per sample, with graph.

        ``t_noise``: noise the sample at these timesteps instead of ``t`` (the t_mismatch defect).
        ``t_cond``: tell the network these timesteps instead of ``t`` (the time-sensitivity probe).
        """
        tn = t if t_noise is None else t_noise
        tc = t if t_cond is None else t_cond
        x_t = self.sqrt_ab[tn, None] * x0 + self.sqrt_1mab[tn, None] * eps
        if not self.fp16:
            eps_hat = model(x_t, tc)
        else:
            # x0-parameterised net; the eps conversion runs in half precision
            x0_hat = model(x_t, tc).half()
            eps_hat = ((x_t.half() - self.sqrt_ab16[t, None] * x0_hat) / self.sqrt_1mab16[t, None]).float()
        return ((eps_hat - eps) ** 2).mean(1)


def lr_at(spec: RunSpec, step: int) -> float:
    """Linear warm-up, then cosine decay to LR_FLOOR of the peak over the run's steps."""
    if spec.warmup and step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    u = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return spec.lr * (LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * min(u, 1.0))))


def eval_set(held: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed (x0, t, eps) for held-out evaluation: every image EVAL_REPEATS times, t stratified over [0, T)."""
    g = torch.Generator().manual_seed(SPLIT_SEED)
    x0 = held.repeat(EVAL_REPEATS, 1)
    n = x0.shape[0]
    t = ((torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=g, dtype=torch.float64)) * T / n).long()
    t = t[torch.randperm(n, generator=g)]
    return x0, t, torch.randn(x0.shape, generator=g)


# ----------------------------------------------------------------------------
# A run


def train(spec: RunSpec, run_dir: Path, *, stop_at: int | None = None, kill_at: int | None = None,
          checkpoint: Path | None = None, resume: bool = False) -> dict:
    """Train one run into ``run_dir``; return a small summary (seconds, last loss).

    ``stop_at``: stop after this many steps (the lr schedule still spans ``spec.steps``).
    ``checkpoint``: save model/optimizer there before step CHECKPOINT_AT, or, with
    ``resume``, load it and continue from that step under a new logger segment.
    ``kill_at``: after logging this step, print ``READY <step>`` and wait for SIGKILL.
    """
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # a diverged net produces denormals that are 100x slower on CPU
    torch.manual_seed(spec.seed)
    train_x, held = load_data(spec.train_subset)
    # data_var = trace(Cov)/d (each pixel's variance about its own mean, averaged) and the covariance
    # eigenvalues (a tighter Gaussian L* bound), computed the one documented way
    data_stats = data_statistics(train_x)
    diff = Diffusion(spec)
    model = Denoiser(use_time=spec.use_time)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=WEIGHT_DECAY, fused=True)
    gen = torch.Generator().manual_seed(spec.seed)
    start = 0
    if resume:
        ckpt = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        start = int(ckpt["step"])
        # Like most trainers we do not checkpoint the data RNG: the resumed
        # segment draws different batches than the killed one did.
        gen = torch.Generator().manual_seed(spec.seed * 1_000_003 + start)
    ex0, et, eeps = eval_set(held)
    # the t_mismatch bug lives in the loss function, so evaluation has it too
    et_noise = et[torch.randperm(len(et), generator=torch.Generator().manual_seed(1))] if spec.t_mismatch else None
    end = spec.steps if stop_at is None else min(stop_at, spec.steps)

    config = {k: v for k, v in asdict(spec).items() if k not in ("expected_findings", "may_also_find")}
    config.update(data="sklearn digits 8x8, [-1,1]", n_train=len(train_x), n_eval=len(held), batch=BATCH,
                  width=WIDTH, depth=DEPTH, optimizer="AdamW", beta_start=BETA_START, resumed=resume)
    t0 = time.perf_counter()
    with RunLogger(run_dir, alphas_cumprod=diff.alphas_cumprod, betas=diff.betas, prediction="epsilon",
                   num_bins=NUM_BINS, flush_every=FLUSH_EVERY, probe_every=spec.probe_every,
                   total_steps=spec.steps, **data_stats, config=config) as logger:
        for step in range(start, end):
            if checkpoint is not None and not resume and step == CHECKPOINT_AT:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, checkpoint)
            lr = lr_at(spec, step)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = torch.randint(len(train_x), (BATCH,), generator=gen)
            t = torch.randint(T, (BATCH,), generator=gen)
            eps = torch.randn(BATCH, train_x.shape[1], generator=gen)
            t_noise = torch.randint(T, (BATCH,), generator=gen) if spec.t_mismatch else None
            x0 = train_x[idx]
            per_sample = diff.per_sample_loss(model, x0, t, eps, t_noise)
            logger.probe_gradients(model, t, per_sample, step)
            logger.probe_time(step, lambda tf: diff.per_sample_loss(model, x0, t, eps, t_noise, t_cond=tf),
                              timesteps=t, losses=per_sample.detach())
            opt.zero_grad(set_to_none=True)
            per_sample.mean().backward()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), spec.clip)
            logger.log(step, timesteps=t, losses=per_sample.detach(), grad_norm=gn, clip_threshold=spec.clip, lr=lr)
            if torch.isfinite(gn):  # a non-finite gradient skips the update, as GradScaler does
                opt.step()
            if (step + 1) % spec.eval_every == 0 or step + 1 == spec.steps:
                with torch.no_grad():
                    ev = diff.per_sample_loss(model, ex0, et, eeps, et_noise)
                logger.log(step, timesteps=et, losses=ev, split="eval")
            if kill_at is not None and step == kill_at:
                print(f"READY {step}", flush=True)
                sys.stdin.readline()  # the parent SIGKILLs us here, with buffered steps unflushed
    return {"name": spec.name, "seconds": time.perf_counter() - t0, "last_loss": float(per_sample.detach().mean())}


# ----------------------------------------------------------------------------
# The resumed run: a real SIGKILL, then a new logger segment from a checkpoint


def make_resumed(spec: RunSpec, run_dir: Path, *, stop_at: int | None = None) -> dict:
    """Train ``spec`` in a child process, SIGKILL it after step KILL_AT, resume from CHECKPOINT_AT here."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="diffaudit-ckpt-") as tmp:
        ckpt = Path(tmp) / "ckpt.pt"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", spec.name, "--_seed", str(spec.seed),
               "--_run-dir", str(run_dir), "--_checkpoint", str(ckpt), "--steps", str(spec.steps)]
        child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = child.stdout.readline()
        if not line.startswith("READY"):
            child.kill()
            raise RuntimeError(f"resumed run: the child exited before step {KILL_AT} (rc {child.wait()})")
        time.sleep(0.3)  # let the writer thread finish the part it may be writing: the kill loses only the buffer
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        child.stdin.close()
        out = train(spec, run_dir, checkpoint=ckpt, resume=True, stop_at=stop_at)
    out["seconds"] = time.perf_counter() - t0
    return out


# ----------------------------------------------------------------------------
# What to make, and where


@dataclass
class Job:
    spec: RunSpec
    dests: list[Path]  # trained into the first, copied to the rest
    resumed: bool = False
    labels: dict = field(default_factory=dict)


def run_job(job: Job, stop_at: int | None) -> dict:
    first = job.dests[0]
    if first.exists():
        shutil.rmtree(first)
    first.parent.mkdir(parents=True, exist_ok=True)
    if job.resumed:
        out = make_resumed(job.spec, first, stop_at=stop_at)
    else:
        out = train(job.spec, first, stop_at=stop_at)
    for d in job.dests[1:]:
        if d.exists():
            shutil.rmtree(d)
        shutil.copytree(first, d)
    out["dests"] = [str(d) for d in job.dests]
    return out


def label_of(spec: RunSpec) -> dict:
    return {"defect": spec.defect, "expected_findings": list(spec.expected_findings),
            "may_also_find": list(spec.may_also_find), "seed": spec.seed, "steps": spec.steps}


def plan(runs: list[str], out: Path, seeds: int, steps: int | None) -> list[Job]:
    """Jobs for the requested runs: groups ``all``, ``corpus``, ``showcase``, ``healthy``, ``defects``, or names."""
    def sized(spec):
        return spec if steps is None else replace(spec, steps=steps)

    want = set(runs)
    if "all" in want:
        want |= {"corpus", "showcase"}
    if "corpus" in want:
        want |= {"healthy", "defects", "resumed"}
    if "defects" in want:
        want |= set(DEFECTS)
    corpus = out / "corpus"
    jobs: dict[str, Job] = {}

    def add(key, spec, dest, resumed=False):
        if key in jobs:
            jobs[key].dests.append(dest)
        else:
            jobs[key] = Job(sized(spec), [dest], resumed)

    if "healthy" in want:
        for s in range(seeds):
            add(f"healthy{s}", healthy(s), corpus / f"healthy_s{s:02d}")
    for name, spec in DEFECTS.items():
        if name in want:
            add(name, spec, corpus / name)
    if "resumed" in want:
        add("resumed", healthy(0, "resumed"), corpus / "resumed", resumed=True)
    if "showcase" in want:
        add("healthy0", healthy(0), out / "healthy_seed0")
        add("healthy1", healthy(1), out / "healthy_seed1")
        add("lr_high", DEFECTS["lr_high"], out / "lr_high")
        add("resumed", healthy(0, "resumed"), out / "resumed", resumed=True)
    unknown = want - {"all", "corpus", "showcase", "healthy", "defects", "resumed", *DEFECTS}
    if unknown:
        raise SystemExit(f"error: unknown run(s) {', '.join(sorted(unknown))}")
    return list(jobs.values())


def write_labels(jobs: list[Job], out: Path) -> Path:
    """Merge this invocation's corpus runs into ``corpus/labels.json`` (sorted, stable)."""
    path = out / "corpus" / "labels.json"
    labels = json.loads(path.read_text()) if path.exists() else {}
    for job in jobs:
        for d in job.dests:
            if d.parent == out / "corpus":
                lab = label_of(job.spec)
                if job.resumed:
                    lab["defect"] = (f"none (SIGKILLed after step {KILL_AT}, "
                                     f"resumed from the step-{CHECKPOINT_AT} checkpoint)")
                labels[d.name] = lab
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(labels.items())), indent=1) + "\n")
    return path


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="example: python examples/make_sample_logs.py --runs healthy lr_high --seeds 3")
    ap.add_argument("--runs", nargs="+", default=["all"],
                    help="runs or groups to make: all (default), corpus, showcase, healthy, defects, resumed, "
                         + ", ".join(DEFECTS))
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help="output directory (default: sample_logs/ of this repository)")
    ap.add_argument("--seeds", type=int, default=40, help="healthy corpus runs, seeds 0..N-1 (default 40)")
    ap.add_argument("--steps", type=int, default=None, help="override every run's step count")
    ap.add_argument("--quick", action="store_true",
                    help=f"only healthy seed 0, stopped after {QUICK_STEPS} steps of its full schedule "
                         "(its first steps equal the committed run's)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel training processes")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    ap.add_argument("--_seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--_run-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--_checkpoint", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._child:  # the first life of the resumed run; the parent kills it
        spec = replace(healthy(args._seed, args._child), steps=args.steps or STEPS)
        train(spec, args._run_dir, checkpoint=args._checkpoint, kill_at=KILL_AT)
        return 0

    out = args.out.resolve()
    stop_at = None
    if args.quick and out == DEFAULT_OUT.resolve():
        ap.error("--quick writes a truncated run: give --out a scratch directory, not the committed sample_logs/")
    makes_resumed = {"all", "corpus", "showcase", "resumed"} & set(args.runs)
    if args.steps is not None and args.steps <= KILL_AT and not args.quick and makes_resumed:
        ap.error(f"the resumed run needs --steps above {KILL_AT} (it is killed after step {KILL_AT})")
    if args.quick:
        jobs = [Job(healthy(0), [out / "corpus" / "healthy_s00"])]
        stop_at = QUICK_STEPS
    else:
        jobs = plan(args.runs, out, args.seeds, args.steps)
    t0 = time.perf_counter()
    print(f"making {len(jobs)} run(s) in {out} with {args.jobs} process(es)", flush=True)
    # the resumed run is the slowest (two lives, one subprocess): start it first
    jobs.sort(key=lambda j: (not j.resumed, -j.spec.steps))
    results = []

    def report(r):
        results.append(r)
        print(f"  {r['name']:<16} {r['seconds']:6.1f} s  last loss {r['last_loss']:.4g}  -> "
              + ", ".join(os.path.relpath(d, out) for d in r["dests"]), flush=True)

    if len(jobs) == 1 or args.jobs <= 1:
        for j in jobs:
            report(run_job(j, stop_at))
    else:
        ctx = mp.get_context("spawn")  # no fork of a process that holds torch threads
        with cf.ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
            for fut in cf.as_completed([pool.submit(run_job, j, stop_at) for j in jobs]):
                report(fut.result())
    if not args.quick:
        write_labels(jobs, out)
    wall = time.perf_counter() - t0
    cpu = sum(r["seconds"] for r in results)
    print(f"done: {len(results)} run(s) in {wall:.1f} s wall ({cpu:.1f} s summed over runs); "
          f"{out} holds {dir_size(out) / 1e6:.2f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
