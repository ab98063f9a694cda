"""Findings: small rules over an :class:`~diffaudit.analysis.Analysis`, each computing a number and saying why.

A rule reads numbers that :mod:`diffaudit.analysis` already computed (per-bin
table, step-series summaries, schedule, probes, eval) and returns at most one
:class:`Finding`: a stable ``id``, a severity, the evidence as numbers, one line
of evidence in words and one recommendation. Rules never read the run again, so
evaluating all of them costs nothing next to the analysis.

Severity follows impact, never a ratio in one bin (a finding that fires on every healthy run teaches users to
ignore the tool): an
excess over L* counts as the share of the run's total loss it accounts for,
weighted by how often the sampler visits each bin. ``fail`` is kept for what
breaks training or the model (divergence, non-finite values, a frozen model, a
broken schedule); ``warn`` for what costs quality; ``info`` for what is true and
worth knowing but asks for no action.

Severities: ``fail`` > ``warn`` > ``info``. Every threshold lives in
:class:`Thresholds`, with what it means next to it; :data:`DETECTORS` says, per id,
its severities and what fires it (the README's table is made from it by
:func:`diffaudit.present.markdown.findings_table`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.results import GATE_SEVERITIES, SEVERITIES, SEVERITY_RANK, Analysis, Finding  # noqa: F401
from diffaudit.timeprobe import IGNORED_MARGIN
from diffaudit.words import MISSING, describe_bins, num, pct


@dataclass(frozen=True)
class Thresholds:
    """Every number a rule compares against. Calibrated so that no warn/fail fires on healthy runs."""

    alpha: float = 0.05  # level of per-bin tests after Benjamini-Yekutieli correction
    # loss.exploding
    explode_ratio: float = 2.0  # late loss level / best level reached: a lasting blow-up
    explode_z: float = 8.0  # ... and that rise in robust standard deviations of the best block
    blowup_ratio: float = 100.0  # one step's loss / its running median: a blow-up of two orders of magnitude
    spike_big_ratio: float = 10.0  # a single spike this large (x running median) is worth a warning
    # loss.increasing
    increase_min: float = 0.05  # relative rise of a bin (or of the run's loss) over the trend stretch
    increase_share: float = 0.01  # rising bins must carry this share of the run's loss
    # loss.spikes
    spike_min_events: int = 3  # at least this many spike events (robust z > 8 over a 101-step median)
    spike_per_10k: float = 2.0  # ... and at least this many per 10,000 steps
    # nonfinite.*
    nonfinite_fail_share: float = 1e-5  # non-finite share of samples (or steps) above which it is `fail`
    # clip.*
    clip_info: float = 0.1  # late clip rate that is worth saying
    clip_warn: float = 0.5  # late clip rate: the threshold clips most updates
    clip_rise: float = 0.1  # rise of the clip rate over the trend stretch (absolute)
    clip_rise_min_rate: float = 0.1  # ... while the late rate is at least this
    # loss.stagnant_above_optimum / loss.converged
    stagnation_margin: float = 0.05  # |relative change over the trend stretch| that counts as flat (TOST)
    stagnant_warn: float = 0.2  # share of the run's loss above L* in flat bins
    stagnant_fail: float = 0.5
    never_improved: float = 0.9  # without L*: late / early level above this means it never learned
    # bin.above_gaussian_bound
    bound_z: float = 3.0  # a bin's late loss above the Gaussian bound by this many standard errors
    bound_warn: float = 0.10  # share of the run's loss that is above the bound (healthy corpus runs: 5-6%)
    bound_fail: float = 0.30
    # time_conditioning.broken
    flat_range: float = 0.2  # coefficient of variation of the late loss across bins / that of L*: below it, flat
    flat_min_lstar_range: float = 0.1  # L* must vary across bins (coefficient of variation) at least this much
    # bins.spread_large
    spread_lag: float = 0.5  # a bin has closed less than this fraction of its gap to L* ...
    spread_median: float = 0.8  # ... while the median bin has closed at least this fraction
    spread_share: float = 0.05  # and the lagging bins' remaining gap is this share of the run's loss
    # grad.imbalance
    grad_ratio: float = 10.0  # largest per-bin probe gradient norm / median over bins
    # bins.undersampled
    undersampled: float = 0.2  # a bin's sample count / the uniform share: below it the bin is barely covered
    min_samples: int = 100  # ... or fewer samples than this in the whole run (while the median bin has 10x)
    min_expected: float = 50.0  # coverage is judged only when a uniform sampler would give a bin this many samples
    # eval.divergence
    eval_gap_warn: float = 0.1  # late eval loss above train loss, as a share of the train loss
    eval_gap_fail: float = 0.5
    eval_z: float = 3.0  # ... by this many standard errors
    eval_rise: float = 0.05  # eval loss rose this much above its best, or the gap grew this much
    # memorization (needs `diffaudit optimum`)
    memorize_fraction: float = 0.5  # train loss closer to the empirical floor than this fraction of the way
    # schedule.*
    terminal_snr_warn: float = 1e-3  # alpha_bar/(1-alpha_bar) at the last timestep (linear DDPM: 4e-5)
    terminal_snr_fail: float = 0.1
    precision_info: float = 1e-4  # relative error of 1 - alpha_bar at t = 0 from storing alpha_bar
    precision_warn: float = 1e-2
    precision_fail: float = 0.5
    # run lifecycle: findings that need a converged loss are provisional while the run is early
    early_progress: float = 0.8  # an unfinished run short of this share of its planned steps is early
    # grad.dead
    dead_grad_floor: float = 1e-12  # a pre-clip grad norm at or below this is no gradient at all
    dead_warn: float = 0.01  # share of steps (finite loss) without gradient: `warn`
    dead_fail: float = 0.5  # ... `fail`: most updates do nothing
    # eval.ema
    ema_z: float = 3.0  # EMA vs live difference stated as lag or help only beyond this many standard errors


def _where(a: "Analysis", bins) -> str:
    """'bins 0-3 (t 0-199)': bin indices and the noise levels they cover, in the run's unit."""
    edges = np.append(a.bins["t_lo"].to_numpy(), a.bins["t_hi"].to_numpy()[-1:]) if a.bins.height else np.zeros(1)
    return describe_bins(a.run.process, edges, bins)


def _rel(x) -> str:
    """A relative excess: '35% above' below 100%, '16x' from there (as a multiple of the reference)."""
    if x is None or not math.isfinite(x):
        return MISSING
    return pct(x) + " above" if x < 1 else f"{num(1 + x, 3)}x"


def _fine(a: "Analysis", lo: int, hi: int) -> tuple[int, int]:
    """Fine bins [lo, hi) clipped to the table (probe bins are given in fine-bin indices)."""
    nb = a.bins.height
    return max(int(lo), 0), max(min(int(hi), nb), max(int(lo), 0))


def _col(a: "Analysis", name: str) -> np.ndarray:
    return a.bins[name].to_numpy().astype(np.float64) if name in a.bins.columns else np.full(a.bins.height, np.nan)


def _finding(rule: "Detector", severity: str, message: str, recommendation: str, evidence: dict, bins=()) -> Finding:
    return Finding(rule.id, severity, rule.title, message, recommendation, evidence, tuple(int(b) for b in bins))


MIN_SNR_GAMMA = 5.0  # the usual min-SNR-gamma (Hang et al. 2023)


def min_snr_weight(prediction: str, snr) -> np.ndarray | None:
    """Min-SNR-5 loss weight in the prediction's own units (None where it is not defined: flow, EDM).

    epsilon: min(snr, 5) / snr (lowers low-noise levels, keeps high-noise ones);
    v_prediction: min(snr, 5) / (snr + 1); sample (x0): min(snr, 5) (lowers high-noise levels).
    """
    snr = np.asarray(snr, np.float64)
    m = np.minimum(snr, MIN_SNR_GAMMA)
    with np.errstate(invalid="ignore", divide="ignore"):
        if prediction == "epsilon":
            return m / snr
        if prediction == "v_prediction":
            return m / (snr + 1.0)
        if prediction == "sample":
            return m
    return None


def weighting_advice(a: "Analysis", bins, direction: str) -> str:
    """How to move training signal toward (``"up"``) or away from (``"down"``) these bins, checked
    against the run's prediction type: min-SNR is named only where it moves them that way."""
    bins = np.asarray(sorted(int(b) for b in bins), np.int64)
    if a.run.process != "vp":
        sampler = "log-normal" if a.run.process == "edm" else "logit-normal"
        return (f"{'sample these noise levels more often' if direction == 'up' else 'sample them less often'} "
                f"(the {sampler} timestep sampler's location and scale) or "
                f"{'raise' if direction == 'up' else 'lower'} their loss weight directly")
    snr = np.exp(_col(a, "log_snr"))
    w = min_snr_weight(a.run.prediction, snr)
    moves = None
    if w is not None and bins.size and np.isfinite(w).any():
        rel = float(np.nanmean(w[bins]) / np.nanmean(w))  # against the average level: weights are relative
        moves = "up" if rel > 1.05 else ("down" if rel < 0.95 else "none")
    base = ("sample these timesteps more often or raise their loss weight directly" if direction == "up"
            else "lower their loss weight or sample these timesteps less often")
    if moves == direction:
        return base + " (e.g. min-SNR loss weighting, which does that for this prediction type)"
    if moves is not None and moves != "none":
        return base + (f" (not min-SNR: for {a.run.prediction} prediction it "
                       f"{'lowers' if moves == 'down' else 'raises'} these noise levels' weight)")
    return base


# ----------------------------------------------------------------------------
# Rules


@dataclass(frozen=True)
class Detector:
    """One finding's detector: computes its numbers from an Analysis and says why it fires.

    (Named apart from the gate's ``Rule``, a limit on a metric given as ``--rule``.)"""

    id: str
    title: str
    severities: str  # which severities it can give, e.g. "warn / fail"
    fires: str  # one line: what fires it and the threshold (the README table)
    check: Callable[["Analysis", Thresholds], Finding | None] = field(repr=False)

    def __call__(self, a: "Analysis", th: Thresholds) -> Finding | None:
        return self.check(a, th)


DETECTORS: list[Detector] = []


def detector(id: str, title: str, severities: str, fires: str):
    """Register the decorated function as the detector of finding `id`."""

    def deco(fn):
        r = Detector(id, title, severities, fires, fn)
        DETECTORS.append(r)
        return r

    return deco


# -- what the logs themselves show is broken upstream of the model -----------------

#: findings that read the model from the per-bin losses: when the timesteps were wrong, the bins
#: hold other noise levels than they say (or none), so these would blame a model for its input
_MODEL_FROM_BINS = ("bin.above_gaussian_bound", "bins.spread_large", "time_conditioning.broken",
                    "bins.undersampled", "loss.stagnant_above_optimum", "loss.converged", "memorization",
                    "grad.imbalance", "eval.divergence")
#: findings whose advice is about the learning rate, clipping or the network, none of which matters
#: while no gradient reaches the weights
_BLAME_WITHOUT_GRADIENT = ("loss.stagnant_above_optimum", "time_conditioning.broken", "time_conditioning.unused",
                           "bin.above_gaussian_bound",
                           "bins.spread_large", "loss.increasing", "loss.spikes", "loss.converged",
                           "grad.imbalance", "clip.rate_high", "clip.rate_rising")
#: findings whose evidence needs a run past its early phase: provisional (`info`) while the run is early.
#: Distance to L*, spread across bins, stagnation, the loss profile and the eval gap need a converged
#: loss; the clip rate and the per-level gradient norms of the first steps (large gradients under
#: warm-up) are not the ones the run settles at
CONVERGENCE_FINDINGS = ("bin.above_gaussian_bound", "bins.spread_large", "loss.stagnant_above_optimum",
                        "loss.converged", "memorization", "eval.divergence", "time_conditioning.broken",
                        "clip.rate_high", "clip.rate_rising", "grad.imbalance")


@detector(
    "timesteps.invalid", "Timesteps outside the process", "fail",
    "the logger counted training samples whose timestep cannot belong to the process (vp: non-integer or "
    "outside [0, T); flow: outside [0, 1]; edm: not positive or beyond 10x [sigma_min, sigma_max]); they are "
    "excluded from every statistic, and the findings that read the model from the bins are withheld",
)
def _timesteps_invalid(a: "Analysis", th: Thresholds) -> Finding | None:
    T = a.timesteps
    if T is None or not T.available or T.bad_samples <= 0:
        return None
    return _finding(
        _R["timesteps.invalid"], "fail",
        f"{T.bad_samples:,} training samples ({pct(T.share)}) on {T.bad_steps:,} steps, first at step "
        f"{T.first_step}, have timesteps that cannot belong to this {a.run.process} process (expected "
        f"{T.valid}; logged {num(T.t_min)} to {num(T.t_max)}): {T.cause}",
        "pass the logger (and the network) the timesteps the noise was drawn at, in the process's own units; "
        "until then the per-noise-level findings are not judged, since the bins do not hold what they say",
        {"bad_samples": T.bad_samples, "share": T.share, "bad_steps": T.bad_steps, "first_step": T.first_step,
         "t_min": T.t_min, "t_max": T.t_max, "cause": T.cause, "withheld": list(_MODEL_FROM_BINS)},
    )


@detector(
    "grad.dead", "No gradient flows", "warn / fail",
    "the pre-clip grad norm is 0 (<= `dead_grad_floor`, 1e-12) on >= `dead_warn` (1%) of the steps whose loss "
    "is finite (`fail` >= `dead_fail`, 50%): a loss clamp, a detach or frozen parameters; the learning-rate, "
    "clipping and time-embedding findings are withheld while it fires",
)
def _grad_dead(a: "Analysis", th: Thresholds) -> Finding | None:
    G = a.grad_flow
    if G is None or not G.steps or G.share is None or G.share < th.dead_warn:
        return None
    sev = "fail" if G.share >= th.dead_fail else "warn"
    return _finding(
        _R["grad.dead"], sev,
        f"the pre-clip gradient norm is 0 on {G.dead_steps:,} of {G.steps:,} steps ({pct(G.share)}; "
        f"{pct(G.late_share)} late), first at step {G.first_step}, while the loss is finite "
        f"(median grad norm {num(G.median)}): no gradient reaches the weights on those steps",
        "find what cuts the graph: a clamp or threshold on the loss (per-sample loss clipping zeroes the "
        "gradient of every sample above it), a .detach() or torch.no_grad() around the model, parameters with "
        "requires_grad=False, or a grad norm read after zero_grad()",
        {"dead_steps": G.dead_steps, "steps": G.steps, "share": G.share, "late_share": G.late_share,
         "first_step": G.first_step, "median": G.median, "floor": G.floor,
         "withheld": list(_BLAME_WITHOUT_GRADIENT)},
    )


@detector(
    "optim.lr_zero", "Learning rate is 0", "fail",
    "the logged learning rate is exactly 0 on at least half of the steps that log one (a warm-up that starts at 0, "
    "or a decay that ends there, touches a step or two): the optimizer cannot move the weights",
)
def _lr_zero(a: "Analysis", th: Thresholds) -> Finding | None:
    G = a.grad_flow
    if G is None or G.lr_steps < 10 or G.lr_zero_steps < 0.5 * G.lr_steps:
        return None
    return _finding(
        _R["optim.lr_zero"], "fail",
        f"the learning rate is 0 on {G.lr_zero_steps:,} of the {G.lr_steps:,} steps that log it, first at step "
        f"{G.lr_zero_first}: the weights do not move",
        "check the optimizer's lr and the scheduler (a LambdaLR factor of 0, a warm-up that never ends, a decay that "
        "starts at its end), and that the lr logged is the one the optimizer uses",
        {"lr_zero_steps": G.lr_zero_steps, "lr_steps": G.lr_steps, "first_step": G.lr_zero_first},
    )


# -- loss over steps ---------------------------------------------------------


@detector(
    "loss.exploding", "Loss exploded", "fail",
    "a step's loss >= `blowup_ratio` (100) x its running median (101 steps), or the last 10% of steps sit "
    ">= `explode_ratio` (2) x the best level reached and >= 8 robust sd above it, or the loss turned non-finite "
    "for good",
)
def _exploding(a: "Analysis", th: Thresholds) -> Finding | None:
    L, S = a.loss, a.spikes
    blowup = S.max_ratio is not None and S.max_ratio >= th.blowup_ratio
    lasting = (
        L.late_over_best is not None and L.late_over_best >= th.explode_ratio and (L.shift_z or 0) >= th.explode_z
    )
    diverged = a.nonfinite.diverged
    if not (blowup or lasting or diverged):
        return None
    parts = []
    if blowup:
        parts.append(
            f"loss reached {num(S.max_ratio)}x its running median at step {S.max_ratio_step} "
            f"({num(S.max_ratio_loss)} vs {num(S.max_ratio_median)})"
        )
    if lasting:
        parts.append(f"the last 10% of steps sit at {num(L.late_over_best)}x the best level ({num(L.late_level)} vs {num(L.best_level)})")
    if diverged:
        parts.append(f"every loss is non-finite from step {a.nonfinite.diverged_from} on")
    if a.spikes.max_grad_ratio is not None and a.spikes.max_grad_ratio >= th.spike_big_ratio:
        parts.append(f"grad norm there peaked at {num(a.spikes.max_grad_ratio)}x its running median")
    return _finding(
        _R["loss.exploding"], "fail", "; ".join(parts),
        "lower the peak learning rate (or add warm-up) and check the gradient clip; resume from a checkpoint "
        "before the blow-up",
        {
            "max_ratio": S.max_ratio, "max_ratio_step": S.max_ratio_step, "loss_at_spike": S.max_ratio_loss,
            "median_at_spike": S.max_ratio_median, "late_over_best": L.late_over_best,
            "late_level": L.late_level, "best_level": L.best_level, "shift_z": L.shift_z,
            "max_grad_ratio": S.max_grad_ratio, "diverged_from": a.nonfinite.diverged_from,
        },
    )


@detector(
    "loss.increasing", "Loss increasing", "warn",
    "over the trend stretch (last half of training) the loss rises significantly (Mann-Kendall on batch means, "
    "BY-adjusted q < `alpha` per bin) by >= `increase_min` (5%), in bins carrying >= 1% of the run's loss, "
    "or in the run's loss as a whole",
)
def _increasing(a: "Analysis", th: Thresholds) -> Finding | None:
    q, rel, lo = _col(a, "q_value"), _col(a, "rel_change"), _col(a, "rel_lo")
    share = _col(a, "loss_share")
    up = (q < th.alpha) & (lo > 0) & (rel >= th.increase_min)
    bins = np.flatnonzero(up)
    rising_share = float(np.nansum(share[bins])) if bins.size else 0.0
    L = a.loss
    whole = (
        L.trend_p is not None and L.trend_p < th.alpha and (L.trend_lo or 0) > 0
        and (L.trend_rel or 0) >= th.increase_min
    )
    if not (whole or rising_share >= th.increase_share):
        return None
    if whole:
        msg = (f"the run's loss rose {pct(L.trend_rel)} over steps {L.trend_from}-{L.trend_to} "
               f"(95% CI {pct(L.trend_lo)} to {pct(L.trend_hi)}, p={num(L.trend_p, 2)})")
    else:
        msg = ""
    if bins.size:
        worst = bins[np.argmax(rel[bins])]
        part = (f"{_where(a, bins)} rise significantly (q < {th.alpha}), up to {pct(rel[worst])} in bin {worst}; "
                f"they carry {pct(rising_share)} of the loss")
        msg = f"{msg}; {part}" if msg else part
    return _finding(
        _R["loss.increasing"], "warn", msg,
        "lower the learning rate or decay it sooner; if only some noise levels rise, check their loss weighting",
        {"trend_rel": L.trend_rel, "trend_lo": L.trend_lo, "trend_hi": L.trend_hi, "trend_p": L.trend_p,
         "rising_share": rising_share, "rel_change": {int(b): float(rel[b]) for b in bins}},
        bins,
    )


@detector(
    "loss.spikes", "Loss spikes", "info / warn",
    "spike events (runs of steps whose log loss lies above the rolling median by more robust sd, rolling MAD over "
    "101 steps, than the run's own noise tail explains: at least 8, more on heavy-tailed step noise, the z a "
    "power-law fit of the run's tail exceeds 0.25 times per run): `warn` for at least `spike_min_events` (3) and "
    "`spike_per_10k` (2) per 10,000 steps, or one that reaches `spike_big_ratio` (10x) the running median beyond "
    "what that tail makes once in 50 runs (or >= 100x, a blow-up); `info` for 3 or more at a lower rate",
)
def _spikes(a: "Analysis", th: Thresholds) -> Finding | None:
    S = a.spikes
    several = S.n_events >= th.spike_min_events
    many = several and (S.events_per_10k or 0) >= th.spike_per_10k
    # one spike counts on its own only beyond what the run's own tail makes once in ~50 runs,
    # or when it is a blow-up (>= `blowup_ratio`), which no noise explains
    huge = (S.max_ratio is not None and S.max_ratio >= th.spike_big_ratio
            and (S.max_ratio_z is None or S.max_ratio_z >= S.single_threshold or S.max_ratio >= th.blowup_ratio))
    if not (several or huge):
        return None
    top = ", ".join(f"step {e['step']} ({num(e['ratio'])}x)" for e in S.events[:3])
    if S.n_events:
        said = (f"{S.n_events} loss spike event{'s' if S.n_events != 1 else ''} in {S.n_steps:,} steps "
                f"({num(S.events_per_10k)} per 10k steps); "
                f"largest: {top}")
    else:  # one blow-up, beyond what the run's own tail explains, and no run of events around it
        said = f"one loss spike in {S.n_steps:,} steps: {num(S.max_ratio)}x its running median at step {S.max_ratio_step}"
    return _finding(
        _R["loss.spikes"], "warn" if (many or huge) else "info",
        said,
        "lower the learning rate or tighten gradient clipping; look for bad batches at the spike steps",
        {"n_events": S.n_events, "events_per_10k": S.events_per_10k, "steps": [e["step"] for e in S.events[:20]],
         "ratios": [e["ratio"] for e in S.events[:20]], "max_grad_ratio": S.max_grad_ratio, "n_steps": S.n_steps,
         "spikes": S.n_events or 1, "max_ratio": S.max_ratio, "max_ratio_step": S.max_ratio_step},
    )


# -- non-finite values ---------------------------------------------------------


@detector(
    "nonfinite.loss", "Non-finite losses", "warn / fail",
    "any NaN/Inf per-sample loss; `fail` when they are >= `nonfinite_fail_share` (1e-5) of the samples",
)
def _nonfinite_loss(a: "Analysis", th: Thresholds) -> Finding | None:
    N = a.nonfinite
    if N.loss_samples <= 0:
        return None
    share = N.loss_share
    sev = "fail" if share >= th.nonfinite_fail_share else "warn"
    where = f" in {_where(a, N.loss_bins)}" if N.loss_bins else ""
    return _finding(
        _R["nonfinite.loss"], sev,
        f"{N.loss_samples:,} non-finite per-sample losses ({pct(share)} of samples) on {N.loss_steps:,} steps, "
        f"first at step {N.loss_first_step}{where}",
        "find the operation that overflows (a division by a small sigma, fp16 of the schedule, a log of 0); "
        "compute it in float32/float64 or clamp it",
        {"samples": N.loss_samples, "share": share, "steps": N.loss_steps, "first_step": N.loss_first_step,
         "bins": {int(b): int(c) for b, c in zip(N.loss_bins, N.loss_bin_counts)}},
        N.loss_bins,
    )


@detector(
    "loss.negative", "Negative per-sample losses", "fail",
    "the logger counted finite per-sample losses below 0 (on a device; on the host `log()` refuses them): a squared "
    "error is never negative, so the logged tensor is another quantity; they are excluded from every statistic",
)
def _loss_negative(a: "Analysis", th: Thresholds) -> Finding | None:
    N = a.nonfinite
    if N.negative_samples <= 0:
        return None
    return _finding(
        _R["loss.negative"], "fail",
        f"{N.negative_samples:,} per-sample losses were negative, on {N.negative_steps:,} steps, first at step "
        f"{N.negative_first_step}; a per-sample loss is a mean of squared errors, so the logged tensor is not one",
        "log the unweighted per-sample MSE, ((pred - target) ** 2).flatten(1).mean(1), not a log-likelihood, a "
        "baseline-subtracted loss or a loss with negative weights; they are left out of every statistic meanwhile",
        {"samples": N.negative_samples, "steps": N.negative_steps, "first_step": N.negative_first_step},
    )


@detector(
    "nonfinite.grad", "Non-finite gradients", "info / warn / fail",
    "steps whose pre-clip grad norm is Inf or NaN; `info` while "
    "a loss scaler is in use and <= 1% of steps, `fail` when >= `nonfinite_fail_share` of steps without a scaler",
)
def _nonfinite_grad(a: "Analysis", th: Thresholds) -> Finding | None:
    N = a.nonfinite
    if N.grad_steps <= 0:
        return None
    share = N.grad_steps / max(N.steps_with_grad_logging, 1)
    if N.loss_scale_used:
        sev = "info" if share <= 0.01 else "warn"
        rec = "expected while a loss scaler calibrates; if it persists, look for an overflow in the forward pass"
    else:
        sev = "fail" if share >= th.nonfinite_fail_share else "warn"
        rec = "skip or fix the steps that overflow (fp16 without a loss scaler, a division by a small sigma)"
    return _finding(
        _R["nonfinite.grad"], sev,
        f"{N.grad_steps:,} steps ({pct(share)}) have a non-finite gradient norm, first at step {N.grad_first_step}"
        + (" (with a loss scaler)" if N.loss_scale_used else ""),
        rec,
        {"steps": N.grad_steps, "share": share, "first_step": N.grad_first_step, "loss_scale": N.loss_scale_used},
    )


# -- clipping ------------------------------------------------------------------------


@detector(
    "clip.rate_high", "Gradient clipped on most steps", "info / warn",
    "the share of clipped steps in the late phase (last 20% of steps) is >= `clip_warn` (50%); `info` from "
    "`clip_info` (10%)",
)
def _clip_high(a: "Analysis", th: Thresholds) -> Finding | None:
    C = a.clip
    if not C.available or C.late_rate is None or C.late_rate < th.clip_info:
        return None
    sev = "warn" if C.late_rate >= th.clip_warn else "info"
    return _finding(
        _R["clip.rate_high"], sev,
        f"{pct(C.late_rate)} of late steps are clipped ({pct(C.rate)} overall) at threshold {num(C.threshold)}; "
        f"median pre-clip grad norm {num(C.late_grad_median)}",
        "raise the clip threshold above the typical grad norm (it then only catches outliers) or lower the "
        "learning rate",
        {"late_rate": C.late_rate, "rate": C.rate, "threshold": C.threshold, "late_grad_median": C.late_grad_median},
    )


@detector(
    "clip.rate_rising", "Clip rate rising", "warn",
    "the per-window clip rate rises by >= `clip_rise` (10 points) over the trend stretch, significantly "
    "(Mann-Kendall on batch means, p < `alpha`), and the late rate is >= 10%",
)
def _clip_rising(a: "Analysis", th: Thresholds) -> Finding | None:
    C = a.clip
    if not C.available or C.rise is None or C.rise_p is None:
        return None
    if not (C.rise >= th.clip_rise and C.rise_p < th.alpha and (C.rise_lo or 0) > 0
            and (C.late_rate or 0) >= th.clip_rise_min_rate):
        return None
    return _finding(
        _R["clip.rate_rising"], "warn",
        f"clip rate rose {num(100 * C.rise)} points over steps {a.loss.trend_from}-{a.loss.trend_to} "
        f"(95% CI {num(100 * C.rise_lo)} to {num(100 * C.rise_hi)}), to {pct(C.late_rate)} late",
        "gradients are growing: lower the learning rate or check for a slowly diverging layer (norms, attention "
        "logits)",
        {"rise": C.rise, "rise_lo": C.rise_lo, "rise_hi": C.rise_hi, "p_value": C.rise_p, "late_rate": C.late_rate},
    )


# -- loss against L* ------------------------------------------------------------------


@detector(
    "loss.stagnant_above_optimum", "Loss stagnant above the optimum", "warn / fail",
    "the loss is shown flat (TOST: change over the trend stretch within +-`stagnation_margin` (5%), BY-adjusted "
    "per bin) while the flat bins sit above L* by >= `stagnant_warn` (20%) of the run's loss (`fail` >= 50%); "
    "without L*, flat and never below `never_improved` (90%) of the early level",
)
def _stagnant(a: "Analysis", th: Thresholds) -> Finding | None:
    L = a.loss
    flat = _flat_bins(a, th)
    if L.reference is None:
        if not (L.stagnant and L.late_over_early is not None and L.late_over_early >= th.never_improved):
            return None
        return _finding(
            _R["loss.stagnant_above_optimum"], "fail",
            f"loss flat over steps {L.trend_from}-{L.trend_to} (change {pct(L.trend_rel)}, TOST p={num(L.tost_p, 2)}) "
            f"and still at {pct(L.late_over_early)} of its early level; no L* known (run.json has no data_var)",
            "the model is not learning: check that the optimizer steps (lr > 0, parameters require grad, "
            "the loss reaches them)",
            {"trend_rel": L.trend_rel, "tost_p": L.tost_p, "late_over_early": L.late_over_early,
             "trend_from": L.trend_from, "trend_to": L.trend_to},
        )
    excess = np.maximum(_col(a, "excess"), 0.0)
    share = _col(a, "loss_share")
    total = L.late_total
    bins = np.flatnonzero(flat & (excess > 0))
    stuck = float(np.sum(_col(a, "count_share")[bins] * excess[bins]) / total) if bins.size and total else 0.0
    if L.stagnant:  # the run as a whole is flat: its whole excess counts
        stuck = max(stuck, L.excess_share)
    if stuck < th.stagnant_warn:
        return None
    sev = "fail" if stuck >= th.stagnant_fail else "warn"
    flat_share = float(np.nansum(share[np.flatnonzero(flat)]))
    return _finding(
        _R["loss.stagnant_above_optimum"], sev,
        f"loss flat over steps {L.trend_from}-{L.trend_to} in {_where(a, np.flatnonzero(flat))} "
        f"(run-level change {pct(L.trend_rel)}), yet {pct(stuck)} of the run's loss is above {L.reference} L*",
        "training has stalled far from the optimum: check that the weights update (lr, frozen layers), then "
        "raise the learning rate or model capacity",
        {"excess_share": stuck, "flat_loss_share": flat_share, "trend_rel": L.trend_rel, "tost_p": L.tost_p,
         "reference": L.reference, "margin": th.stagnation_margin, "trend_from": L.trend_from, "trend_to": L.trend_to},
        np.flatnonzero(flat),
    )


def _flat_bins(a: "Analysis", th: Thresholds) -> np.ndarray:
    return _col(a, "tost_q") < th.alpha


@detector(
    "loss.converged", "Loss converged", "info",
    "the run's loss is shown flat (TOST, +-5% over the trend stretch) and less than `stagnant_warn` of it is "
    "above L* (or no L* is known)",
)
def _converged(a: "Analysis", th: Thresholds) -> Finding | None:
    L = a.loss
    if not L.stagnant:
        return None
    if L.reference is None:
        if L.late_over_early is not None and L.late_over_early >= th.never_improved:
            return None  # that is stagnation, not convergence
        where = "no L* is known, so how close to the optimum cannot be said"
    else:
        if L.excess_share >= th.stagnant_warn:
            return None
        where = f"{pct(L.excess_share)} of the loss is above {L.reference} L*"
    return _finding(
        _R["loss.converged"], "info",
        f"loss flat over steps {L.trend_from}-{L.trend_to} (change {pct(L.trend_rel)}, 90% CI "
        f"{pct(L.tost_lo)} to {pct(L.tost_hi)}); {where}",
        "more steps at this learning rate will not help much; stop, or change lr / capacity / data to go further",
        {"trend_rel": L.trend_rel, "tost_p": L.tost_p, "excess_share": L.excess_share, "reference": L.reference,
         "trend_from": L.trend_from, "trend_to": L.trend_to, "ci_level": 0.9, "ci_lo": L.tost_lo, "ci_hi": L.tost_hi},
    )


@detector(
    "bin.above_gaussian_bound", "Worse than the best linear denoiser", "info / warn / fail",
    "bins whose late loss exceeds the Gaussian L* (the best linear denoiser's loss) by > 3 standard errors "
    "(autocorrelation-honest: long-run variance and batch means, as a normal z on the series' effective size); "
    "severity by impact: the excess as a share of the run's loss, `info` below `bound_warn` (10%), `warn` from "
    "10%, `fail` from 30%",
)
def _above_bound(a: "Analysis", th: Thresholds) -> Finding | None:
    g = _col(a, "lstar_gauss")
    if not np.isfinite(g).any():
        return None
    late, z, cs = _col(a, "late_mean"), _col(a, "excess_z"), _col(a, "count_share")
    ex = late - g
    above = np.flatnonzero((ex > 0) & (z >= th.bound_z))
    if not above.size:
        return None
    total = a.loss.late_total
    share = float(np.sum(cs[above] * ex[above]) / total) if total else math.nan
    sev = "fail" if share >= th.bound_fail else ("warn" if share >= th.bound_warn else "info")
    worst = above[np.argmax(cs[above] * ex[above])]
    return _finding(
        _R["bin.above_gaussian_bound"], sev,
        f"{_where(a, above)} are above the Gaussian bound; that excess is {pct(share)} of the run's loss "
        f"(largest in bin {worst}: {num(late[worst])} vs bound {num(g[worst])})",
        "a linear denoiser would do better there: check the network's handling of these noise levels "
        "(skip connections, output scaling, time embedding), or " + weighting_advice(a, above, "up"),
        {"excess_share": share, "worst_bin": int(worst), "bins_above": int(len(above)),
         "late": {int(b): float(late[b]) for b in above},
         "bound": {int(b): float(g[b]) for b in above}},
        above,
    )


@detector(
    "time_conditioning.broken", "Loss flat across noise levels", "fail",
    "the late loss varies across bins (coefficient of variation) less than `flat_range` (20%) as much as L* "
    "does, while L* varies (its coefficient of variation >= 0.1): the model treats every noise level alike",
)
def _time_conditioning(a: "Analysis", th: Thresholds) -> Finding | None:
    P = a.profile
    if P.range_ratio is None or P.lstar_rel_range is None or P.lstar_rel_range < th.flat_min_lstar_range:
        return None
    if P.range_ratio >= th.flat_range:
        return None
    return _finding(
        _R["time_conditioning.broken"], "fail",
        f"late loss spans {num(P.loss_min)}-{num(P.loss_max)} across bins while L* spans {num(P.lstar_min)}-"
        f"{num(P.lstar_max)} (relative spread {num(P.range_ratio, 2)}x that of L*; correlation {num(P.correlation, 2)})",
        "check that the timestep reaches the network (embedding added, right dtype and scale, not constant), "
        "and that the model trains at all",
        {"range_ratio": P.range_ratio, "correlation": P.correlation, "loss_min": P.loss_min, "loss_max": P.loss_max,
         "lstar_min": P.lstar_min, "lstar_max": P.lstar_max},
    )


@detector(
    "time_conditioning.unused", "Network ignores the noise level", "fail",
    "from the time-sensitivity probe (`RunLogger.probe_time`; the later half of the probes, the untrained first "
    "one excluded): the loss with the network told a noise level half the range away is within 1% of the loss "
    "with the true one in >= 90% of the probed bins",
)
def _time_unused(a: "Analysis", th: Thresholds) -> Finding | None:
    P = getattr(a, "time_probe", None)
    if P is None or not P.ignores_t:
        return None
    steps = f"probe steps {P.steps[0]}-{P.steps[-1]}" if len(P.steps) > 1 else f"probe step {P.steps[0]}"
    return _finding(
        _R["time_conditioning.unused"], "fail",
        f"told a noise level half the range away, the network's loss changes by less than {pct(IGNORED_MARGIN)} in "
        f"{pct(P.ignored_share)} of the {len(P.bins)} probed bins (median ratio {num(P.median_ratio, 4)}; {steps}): "
        "the network does not use the noise level it is given",
        "check that the timestep reaches the network: the embedding computed and added (not dropped, zeroed, "
        "detached or overwritten), the right argument passed, its scale not vanishing",
        {"ignored_share": P.ignored_share, "median_ratio": P.median_ratio, "probed_bins": len(P.bins),
         "probe_steps": list(P.steps), "margin": IGNORED_MARGIN},
    )


@detector(
    "bins.spread_large", "Noise levels trained unevenly", "warn",
    "bins that closed < `spread_lag` (50%) of their early gap to L* while the median bin closed >= 80%, their "
    "remaining gap >= `spread_share` (5%) of the run's loss",
)
def _spread(a: "Analysis", th: Thresholds) -> Finding | None:
    closed, ex, cs = _col(a, "gap_closed"), _col(a, "excess"), _col(a, "count_share")
    ok = np.isfinite(closed)
    if ok.sum() < 3:
        return None
    med = float(np.median(closed[ok]))
    lag = np.flatnonzero(ok & (closed < th.spread_lag) & (ex > 0))
    if med < th.spread_median or not lag.size:
        return None
    total = a.loss.late_total
    share = float(np.sum(cs[lag] * ex[lag]) / total) if total else math.nan
    if not share >= th.spread_share:
        return None
    return _finding(
        _R["bins.spread_large"], "warn",
        f"{_where(a, lag)} closed only {pct(float(np.min(closed[lag])))}-{pct(float(np.max(closed[lag])))} of "
        f"their gap to L* (median bin {pct(med)}); their remaining gap is {pct(share)} of the run's loss",
        "these noise levels get too little of the training signal: " + weighting_advice(a, lag, "up"),
        {"median_closed": med, "closed": {int(b): float(closed[b]) for b in lag}, "gap_share": share},
        lag,
    )


@detector(
    "grad.imbalance", "Per-noise-level gradients imbalanced", "warn",
    "from the gradient probe (late half of probes): the largest per-bin gradient norm is >= `grad_ratio` (10x) "
    "the median over probe bins",
)
def _grad_imbalance(a: "Analysis", th: Thresholds) -> Finding | None:
    P = a.probes
    if P.n_steps == 0 or P.max_over_median is None or P.max_over_median < th.grad_ratio:
        return None
    lo, hi = P.max_bins
    return _finding(
        _R["grad.imbalance"], "warn",
        f"gradient of bins {lo}-{hi - 1} has norm {num(P.max_norm)}, {num(P.max_over_median)}x the median over noise "
        f"levels ({num(P.median_norm)}; {P.n_steps} probe steps)",
        "these noise levels dominate the update: " + weighting_advice(a, range(*_fine(a, lo, hi)), "down")
        + ("" if a.run.prediction != "epsilon" else ", or predict v instead of epsilon"),
        {"max_over_median": P.max_over_median, "max_norm": P.max_norm, "median_norm": P.median_norm,
         "n_probes": P.n_steps},
        range(lo, hi),
    )


@detector(
    "bins.undersampled", "Noise levels barely sampled", "info / warn",
    "a bin received < `undersampled` (20%) of the uniform share of training samples, or fewer than "
    "`min_samples` (100) samples while the median bin has 10x that; judged only when a uniform share is "
    ">= `min_expected` (50) samples; `info` for flow and EDM, whose usual samplers (logit-normal, "
    "log-normal) are non-uniform by design",
)
def _undersampled(a: "Analysis", th: Thresholds) -> Finding | None:
    if a.bins.height == 0 or a.run.windows == 0:
        return None
    rel = _col(a, "coverage")
    cnt = _col(a, "count")
    if np.nansum(cnt) / max(len(cnt), 1) < th.min_expected:
        return None  # too few samples in the whole run to tell a thin bin from chance
    # an absolute shortage counts only when the other bins have plenty (a short run is short everywhere)
    few = (cnt < th.min_samples) & (np.nanmedian(cnt) >= 10 * th.min_samples)
    low = np.flatnonzero((rel < th.undersampled) | few)
    if not low.size:
        return None
    designed = a.run.process in ("flow", "edm")  # log-normal / logit-normal samplers skew on purpose
    return _finding(
        _R["bins.undersampled"], "info" if designed else "warn",
        f"{_where(a, low)} got {num(float(np.min(cnt[low])))}-{num(float(np.max(cnt[low])))} samples, "
        f"{pct(float(np.min(rel[low])))}-{pct(float(np.max(rel[low])))} of a uniform share",
        "the model hardly trains at these noise levels yet sampling uses them: widen the timestep sampler "
        "(or drop these levels from sampling)",
        {"coverage": {int(b): float(rel[b]) for b in low}, "count": {int(b): int(cnt[b]) for b in low}},
        low,
    )


@detector(
    "eval.divergence", "Eval loss diverging from train loss", "warn / fail",
    "late held-out loss of the live weights (split 'eval', never 'ema') above the train loss at the same noise "
    "levels by >= `eval_gap_warn` (10%) of the train loss (> 3 standard errors), and growing (the late eval level "
    "rose >= `eval_rise` (5%) above its best stretch of as many evaluations, or the gap grew >= 5 points since "
    "mid-training) unless the gap is already >= 20%; `fail` >= 50%",
)
def _eval_divergence(a: "Analysis", th: Thresholds) -> Finding | None:
    E = a.eval
    if E.n_windows == 0 or E.gap_share is None:
        return None
    if not (E.gap_share >= th.eval_gap_warn and (E.gap_z or 0) >= th.eval_z):
        return None
    growing = (E.eval_rise or 0) >= th.eval_rise or (E.gap_growth or 0) >= th.eval_rise
    if not (growing or E.gap_share >= 2 * th.eval_gap_warn):
        return None
    sev = "fail" if E.gap_share >= th.eval_gap_fail else "warn"
    mid = E.gap_share - E.gap_growth if E.gap_growth is not None else None
    if E.eval_rise is not None and E.eval_rise > 0:
        best = (f"eval loss is now {pct(E.eval_rise)} above its best stretch of as many evaluations "
                f"(ending at step {E.best_step})")
    else:
        best = "eval loss is at its best so far"
    # an "eval" split written before the "ema" one existed may hold EMA weights: then part of the gap is lag
    ema_note = "" if (a.ema is not None and a.ema.n_windows) else (
        " (if this 'eval' split evaluates EMA weights, part of the gap is EMA lag: log those as split='ema' "
        "and the live weights as split='eval')")
    return _finding(
        _R["eval.divergence"], sev,
        f"late held-out loss of the live weights is {_rel(E.gap_share)} the train loss at the same noise levels "
        f"(z={num(E.gap_z, 2)}), most in {_where(a, E.worst_bins)}; at mid-training it was {_rel(mid)}, and {best}",
        "the model is fitting its training set, not the distribution: more data or augmentation, regularisation, "
        "or stop at the eval minimum" + ema_note,
        {"gap_share": E.gap_share, "gap_z": E.gap_z, "eval_rise": E.eval_rise, "gap_growth": E.gap_growth,
         "best_step": E.best_step, "gap_ratio": None if E.gap_share is None else 1 + E.gap_share,
         "mid_gap_share": mid, "mid_ratio": None if mid is None else 1 + mid},
        E.worst_bins,
    )


@detector(
    "eval.ema", "EMA weights against live weights", "info",
    "EMA weights were evaluated (split 'ema'): their late held-out loss against the live weights' at the same "
    "steps (split 'eval'), stated as lag or help beyond `ema_z` (3) standard errors; never read as overfitting. "
    "With 'ema' and no 'eval', says that overfitting cannot be read",
)
def _eval_ema(a: "Analysis", th: Thresholds) -> Finding | None:
    M = a.ema
    if M is None or M.n_windows == 0:
        return None
    if M.only_ema or M.common_windows == 0 or M.gap is None:
        return _finding(
            _R["eval.ema"], "info",
            f"{M.n_windows} EMA evaluation windows and no held-out evaluation of the live weights at the same steps: "
            "overfitting cannot be read from EMA weights (an EMA lags the live model, so its gap to the train loss "
            "mixes lag with generalization" + (f"; late EMA vs train {_rel(M.ema_vs_train)}" if M.ema_vs_train is not None and M.ema_vs_train > 0 else "") + ")",
            "to read overfitting, also evaluate the live weights on held-out data (split='eval') at the same steps",
            {"ema_windows": M.n_windows, "common_windows": M.common_windows, "ema_vs_train": M.ema_vs_train},
        )
    z = M.gap_z or 0.0
    if abs(z) < th.ema_z:
        how = "no different from the live weights' within its error"
    elif M.gap > 0:
        how = f"{pct(M.gap)} above the live weights': the EMA lags the model (its average reaches back too far for this run)"
    else:
        how = f"{pct(-M.gap)} below the live weights': the EMA helps"
    first = f" (first common evaluation: {pct(M.first_gap)})" if M.first_gap is not None else ""
    return _finding(
        _R["eval.ema"], "info",
        f"late held-out loss of the EMA weights is {how}, at the same {M.common_windows} evaluation steps "
        f"(z={num(M.gap_z, 2)}){first}",
        "lag is not overfitting; if the EMA is to be the released model and still lags at the end, lower the "
        "decay (or start it later) so it averages over fewer steps",
        {"gap": M.gap, "gap_z": M.gap_z, "first_gap": M.first_gap, "common_windows": M.common_windows,
         "ema_vs_train": M.ema_vs_train},
    )


@detector(
    "memorization", "Approaching the memorization floor", "warn",
    "needs `diffaudit optimum`: in low-noise bins where the empirical L* is below half the Gaussian bound, the "
    "late train loss has gone more than `memorize_fraction` (50%) of the way from the bound down to the empirical L*",
)
def _memorization(a: "Analysis", th: Thresholds) -> Finding | None:
    emp, g, late = _col(a, "lstar_emp"), _col(a, "lstar_gauss"), _col(a, "late_mean")
    ok = np.isfinite(emp) & np.isfinite(g) & (emp < 0.5 * g)
    if not ok.any():
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = (g - late) / (g - emp)
    mem = np.flatnonzero(ok & (frac > th.memorize_fraction))
    if not mem.size:
        return None
    return _finding(
        _R["memorization"], "warn",
        f"in {_where(a, mem)} the train loss has gone {pct(float(np.max(frac[mem])))} of the way from the Gaussian "
        "bound to the empirical L* (the memorization floor)",
        "the model is reproducing its training samples at low noise: more data, augmentation, or fewer steps",
        {"fraction": {int(b): float(frac[b]) for b in mem}},
        mem,
    )


# -- schedule ------------------------------------------------------------------------


@detector(
    "schedule.non_monotone", "Schedule not monotone", "fail",
    "alpha_bar increases somewhere along t (it must fall monotonically from ~1 to ~0)",
)
def _non_monotone(a: "Analysis", th: Thresholds) -> Finding | None:
    S = a.schedule
    if S.monotone is None or S.monotone:
        return None
    return _finding(
        _R["schedule.non_monotone"], "fail",
        f"alpha_bar increases at {S.n_increases} timestep(s), first at t={S.first_increase_t} "
        f"(by {num(S.max_increase)})",
        "rebuild the schedule from betas in [0, 1) with a cumulative product (or cumsum of log1p(-beta))",
        {"n_increases": S.n_increases, "first_t": S.first_increase_t, "max_increase": S.max_increase},
    )


@detector(
    "schedule.terminal_snr", "Signal leak at the last timestep", "warn / fail",
    "SNR at the noisiest timestep, alpha_bar/(1-alpha_bar), >= `terminal_snr_warn` (1e-3; `fail` >= 0.1): "
    "training never sees pure noise, sampling starts from it",
)
def _terminal_snr(a: "Analysis", th: Thresholds) -> Finding | None:
    S = a.schedule
    if S.terminal_snr is None or S.terminal_snr < th.terminal_snr_warn:
        return None
    sev = "fail" if S.terminal_snr >= th.terminal_snr_fail else "warn"
    return _finding(
        _R["schedule.terminal_snr"], sev,
        f"terminal SNR {num(S.terminal_snr)} (alpha_bar {num(S.terminal_alpha_bar)} at the last timestep): the "
        "noisiest training input still carries signal",
        "rescale the schedule to zero terminal SNR (Lin et al. 2024) or extend it; sample from the same "
        "terminal distribution you train on",
        {"terminal_snr": S.terminal_snr, "terminal_alpha_bar": S.terminal_alpha_bar},
    )


@detector(
    "schedule.precision", "Precision loss in 1 - alpha_bar near t = 0", "info / warn / fail",
    "relative error of 1 - alpha_bar at t = 0 implied by how alpha_bar was stored (float32 without betas: "
    "6e-8 / (1 - alpha_bar_0)) >= `precision_info` (1e-4; `warn` >= 1e-2, `fail` >= 0.5 or 1 - alpha_bar = 0)",
)
def _precision(a: "Analysis", th: Thresholds) -> Finding | None:
    S = a.schedule
    err = S.one_minus_rel_error
    if S.zero_noise_steps:
        sev, msg = "fail", (f"1 - alpha_bar is exactly 0 at {S.zero_noise_steps} timestep(s): sigma = 0 there, "
                            "so an eps or v target divides by zero")
    elif err is None or err < th.precision_info:
        return None
    else:
        sev = "fail" if err >= th.precision_fail else ("warn" if err >= th.precision_warn else "info")
        msg = (f"alpha_bar was stored as {S.dtype}: 1 - alpha_bar at t=0 ({num(S.one_minus_first)}) carries a "
               f"relative error of ~{num(err, 2)}")
    return _finding(
        _R["schedule.precision"], sev, msg,
        "give the logger (and your training code) the betas, and compute 1 - alpha_bar as "
        "-expm1(cumsum(log1p(-beta))) in float64",
        {"rel_error": err, "dtype": S.dtype, "one_minus_first": S.one_minus_first, "zero_noise_steps": S.zero_noise_steps},
    )


_R = {r.id: r for r in DETECTORS}


# ----------------------------------------------------------------------------
# Evaluation


def evaluate(analysis: "Analysis", thresholds: Thresholds | None = None) -> tuple[Finding, ...]:
    """Run every rule; return the findings most severe first (then in rule order).

    Two passes follow the rules. A cause found upstream of the model withholds the
    findings it would otherwise be mistaken for: ``timesteps.invalid`` the ones read
    from the bins, ``grad.dead`` (at `warn` or `fail`) the learning-rate, clipping
    and time-embedding ones (a blow-up, ``loss.exploding``, stays, pointing at it).
    Then, while the run is early (``analysis.early``), each finding of
    :data:`CONVERGENCE_FINDINGS` is made ``info``, marked provisional, and keeps the
    severity it would have had in ``evidence["final_severity"]``.
    """
    th = thresholds or Thresholds()
    found = {}
    for i, r in enumerate(DETECTORS):
        f = r(analysis, th)
        if f is not None:
            found[r.id] = (i, f)
    withheld = set()
    if "timesteps.invalid" in found:
        withheld |= set(_MODEL_FROM_BINS)
    if "grad.dead" in found:
        withheld |= set(_BLAME_WITHOUT_GRADIENT)
    if "optim.lr_zero" in found:  # weights that never move use t as little as an untrained network does
        withheld |= {"time_conditioning.unused", "time_conditioning.broken"}
        if "loss.exploding" in found:
            i, f = found["loss.exploding"]
            found["loss.exploding"] = (i, replace(f, recommendation="no gradient flows on many steps (grad.dead): "
                                                   "fix that first; " + f.recommendation))
    for k in withheld:
        found.pop(k, None)
    early = getattr(analysis, "early", None)
    if early:
        for k in CONVERGENCE_FINDINGS:
            if k in found:
                i, f = found[k]
                found[k] = (i, replace(
                    f, severity="info", provisional=True,
                    message=f"provisional, {early}: {f.message}",
                    evidence={**f.evidence, "final_severity": f.severity},
                ))
    out = [(-f.rank, i, f) for i, f in found.values()]
    return tuple(f for _, _, f in sorted(out, key=lambda x: (x[0], x[1])))


def verdict(findings) -> str:
    """'failing' if any finding is fail, 'warnings' if any is warn, else 'healthy'."""
    worst = max((f.rank for f in findings), default=-1)
    return {2: "failing", 1: "warnings"}.get(worst, "healthy")


def at_or_above(findings, severity: str) -> list[Finding]:
    """Findings whose severity is at least `severity`."""
    if severity not in SEVERITY_RANK:
        raise DiffauditError(f"unknown severity {severity!r}; expected one of {', '.join(SEVERITIES)}")
    k = SEVERITY_RANK[severity]
    return [f for f in findings if f.rank >= k]


__all__ = [
    "CONVERGENCE_FINDINGS", "DETECTORS", "GATE_SEVERITIES", "SEVERITIES", "Finding", "Detector", "Thresholds", "at_or_above",
    "evaluate", "min_snr_weight", "verdict", "weighting_advice",
]
