"""A labelled corpus of real training runs from several data/model families and training habits.

The bundled digits corpus (``make_sample_logs.py``) is one family: a residual MLP,
epsilon prediction, no EMA, read when finished. Verdicts calibrated there say
nothing about other loops. This script trains four more families, each with the
habits real users have, and logs them with :class:`diffaudit.logger.RunLogger`:

=================  =======================  ===========  ==========  =============================  ===========
family             data                     model        target      habits                         role
=================  =======================  ===========  ==========  =============================  ===========
patches_conv       8x8 grey patches of      conv net     epsilon     EMA 0.999 + live held-out      calibration
                   sklearn's two photos                              eval, warm-up + cosine decay,
                                                                     data_spectrum
shapes_mlp         synthetic 8x8 shapes     MLP          v (HF       EMA 0.9999 (a common           held out
                                                         diffusers   default), warm-up + linear
                                                         scheduler)  decay, data_var only
digits_conv_flow   sklearn 8x8 digits       conv net     flow        logit-normal t, constant lr    held out
                                                         velocity    after warm-up, no EMA,
                                                                     data_spectrum
patches_edm        4x4 colour patches       MLP          EDM         lognormal sigma, EMA 0.999,    held out
                                                         (F-loss)    cosine decay, data_var only
=================  =======================  ===========  ==========  =============================  ===========

Every family has healthy runs that differ only in their seed, and runs with one
real change to the training code each (``labels.json`` says what changed, which
findings ``diffaudit report`` must fire, and what ``diffaudit compare`` against a
healthy baseline must say): a learning rate far too high, the time conditioning
removed, the network 16x narrower, frozen weights, an fp16 overflow where the
parametrisation divides by a vanishing noise level, a clamped batch loss (no
gradient flows), and two smaller regressions (learning rate / 10, width / 4)
that measure the smallest change the gate reliably catches. The flow family has a
run that logs ``t * 1000`` (a wrong timestep scale the logger must flag).

    python examples/make_family_corpus.py                       # everything (~15 min on 2 cores)
    python examples/make_family_corpus.py --families shapes_mlp --runs healthy --seeds 2
    python examples/make_family_corpus.py --out /tmp/fam --steps 200

Determinism: one intra-op thread per process, ``torch.manual_seed`` for the
weights and a ``torch.Generator`` for batches, timesteps and noise.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import copy
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sample_logs import Denoiser, timestep_embedding  # noqa: E402  the digits corpus's MLP

from diffaudit.datastats import data_statistics  # noqa: E402
from diffaudit.logger import RunLogger  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "sample_logs" / "families"
DATA_SEED = 20261127  # data generation and train/held-out split: the same for every run of a family
HELD_OUT = 1024  # held-out examples per family (each evaluated once per eval, t stratified)
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0  # EDM

# ----------------------------------------------------------------------------
# Families


@dataclass(frozen=True)
class Family:
    name: str
    role: str  # "calibration" (thresholds may be set on it) or "heldout" (figures are reported on it)
    description: str
    data: str  # patches_grey8 | shapes8 | digits | patches_colour4
    model: str  # conv | mlp
    process: str  # vp | flow | edm
    prediction: str  # epsilon | v_prediction | flow | edm
    steps: int
    lr: float
    warmup: int
    decay: str  # cosine | linear | constant
    ema: float | None  # EMA decay, evaluated on held-out data next to the live weights
    stats: str  # how the data statistics are given: spectrum | var
    width: int
    num_bins: int
    window: int
    flush_every: int
    eval_every: int
    batch: int = 128
    clip: float = 1.0
    probe_every: int = 0
    give_total_steps: bool = True
    schedule: str = "linear"  # vp: "linear" (DDPM betas 1e-4..0.02) or "diffusers_cosine" (HF DDPMScheduler)


FAMILIES = {
    f.name: f
    for f in (
        Family("patches_conv", "calibration",
               "conv net on 8x8 grey patches of sklearn's two sample photos; epsilon, DDPM linear betas; "
               "EMA 0.999 and live held-out eval every 250 steps; warm-up 100 then cosine decay; data_spectrum",
               data="patches_grey8", model="conv", process="vp", prediction="epsilon", steps=2000, lr=2e-3,
               warmup=100, decay="cosine", ema=0.999, stats="spectrum", width=16, num_bins=20, window=100,
               flush_every=250, eval_every=250, probe_every=500),
        Family("shapes_mlp", "heldout",
               "residual MLP on synthetic 8x8 shapes (boxes, discs, bars); v-prediction with HF diffusers' "
               "DDPMScheduler (squaredcos_cap_v2); EMA 0.9999 and live held-out eval every 250 steps; "
               "warm-up 200 then linear decay; data_var only",
               data="shapes8", model="mlp", process="vp", prediction="v_prediction", steps=2500, lr=3e-3,
               warmup=200, decay="linear", ema=0.9999, stats="var", width=128, num_bins=50, window=50,
               flush_every=500, eval_every=250, schedule="diffusers_cosine"),
        Family("digits_conv_flow", "heldout",
               "conv net on the 8x8 digits; rectified flow (velocity target, logit-normal t); constant lr "
               "after a 50-step warm-up; no EMA, live held-out eval every 200 steps; data_spectrum; "
               "no planned step count given to the logger",
               data="digits", model="conv", process="flow", prediction="flow", steps=1600, lr=2e-3, warmup=50,
               decay="constant", ema=None, stats="spectrum", width=16, num_bins=32, window=100, flush_every=400,
               eval_every=200, give_total_steps=False),
        Family("patches_edm", "heldout",
               "residual MLP on 4x4 colour patches of the sample photos; EDM preconditioning and lognormal "
               "sigma (F-loss); EMA 0.999 and live held-out eval every 300 steps; warm-up 100 then cosine; "
               "data_var only",
               data="patches_colour4", model="mlp", process="edm", prediction="edm", steps=3000, lr=2e-3,
               warmup=100, decay="cosine", ema=0.999, stats="var", width=96, num_bins=40, window=100,
               flush_every=300, eval_every=300),
        Family("digits_mlp_units", "units",
               "the digits corpus's residual MLP, trained once with epsilon and once with v-prediction (DDPM "
               "linear betas, 1,500 steps, warm-up 100 then cosine): the common-unit comparison's proof",
               data="digits", model="mlp", process="vp", prediction="epsilon", steps=1500, lr=5e-3, warmup=100,
               decay="cosine", ema=None, stats="spectrum", width=128, num_bins=20, window=100, flush_every=300,
               eval_every=300),
    )
}


@dataclass(frozen=True)
class RunSpec:
    family: str
    name: str
    seed: int = 0
    kind: str = "healthy"  # healthy | defect | regression
    change: str = "none"
    expect: tuple[str, ...] = ()  # findings `diffaudit report` must fire
    gate: str | None = "pass"  # expected `compare` verdict against a healthy baseline (None: not a gate case)
    lr_mult: float = 1.0
    width_div: int = 1
    use_time: bool = True
    fp16_x0: bool = False  # x0-parameterised net, target conversion with an fp16 copy of the schedule
    loss_clamp: float | None = None  # the batch loss is clamped at this value (no gradient above it)
    t_scale: float = 1.0  # the logger is given t * t_scale
    prediction: str | None = None  # train with this target instead of the family's


def healthy(fam: str, seed: int) -> RunSpec:
    return RunSpec(fam, f"healthy_s{seed:02d}", seed=seed)


def units_runs(fam: Family, seeds: int) -> list[RunSpec]:
    """The units family: the same network with two targets, and a 4x narrower one with each."""
    f, out = fam.name, []
    for pred in ("epsilon", "v_prediction"):
        short = "eps" if pred == "epsilon" else "v"
        out += [RunSpec(f, f"{short}_s{s:02d}", s, "healthy", f"target {pred}", (), "pass", prediction=pred)
                for s in range(min(seeds, 3))]
        out.append(RunSpec(f, f"{short}_narrow4", 100, "regression", f"target {pred}, network 4x narrower", (),
                           "regression", width_div=4, prediction=pred))
    return out


def defects(fam: Family) -> list[RunSpec]:
    f = fam.name
    seed = 100  # defect runs use a seed no healthy run has
    out = [
        RunSpec(f, "lr_high", seed, "defect", "peak learning rate 50x", ("loss.exploding",), "regression",
                lr_mult=50.0),
        RunSpec(f, "no_time", seed, "defect", "time conditioning removed (the network gets no t)",
                ("time_conditioning.unused",), "regression", use_time=False),
        RunSpec(f, "narrow16", seed, "defect", "network 16x narrower", (), "regression", width_div=16),
        RunSpec(f, "frozen", seed, "defect", "learning rate 0 (weights never update)",
                ("loss.stagnant_above_optimum",), "regression", lr_mult=0.0),
        RunSpec(f, "loss_clamp", seed, "defect", "batch loss clamped at 0.05 (torch.clamp(loss, max=0.05)): no gradient "
                "flows while the loss is above it", ("grad.dead",), "regression", loss_clamp=0.05),
        RunSpec(f, "lr_div10", seed, "regression", "learning rate / 10", (), "regression", lr_mult=0.1),
        RunSpec(f, "width_div4", seed, "regression", "network 4x narrower", (), "regression", width_div=4),
    ]
    if fam.process == "vp":
        out.append(RunSpec(f, "overflow", seed, "defect",
                           "x0-parameterised net whose target conversion divides by sigma from an fp16 copy of the "
                           "schedule: sigma rounds to 0 at the lowest t, the loss overflows",
                           ("nonfinite.loss",), "regression", fp16_x0=True))
    if fam.process == "flow":
        out.append(RunSpec(f, "t_scaled", seed, "defect", "the logger is given t*1000 instead of t in [0, 1]",
                           ("timesteps.invalid",), None, t_scale=1000.0))
    return out


# ----------------------------------------------------------------------------
# Data


def _photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(im, dtype=np.float32) / 127.5 - 1.0 for im in load_sample_images().images]


def _patches(side: int, colour: bool, n: int, rng: np.random.Generator) -> np.ndarray:
    ims = _photos()
    out = np.empty((n, 3 if colour else 1, side, side), np.float32)
    for i in range(n):
        im = ims[i % len(ims)]
        y, x = rng.integers(0, im.shape[0] - side), rng.integers(0, im.shape[1] - side)
        p = im[y : y + side, x : x + side]
        out[i] = p.transpose(2, 0, 1) if colour else p.mean(2, keepdims=True).transpose(2, 0, 1)
    return out


def _shapes(n: int, rng: np.random.Generator, side: int = 8) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5
    out = np.full((n, 1, side, side), -1.0, np.float32)
    for i in range(n):
        level = -1.0 + 2.0 * rng.uniform(0.35, 1.0)
        kind = rng.integers(3)
        if kind == 0:  # box
            y0, x0 = rng.integers(0, side - 2, 2)
            h, w = rng.integers(2, side - max(y0, x0) + 1, 2)
            mask = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
        elif kind == 1:  # disc
            cy, cx = rng.uniform(2, side - 2, 2)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(1.5, 3.5) ** 2
        else:  # bar at a random angle
            a = rng.uniform(0, math.pi)
            c = rng.uniform(2.5, side - 2.5)
            mask = np.abs((xx - side / 2) * math.sin(a) - (yy - side / 2) * math.cos(a) - (c - side / 2)) < 0.9
        out[i, 0][mask] = level
    return out + rng.normal(0, 0.03, out.shape).astype(np.float32)


def load_family_data(fam: Family) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) float32 tensors, image-shaped (N, C, H, W); fixed for the family."""
    rng = np.random.default_rng(DATA_SEED)
    if fam.data == "patches_grey8":
        x = _patches(8, False, 20_000 + HELD_OUT, rng)
    elif fam.data == "patches_colour4":
        x = _patches(4, True, 20_000 + HELD_OUT, rng)
    elif fam.data == "shapes8":
        x = _shapes(6_000 + HELD_OUT, rng)
    elif fam.data == "digits":
        from sklearn.datasets import load_digits

        x = (load_digits().data.astype(np.float32) / 8.0 - 1.0).reshape(-1, 1, 8, 8)
        x = x[rng.permutation(len(x))]
    else:
        raise ValueError(fam.data)
    held = HELD_OUT if fam.data != "digits" else 270
    return torch.from_numpy(x[held:].copy()), torch.from_numpy(x[:held].copy())


# ----------------------------------------------------------------------------
# Models


class ConvBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.c1 = nn.Conv2d(width, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, h, e):
        return h + self.c2(nn.functional.silu(self.c1(nn.functional.silu(h + e))))


class ConvDenoiser(nn.Module):
    """Two residual 3x3 conv blocks at full resolution; the time embedding is a per-channel bias."""

    def __init__(self, channels: int, width: int, temb: int = 32, use_time: bool = True):
        super().__init__()
        self.use_time, self.temb = use_time, temb
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.time = nn.Sequential(nn.Linear(temb, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(ConvBlock(width) for _ in range(2))
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, t):
        h = self.inp(x)
        e = self.time(timestep_embedding(t, self.temb))[:, :, None, None] if self.use_time else 0.0
        for blk in self.blocks:
            h = blk(h, e)
        return self.out(nn.functional.silu(h))


class FlatMLP(nn.Module):
    """The digits corpus's residual MLP on flattened images."""

    def __init__(self, shape, width: int, use_time: bool = True):
        super().__init__()
        self.shape = tuple(shape)
        self.net = Denoiser(d=int(np.prod(shape)), width=width, use_time=use_time)

    def forward(self, x, t):
        return self.net(x.flatten(1), t).reshape(x.shape)


# ----------------------------------------------------------------------------
# Processes: noising, targets, per-sample losses


class Process:
    """x_t, the network's conditioning input, the target, and the per-sample loss of one family."""

    def __init__(self, fam: Family, spec: RunSpec, sigma_data: float):
        self.fam, self.spec, self.sigma_data = fam, spec, sigma_data
        if fam.process == "vp":
            if fam.schedule == "diffusers_cosine":
                from diffusers import DDPMScheduler

                self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                               prediction_type="v_prediction")
                betas = self.scheduler.betas.double()
            else:
                betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
            self.betas = betas
            self.alphas_cumprod = torch.cumprod(1 - betas, 0)
            one_minus = -torch.expm1(torch.log1p(-betas).cumsum(0))
            self.a, self.s = self.alphas_cumprod.sqrt().float(), one_minus.sqrt().float()
            ab16 = self.alphas_cumprod.to(torch.float16)
            self.a16, self.s16 = ab16.sqrt(), (1 - ab16).sqrt()

    def sample_t(self, n: int, g: torch.Generator) -> torch.Tensor:
        if self.fam.process == "vp":
            return torch.randint(1000, (n,), generator=g)
        if self.fam.process == "flow":
            return torch.sigmoid(torch.randn(n, generator=g))  # logit-normal (SD3's default)
        return torch.exp(-1.2 + 1.2 * torch.randn(n, generator=g))  # EDM's lognormal sigma

    def stratified_t(self, n: int, g: torch.Generator) -> torch.Tensor:
        u = (torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=g, dtype=torch.float64)) / n
        u = u[torch.randperm(n, generator=g)]
        if self.fam.process == "vp":
            return (u * 1000).long().clamp_max(999)
        if self.fam.process == "flow":
            return u.float().clamp(1e-4, 1 - 1e-4)
        return torch.exp(math.log(SIGMA_MIN) + u * (math.log(SIGMA_MAX) - math.log(SIGMA_MIN))).float()

    def embed_input(self, t: torch.Tensor) -> torch.Tensor:
        """What the network is conditioned on, on a 0..1000 scale like DDPM's integer t."""
        if self.fam.process == "vp":
            return t.float()
        if self.fam.process == "flow":
            return t.float() * 1000
        return (torch.log(t.float()) - math.log(SIGMA_MIN)) / (math.log(SIGMA_MAX) - math.log(SIGMA_MIN)) * 1000

    def per_sample_loss(self, model, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                        t_cond: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over elements of (prediction - target)^2, one value per sample, unweighted, with graph.

        ``t_cond``: tell the network this noise level instead of the true one (the time probe).
        """
        view = (-1,) + (1,) * (x0.dim() - 1)
        p = self.fam.process
        cond = self.embed_input(t if t_cond is None else t_cond)
        if p == "vp":
            a, s = self.a[t].view(view), self.s[t].view(view)
            x_t = a * x0 + s * eps
            if self.spec.fp16_x0:  # x0-parameterised; the conversion to the target divides by s in fp16
                x0_hat = model(x_t, cond).half()
                a16, s16 = self.a16[t].view(view), self.s16[t].view(view)
                eps_hat = (x_t.half() - a16 * x0_hat) / s16
                pred = eps_hat if self.fam.prediction == "epsilon" else a16 * eps_hat - s16 * x0_hat
                pred = pred.float()
            else:
                pred = model(x_t, cond)
            if self.fam.prediction == "epsilon":
                target = eps
            elif hasattr(self, "scheduler"):  # diffusers' own definition of v
                target = self.scheduler.get_velocity(x0, eps, t)
            else:
                target = a * eps - s * x0
        elif p == "flow":
            tt = t.view(view)
            x_t = (1 - tt) * x0 + tt * eps
            pred, target = model(x_t, cond), eps - x0
        else:  # EDM: D = c_skip x + c_out F(c_in x, c_noise); lambda ||D - x0||^2 = ||F - (x0 - c_skip x)/c_out||^2
            sd = self.sigma_data
            sig = t.view(view)
            x = x0 + sig * eps
            c_skip = sd**2 / (sig**2 + sd**2)
            c_out = sig * sd / (sig**2 + sd**2).sqrt()
            c_in = 1 / (sig**2 + sd**2).sqrt()
            pred = model(c_in * x, cond)
            target = (x0 - c_skip * x) / c_out
        return ((pred - target) ** 2).flatten(1).mean(1)


def lr_at(fam: Family, peak: float, step: int) -> float:
    if step < fam.warmup:
        return peak * (step + 1) / fam.warmup
    u = min(1.0, (step - fam.warmup) / max(1, fam.steps - fam.warmup))
    if fam.decay == "cosine":
        return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * u)))
    if fam.decay == "linear":
        return peak * (1 - 0.9 * u)
    return peak


# ----------------------------------------------------------------------------
# A run


def train(spec: RunSpec, run_dir: Path, *, steps: int | None = None) -> dict:
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    fam = FAMILIES[spec.family]
    if spec.prediction:
        fam = replace(fam, prediction=spec.prediction)
    n_steps = steps or fam.steps
    if steps:
        fam = replace(fam, steps=steps, warmup=min(fam.warmup, max(1, steps // 10)))
    torch.manual_seed(spec.seed)
    train_x, held = load_family_data(fam)
    stats = data_statistics(train_x[:8000], spectrum=fam.stats == "spectrum")
    if fam.stats == "var":
        stats["data_spectrum"] = None
    sigma_data = math.sqrt(stats["data_var"])
    proc = Process(fam, spec, sigma_data)
    width = max(2, fam.width // spec.width_div)
    shape = tuple(train_x.shape[1:])
    model = (ConvDenoiser(shape[0], width, use_time=spec.use_time) if fam.model == "conv"
             else FlatMLP(shape, width, use_time=spec.use_time))
    ema = copy.deepcopy(model).requires_grad_(False) if fam.ema else None
    peak = fam.lr * spec.lr_mult
    opt = torch.optim.AdamW(model.parameters(), lr=peak, weight_decay=0.0)
    g = torch.Generator().manual_seed(spec.seed)
    ge = torch.Generator().manual_seed(DATA_SEED)
    et = proc.stratified_t(len(held), ge)
    eeps = torch.randn(held.shape, generator=ge)

    kw = dict(process=fam.process, prediction=fam.prediction, num_bins=fam.num_bins, window=fam.window,
              flush_every=fam.flush_every, probe_every=fam.probe_every, **stats,
              check_timesteps="count" if spec.t_scale != 1.0 else "raise",
              total_steps=n_steps if fam.give_total_steps else None)
    if fam.process == "vp":
        kw.update(alphas_cumprod=proc.alphas_cumprod, betas=proc.betas)
    if fam.process == "edm":
        kw.update(sigma_data=sigma_data, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    config = {**{k: v for k, v in asdict(spec).items() if k not in ("expect",)},
              "family": fam.name, "data": fam.data, "model": fam.model, "width": width, "steps": n_steps,
              "peak_lr": peak, "decay": fam.decay, "ema": fam.ema, "batch": fam.batch, "n_train": len(train_x)}
    t0 = time.perf_counter()
    with RunLogger(run_dir, config=config, **kw) as logger:
        for step in range(n_steps):
            lr = lr_at(fam, peak, step)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = torch.randint(len(train_x), (fam.batch,), generator=g)
            t = proc.sample_t(fam.batch, g)
            eps = torch.randn((fam.batch, *shape), generator=g)
            x0 = train_x[idx]
            per_sample = proc.per_sample_loss(model, x0, t, eps)
            logger.probe_gradients(model, t, per_sample, step)
            if spec.t_scale == 1.0:  # does the loss depend on the noise level the network is told?
                logger.probe_time(step, lambda tf: proc.per_sample_loss(model, x0, t, eps, t_cond=tf),
                                  timesteps=t, losses=per_sample.detach())
            opt.zero_grad(set_to_none=True)
            loss = per_sample.mean()
            if spec.loss_clamp is not None:
                loss = torch.clamp(loss, max=spec.loss_clamp)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), fam.clip)
            logger.log(step, timesteps=t * spec.t_scale, losses=per_sample.detach(), grad_norm=gn,
                       clip_threshold=fam.clip, lr=lr)
            if torch.isfinite(gn):  # a non-finite gradient skips the update, as GradScaler does
                opt.step()
                if ema is not None:
                    with torch.no_grad():
                        ep, mp_ = list(ema.parameters()), [p.detach() for p in model.parameters()]
                        torch._foreach_mul_(ep, fam.ema)
                        torch._foreach_add_(ep, mp_, alpha=1 - fam.ema)
            if (step + 1) % fam.eval_every == 0 or step + 1 == n_steps:
                with torch.no_grad():
                    ev = proc.per_sample_loss(model, held, et, eeps)
                    logger.log(step, timesteps=et * spec.t_scale, losses=ev, split="eval")
                    if ema is not None:
                        logger.log(step, timesteps=et * spec.t_scale, losses=proc.per_sample_loss(ema, held, et, eeps),
                                   split="ema")
    return {"name": f"{fam.name}/{spec.name}", "seconds": time.perf_counter() - t0,
            "last_loss": float(per_sample.detach().mean())}


def run_job(spec: RunSpec, dest: Path, steps: int | None) -> dict:
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return train(spec, dest, steps=steps)


def label(spec: RunSpec) -> dict:
    out = {"kind": spec.kind, "seed": spec.seed, "change": spec.change, "expect": list(spec.expect), "gate": spec.gate}
    if spec.prediction:
        out["prediction"] = spec.prediction
    return out


def write_labels(specs: list[RunSpec], out: Path) -> Path:
    path = out / "labels.json"
    labels = json.loads(path.read_text()) if path.exists() else {"families": {}}
    for spec in specs:
        fam = FAMILIES[spec.family]
        entry = labels["families"].setdefault(fam.name, {})
        entry.update(role=fam.role, description=fam.description, steps=fam.steps,
                     habits={"process": fam.process, "prediction": fam.prediction, "ema": fam.ema,
                             "decay": fam.decay, "warmup": fam.warmup, "data_stats": fam.stats, "model": fam.model,
                             "total_steps_given": fam.give_total_steps})
        entry.setdefault("runs", {})[spec.name] = label(spec)
        entry["runs"] = dict(sorted(entry["runs"].items()))
    labels["families"] = dict(sorted(labels["families"].items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(labels, indent=1) + "\n")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="example: python examples/make_family_corpus.py --families shapes_mlp --seeds 2")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--runs", nargs="+", default=["all"], help="all, healthy, defects, or run names (lr_high, ...)")
    ap.add_argument("--seeds", type=int, default=8, help="healthy runs per family, seeds 0..N-1 (default 8)")
    ap.add_argument("--steps", type=int, default=None, help="override every run's step count (scratch output only)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    out = args.out.resolve()
    if args.steps is not None and out == DEFAULT_OUT.resolve():
        ap.error("--steps makes shorter runs than the labels describe: give --out a scratch directory")
    want = set(args.runs)
    specs = []
    for name in args.families:
        fam = FAMILIES[name]
        if fam.role == "units":
            specs += [r for r in units_runs(fam, args.seeds) if want & {"all", "healthy", r.name}]
            continue
        if want & {"all", "healthy"}:
            specs += [healthy(name, s) for s in range(args.seeds)]
        specs += [d for d in defects(fam) if want & {"all", "defects", d.name}]
    print(f"making {len(specs)} run(s) in {out} with {args.jobs} process(es)", flush=True)
    t0 = time.perf_counter()
    specs.sort(key=lambda s: -FAMILIES[s.family].steps * (2 if FAMILIES[s.family].model == "conv" else 1))
    done = []
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
        futs = {pool.submit(run_job, s, out / s.family / s.name, args.steps): s for s in specs}
        for fut in cf.as_completed(futs):
            r = fut.result()
            done.append(futs[fut])
            print(f"  {r['name']:<34} {r['seconds']:6.1f} s  last loss {r['last_loss']:.4g}", flush=True)
    if args.steps is None or out != DEFAULT_OUT.resolve():
        write_labels(done, out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"done: {len(done)} run(s) in {time.perf_counter() - t0:.1f} s; {out} holds {size / 1e6:.2f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
