"""The analysis's result types: what one run's analysis found, as frozen dataclasses and polars frames.

A leaf module: the analysis engine (:mod:`diffaudit.analysis`) fills these, the rules
(:mod:`diffaudit.findings`) read them and make :class:`Finding` objects, and the
outputs (:mod:`diffaudit.present`) render them; none of those imports another for a
type, so data flows one way: engine -> rules -> outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from diffaudit.lifecycle import Lifecycle
from diffaudit.timeprobe import TimeProbe
from diffaudit.words import jsonable

SEVERITIES = ("info", "warn", "fail")
GATE_SEVERITIES = SEVERITIES[1:]  # what a --fail-on gate can name: an info finding asks for no action
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class Finding:
    """One conclusion about a run: what is wrong (or notable), the numbers behind it, what to do."""

    id: str  # stable identifier, e.g. "loss.exploding" (documented in the README's table of DETECTORS)
    severity: str  # "info", "warn" or "fail"
    title: str  # a few words
    message: str  # one line of evidence, with numbers
    recommendation: str  # one line: what to try
    evidence: dict = field(default_factory=dict)  # the numbers, JSON-ready (float, int, str, lists)
    bins: tuple[int, ...] = ()  # noise bins concerned, if any
    provisional: bool = False  # the run is early: the evidence needs a converged loss, so at most `info`

    @property
    def rank(self) -> int:
        return SEVERITY_RANK[self.severity]

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "severity": self.severity,
            "title": self.title,
            "message": self.message,
            "recommendation": self.recommendation,
            "evidence": jsonable(self.evidence),
            "bins": [int(b) for b in self.bins],
            "provisional": bool(self.provisional),
        }


@dataclass(frozen=True)
class RunInfo:
    """What run was analysed: identity, process, coverage."""

    name: str
    path: str
    run_id: str
    process: str
    prediction: str
    num_bins: int
    num_timesteps: int | None
    first_step: int | None
    last_step: int | None
    steps_logged: int
    windows: int  # train windows with bin statistics
    eval_windows: int
    probe_steps: int
    probe_every: int | None
    window: int | None  # steps per bin-statistics window (logger setting)
    segments: int
    ranks: int
    data_stats: str  # "data_spectrum", "data_var" or "none": what the Gaussian L* is built from
    empirical_optimum: bool  # `diffaudit optimum` has run
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Phases:
    """Step ranges (inclusive) of the early, middle and late phases and of the trend stretch."""

    early: tuple[int, int] | None
    mid: tuple[int, int] | None
    late: tuple[int, int] | None
    trend: tuple[int, int] | None


@dataclass(frozen=True)
class LossSummary:
    """The run's loss as a whole: level, trend over the trend stretch, stagnation, excess over L*."""

    first_level: float | None  # median loss of the first 10% of steps
    best_level: float | None  # lowest median of an earlier 10% block
    late_level: float | None  # median loss of the last 10% of steps
    late_over_best: float | None
    shift_z: float | None  # (late - best) in robust sd of the best block's per-step noise
    late_over_early: float | None  # late / early phase level (sampler-weighted over bins)
    trend_from: int | None  # the trend stretch, steps
    trend_to: int | None
    trend_rel: float | None  # relative change over the stretch (Theil-Sen on batch means)
    trend_lo: float | None  # 95% interval
    trend_hi: float | None
    trend_p: float | None  # Mann-Kendall, slope = 0
    tost_p: float | None  # equivalence: |change| <= margin
    tost_lo: float | None  # 90% interval (the TOST one)
    tost_hi: float | None
    stagnant: bool  # equivalence shown at alpha
    reference: str | None  # "Gaussian" when L* is known, else None
    late_total: float | None  # late loss, sampler-weighted over bins
    excess_share: float | None  # positive excess over L* as a share of late_total
    excess_share_emp: float | None  # the same over the empirical L*


@dataclass(frozen=True)
class ProfileSummary:
    """Late loss across noise levels against L* across noise levels."""

    range_ratio: float | None  # coefficient of variation across bins of the late loss / that of L*
    correlation: float | None  # Pearson, late loss vs L*, across bins
    loss_min: float | None
    loss_max: float | None
    lstar_min: float | None
    lstar_max: float | None
    lstar_rel_range: float | None  # coefficient of variation of L* across bins


@dataclass(frozen=True)
class SpikeSummary:
    """Spikes of the per-step loss (and grad norm) above their rolling median."""

    n_steps: int
    n_events: int
    events_per_10k: float | None
    events: tuple[dict, ...]  # largest first: step, loss, median, ratio, z
    max_ratio: float | None  # largest loss / running median at a spike
    max_ratio_step: int | None
    max_ratio_loss: float | None
    max_ratio_median: float | None
    max_grad_ratio: float | None  # largest grad norm / its running median at a loss spike
    max_grad_ratio_step: int | None
    threshold: float = 8.0  # robust z a spike had to pass on this run (calibrated to its tail; stats.SPIKE_THRESHOLD)
    tail_index: float | None = None  # power-law index of the run's own upper tail of robust z (Gaussian: ~5)
    single_threshold: float = 8.0  # robust z one lone spike needs to count on its own (stats.SPIKE_THRESHOLD)
    max_ratio_z: float | None = None  # robust z of the spike with the largest ratio


@dataclass(frozen=True)
class NonfiniteSummary:
    """NaN/Inf losses and gradient norms."""

    loss_samples: int  # non-finite per-sample losses
    loss_share: float  # of all samples
    loss_steps: int  # steps with at least one
    loss_first_step: int | None
    loss_bins: tuple[int, ...]  # bins where they occurred
    loss_bin_counts: tuple[int, ...]
    grad_steps: int  # steps whose logged grad norm is Inf or NaN
    grad_first_step: int | None
    steps_with_grad_logging: int
    loss_scale_used: bool
    diverged: bool  # every step from some point on has no finite loss
    diverged_from: int | None
    negative_samples: int = 0  # finite per-sample losses below 0 (the logger's ``negative``; excluded)
    negative_steps: int = 0
    negative_first_step: int | None = None


@dataclass(frozen=True)
class ClipSummary:
    """Gradient clipping: how often, late, and its trend."""

    available: bool
    threshold: float | None  # median clip threshold
    rate: float | None  # clipped steps / steps with a known grad norm and threshold
    early_rate: float | None
    late_rate: float | None
    late_grad_median: float | None
    rise: float | None  # change of the per-window clip rate over the trend stretch (absolute)
    rise_lo: float | None
    rise_hi: float | None
    rise_p: float | None


@dataclass(frozen=True)
class ProbeSummary:
    """Per-noise-level gradient norms from the logger's probe."""

    n_steps: int
    probe_every: int | None
    table: pl.DataFrame  # probe_bin, bin_lo, bin_hi, n, grad_norm (median over late probes), ratio_to_median
    max_over_median: float | None
    min_over_median: float | None
    max_norm: float | None
    median_norm: float | None
    max_bins: tuple[int, int] | None  # fine bins [lo, hi) of the largest


@dataclass(frozen=True)
class EvalSummary:
    """Held-out (eval) loss against train loss at the same noise levels."""

    n_windows: int
    late_from_step: int | None
    gap_share: float | None  # late (eval - train), sampler-weighted, / train
    gap_z: float | None
    eval_rise: float | None  # late eval level / the best level over as many consecutive evaluations - 1 (>= 0)
    best_step: int | None  # last step of that best stretch (= the last eval step when the late one is the best)
    gap_growth: float | None  # late gap share - gap share of the eval window nearest mid-training
    worst_bins: tuple[int, ...] = ()


@dataclass(frozen=True)
class EmaSummary:
    """EMA weights against the live weights, both on held-out data, at the same steps.

    Never read as overfitting: an EMA average of past weights lags the live model
    while the loss falls, so its held-out loss sits above the live weights' for a
    reason that has nothing to do with the training set.
    """

    n_windows: int  # EMA evaluation windows ("ema" split)
    common_windows: int  # of them, steps where the live weights were evaluated too ("eval" split)
    only_ema: bool  # EMA evaluated but no held-out evaluation of the live weights
    late_from_step: int | None
    gap: float | None  # late (ema - eval) / eval, sampler-weighted: > 0 the EMA lags, < 0 it helps
    gap_z: float | None
    first_gap: float | None  # the same at the first common window
    ema_vs_train: float | None  # late (ema - train) / train: lag and generalization mixed, for context only


@dataclass(frozen=True)
class TimestepSummary:
    """Samples whose timestep cannot belong to the process (the logger's ``bad_t`` count per step)."""

    available: bool  # the steps carry the logger's bad_t column (loggers before it: False)
    bad_samples: int
    share: float | None  # of all training samples logged
    bad_steps: int  # steps with at least one
    first_step: int | None
    t_min: float | None  # smallest and largest raw timestep the logger saw (train)
    t_max: float | None
    valid: str | None  # the valid range, in words
    cause: str | None  # the likely cause, in words


@dataclass(frozen=True)
class GradFlowSummary:
    """Steps on which no gradient flowed: pre-clip grad norm 0 (or below a tiny floor) with a finite loss."""

    steps: int  # steps with a logged, finite grad norm and a finite loss
    dead_steps: int  # of them, grad norm <= floor
    share: float | None
    late_share: float | None  # the same over the late phase
    first_step: int | None
    median: float | None  # median grad norm over those steps
    floor: float
    lr_steps: int = 0  # steps with a logged learning rate
    lr_zero_steps: int = 0  # of them, learning rate exactly 0 (the weights cannot move)
    lr_zero_first: int | None = None


@dataclass(frozen=True)
class ScheduleInfo:
    """Noise schedule facts the findings need."""

    kind: str
    num_timesteps: int | None
    monotone: bool | None  # vp: alpha_bar never increases
    n_increases: int
    first_increase_t: int | None
    max_increase: float | None
    terminal_alpha_bar: float | None
    terminal_snr: float | None  # alpha^2 / sigma^2 at the noisiest timestep
    one_minus_first: float | None  # 1 - alpha_bar at t = 0
    dtype: str | None  # how alphas_cumprod was given to the logger
    from_betas: bool
    one_minus_rel_error: float | None  # relative error of 1 - alpha_bar at t = 0 implied by dtype
    zero_noise_steps: int  # timesteps with 1 - alpha_bar == 0 (sigma = 0) under an eps / v target
    log_snr_min: float | None
    log_snr_max: float | None


@dataclass(frozen=True, eq=False)
class Analysis:
    """Everything the report says about one run (frozen; frames are polars)."""

    run: RunInfo
    phases: Phases
    bins: pl.DataFrame  # one row per noise bin (see BIN_COLUMNS)
    bin_series: pl.DataFrame  # coarsened windows x bins: step_lo, step_hi, bin, count, mean, std, excess
    series: pl.DataFrame  # downsampled per-step series: step_lo, step_hi, steps, loss_*, grad_norm_*, clip_rate, ...
    eval_series: pl.DataFrame  # per eval window and bin: step, bin, count, eval_mean, train_mean
    loss: LossSummary
    profile: ProfileSummary
    spikes: SpikeSummary
    clip: ClipSummary
    nonfinite: NonfiniteSummary
    schedule: ScheduleInfo
    probes: ProbeSummary
    eval: EvalSummary
    findings: tuple[Finding, ...] = ()
    verdict: str = "healthy"  # "healthy", "warnings" or "failing"
    settings: dict = field(default_factory=dict)
    ema: EmaSummary | None = None
    timesteps: TimestepSummary | None = None
    grad_flow: GradFlowSummary | None = None
    lifecycle: Lifecycle | None = None
    early: str | None = None  # why convergence-dependent findings are provisional (None: judged as final)
    time_probe: TimeProbe | None = None  # does the network use the noise level? (RunLogger.probe_time)

    def by_id(self, finding_id: str) -> Finding | None:
        """The finding with this id, or None."""
        return next((f for f in self.findings if f.id == finding_id), None)


#: the per-bin table's columns, with what each means (the --json schema documents the same)
BIN_COLUMNS = {
    "bin": "noise bin index (0 = least noise)",
    "t_lo": "first timestep of the bin (vp: integer t; flow: t; edm: sigma)",
    "t_hi": "end of the bin (exclusive)",
    "log_snr": "log(alpha^2/sigma^2) at the bin's centre",
    "count": "finite training samples in the whole run",
    "count_share": "share of the late-phase samples (the sampler's weight of the bin)",
    "coverage": "count / (total / num_bins): 1 for a uniform sampler",
    "nonfinite": "non-finite training losses",
    "early_mean": "mean loss in the early phase",
    "mid_mean": "mean loss in the middle phase",
    "late_mean": "mean loss in the late phase",
    "late_std": "per-sample standard deviation in the late phase",
    "late_se": "standard error of late_mean, honest under autocorrelation (the largest of iid, long-run and batch-means)",
    "lstar_gauss": "Gaussian L* (best linear denoiser; an upper bound on the irreducible loss)",
    "lstar_emp": "empirical L* from `diffaudit optimum` (the memorization floor)",
    "lstar_emp_se": "its Monte Carlo standard error",
    "excess": "late_mean - lstar_gauss",
    "excess_z": "excess / late_se as a normal z (Student t on the series' effective sample size, tail-matched)",
    "excess_share": "count_share * max(excess, 0) / late_total: impact on the run's loss",
    "excess_emp": "late_mean - lstar_emp",
    "loss_share": "count_share * late_mean / late_total",
    "gap_closed": "(early_mean - late_mean) / (early_mean - lstar_gauss): how much of its gap the bin closed",
    "slope": "Theil-Sen slope of the window means over the trend stretch, per step",
    "slope_lo": "95% interval of the slope (batch means, exact Kendall)",
    "slope_hi": "",
    "rel_change": "relative change over the trend stretch, exp(slope * length) - 1 of a Theil-Sen fit of log(loss)",
    "rel_lo": "95% interval of rel_change",
    "rel_hi": "",
    "p_value": "Mann-Kendall p-value for slope = 0",
    "q_value": "Benjamini-Yekutieli adjusted p_value over the bins",
    "tost_p": "equivalence p-value for |rel_change| <= margin",
    "tost_q": "Benjamini-Yekutieli adjusted tost_p",
    "trend": "decreasing / increasing (q < alpha), flat (tost_q < alpha), inconclusive, or n/a",
    "eval_late_mean": "late-phase eval loss",
    "eval_gap": "(eval_late_mean - train loss at the same windows) / train loss",
    "grad_norm_probe": "median probe gradient norm of the probe bin holding this bin (late probes)",
}
