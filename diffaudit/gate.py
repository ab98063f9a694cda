"""The regression gate: did the candidate run (or seeds) train worse than the baseline?

:func:`compare` matches two sides (one run each, or several seeds each) on the
steps and noise bins both logged, runs a fixed set of checks, and returns a
:class:`Verdict` of frozen dataclasses. Nothing here prints or picks an exit
code; :mod:`diffaudit.present` turns a verdict into text, JSON, JUnit XML,
Markdown or HTML.

What is compared
----------------

* **Late per-bin loss** (one check per noise bin): the mean training loss of the
  bin over the *late window* of the matched steps, candidate against baseline,
  with its excess over L* alongside (Gaussian bound from run.json, or the
  empirical L* of ``diffaudit optimum`` when both sides have it).
* **Late loss averaged over bins** (two aggregate checks): the mean relative
  change over all bins and over the *still-falling* bins (those whose late
  loss still moves with training at least as much as the median bin's). A
  change spread thinly over many bins is seen here when no single bin shows it.
  Each bin is weighted by its precision (1 / its variance in the comparison's
  noise model, with the seed spread's smooth profile over the noise levels in
  place of the bin's own, :func:`diffaudit.stats.precision_weights`): a rise
  common to every bin has the same mean under any weights, and these give it
  the least variance, so a few very noisy bins (EDM-style training's extreme
  noise levels, up to 40x noisier than the middle ones) no longer swamp it.
* **Convergence speed**: steps until the smoothed per-step loss first reaches
  the baseline's late level plus ``SPEED_LEVEL`` (10%) of its initial drop.
* **Clip rate** over the matched steps; **non-finite losses** over the matched
  steps; **findings** (:mod:`diffaudit.analysis`) present in the candidate and
  not in the baseline.

Each check has a rule (:class:`Rule`, parsed from ``loss:2%``-style strings): a
limit on the change, relative (``2%``) or absolute (``+0.05``). Where there is a
noise model, a check regresses only if its change is *significantly larger than
the limit*: the one-sided test is of "change <= limit" (p of (change - limit) /
se), adjusted across bins, so a bin regresses when the lower end of its
corrected one-sided interval lies above the tolerance. (Testing "change <= 0"
and then asking the point estimate to exceed the limit flags a true change that
sits at the limit half the time.)

The noise model
---------------

*Matching.* Only steps every run logged count (the overlap), and the per-bin
statistics are regrouped into *blocks* whose boundaries are window starts
shared by every run, so both sides average exactly the same stretch of
training (windows of different sizes nest into the coarser grid; merging is
exact because the logger's statistics are sufficient). The late window is
widened to ``min_windows`` blocks when it holds fewer (a short CI run has 3
blocks in its last 20%).

*Progress lag.* Two seeds differ mostly in how far along training they are.
Each bin's elasticity e_b = -d log L_b / d(step / S), S the matched span (an
OLS slope over the baseline's late blocks, >= 0), says how much a lag of one
unit of S moves its level; the lag delta is the e-weighted median of rel_b / e_b
over the bins that still move, bounded by ``max_lag`` (2% of the steps: 97.5%
of healthy digits pairs need less), and each bin is judged after removing
delta * e_b. A lag can also hide a regression: when all still-falling bins rise
together, a lag explains them. So it may explain at most ``LAG_SHARE`` (half) of
the still-falling bins' mean change *and* half of the tolerance; the rest
counts, and a note says when the levels asked for more.

*One run per side* (``diffaudit compare run_a run_b``, the CI use). Two parts:

1. *Within-run variability*, seen: d_j = (candidate - baseline) / baseline
   level in block j, paired so the schedule's common trend cancels. Its mean's
   error comes from batch means (:func:`diffaudit.stats.batch_means`) where they
   are ``reliable`` (batches several autocorrelation times long). A late window
   of 8 blocks never is: there the blocks follow an AR(1) model whose
   coefficient is estimated once from all bins over all matched blocks
   (:func:`diffaudit.stats.pooled_ar1`, bias-corrected), the error is inflated
   exactly for it and the t quantile uses its effective degrees of freedom (2.8,
   not 7, for 8 blocks at phi = 0.9); a bin with fewer than
   ``MIN_EFFECTIVE_DF`` is untested (inconclusive, exit 3 when no bin is left).
   The aggregates use the bin-averaged series, so correlation between bins is
   in their error.
2. *Seed-to-seed variation*, not seen: a seed can be a little better or worse at
   some noise levels, and one run per side cannot measure it. A seed allowance
   (:class:`Allowance`, sd per run) is added to each error: for a bin,
   sqrt(``SEED_BIN_SD``^2 + (``SEED_FLOOR_SD`` * mean loss over bins / bin
   loss)^2), so bins of tiny loss (the high-noise bins of epsilon prediction)
   get a larger relative allowance; ``SEED_MEAN_SD`` for an aggregate;
   ``SEED_SPEED_SD`` for log(steps to reach the level). They are learned by
   ``benchmarks/calibrate_gate.py --fit`` on every ordered healthy pair of the
   *calibration* families (an upper envelope over 90% of bins of the variance
   within-run noise does not explain; the constants' comments give the figures)
   and checked on held-out families. The notes printed with a single-run verdict
   say both parts, and that the allowance comes from other models. The price:
   one run per side catches only changes well outside that allowance (at the
   defaults it flags about 14% in a bin near the mean loss, more in bins of tiny
   loss, and about 14% for a mean over a group of bins, half the time; the rise
   it states it catches 80% of the time is +18% to +20% for the mean); smaller
   regressions need baseline seeds or a calibration.

*Several seeds.* The seed-to-seed spread is then the noise, measured: per bin,
each run is reduced to its late level relative to the baseline's mean, less its
own progress lag, and the sides are compared with Welch's t over seeds
(:func:`diffaudit.stats.compare_seed_means`). *Several baseline seeds against one
candidate* (the recommended CI setup: baseline seeds run once per main commit,
one candidate per PR) is a prediction interval: the candidate against the
baseline seeds' mean with sd * sqrt(1 + 1/n) and t on n - 1 degrees of freedom,
so the candidate's own seed effect is allowed for by what the baseline's seeds
actually do; no allowance is added.

*Many bins.* One-sided p-values are adjusted across bins with Holm by default
(the false alarm is a family-wise event; ``correction="by"`` is available). The
bins and the two aggregates split alpha (``GROUP_ALPHA_SHARE``, half each;
Bonferroni between the two families). The two aggregates are nearly the same
test (the still-falling bins are half of all bins): they are tested jointly, a
step-down max-T test whose first step takes the smaller p-value against the
pair's joint null (:func:`diffaudit.stats.pair_max_sf`: correlated numerators,
variance estimates from the same runs), the correlation from a model of the
bins (an AR(1) along the noise levels, each bin with its own variance,
:func:`diffaudit.stats.ar1_group_correlation`) that errs low, the safe side.
Where no model of the bins' correlation is at hand (one run per side with the
built-in allowance) the aggregates take Holm.

*The other checks* each test at ``alpha`` against their limit: speed over
seeds on log(steps), and with one run per side against ``SEED_SPEED_SD`` (a
single pair's speed decides alone only when the change is far outside the
seed-to-seed spread: at the defaults about +42% against the 25% limit); clip
rate with batch means over steps. Non-finite losses and findings are events,
not estimates: any increase beyond the limit counts.

Measured by ``benchmarks/calibrate_gate.py`` (2-core CPU) and stated in the
README: the false-positive rate over all ordered healthy pairs and of several
baseline seeds against one candidate, and the power on labelled defects, per
family, for calibration and held-out families apart.

Missing data are handled in one place per check and reported, never dropped
silently: a bin that a run did not sample in the window, a window with too
few matched blocks, a run without clip thresholds. The verdict is
*inconclusive* (exit code 3 in the CLI) when no steps overlap or no bin could
be tested.
"""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterable, Sequence

import numpy as np
import polars as pl

from diffaudit import stats
from diffaudit.allowance import Allowance, check_fits, find_in, read_allowance
from diffaudit.errors import DataError, DiffauditError, InconclusiveError, MismatchError
from diffaudit.analysis import analyze
from diffaudit.configs import flat_config, seed_like, seed_values
from diffaudit.load import Run
from diffaudit.reference import reference_lstar
from diffaudit.units import conversion_notes, in_lstar_units
from diffaudit.findings import SEVERITIES
from diffaudit.gate_options import (ALPHA, CORRECTION, CORRECTIONS, MAX_LAG, METRICS, MIN_WINDOWS,
                                    TOLERANCE, UNITS, WINDOW, Rule, Window, parse_alpha, parse_tolerance,
                                    parse_window, rule_set)
from diffaudit.sides import load_side
from diffaudit.words import bin_ranges, bin_span, change_text, json_float, p_is, pct, process_words

# ----------------------------------------------------------------------------
# Defaults

MIN_TEST_BLOCKS = 3  # one run per side: fewer matched blocks in the window and a bin is untested
SPEED_LEVEL = 0.10  # convergence: steps to reach the baseline's late level + this share of its drop
SPEED_BLOCKS = 100  # the per-step loss is smoothed in this many blocks over the matched steps
ELASTICITY_MIN = 0.05  # bins whose level moves less than this per unit lag do not inform the lag fit
LAG_SHARE = 0.5  # the lag may explain at most this share of the still-falling bins' mean change
GROUP_ALPHA_SHARE = 0.5  # share of alpha spent on the aggregates (mean over all bins, over the still-falling bins)
MIN_EFFECTIVE_DF = 2.0  # a bin's error bar needs at least this many effective degrees of freedom, else untested
AR1_FALLBACK_PHI = stats.AR1_PHI_MAX  # too few blocks to estimate the block correlation: assume the worst
# Seed-to-seed allowance (sd per run), learned by ``benchmarks/calibrate_gate.py --fit`` from every ordered pair
# of healthy seeds of the calibration families, digits_mlp (40 seeds, sample_logs/corpus) and patches_conv (8 seeds,
# sample_logs/families), compared with the allowance off: per bin, the variance of the lag-adjusted change that
# within-run variability does not explain, as an upper envelope (90% of the bins) of b^2 + (f * mean loss / bin
# loss)^2; for the rest, the same excess for the aggregates and the sd over seeds. The larger family decides.
SEED_BIN_SD = 0.0266  # b: of a bin's late loss (patches_conv 2.66%, digits_mlp 0.38%)
SEED_FLOOR_SD = 0.0028  # f: of the run's mean loss over bins, in every bin (patches_conv 0.28%, digits_mlp 0.05%)
SEED_MEAN_SD = 0.0374  # of the mean over a group of bins (patches_conv 3.74%, digits_mlp 0.45%)
SEED_SPEED_SD = 0.055  # of log(steps to reach the loss level) (digits_mlp 5.5%, patches_conv 3.5%)
SEED_CLIP_SD = 0.63  # of the log-odds of the clip rate (patches_conv 0.63, digits_mlp 0.46; as sds of the rate 0.033 and 0.0013)
CLIP_POINTS = 10_000  # per-step clip indicators are averaged into at most this many windows before testing

GROUP_METRIC = "loss_mean"  # aggregates of bins: mean relative change over a group, under the loss rule

__all__ = [
    "DEFAULT_ALLOWANCE", "GROUP_METRIC", "LAG_SHARE", "SEED_BIN_SD", "SEED_CLIP_SD", "SEED_FLOOR_SD", "SEED_MEAN_SD",
    "SEED_SPEED_SD", "Allowance", "Check", "Side", "Verdict",
    "adjusted_levels", "block_means", "sampling_variance", "compare", "decide", "group_detectable", "group_detectables", "late_levels",
    "projected_sight", "resolve_allowance", "seed_stats", "single_run_stats", "speed_level", "with_baseline",
]


# ----------------------------------------------------------------------------
# Result types


@dataclass(frozen=True)
class Check:
    """One comparison: the two values, the change, its interval and p-value, and the verdict with its reason."""

    metric: str  # one of METRICS
    name: str  # e.g. "loss bin 3" or "clip rate"
    status: str  # "pass", "regression", "inconclusive" or "off"
    reason: str  # one line: why this status
    rule: str  # the rule applied, e.g. "loss:2%"
    baseline: float | None = None  # value on each side (mean over seeds)
    candidate: float | None = None
    change: float | None = None  # in the rule's unit: relative (0.031 = +3.1%) or absolute
    relative: bool = True
    lo: float | None = None  # (1 - alpha) interval of the change, same unit
    hi: float | None = None
    p: float | None = None  # one-sided p-value for "the candidate is higher"
    q: float | None = None  # p adjusted across bins (loss and excess checks)
    limit: float | None = None
    bin: int | None = None
    noise_levels: str = ""  # the bin's range of timesteps (or sigma), in words
    details: dict = field(default_factory=dict)  # lag adjustment, L*, excess, counts ...
    detectable: float | None = None  # smallest change (rule's unit) caught with 80% probability: what it can see

    @property
    def regressed(self) -> bool:
        return self.status == "regression"


@dataclass(frozen=True)
class Side:
    """What one side of the comparison is."""

    role: str  # "baseline" or "candidate"
    names: tuple[str, ...]
    paths: tuple[str, ...]
    first_step: int | None  # the widest range any of its runs logged
    last_step: int | None

    @property
    def n_runs(self) -> int:
        return len(self.names)

    def label(self) -> str:
        return self.names[0] if self.n_runs == 1 else f"{self.n_runs} runs ({', '.join(self.names[:3])}{', …' if self.n_runs > 3 else ''})"


@dataclass(frozen=True, eq=False)
class Verdict:
    """The gate's answer: overall status, every check, and what the comparison rested on."""

    status: str  # "pass", "regression" or "inconclusive"
    summary: str  # one line
    baseline: Side
    candidate: Side
    noise_model: str  # "seeds" or "within-run"
    checks: tuple[Check, ...] = ()
    notes: tuple[str, ...] = ()
    matched: tuple[int, int] | None = None  # steps both sides logged
    window: tuple[int, int] | None = None  # the late window actually used
    window_blocks: int = 0  # matched blocks in it
    lag: float | None = None  # one run per side: progress lag absorbed (share of the matched steps)
    settings: dict = field(default_factory=dict)
    process: object | None = None  # the baseline's diffaudit.noise.Process: the bins' noise levels
    lstar_kind: str | None = None  # "gaussian", "empirical" or None
    detectable: float | None = None  # smallest rise of the (precision-weighted) mean loss over bins caught 80% of the time
    projection: dict | None = None  # {"baseline_seeds": k, "detectable": x}: what k baseline seeds would see
    weak: bool = False  # the detectable rise is more than twice the tolerance: too weak to gate on
    allowance: str | None = None  # one run per side: "built-in" or the calibration file used

    @property
    def regressions(self) -> list[Check]:
        return [c for c in self.checks if c.status == "regression"]

    def by_metric(self, metric: str) -> list[Check]:
        return [c for c in self.checks if c.metric == metric]


# ----------------------------------------------------------------------------
# Entry point


def compare(
    baseline,
    candidate,
    *,
    tolerance=TOLERANCE,  # relative rise of a bin's late loss that counts (also `loss:` rule)
    alpha: float = ALPHA,  # significance after correction across bins
    window=WINDOW,  # the late window: "last:20%", "last:5000", "from:S", "steps:A-B" or a Window
    rules: Iterable = (),  # Rule objects or strings ("clip_rate:+0.05"); override the defaults
    correction: str = CORRECTION,  # "holm" or "by"
    min_windows: int = MIN_WINDOWS,  # widen the window to at least this many matched blocks (0: never)
    max_lag: float = MAX_LAG,  # progress lag absorbed per run (share of the matched steps); 0: none
    force: bool = False,  # compare runs whose schedule, prediction or bins differ
    findings_of: Callable[[Run], Sequence] | None = None,  # run -> findings; default diffaudit.analysis
    allowance=None,  # one run per side: an Allowance or a calibration file (default: the baseline folder's, else built-in)
    unit: str = "loss",  # "loss": as logged; "lstar": each run's loss / its own Gaussian L* (targets may differ)
) -> Verdict:
    """Compare candidate runs against baseline runs; return the :class:`Verdict`.

    Each side is a loaded :class:`~diffaudit.load.Run`, a list of them (seeds of one
    configuration), or anything :func:`load_side` accepts. Raises MismatchError
    when the sides' noise processes differ (unless ``force``) and DiffauditError
    for bad settings; too little data gives a verdict with status "inconclusive".

    ``unit="lstar"`` compares runs whose prediction targets differ (epsilon against
    v-prediction, say) on one scale, each run's per-bin loss divided by its own
    Gaussian L* (:mod:`diffaudit.units`); the schedule and bins must still match, and
    the runs need their data statistics (MismatchError otherwise).
    """
    base = _as_runs(baseline, "baseline")
    cand = _as_runs(candidate, "candidate")
    allowance = resolve_allowance(allowance, baseline, base[0].process)
    if unit not in UNITS:
        raise DiffauditError(f"--unit {unit!r}: expected loss or lstar")
    unit_notes: list[str] = []
    if unit == "lstar":
        base, cand, unit_notes, findings_of = _in_lstar_units(base, cand, findings_of)
    tol = parse_tolerance(tolerance)
    alpha = parse_alpha(alpha)
    if correction not in CORRECTIONS:
        raise DiffauditError(f"--correction {correction!r}: expected holm or by")
    max_lag = parse_tolerance(max_lag, option="--max-lag")
    win = parse_window(window)
    rules_ = rule_set(tol, rules)
    settings = {
        "tolerance": tol, "alpha": float(alpha), "window": str(win), "correction": correction,
        "min_windows": int(min_windows), "max_lag": max_lag, "force": bool(force),
        "rules": [str(rules_[m]) for m in METRICS],
        "allowance": _allowance_settings(allowance),
    }
    settings["unit"] = unit
    notes: list[str] = list(unit_notes)
    if unit == "loss":
        _check_compatible(base, cand, force, notes)
    both = sorted({r.path.resolve() for r in base} & {r.path.resolve() for r in cand})
    if both and not (len(base) == len(cand) == 1):
        # one run on both sides (a glob that caught the candidate, say) drags the two sides together
        notes.append(f"{len(both)} run(s) are on both sides ({', '.join(p.name for p in both[:3])}): "
                     "the sides are not independent, so a regression is harder to see")
    sides = (_side("baseline", base), _side("candidate", cand))
    single = len(base) == 1 and len(cand) == 1
    noise = "within-run" if single else "seeds"
    if single:
        notes.append(_single_run_note(allowance, max_lag))
    elif len(cand) == 1:
        notes.append(_prediction_note(len(base), len(base) - 1))
    elif len(base) == 1:
        notes.append(f"one baseline run against {len(cand)} candidate seeds: the candidates' seed-to-seed spread "
                     "stands for the baseline's; several baseline seeds and one candidate is the recommended setup")
    else:
        notes.append(f"{len(base)} baseline and {len(cand)} candidate seeds: the noise is the seed-to-seed spread "
                     "measured on both sides (Welch's t over seed means)")
    common = dict(baseline=sides[0], candidate=sides[1], noise_model=noise, settings=settings,
                  process=base[0].process)

    overlap = _overlap(base + cand)
    if overlap is None:
        return Verdict("inconclusive", "inconclusive: the two sides have no logged steps in common "
                       f"(baseline {_range(sides[0])}, candidate {_range(sides[1])})",
                       notes=tuple(notes), **common)
    lo, hi = overlap
    wider = [f"{s.role} logged {_range(s)}" for s in sides if (s.first_step, s.last_step) != (lo, hi)]
    if wider:
        notes.append(f"compared over the steps every run logged, {lo:,}-{hi:,} ({'; '.join(wider)})")

    # each run's findings (a whole analysis per run) are worked out on other threads while the statistics
    # below run: polars and numpy release the GIL, so on two cores most of that time is hidden
    with ThreadPoolExecutor(max_workers=min(len(base) + len(cand), os.cpu_count() or 1)) as pool:
        found = [] if rules_["findings"].off else [pool.submit(findings_of or run_findings, r) for r in base + cand]
        status, summary, rest = _statistics(base, cand, sides, rules_, win, alpha, correction, min_windows, max_lag,
                                            single, unit, allowance, overlap, notes, found)
    used = rest.pop("allowance_used")
    if used is not allowance:  # the baseline counted among the calibration's runs: what the checks used
        settings["allowance"] = _allowance_settings(used)
    return Verdict(status, summary, notes=tuple(notes), **rest, **common)


def _prediction_note(k: int, df: float) -> str:
    """What one candidate against ``k`` baseline seeds is tested against, its mean over bins on ``df`` df."""
    lent = f" ({k - 1} from these seeds, {df - (k - 1):g} lent by a calibration's runs)" if df > k - 1 else ""
    return (f"one candidate run against {k} baseline seeds: the candidate is tested against a prediction interval "
            f"from the baseline seeds' spread (sd x sqrt(1 + 1/{k}); a mean over bins on t with {df:g} df{lent}, each "
            "bin's spread pooled across bins), so seed-to-seed variation of this model is seen directly; what it "
            "cannot see is a seed distribution with heavier tails than a few baseline seeds show"
            + ("; with fewer than 5 baseline seeds the intervals are wide" if k < 5 and df < 4 else ""))


def _allowance_settings(al: Allowance) -> dict:
    """The allowance as a verdict's settings show it (without its per-run rows and reference levels)."""
    return {k: v for k, v in asdict(al).items() if k not in ("deviations", "measured_on", "reference")}


def _statistics(base, cand, sides, rules_, win, alpha, correction, min_windows, max_lag, single, unit, allowance,
                overlap, notes, found):
    """Every check over the matched steps: (status, summary, the Verdict's other fields); notes are appended."""
    lo, hi = overlap
    grid = _block_grid(base + cand, lo, hi)
    sel = _select_window(grid, win, lo, hi, min_windows, notes)
    lstar, lstar_kind = _lstar(base, cand, notes)
    checks: list[Check] = []
    lag = None
    st = None
    if sel is None:
        checks += _untested_bins(base[0].process, "the late window holds no matched steps")
        window = None
        nblocks = 0
    else:
        window = (int(grid.start[sel[0]]), int(min(grid.end[sel[-1]], hi)))
        nblocks = len(sel)
        if single and allowance.reference is not None and unit == "lstar":
            notes.append("the baseline run is not counted among the calibration's runs: the calibration's levels are "
                         "in loss units, these in units of L*")
        elif single and allowance.reference is not None:
            before = _single_run_note(allowance, max_lag)
            allowance, said = with_baseline(allowance, late_levels(grid, sel, 1)[0][0], base[0], window, nblocks)
            notes[:] = [_single_run_note(allowance, max_lag) if n == before else n for n in notes] + [said]
        bin_checks, st = _loss_checks(grid, sel, base, cand, rules_, alpha, correction, max_lag, lstar, single, lo, hi,
                                      allowance, unit)
        checks += bin_checks
        notes += st.notes
        if st.lent_df and len(cand) == 1:
            old = _prediction_note(len(base), len(base) - 1)
            notes[:] = [_prediction_note(len(base), len(base) - 1 + st.lent_df) if n == old else n for n in notes]
        lag = st.lag
        if single and max_lag > 0 and st.lag_fit > max_lag:
            notes.append(f"the still-falling bins' levels ask for a progress lag of {pct(st.lag_fit)} of the steps, more "
                         f"than the {pct(max_lag)} seeds differ by; {pct(st.lag)} was removed (a lag may explain at "
                         f"most {pct(LAG_SHARE)} of their mean change and of the tolerance), the rest counts as a change")
    if unit == "lstar":
        checks.append(Check("steps", "steps to reach the loss level", "off",
                            "not compared in L* units: the per-step loss mixes noise levels", rule=str(rules_["steps"])))
    else:
        checks.append(_speed_check(base, cand, rules_["steps"], lo, hi, window, alpha, single, allowance))
    checks.append(_clip_check(base, cand, rules_["clip_rate"], lo, hi, alpha, single, allowance))
    checks.append(_nonfinite_check(base, cand, rules_["nonfinite"], lo, hi))
    checks += _findings_checks(base, cand, rules_["findings"], found)
    if lag and lag > 0:
        whose = "the candidate's per-bin levels are" if single else "on average, the candidate seeds' levels are"
        notes.append(f"progress lag absorbed: {whose} consistent with being {pct(lag)} of the matched steps "
                     f"behind the baseline ({lag * (hi - lo + 1):,.0f} steps); per-bin changes are shown after removing it "
                     "(speed is judged by its own check)")
    sight = _sight(checks, st, rules_["loss"], alpha, len(base), len(cand), correction)
    status, summary = _overall(checks, sides, nblocks, sight)
    if sight["weak"] and status != "regression":  # a regression was seen: how weak the test was is moot
        notes.append(_weak_words(sight, rules_["loss"], single, allowance))
    return status, summary, dict(allowance_used=allowance, checks=tuple(checks), matched=overlap, window=window,
                                 window_blocks=nblocks, lag=lag,
                                 lstar_kind=lstar_kind, detectable=sight["detectable"], projection=sight["projection"],
                                 weak=sight["weak"],
                                 allowance=allowance.source if single or (st is not None and st.lent_given) else None)


# ----------------------------------------------------------------------------
# What the comparison can see

PROJECT_SEEDS = (3, 5, 8, 10, 15, 20, 30)  # baseline seed counts a projection may name
PROJECT_LENT = 3  # runs of a calibration a projection for several baseline seeds names (the fewest calibrate takes)


def _sight(checks: list[Check], st, rule: Rule, alpha: float, n_base: int, n_cand: int, correction: str) -> dict:
    """The verdict's detectable rise (of the mean loss over bins, else of the best bin), what more baseline
    seeds would see, and whether the comparison is too weak to gate on (detectable > 2x the tolerance)."""
    out = {"detectable": None, "projection": None, "weak": False, "need": None, "run_sd": None}
    group = next((c for c in checks if c.metric == GROUP_METRIC and c.detectable is not None), None)
    bins = [c.detectable for c in checks if c.metric == "loss" and c.detectable is not None]
    if group is not None:
        out["detectable"] = group.detectable
    elif bins:
        out["detectable"] = min(bins)
    if out["detectable"] is None or st is None or rule.limit is None or not rule.relative:
        return out
    tol = rule.limit
    if st.groups:  # what the progress lag may remove from the aggregate the statement is of
        _, members, _, _, _, wts = st.groups[0]
        lag = float(np.sum(wts[members] * st.lag_cap * st.elastic[members]))
    else:
        lag = float(np.mean(st.lag_cap * st.elastic[np.isfinite(st.change)])) if np.isfinite(st.change).any() else 0.0

    def would_see(k: int, lent: float = 0.0) -> float:
        # k baseline seeds against one candidate: a prediction interval from the seeds' spread of the mean, its
        # aggregates as correlated as these; ``lent``: df more runs of a calibration would lend them
        d = k - 1 + st.lent_df + lent  # runs a calibration lends would lend these seeds too
        lvl = _group_level(st, alpha, d)
        return tol + lag + float(stats.detectable_shift(st.run_sd * math.sqrt(1 + 1 / k), d, lvl))

    if math.isfinite(st.run_sd) and st.run_sd > 0:
        k = 5 if n_base < 5 else 2 * n_base
        out["projection"] = {"baseline_seeds": k, "detectable": would_see(k), "run_sd": st.run_sd}
        if n_base >= 2 and n_cand == 1 and not st.lent_given:
            # these seeds, lent the scatter of a calibration's other runs (lent_runs)
            lent = would_see(n_base, PROJECT_LENT - 1)
            if lent < out["detectable"]:
                out["projection"].update(calibration_runs=PROJECT_LENT, with_calibration=lent)
                out["lend"] = (PROJECT_LENT, lent)
        if out["projection"]["detectable"] >= out["detectable"]:
            out["projection"] = None  # more seeds of a spread this large would not see more
        if out["detectable"] > 2 * tol:
            need = next((k for k in PROJECT_SEEDS if would_see(k) <= 2 * tol), None)
            out["need"] = None if need is None else (need, would_see(need))
        out["run_sd"] = st.run_sd
    out["weak"] = out["detectable"] > 2 * tol
    return out


def projected_sight(al: Allowance, *, seeds=(3, 5), tolerance: float = TOLERANCE, alpha: float = ALPHA) -> dict:
    """What ``compare`` will be able to see with a calibration: the detectable rise of the mean loss over bins
    (as a verdict states it) for one run per side (the baseline counted among its runs when the file keeps its
    reference levels) and for each count in ``seeds`` of baseline seeds against one candidate, the calibration's
    runs lent to them; for runs of the calibration's length. A forecast from the calibration's own spread: the
    comparison's spread is measured again on its runs, so what it states varies about this. {} when the
    calibration keeps no spread of the mean (built-in allowance, or too few bins)."""
    sd = al.mean
    if not al.calibrated or not (sd > 0) or al.deviations is None:
        return {}
    R = al.runs
    dev = np.asarray(al.deviations, np.float64)
    wsd = al.weight_sd()
    tested = np.isfinite(dev).all(axis=0) if wsd is None else np.isfinite(wsd)
    if tested.sum() < 2:
        return {}
    wvar = None if wsd is None else wsd**2
    w_all = stats.precision_weights(np.ones(tested.size) if wvar is None else wvar, tested)
    lag, rho = 0.0, math.nan
    ref = al.reference
    if ref is not None:
        elastic = np.nan_to_num(np.asarray(ref["elasticity"], np.float64), nan=0.0)
        falling = np.zeros(tested.size, bool)
        falling[[k for k in ref["still_falling"] if k < tested.size]] = True
        falling &= tested
        cap = _lag_bound(float(ref["max_lag"]), elastic, falling, tolerance)
        lag = float(np.sum(w_all * cap * elastic))
        if 2 <= falling.sum() < tested.sum() and wvar is not None:
            try:
                r1 = stats.pooled_spread(np.where(tested[None, :], dev, np.nan),
                                         scale=np.asarray(ref["sampling_scale"], np.float64)).r1
            except DiffauditError:
                r1 = math.nan
            if math.isfinite(r1):
                rho = stats.ar1_group_correlation(wvar, r1, tested, falling, w_all,
                                                  stats.precision_weights(wvar, falling))
        two = 2 <= falling.sum() < tested.sum()
    else:
        # a file without its reference levels: the most a lag may take from a mean (LAG_SHARE of the tolerance),
        # and two aggregates tested as if independent (the safe side of both)
        two, lag = True, LAG_SHARE * tolerance
    share = alpha * GROUP_ALPHA_SHARE

    def see(factor: float, df: float) -> float:
        # the comparison measures its sd on df degrees of freedom: its expected value, given this one on R - 1
        # (E[s] = c4(df) sigma, so sd / c4(R - 1) estimates sigma without bias)
        se = sd * _c4(df) / _c4(R - 1) * factor
        lvl = stats.pair_level(share, rho, df) if two and math.isfinite(rho) else share / (2 if two else 1)
        return tolerance + lag + float(stats.detectable_shift(se, df, lvl))

    counted = ref is not None  # compare counts the baseline run among the calibration's runs
    return {"one_run_per_side": see(math.sqrt(2.0), R if counted else R - 1),
            "baseline_seeds": {int(k): see(math.sqrt(1 + 1 / k), (k - 1) + (R - 1)) for k in seeds}}


def _c4(df: float) -> float:
    """E[s] / sigma for a normal sample's sd on ``df`` degrees of freedom."""
    return math.exp(0.5 * math.log(2.0 / df) + math.lgamma((df + 1) / 2) - math.lgamma(df / 2))


def _weak_words(sight: dict, rule: Rule, single: bool, al: Allowance) -> str:
    det = sight["detectable"]
    said = (f"too weak to gate on: this comparison can see only rises of the mean loss (over the noise levels, each "
            f"weighted by its precision) above {change_text(det, True)}, "
            f"more than twice the {rule.limit_text()} tolerance")
    fixes = []
    if sight["need"] is not None:
        fixes.append(f"{sight['need'][0]} baseline seeds against one candidate (they would see "
                     f"{change_text(sight['need'][1], True)})")
    elif sight.get("run_sd") is not None:
        fixes.append(f"no number of baseline seeds up to {PROJECT_SEEDS[-1]} reaches twice the tolerance: runs of "
                     f"this model differ by about {pct(sight['run_sd'])} of their mean loss (sd), so raise --tolerance")
    if single and not al.calibrated:
        fixes.append("a calibration of this model (diffaudit calibrate on 3 or more healthy seeds, then --allowance) "
                     "in place of the built-in allowance")
    if sight.get("lend") is not None:
        n, see = sight["lend"]
        fixes.append(f"a calibration of this configuration on {n} other seeds (diffaudit calibrate, then --allowance): "
                     f"their scatter lent to these seeds, the comparison would see {change_text(see, True)}")
    fixes.append("a longer late window (--window) where the runs have settled")
    return said + "; what would make it strong enough: " + "; or ".join(fixes)


def resolve_allowance(allowance, baseline, process) -> Allowance:
    """The allowance a comparison uses: the one given (an Allowance, or a calibration file's path), else the
    calibration file a baseline folder holds (:data:`diffaudit.allowance.FILE_NAME`), else the built-in one.
    A calibration measured on another process, target, schedule or bins raises AllowanceError."""
    if allowance is None and isinstance(baseline, (str, os.PathLike)) and os.path.isdir(baseline):
        allowance = find_in(baseline)
    if allowance is None:
        return DEFAULT_ALLOWANCE
    if not isinstance(allowance, Allowance):
        allowance = read_allowance(allowance)
    check_fits(allowance, process, what="the baseline runs")
    return allowance


BASELINE_OUTLIER_P = 0.01  # a baseline whose mean level lies this far out among the calibration's runs is named
LENT_GAP = 0.05  # lent runs lend a mean over bins when the bins they lack carry at most this share of its weight
SAME_RUN = 1e-6  # a baseline whose late level matches a calibration run's to this (relative) in every bin is that run


def with_baseline(al: Allowance, late: np.ndarray, run: Run, window: tuple[int, int], blocks: int
                  ) -> tuple[Allowance, str]:
    """The calibration with a comparison's baseline run counted as one more of its runs, and a note saying so
    (or why not).

    The baseline is another healthy run of the calibrated configuration: its late level per bin, measured over
    the calibration's own late window against the calibration's pooled level and less its own progress lag, is
    one more deviation, so the spread of the mean over bins has R df instead of R - 1 (3 runs: 3 instead of 2,
    which the aggregates' t test needs most) and each bin's pooled spread one more. The comparison's numerator
    holds the baseline too; a large deviation of it widens the spread, so the test stays at or under its level
    (``tests/test_calibrate.py`` checks the size by Monte Carlo). A baseline whose mean level lies outside
    what the calibration's seeds do (a calibration made before the configuration changed) widens the spread
    more and is named. ``late``: the baseline's late level per bin over ``window`` (``blocks`` blocks).
    """
    ref, dev0 = al.reference, al.deviations
    w = al.measured_on.get("window", {})
    if ref is None or dev0 is None:
        return al, "the calibration holds no reference levels, so the baseline run is not counted among its runs"
    if (w.get("first"), w.get("last"), w.get("blocks")) != (window[0], window[1], blocks):
        return al, (f"the baseline run is not counted among the calibration's runs: its late window (steps "
                    f"{window[0]:,}-{window[1]:,}) is not the calibration's ({w.get('first', 0):,}-{w.get('last', 0):,})")
    cal_runs = al.measured_on.get("runs", [])
    twin = _calibration_twin(al, run, late)
    if twin is not None:
        i, how = twin
        name = cal_runs[i].get("name", "") if i < len(cal_runs) else ""
        if how == "path":
            return al, f"the baseline run {run.name} is one of the calibration's runs"
        if how == "levels":
            return al, (f"the baseline run {run.name} is one of the calibration's runs"
                        + (f" ({name}: the same late levels)" if name and name != run.name else " (the same late levels)"))
        return al, (f"the baseline run {run.name} is not counted among the calibration's runs: it has the seed of "
                    f"{name} ({cal_runs[i].get('seed')}), so it is not an independent run")
    differ = _config_differs(al, run)
    if differ:
        return al, (f"the baseline run {run.name} is not counted among the calibration's runs: its config differs "
                    f"in {_keys_text(differ)}")
    nb = late.size
    level, center, elastic = (np.asarray(ref[k], np.float64) for k in ("late", "center", "elasticity"))
    elastic = np.nan_to_num(elastic, nan=0.0)
    falling = np.zeros(nb, bool)
    falling[list(ref["still_falling"])] = True
    dev0 = np.asarray(dev0, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = late / level - 1.0
    # the lag exactly as the calibration took its own runs' (adjusted_levels)
    lag = _cap_lag(_fit_lag(rel, elastic, -ref["max_lag"], ref["max_lag"]), rel, elastic, falling, ref["tolerance"])
    rows = np.vstack([dev0 + center[None, :], (rel - lag * elastic)[None, :]])
    tested = np.isfinite(rows).all(axis=0)
    if tested.sum() < 2:
        return al, "the baseline run is not counted among the calibration's runs: it sampled too few of its bins"
    dev = np.where(tested[None, :], rows - rows.mean(axis=0)[None, :], np.nan)
    try:
        spread = stats.pooled_spread(dev, scale=np.asarray(ref["sampling_scale"], np.float64))
    except InconclusiveError:
        return al, "the baseline run is not counted among the calibration's runs: too few bins to pool a spread"
    profile = np.where(tested, spread.prior, np.nan)
    per_run = stats.weighted_mean_rows(dev, stats.precision_weights(profile, tested))  # as the gate weighs bins
    R = per_run.size
    bins = np.where(tested, np.sqrt(spread.var), np.nan)
    out = replace(al, mean=float(np.std(per_run, ddof=1)), df_mean=float(R - 1), bins=tuple(float(v) for v in bins),
                  profile=tuple(float(v) for v in np.sqrt(profile)),
                  df_bins=tuple(float(v) for v in np.where(tested, spread.df, np.nan)),
                  deviations=tuple(tuple(float(v) for v in r) for r in dev), baseline_run=run.name)
    # the baseline's distance from the other runs' mean, against their spread (a prediction interval), the bins
    # weighted as the calibration alone weighs them (the baseline's own deviations would flatten the weights)
    with np.errstate(invalid="ignore"):
        per_run = stats.weighted_mean_rows(dev, stats.precision_weights(al.weight_sd() ** 2, tested))
    others = per_run[:-1]
    d = per_run[-1] - float(np.mean(others))
    sd = float(np.std(others, ddof=1))
    said = (f"the baseline run {run.name} counts as one more run of the calibration: its spreads now rest on {R} "
            f"runs ({R - 1} df for the mean over bins); its mean level lies {change_text(d, True)} from the "
            f"calibration runs' mean")
    if sd > 0:
        t = d / (sd * math.sqrt(1 + 1 / others.size))
        p = 2 * float(stats.t_sf(abs(t), others.size - 1))
        if p < BASELINE_OUTLIER_P:
            said += (f", more than the calibration's seeds differ (p = {p:.2g}): was the configuration changed since "
                     "it was calibrated? The difference widens the spread, so this comparison sees less; recalibrate "
                     "on runs of the current configuration")
    return out, said


def _calibration_twin(al: Allowance, run: Run, late: np.ndarray | None) -> tuple[int, str] | None:
    """The calibration run that ``run`` is not independent of, and how: "path" (it is that run), "levels" (a
    copied or synced folder: the same late level in every bin; ``late``, the run's late levels over the
    calibration's window, None where the windows differ) or "seed" (a rerun of its seed); None when none."""
    cal_runs = al.measured_on.get("runs", [])
    here = {str(run.path), str(run.path.resolve())}
    i = next((i for i, r in enumerate(cal_runs) if r.get("path") in here), None)
    if i is not None:
        return i, "path"
    if late is not None and al.reference is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.abs(np.asarray(al.reference["late_runs"], np.float64) / np.asarray(late)[None, :] - 1.0)
        both = np.isfinite(ratio)
        i = next((i for i in range(ratio.shape[0])
                  if both[i].sum() >= 2 and float(np.max(ratio[i, both[i]])) < SAME_RUN), None)
        if i is not None:
            return i, "levels"
    cfg = run.meta.get("config") or {}
    seed = cfg.get("seed") if isinstance(cfg, dict) else None
    mine = seed_values(cfg)

    def rerun(r: dict) -> bool:
        theirs = r.get("seeds")
        if isinstance(theirs, dict) and theirs and mine:  # every seed key alike (a file that records them)
            return theirs == mine
        return seed is not None and r.get("seed") == seed

    i = next((i for i, r in enumerate(cal_runs) if isinstance(r, dict) and rerun(r)), None)
    return None if i is None else (i, "seed")


def _config_differs(al: Allowance, run: Run) -> list[str]:
    """The config keys (not a seed's, nor ones the calibration was forced past) in which ``run`` differs from the
    calibration's runs; empty where the calibration kept no config."""
    if "config" not in al.measured_on:
        return []
    cfg = run.meta.get("config") or {}
    skip = set(al.measured_on.get("forced", []))
    mine = {k: v for k, v in flat_config(cfg).items() if not seed_like(k) and k not in skip}
    theirs = {k: v for k, v in al.measured_on["config"].items() if k not in skip}
    return sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))


def _window_words(al: Allowance) -> str:
    share = al.window_share()
    return "" if share is None else f" ({share[0]:.0%}-{share[1]:.0%} of its steps)"


def _keys_text(keys: list[str]) -> str:
    return f"{', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"


def lent_runs(al: Allowance, base: list, cand: list, late: np.ndarray, span: float, window: tuple[int, int],
              blocks: int, *, first: int | None = None, unit: str = "loss", tolerance: float = TOLERANCE,
              max_lag: float = MAX_LAG) -> tuple[np.ndarray | None, str | None]:
    """The runs of a calibration that several baseline seeds can borrow the scatter of (:func:`seed_stats`'s
    ``lent``): each one's lag-adjusted relative deviation per bin from the mean of those lent, and a note saying
    what was lent (or why nothing was); (None, None) for the built-in allowance.

    A calibration run lends only when it is independent of every compared run (not one of them, a copy or a rerun
    of one's seed: those count once, as compared runs), when there are several baseline seeds and they are runs of
    the calibrated configuration (their config differs only in a seed), and when its deviations are the same
    statistic as the seeds': runs of about its length, read over the same part of training (its scatter holds
    the within-run noise of its own late window, and a window earlier in training spreads more), with the same
    tolerance and progress-lag bound (they cap the lag each run's levels are adjusted by), in loss units (in units
    of L* a copy of one of its runs could not be told by its levels). ``late``: (runs, bins) every compared run's
    late level, baseline first; ``first``: the first matched step (``window`` is placed from it)."""
    if not al.calibrated:
        return None, None
    what = f"the calibration {al.source}"
    if len(base) < 2:
        return None, f"{what} lends its runs only to several baseline seeds"
    if al.deviations is None or al.reference is None:
        return None, f"{what} keeps no per-run reference levels, so its runs cannot join the baseline seeds' spread"
    if unit != "loss":
        return None, (f"{what} lends nothing in units of L*: its levels are in loss units, so a compared run that is a "
                      "copy of one of its runs could not be told apart")
    if not al.matches_length(int(span)):
        return None, (f"{what} was measured on runs of {al.steps or 0:,} matched steps, these have {int(span):,}: its "
                      "runs do not join the baseline seeds' spread (the within-run part of a spread follows the "
                      "length of the late window)")
    lo = window[0] if first is None else first
    mine = ((window[0] - lo) / span, (window[1] - lo) / span)
    if not al.matches_window(mine):
        return None, (f"{what} was measured over another part of training{_window_words(al)} than this late window "
                      f"({mine[0]:.0%}-{mine[1]:.0%} of the matched steps): its runs do not join the baseline seeds' "
                      "spread (runs spread more earlier in training)")
    ref = al.reference
    if not (math.isclose(float(ref["tolerance"]), tolerance) and math.isclose(float(ref["max_lag"]), max_lag)):
        return None, (f"{what} adjusted its runs' levels for a progress lag under another tolerance or --max-lag "
                      f"({pct(float(ref['tolerance']))}, {pct(float(ref['max_lag']))}; here {pct(tolerance)}, "
                      f"{pct(max_lag)}): its runs do not join the baseline seeds' spread")
    differ = sorted({k for run in base for k in _config_differs(al, run)})
    if differ:
        return None, (f"{what} is of another configuration (the baseline seeds' config differs in "
                      f"{_keys_text(differ)}): its runs do not join their spread")
    w = al.measured_on.get("window", {})
    same_window = (w.get("first"), w.get("last"), w.get("blocks")) == (window[0], window[1], blocks)
    cal_runs = al.measured_on.get("runs", [])
    shared = {}
    for r, run in enumerate(list(base) + list(cand)):
        twin = _calibration_twin(al, run, late[r] if same_window else None)
        if twin is not None:
            shared.setdefault(twin[0], run.name)
    dev = np.asarray(al.deviations, np.float64)
    keep = [i for i in range(dev.shape[0]) if i not in shared]
    also = ""
    if shared:
        names = [cal_runs[i].get("name", f"#{i + 1}") if i < len(cal_runs) else f"#{i + 1}" for i in sorted(shared)]
        also = f" ({len(shared)} of its runs are compared runs, or their copies or seeds, and count once: {_keys_text(names)})"
    if len(keep) < 2:
        return None, f"{what} has {len(keep)} run(s) besides the compared ones: too few to lend a spread{also}"
    rows = dev[keep]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a bin none of them sampled stays NaN
        rows = rows - np.nanmean(rows, axis=0)[None, :]
    return rows, (f"{what} lends the baseline seeds the scatter of its {len(keep)} other runs of this configuration: "
                  f"each bin's pooled spread and the mean over bins gain {len(keep) - 1} df{also}")


def _single_run_note(al: Allowance, max_lag: float) -> str:
    seen = ("within-run variability (block to block, with an error bar that widens for correlated blocks) and a "
            f"progress lag of up to {pct(max_lag)} of the steps")
    if al.calibrated:
        return (f"one run per side: the noise model sees {seen}, and takes how seeds of this model differ from a "
                f"calibration on its own healthy seeds ({al.words()})")
    if al.bin > 0 or al.mean > 0 or al.speed > 0:
        return (f"one run per side: the noise model sees {seen}; what it cannot see, how seeds of this model differ, "
                f"is covered by a seed-to-seed allowance learned on other models' healthy seed pairs ({al.words()}), "
                "which may be too small or too large for this one. Give several baseline seeds for a prediction "
                "interval that measures it")
    return (f"one run per side: the noise model sees {seen} only; the seed-to-seed spread is unknown and no "
            "allowance for it is made. Give several baseline seeds for a prediction interval that measures it")


def _as_runs(x, role: str) -> list[Run]:
    if isinstance(x, Run):
        return [x]
    if isinstance(x, (list, tuple)) and x and all(isinstance(r, Run) for r in x):
        return list(x)
    if isinstance(x, (list, tuple)) and not x:
        raise DiffauditError(f"{role}: no runs given")
    return load_side(x, role=role)


def _side(role: str, runs: list[Run]) -> Side:
    firsts, lasts = zip(*(_step_range(r) for r in runs))
    f = [v for v in firsts if v is not None]
    l_ = [v for v in lasts if v is not None]
    return Side(role, tuple(r.name for r in runs), tuple(str(r.path) for r in runs),
                min(f) if f else None, max(l_) if l_ else None)


def _range(s: Side) -> str:
    return "nothing" if s.first_step is None else f"steps {s.first_step:,}-{s.last_step:,}"


# ----------------------------------------------------------------------------
# Compatibility


def _difference(a, b) -> str | None:
    """How two processes differ, in words; None when they bin the same noise levels the same way."""
    if a.same_noise_levels(b):
        return None
    if a.kind != b.kind:
        return f"process {a.kind} vs {b.kind}"
    if a.prediction != b.prediction:
        return f"prediction {a.prediction} vs {b.prediction}"
    if a.num_bins != b.num_bins:
        return f"{a.num_bins} vs {b.num_bins} noise bins"
    if a.kind == "vp":
        if a.alpha_bar.shape != b.alpha_bar.shape:
            return f"schedule of {a.alpha_bar.size} vs {b.alpha_bar.size} timesteps"
        n = int(np.sum(~np.isclose(a.alpha_bar, b.alpha_bar, rtol=1e-6, atol=1e-9)))
        return (f"noise schedule (alpha_bar differs at {n} of {a.alpha_bar.size} timesteps; "
                f"terminal alpha_bar {a.alpha_bar[-1]:.3g} vs {b.alpha_bar[-1]:.3g})")
    return "noise-bin edges"


def _in_lstar_units(base: list[Run], cand: list[Run], findings_of):
    """Both sides in L* units, with the notes that say what that assumes; findings still read the runs as logged."""
    ref = base[0].process
    for r in base[1:] + cand:
        p = r.process
        same = p.kind == ref.kind and p.num_bins == ref.num_bins and (
            p.kind != "vp" or (p.alpha_bar.shape == ref.alpha_bar.shape
                               and bool(np.allclose(p.alpha_bar, ref.alpha_bar, rtol=1e-6, atol=1e-9))))
        if not same:
            raise MismatchError(f"{base[0].name} and {r.name}: L* units put different prediction targets on one scale, "
                                f"but the runs must share the process, schedule and bins "
                                f"({process_words(ref)} vs {process_words(p)})")
    original, conv = {}, []
    out = []
    for side in (base, cand):
        converted = []
        for r in side:
            c, info = in_lstar_units(r)
            original[id(c)] = r
            conv.append(info)
            converted.append(c)
        out.append(converted)
    inner = findings_of or run_findings
    return out[0], out[1], conversion_notes(conv), (lambda run: inner(original.get(id(run), run)))


def _check_compatible(base: list[Run], cand: list[Run], force: bool, notes: list[str]) -> None:
    ref = base[0]
    for r, role in [(r, "baseline") for r in base[1:]] + [(r, "candidate") for r in cand]:
        diff = _difference(ref.process, r.process)
        if diff is None:
            continue
        msg = (f"baseline {ref.name} ({process_words(ref.process)}) and {role} {r.name} "
               f"({process_words(r.process)}) differ: {diff}")
        if ref.process.num_bins != r.process.num_bins or ref.process.kind != r.process.kind:
            raise MismatchError(msg + ("; their noise bins cannot be matched" if force else "; use --force to compare anyway"))
        if not force:
            raise MismatchError(msg + "; use --force to compare anyway")
        notes.append(f"--force: {msg}; bins are compared by index")


# ----------------------------------------------------------------------------
# Matching steps and blocks


def _step_range(r: Run) -> tuple[int | None, int | None]:
    lo, hi = [], []
    if r.steps.height:
        lo.append(int(r.steps["step"].min()))
        hi.append(int(r.steps["step"].max()))
    tb = r.train_bins
    if tb.height:
        lo.append(int(tb["step_lo"].min()))
        hi.append(int(tb["step_hi"].max()))
    return (min(lo), max(hi)) if lo else (None, None)


def _overlap(runs: list[Run]) -> tuple[int, int] | None:
    ranges = [_step_range(r) for r in runs]
    if any(a is None for a, _ in ranges):
        return None
    lo = max(a for a, _ in ranges)
    hi = min(b for _, b in ranges)
    return (lo, hi) if lo <= hi else None


@dataclass(frozen=True, eq=False)
class _MatchedBlocks:
    """Per-run, per-bin late statistics on blocks shared by every run."""

    start: np.ndarray  # (K,) first step of each block
    end: np.ndarray  # (K,) last step any run logged in it
    count: np.ndarray  # (R, B, K) samples
    mean: np.ndarray  # (R, B, K) mean loss; NaN where count == 0
    nonfinite: np.ndarray  # (R,) non-finite samples in the bins over the matched steps


def _block_grid(runs: list[Run], lo: int, hi: int) -> _MatchedBlocks:
    """Regroup each run's train windows inside [lo, hi] into blocks that start where every run starts a window."""
    nb = runs[0].process.num_bins
    frames = []
    for r in runs:
        tb = r.train_bins
        tb = tb.filter((pl.col("step_lo") >= lo) & (pl.col("step_hi") <= hi)) if tb.height else tb
        frames.append(tb.select("step_lo", "step_hi", "bin", "count", "mean", "nonfinite"))
    starts = [_unique(f["step_lo"].to_numpy()) for f in frames]
    cuts = starts[0]
    for s in starts[1:]:
        cuts = np.intersect1d(cuts, s, assume_unique=True)
    K = cuts.size
    R = len(runs)
    count = np.zeros((R, nb, max(K, 1)))
    total = np.zeros((R, nb, max(K, 1)))
    end = np.full(max(K, 1), -1, dtype=np.int64)
    nonfinite = np.zeros(R)
    for i, f in enumerate(frames):
        if f.height == 0 or K == 0:
            continue
        nonfinite[i] = float(f["nonfinite"].fill_null(0).sum())
        whole = _whole_windows(f, nb, cuts)
        if whole is not None:
            count[i], total[i] = whole[0], whole[1]
            np.maximum(end, whole[2], out=end)
            continue
        slo = f["step_lo"].to_numpy()
        blk = np.searchsorted(cuts, slo, side="right") - 1
        ok = blk >= 0
        b = f["bin"].to_numpy().astype(np.int64)
        ok &= (b >= 0) & (b < nb)
        n = f["count"].fill_null(0).to_numpy().astype(np.float64)
        m = f["mean"].fill_null(np.nan).to_numpy().astype(np.float64)
        good = ok & (n > 0) & np.isfinite(m)
        idx = b[good] * K + blk[good]
        count[i] += np.bincount(idx, weights=n[good], minlength=nb * K).reshape(nb, K)
        total[i] += np.bincount(idx, weights=(n * np.where(good, m, 0.0))[good], minlength=nb * K).reshape(nb, K)
        _max_into(end, blk[ok], f["step_hi"].to_numpy()[ok])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, np.nan)
    if K == 0:
        return _MatchedBlocks(np.zeros(0, np.int64), np.zeros(0, np.int64), count[:, :, :0], mean[:, :, :0], nonfinite)
    return _MatchedBlocks(cuts.astype(np.int64), end, count, mean, nonfinite)


def _whole_windows(f: pl.DataFrame, nb: int, cuts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(count, count x mean) per (bin, block) and each block's last step, for rows that are whole windows in
    step order, bins 0..nb-1 in each (what the logger writes and a load leaves): the rows are then a
    (window, bin) array, and a block is a run of consecutive windows, summed with one ``np.add.reduceat``
    instead of scattered row by row (~0.1 s of 1,000,000 rows): the same sums, to rounding (a block of several
    windows is summed in another order). None for any other layout (the general path).
    """
    W = f.height // nb
    if W == 0 or W * nb != f.height:
        return None
    b = f["bin"].to_numpy().reshape(W, nb)
    slo = f["step_lo"].to_numpy().reshape(W, nb)
    starts = slo[:, 0]
    if not (np.array_equal(b, np.broadcast_to(np.arange(nb), (W, nb))) and np.all(slo == starts[:, None])
            and np.all(starts[1:] >= starts[:-1])):
        return None
    wblk = np.searchsorted(cuts, starts, side="right") - 1
    first = np.searchsorted(wblk, np.arange(cuts.size))  # each block's first window: every cut starts one
    n = f["count"].fill_null(0).to_numpy().astype(np.float64).reshape(W, nb)
    m = f["mean"].fill_null(np.nan).to_numpy().astype(np.float64).reshape(W, nb)
    with np.errstate(invalid="ignore"):
        good = (n > 0) & np.isfinite(m)
        cw = np.where(good, n, 0.0)
        tw = np.where(good, n * m, 0.0)
    last = f["step_hi"].to_numpy().reshape(W, nb).max(axis=1)
    return (np.add.reduceat(cw, first, axis=0).T, np.add.reduceat(tw, first, axis=0).T,
            np.maximum.reduceat(last, first))


def _unique(a: np.ndarray) -> np.ndarray:
    """np.unique, in O(n) when ``a`` is already in order (a run's windows are)."""
    if a.size and np.all(a[1:] >= a[:-1]):
        return a[np.r_[True, a[1:] != a[:-1]]]
    return np.unique(a)


def _max_into(out: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
    """out[index] = max(out[index], values) over repeated indices: one maximum per run of equal indices when
    they are in order (np.maximum.at alone takes ~50 ms for 1,000,000 rows)."""
    if index.size and np.all(index[1:] >= index[:-1]):
        first = np.r_[0, np.flatnonzero(index[1:] != index[:-1]) + 1]
        index, values = index[first], np.maximum.reduceat(values, first)
    np.maximum.at(out, index, values)


def _select_window(grid: _MatchedBlocks, win: Window, lo: int, hi: int, min_windows: int, notes: list[str]) -> np.ndarray | None:
    """Indices of the blocks in the late window, widened to ``min_windows`` blocks if it holds fewer."""
    K = grid.start.size
    if K == 0:
        notes.append("no noise-bin windows lie inside the matched steps")
        return None
    w0, w1 = win.resolve(lo, hi)
    w0, w1 = max(w0, lo), min(w1, hi)
    if w0 > w1:
        notes.append(f"the window {win} lies outside the matched steps {lo:,}-{hi:,}")
        return None
    inside = np.flatnonzero((grid.start >= w0) & (grid.end <= w1) & (grid.end >= 0))
    want = int(min_windows)
    if inside.size < want:
        # keep the window's end, take earlier blocks until there are enough
        upto = inside[-1] if inside.size else int(np.searchsorted(grid.start, w1, side="right")) - 1
        first = max(0, upto - want + 1)
        widened = np.arange(first, upto + 1)
        widened = widened[grid.end[widened] >= 0]
        if widened.size > inside.size:
            notes.append(f"late window {win} held {inside.size} matched block(s); widened to the last {widened.size} "
                         f"(steps {grid.start[widened[0]]:,}-{min(grid.end[widened[-1]], hi):,}) for an honest error bar "
                         f"(--min-windows {want})")
            inside = widened
    return inside if inside.size else None


# ----------------------------------------------------------------------------
# Late per-bin loss


def _lstar(base: list[Run], cand: list[Run], notes: list[str]) -> tuple[np.ndarray | None, str | None]:
    """L* per bin for the excess: empirical when both sides have it, else the Gaussian L*, else None (with a note)."""
    if base[0].meta.get("unit") == "lstar":  # the loss already is its ratio to L*; a separate excess adds nothing
        return None, None
    ref = reference_lstar(base[0])
    if ref.has_empirical and reference_lstar(cand[0]).has_empirical:
        return ref.empirical, "empirical"
    if ref.has_gaussian:
        return ref.gaussian, "gaussian"
    notes.append(f"excess over L* not computed: {ref.problem.split(': ', 1)[-1]}" if ref.problem
                 else "no data variance in run.json: excess over L* not computed")
    return None, None


def _untested_bins(process, why: str) -> list[Check]:
    edges = process.bin_edges()
    return [Check("loss", f"loss bin {b}", "inconclusive", why, rule="loss", bin=b,
                  noise_levels=bin_span(process.kind, edges, b)) for b in range(process.num_bins)]


def _elasticity(mean: np.ndarray, x: np.ndarray, span: float) -> np.ndarray:
    """Per bin: -d log(level) / d(share of the matched steps), from an OLS fit over the blocks; >= 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.log(mean)
    ok = np.isfinite(y)
    out = np.zeros(mean.shape[0])
    for b in range(mean.shape[0]):
        yb, xb = y[b, ok[b]], x[ok[b]]
        if yb.size < 3:
            continue
        xc = xb - xb.mean()
        den = float(xc @ xc)
        if den > 0:
            out[b] = max(0.0, -float(xc @ (yb - yb.mean())) / den * span)
    return out


def _weighted_median(v: np.ndarray, w: np.ndarray) -> float:
    o = np.argsort(v, kind="stable")
    c = np.cumsum(w[o])
    return float(v[o][np.searchsorted(c, 0.5 * c[-1])])


def _fit_lag(rel: np.ndarray, elastic: np.ndarray, lo: float, hi: float) -> float:
    """The progress lag (share of the matched steps) that best explains relative level differences across bins.

    rel_b ~ lag * e_b: the e-weighted median of rel_b / e_b (least absolute deviations through the origin), over
    the bins that still move (e_b > ELASTICITY_MIN); clipped to [lo, hi]; 0 with fewer than 3 such bins.
    """
    use = np.isfinite(rel) & (elastic > ELASTICITY_MIN)
    if hi <= lo or use.sum() < 3:
        return 0.0
    return float(np.clip(_weighted_median(rel[use] / elastic[use], elastic[use]), lo, hi))


def _decide(said: str, rule: Rule, over: bool, significant: bool, evidence: str, against: str) -> tuple[str, str]:
    """(status, reason) of a check: a regression only when the change is over the limit and significantly so."""
    if over and significant:
        return "regression", f"{said} > {rule.limit_text()}, significantly above it ({evidence})"
    if over:
        return "pass", f"{said} > {rule.limit_text()} but not significantly above it ({against})"
    return "pass", f"{said}, within {rule.limit_text()}"


def _one_sided(diff: float, se: float, df: float) -> float:
    """P(T >= diff/se) under no increase: small when the candidate is clearly higher."""
    if not (se > 0) or not math.isfinite(se):
        return 0.0 if diff > 0 else 1.0
    tval = diff / se
    return float(stats.norm_sf(tval) if not math.isfinite(df) else stats.t_sf(tval, df))


def _tq(alpha: float, df: float) -> float:
    return float(stats.norm_isf(alpha / 2) if not math.isfinite(df) else stats.t_isf(alpha / 2, df))


DEFAULT_ALLOWANCE = Allowance(SEED_BIN_SD, SEED_MEAN_SD, SEED_SPEED_SD, SEED_FLOOR_SD, SEED_CLIP_SD)


@dataclass(frozen=True, eq=False)
class _BinStats:
    """Per-bin statistics of the late window, relative to the baseline's level, before any decision."""

    level_a: np.ndarray  # (B,) baseline late level (mean over seeds)
    level_b: np.ndarray
    raw: np.ndarray  # (B,) relative change before the lag
    change: np.ndarray  # (B,) relative change after removing the lag
    var: np.ndarray  # (B,) variance of `change` (relative^2): within-run or over seeds, plus any allowance
    df: np.ndarray  # (B,) degrees of freedom of `var`
    elastic: np.ndarray  # (B,)
    lag: float  # progress lag removed (share of the matched steps)
    lag_fit: float  # the lag the levels asked for, before the bounds
    why: list  # reason a bin is untested ("" when tested)
    groups: list  # aggregates: (name, bins, change, var, df)
    notes: list  # what the noise model rested on
    lag_cap: float = 0.0  # the most progress lag the candidate may have removed (share of the matched steps)
    run_sd: float = math.nan  # sd of one run's mean level over the tested bins (relative): for projections
    group_rho: float = math.nan  # correlation of the two aggregates' statistics (a model's); NaN: Holm between them
    lent_df: float = 0.0  # degrees of freedom other runs of the baseline's configuration (a calibration's) add
    lent_given: bool = False  # such runs were lent (to the bins, and to the means unless lent_df is 0)


def _lag_bound(max_lag: float, elastic: np.ndarray, falling: np.ndarray, tolerance: float) -> float:
    """The largest lag :func:`_cap_lag` lets stand: what a rise may lose to the lag before it is judged."""
    if falling.sum() < 2:
        return max_lag
    e = float(np.mean(elastic[falling]))
    return min(max_lag, LAG_SHARE * tolerance / e) if e > 0 else 0.0


def _satterthwaite(v_est: np.ndarray, df_est: np.ndarray, v_known, df_known=math.inf) -> tuple[np.ndarray, np.ndarray]:
    """Variance and df of the sum of two estimated variances (Welch-Satterthwaite); ``df_known`` inf: known."""
    v_known = np.asarray(v_known, np.float64)
    tot = v_est + v_known
    with np.errstate(invalid="ignore", divide="ignore"):
        den = np.where(v_est > 0, v_est * v_est / df_est, 0.0) + np.where(v_known > 0, v_known * v_known / df_known, 0.0)
        df = np.where(den > 0, tot * tot / den, np.inf)
    return tot, df


def _falling_group(elastic: np.ndarray, tested: np.ndarray) -> np.ndarray:
    """The still-falling bins: tested, moving (elasticity above ELASTICITY_MIN) and at or above the median elasticity."""
    ok = tested & (elastic > ELASTICITY_MIN)
    if ok.sum() < 2:
        return np.zeros_like(ok)
    return ok & (elastic >= np.median(elastic[tested]))


def _cap_lag(lag: float, raw: np.ndarray, elastic: np.ndarray, falling: np.ndarray, tolerance: float) -> float:
    """Bound the lag: in the still-falling bins it may explain at most LAG_SHARE of their mean change, and at most
    LAG_SHARE of the tolerance, so a rise of those bins together is never explained away (same sign as the change)."""
    use = falling & np.isfinite(raw)  # a run that did not sample a still-falling bin: the others decide
    if lag == 0 or use.sum() < 2:
        return lag
    r, e = float(np.mean(raw[use])), float(np.mean(elastic[use]))
    if e <= 0 or r * lag <= 0:
        return 0.0
    return math.copysign(min(abs(lag), LAG_SHARE * min(abs(r), tolerance) / e), lag)


def _window_error(z: np.ndarray, x: np.ndarray, phi: float | None,
                  correlation: tuple | None = None) -> tuple[float, float, float, bool]:
    """(mean, se, df, by batch means) of a window series: batch means where they are reliable, else AR(1) with phi.
    ``correlation``: the series' own (:func:`stats.correlations`), measured for every bin at once."""
    ok = np.isfinite(z)
    z, x = z[ok], x[ok]
    n = z.size
    bm = stats.batch_means(z, x, min_batches=min(stats.MIN_BATCHES, n), correlation=correlation)
    if bm.reliable:
        return bm.mean, bm.se, float(bm.df), True
    mean, se, df = stats.ar1_mean_error(z, phi)
    return mean, se, df, False


def single_run_stats(a: np.ndarray, b: np.ndarray, x: np.ndarray, sel: np.ndarray, span: float, *,
                     max_lag: float = MAX_LAG, allowance: Allowance | None = None,
                     tolerance: float = TOLERANCE, window_share: tuple[float, float] | None = None) -> _BinStats:
    """One run per side: per-bin late change, its honest error and the aggregates, from block means.

    ``a``, ``b``: (bins, blocks) block means of the baseline and the candidate over every matched block;
    ``x``: block positions (steps); ``sel``: the late window's block indices; ``span``: matched steps;
    ``window_share``: the late window's first and last step as shares of the matched steps (a calibration stands
    for the whole run-to-run spread only over the part of training it was measured on).
    """
    al = DEFAULT_ALLOWANCE if allowance is None else allowance
    nb, K = a.shape
    both = np.isfinite(a) & np.isfinite(b)
    wa, wb, wboth, xw = a[:, sel], b[:, sel], both[:, sel], x[sel]
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        level_a = np.array([np.mean(wa[k, wboth[k]]) if wboth[k].any() else np.nan for k in range(nb)])
        level_b = np.array([np.mean(wb[k, wboth[k]]) if wboth[k].any() else np.nan for k in range(nb)])
        z = np.where(both, (b - a) / level_a[:, None], np.nan)  # relative paired differences, every matched block
    notes = []
    # one AR(1) coefficient for every bin's block noise, over all matched blocks (the window alone is too short)
    rows = z[level_a > 0]
    cols = np.isfinite(rows).mean(axis=0) >= 0.5 if rows.size else np.zeros(K, bool)
    # the last stretch of consecutive blocks most bins sampled; rows with a gap there are left out
    first = K - int(np.argmin(cols[::-1])) if not cols.all() else 0
    try:
        ar = stats.pooled_ar1(rows[:, first:])
        phi = ar.phi
    except InconclusiveError:
        ar, phi = None, AR1_FALLBACK_PHI
    why = [""] * nb
    raw = np.full(nb, np.nan)
    var_w = np.full(nb, np.nan)
    df_w = np.full(nb, np.nan)
    used_ar1 = 0
    window = z[:, sel].T
    corr = stats.correlations(window, np.isfinite(window) & np.isfinite(xw)[:, None])  # every bin's, at once
    for k in range(nb):
        nk = int(wboth[k].sum())
        if nk < MIN_TEST_BLOCKS:
            why[k] = (f"{nk} matched block(s) with samples in the window, {MIN_TEST_BLOCKS} needed"
                      if nk else "not sampled in the late window")
            continue
        if not level_a[k] > 0:
            why[k] = f"baseline late loss {level_a[k]:.4g} is not positive: a relative change is undefined"
            continue
        try:
            m, se, df, by_bm = _window_error(z[k, sel], xw, phi, tuple(c[k] for c in corr))
        except (InconclusiveError, DataError) as e:
            why[k] = str(e)
            continue
        used_ar1 += not by_bm
        if df < MIN_EFFECTIVE_DF:
            why[k] = (f"about {df + 1:.1f} independent blocks in the window (block noise AR(1) phi = {phi:.2f}): "
                      "too few for an error bar")
            continue
        raw[k], var_w[k], df_w[k] = m, se * se, df
    tested = np.isfinite(raw)
    elastic = _elasticity(a[:, sel], xw, span)
    lag_fit = _fit_lag(raw, elastic, -math.inf, math.inf)
    falling = _falling_group(elastic, tested)
    lag = _cap_lag(_fit_lag(raw, elastic, 0.0, max_lag), raw, elastic, falling, tolerance)
    change = raw - lag * elastic
    mean_level = float(np.mean(level_a[tested])) if tested.any() else math.nan
    allow = al.bin_sd(level_a, mean_level)  # relative sd per run, per bin
    allow_df = al.bin_df(nb)
    # a bin the calibration runs did not all sample has no calibrated spread: the built-in allowance stands in
    lacking = ~np.isfinite(allow)
    if lacking.any():
        allow = np.where(lacking, DEFAULT_ALLOWANCE.bin_sd(level_a, mean_level), allow)
        allow_df = np.where(lacking, math.inf, allow_df)
    # a calibration of runs this long is the whole run-to-run spread (seeds and within-run noise): the pair's
    # variance is twice it, never less than the within-run variance seen; otherwise the allowance adds to that
    elsewhere = al.calibrated and window_share is not None and not al.matches_window(window_share)
    whole = al.calibrated and al.matches_length(int(span)) and not elsewhere
    if whole:
        cal_v = 2 * allow**2
        take = ~(var_w > cal_v) & ~lacking
        sum_v, sum_df = _satterthwaite(var_w, df_w, cal_v, allow_df)  # where the built-in stands in: added
        var = np.where(lacking, sum_v, np.where(take, cal_v, var_w))
        df = np.where(lacking, sum_df, np.where(take, allow_df, df_w))
    else:
        var, df = _satterthwaite(var_w, df_w, 2 * allow**2, allow_df)
    # with a calibration the means over bins weigh each bin by its precision: these variances, each part smooth
    # along the noise levels: the calibration's profile for its spread and a profile of the within-run variances
    # (each bin's own, measured on the deviations or the window the aggregate's error bar comes from, would favour
    # the bins that happened to look quiet, and that error bar would come out short). The built-in allowance was
    # fitted to equally weighted means, and takes them
    wvar = None
    prof = al.weight_sd() if al.calibrated else None
    if prof is not None:
        sw = stats.smooth_profile(np.where(tested, var_w, np.nan))
        pv = np.where(np.isfinite(prof), 2 * prof**2, 2 * allow**2)
        wvar = np.where(lacking, sw + 2 * allow**2, np.maximum(pv, sw) if whole else sw + pv)
    if used_ar1:
        notes.append(f"the late window holds {len(sel)} blocks, too few for batch means (batches several "
                     "autocorrelation times long): the error bars assume AR(1) block noise with phi = "
                     f"{phi:.2f}, " + (f"estimated from all bins over the last {K - first} matched blocks" if ar is not None else
                     "assumed (too few blocks to estimate it)") + ", and use "
                     "its effective degrees of freedom (" + (f"about {np.nanmedian(df_w):.1f}, " if np.isfinite(df_w).any()
                                                            else "") + f"not {len(sel) - 1})")
    groups = []
    for name, members in _groups(tested, falling):
        wts = members / members.sum() if wvar is None else stats.precision_weights(wvar, members)
        zg = stats.weighted_mean_rows(z[:, sel].T, wts)
        try:
            _, se, dfg, _ = _window_error(zg, xw, phi)
        except (InconclusiveError, DataError):
            continue
        # the calibration's runs' own spread of this weighted mean; a file without its deviations gives the mean's
        # sd it measured (weighted as wts are: by its profile, or equally in a file older than the profile)
        cal = al.group_sd(members, wts) if al.deviations is not None else \
            (al.mean, al.df_mean) if al.calibrated else None
        if cal is not None:
            if whole and 2 * cal[0] ** 2 >= se * se:
                v, d = np.array([2 * cal[0] ** 2]), np.array([cal[1]])
            else:
                v, d = _satterthwaite(np.array([se * se]), np.array([dfg]), 2 * cal[0] ** 2, cal[1])
        else:
            # the built-in mean's sd, plus what the bins' own allowances add above the built-in bin's
            known = 2 * (al.mean**2 + float(np.sum(wts[members] ** 2 * (allow[members] ** 2 - al.bin**2))))
            v, d = _satterthwaite(np.array([se * se]), np.array([dfg]), known)
        groups.append((name, members, float(np.sum(wts[members] * change[members])), float(v[0]), float(d[0]), wts))
    run_sd = math.sqrt(groups[0][3] / 2) if groups else math.nan
    rho = _group_rho(var, _bins_lag1(al), groups)
    if al.calibrated:
        why = (f"its late window sat elsewhere in training{_window_words(al)}, this one at {window_share[0]:.0%}-"
               f"{window_share[1]:.0%}" if elsewhere else f"its runs were {al.steps:,} steps long against {int(span):,} here")
        notes.append(f"seed allowance calibrated on this configuration ({al.source})" +
                     ("" if whole else f"; {why}, so it is added to the within-run variability rather than standing for "
                      "it"))
    return _BinStats(level_a, level_b, raw, change, var, df, elastic, lag, lag_fit, why, groups, notes,
                     _lag_bound(max_lag, elastic, falling, tolerance), run_sd, rho)


def _bins_lag1(al: Allowance) -> float:
    """The calibration runs' lag-1 correlation of their deviations along the bins; NaN without a calibration."""
    if al.deviations is None:
        return math.nan
    try:
        return stats.pooled_spread(np.asarray(al.deviations, np.float64)).r1
    except InconclusiveError:
        return math.nan


def _group_rho(var: np.ndarray, r1: float, groups: list) -> float:
    """The modelled correlation of the two aggregates (bins an AR(1) along the noise levels with coefficient r1,
    each with its variance ``var``); NaN unless there are two aggregates and an r1."""
    if len(groups) != 2 or not math.isfinite(r1):
        return math.nan
    return stats.ar1_group_correlation(var, r1, groups[0][1], groups[1][1], groups[0][5], groups[1][5])


def _groups(tested: np.ndarray, falling: np.ndarray) -> list[tuple[str, np.ndarray]]:
    out = []
    if tested.sum() >= 2:
        out.append(("weighted mean over all bins", tested.copy()))
    if falling.sum() >= 2 and falling.sum() < tested.sum():
        out.append(("weighted mean over the still-falling bins", falling.copy()))
    return out


def adjusted_levels(late: np.ndarray, pooled_blocks: np.ndarray, x: np.ndarray, span: float, R0: int, *,
                    max_lag: float = MAX_LAG, tolerance: float = TOLERANCE):
    """Each run's late level per bin relative to the first ``R0`` runs' mean, less its own progress lag.

    Returns (pooled level, relative level, lag-adjusted relative level, elasticities, still-falling bins, lags).
    """
    R = late.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pooled = np.nanmean(late[:R0], axis=0)
        rel = late / pooled[None, :] - 1.0
    elastic = _elasticity(pooled_blocks, x, span)
    falling = _falling_group(elastic, np.isfinite(pooled) & (pooled > 0))
    lags = np.array([_cap_lag(_fit_lag(rel[r], elastic, -max_lag, max_lag), rel[r], elastic, falling, tolerance)
                     for r in range(R)])
    adjusted = rel - lags[:, None] * elastic[None, :]  # each run's own progress lag removed
    return pooled, rel, adjusted, elastic, falling, lags


def sampling_variance(runs: list[Run], first: int, last: int, nb: int) -> np.ndarray:
    """(runs, bins): the sampling variance of each run's mean training loss per bin over steps first-last: the
    per-sample variance of the bin, pooled over the runs (Chan's merge of the logged count, mean and m2), over the
    run's own sample count, so a run that drew a bin once has the variance of one sample, not none."""
    n = np.zeros((len(runs), nb))
    m2 = np.zeros((len(runs), nb))
    for i, r in enumerate(runs):
        tb = r.train_bins
        if tb.height == 0:
            continue
        f = tb.filter((pl.col("step_lo") >= first) & (pl.col("step_hi") <= last) & (pl.col("count") > 0)
                      & pl.col("mean").is_finite() & pl.col("m2").is_finite())
        if f.height == 0:
            continue
        g = f.group_by("bin").agg(
            n=pl.col("count").sum(),
            m2=pl.col("m2").sum() + (pl.col("count") * (pl.col("mean") - (pl.col("count") * pl.col("mean")).sum()
                                                         / pl.col("count").sum()) ** 2).sum())
        b = g["bin"].to_numpy().astype(np.int64)
        keep = (b >= 0) & (b < nb)
        n[i, b[keep]] = g["n"].to_numpy().astype(np.float64)[keep]
        m2[i, b[keep]] = g["m2"].to_numpy().astype(np.float64)[keep]
    dof = np.sum(np.maximum(n - 1, 0), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_sample = np.where(dof > 0, np.sum(m2, axis=0) / dof, np.nan)
        return np.where(n > 0, per_sample[None, :] / n, np.nan)


def late_levels(grid: "_MatchedBlocks", sel: np.ndarray, R0: int) -> tuple[np.ndarray, np.ndarray]:
    """(late level of every run per bin over the window's blocks, the first R0 runs' mean block curve per bin)."""
    cnt = grid.count[:, :, sel]
    mu = grid.mean[:, :, sel]
    n_late = cnt.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a bin no baseline run sampled: NaN, reported by the caller
        late = np.where(n_late > 0, np.nansum(cnt * np.nan_to_num(mu), axis=2) / n_late, np.nan)  # (R, B)
        pooled_blocks = np.nanmean(np.where(np.isfinite(mu[:R0]), mu[:R0], np.nan), axis=0)
    return late, pooled_blocks


def seed_stats(late: np.ndarray, pooled_blocks: np.ndarray, x: np.ndarray, span: float, R0: int, *,
               max_lag: float = MAX_LAG, tolerance: float = TOLERANCE, sampling: np.ndarray | None = None,
               lent: np.ndarray | None = None) -> _BinStats:
    """Several runs on a side: each run's late level per bin (after its own progress lag), compared over seeds.

    ``late``: (runs, bins) late level of every run, baseline runs first (R0 of them); ``pooled_blocks``: the
    baseline's mean block curve per bin over the window (for the elasticities). With one candidate and several
    baseline seeds this is a prediction interval: sd * sqrt(1 + 1/n), t with n - 1 df.

    ``lent`` (M, bins): the lag-adjusted relative deviations of M other healthy runs of the baseline's
    configuration from their own mean (a calibration's runs that are not among the compared ones,
    :func:`lent_runs`). They join the baseline seeds' spread: each bin's pooled spread and the mean over bins gain
    M - 1 degrees of freedom (3 seeds and 3 such runs: the mean on 4 df instead of 2). Their mean is never
    compared, only their scatter, so the test stays exact when they are seeds of the same configuration.
    """
    R, nb = late.shape
    pooled, rel, adjusted, elastic, falling, lags = adjusted_levels(late, pooled_blocks, x, span, R0,
                                                                    max_lag=max_lag, tolerance=tolerance)
    tested0 = np.isfinite(pooled) & (pooled > 0)
    why = [""] * nb
    raw = np.full(nb, np.nan)
    change = np.full(nb, np.nan)
    var = np.full(nb, np.nan)
    df = np.full(nb, np.nan)
    level_a = np.full(nb, np.nan)
    level_b = np.full(nb, np.nan)
    scale = extra = None
    if sampling is not None:
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            rel_samp = sampling / pooled[None, :] ** 2  # relative, like the levels
            scale = np.nanmean(rel_samp, axis=0)
            # the pooled spread holds the runs' average sampling noise; a side whose runs drew a bin less often
            # than average carries more: its excess is added to the comparison's variance
            extra = sum(np.maximum(np.nanmean(rel_samp[side], axis=0) - scale, 0.0) / n
                        for side, n in ((slice(0, R0), R0), (slice(R0, R), R - R0)))
    if lent is not None:
        lent = np.asarray(lent, np.float64)
        lent = np.where(tested0[None, :], lent, np.nan) if lent.ndim == 2 and lent.shape[0] >= 2 \
            and lent.shape[1] == nb else None
    spread = _pooled_seed_spread(adjusted, R0, tested0, scale, lent)
    wvar = np.full(nb, np.nan)  # each bin's variance for the precision weights of the means over bins
    notes = []
    if spread is not None:
        notes.append(f"each bin's seed spread is pooled across bins ({_spread_words(spread)})")
    for k in range(nb):
        ma, mb = adjusted[:R0, k], adjusted[R0:, k]
        if not tested0[k]:
            why[k] = "no baseline run sampled it in the late window" if not np.isfinite(pooled[k]) else \
                f"baseline late loss {pooled[k]:.4g} is not positive: a relative change is undefined"
            continue
        try:
            c = stats.compare_seed_means(ma, mb)
        except InconclusiveError:
            why[k] = (f"sampled in the late window by {int(np.isfinite(ma).sum())} baseline and "
                      f"{int(np.isfinite(mb).sum())} candidate run(s)")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            level_a[k], level_b[k] = float(np.nanmean(late[:R0, k])), float(np.nanmean(late[R0:, k]))
            raw[k] = float(np.nanmean(rel[R0:, k]) - np.nanmean(rel[:R0, k]))
        change[k], var[k], df[k] = c.diff, c.se**2, c.df
        if spread is not None and np.isfinite(spread.var[k]) and c.n_a == R0 and c.n_b == R - R0:
            # the bin's own spread (k - 1 df) shrunk towards the profile the other bins share
            var[k], df[k] = spread.var[k] * (1 / R0 + 1 / (R - R0)), spread.df[k]
            # the weights take the smooth profile that spread shrinks towards, never the bin's own deviations, which
            # the aggregate's spread is measured on (they would favour the bins that happened to vary little)
            wvar[k] = spread.prior[k] * (1 / R0 + 1 / (R - R0))
            if extra is not None and np.isfinite(extra[k]):
                var[k] += extra[k]
                wvar[k] += extra[k]
    tested = np.isfinite(change)
    if spread is None:  # too few bins to pool: a smooth profile of the bins' own variances
        wvar = stats.smooth_profile(np.where(tested, var, np.nan))
    else:
        # a bin some run missed has no pooled spread (its own rests on 1 or 2 runs, and the profile's value there
        # is an extrapolation): it is known less well than any pooled bin, so it weighs no more than the median one
        pooled_ok = np.isfinite(wvar) & tested
        if pooled_ok.any():
            mid = float(np.median(wvar[pooled_ok]))
            wvar = np.where(tested & ~pooled_ok, np.fmax(var, mid), wvar)
    groups = []
    lent_all, unlent = None, []  # the lent runs' mean over all bins (for run_sd); the aggregates they could not lend
    for name, members in _groups(tested, falling & tested):
        wts = stats.precision_weights(wvar, members)
        per_run = stats.weighted_mean_rows(adjusted, wts)
        try:
            c = stats.compare_seed_means(per_run[:R0], per_run[R0:])
        except InconclusiveError:
            continue
        diff, v, d = c.diff, c.se**2, c.df
        if lent is not None:
            means = _lent_means(lent, wts, members)
            if means is None:
                unlent.append(name)
            else:
                diff, v, d = _lent_group(per_run[:R0], per_run[R0:], means)
                lent_all = means if not groups else lent_all
        groups.append((name, members, diff, v, d, wts))
    lag = float(np.mean(lags[R0:]) - np.mean(lags[:R0]))
    run_sd = math.nan
    if lent is not None:
        # what the lent runs could not lend, said (each bin they did not all sample keeps the seeds' own pooling)
        missed = tested & ~np.isfinite(lent).all(axis=0)
        if missed.any():
            notes.append(f"bins {bin_ranges(np.flatnonzero(missed).tolist())}, which the lent runs did not all sample, "
                         "keep the seeds' own pooled spread")
        if unlent:
            one = len(unlent) == 1
            notes.append(f"the {' and the '.join(unlent)} keep{'s' if one else ''} the seeds' own df: the bins the lent "
                         f"runs did not sample carry more than {LENT_GAP:.0%} of {'its' if one else 'their'} weight")
    lent_df = float(lent_all.size - 1) if lent_all is not None else 0.0
    if groups and groups[0][1].sum() == tested.sum():  # the mean over all bins, as its check weighs them
        per_run = stats.weighted_mean_rows(adjusted, groups[0][5])
        dev = [per_run[:R0] - np.mean(per_run[:R0]), per_run[R0:] - np.mean(per_run[R0:])]
        if lent_all is not None:
            dev.append(lent_all - np.mean(lent_all))
        d = (R0 - 1) + (R - R0 - 1) + lent_df
        dev = np.concatenate(dev)
        run_sd = math.sqrt(float(np.sum(dev**2)) / d) if d > 0 else math.nan
    rho = _group_rho(var, spread.r1 if spread is not None else math.nan, groups)
    return _BinStats(level_a, level_b, raw, change, var, df, elastic, lag, lag, why, groups, notes,
                     _lag_bound(max_lag, elastic, falling, tolerance), run_sd, rho, lent_df, lent is not None)


def _lent_means(lent: np.ndarray, weights: np.ndarray, members: np.ndarray) -> np.ndarray | None:
    """Each lent run's weighted mean deviation over ``members``. A bin the calibration's runs did not all sample
    is missing from every lent row; without it the mean is another statistic, near enough the compared runs' when
    the bins it lacks carry under LENT_GAP of the weight (EDM's extreme noise levels, weighted by their
    precision, carry far less); None otherwise."""
    members = np.asarray(members, bool)
    have = np.isfinite(lent).all(axis=0)
    w = np.asarray(weights, np.float64)
    total = float(np.sum(w[members]))
    if total <= 0 or float(np.sum(w[members & ~have])) > LENT_GAP * total:
        return None
    return stats.weighted_mean_rows(np.where(have[None, :], lent, np.nan), w)


def _lent_group(a: np.ndarray, b: np.ndarray, lent: np.ndarray | None) -> tuple[float, float, float]:
    """(change, variance, df) of an aggregate's mean ``b`` minus mean ``a`` (one value per run), the baseline's
    spread pooled with that of the ``lent`` runs (their scatter about their own mean): a prediction interval on
    (R0 - 1) + (M - 1) df for one candidate; Welch against the candidates' own spread for several."""
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if lent is None or lent.size < 2 or a.size == 0 or b.size == 0:
        c = stats.compare_seed_means(a, b)
        return c.diff, c.se**2, c.df
    ss = float(np.sum((a - a.mean()) ** 2) + np.sum((lent - lent.mean()) ** 2))
    d_a = (a.size - 1) + (lent.size - 1)
    s2a = ss / d_a
    va = s2a / a.size
    if b.size >= 2:
        vb = float(b.var(ddof=1)) / b.size
        den = va * va / d_a + vb * vb / (b.size - 1)
        df = (va + vb) ** 2 / den if den > 0 else math.inf
    else:
        vb, df = s2a / b.size, float(d_a)
    return float(b.mean() - a.mean()), va + vb, df


def _pooled_seed_spread(adjusted: np.ndarray, R0: int, tested: np.ndarray, scale=None,
                        lent: np.ndarray | None = None) -> stats.PooledSpread | None:
    """Each bin's seed variance pooled across bins (:func:`diffaudit.stats.pooled_spread`) from every side with
    two or more runs, each run's deviation from its own side's mean, and from ``lent`` runs (deviations from their
    own mean); None when there is too little to pool."""
    R = adjusted.shape[0]
    rows, d = [], 0
    for side in (slice(0, R0), slice(R0, R)):
        a = adjusted[side]
        if a.shape[0] >= 2:
            rows.append(a - np.mean(a, axis=0))
            d += a.shape[0] - 1
    if not rows or tested.sum() < 4:
        return None
    own = np.where(tested[None, :], np.concatenate(rows), np.nan)
    try:
        spread = stats.pooled_spread(own, d=d, scale=scale)
    except InconclusiveError:
        spread = None
    if lent is None:
        return spread
    with_lent = np.where(tested[None, :], np.concatenate(rows + [lent]), np.nan)
    try:
        lent_spread = stats.pooled_spread(with_lent, d=d + lent.shape[0] - 1, scale=scale)
    except InconclusiveError:
        return spread
    # a bin the lent runs did not all sample is left out of their pooling: it keeps the seeds' own
    gap = tested & ~np.isfinite(lent_spread.var)
    if spread is None or not gap.any():
        return lent_spread
    return replace(lent_spread, **{f: np.where(gap, getattr(spread, f), getattr(lent_spread, f))
                                   for f in ("var", "df", "prior", "raw")})


def _spread_words(ps: stats.PooledSpread) -> str:
    d0 = "no more than sampling explains" if not math.isfinite(ps.d0_fit) else f"{ps.d0_fit:.1f} df of scatter"
    return (f"a smooth profile over the noise levels with shrinkage: {ps.d:g} df per bin of its own plus {ps.d0:.1f} "
            f"from the profile; the bins scatter about it by {d0}, and count as about {ps.n_eff:.1f} independent bins")


def _p_above(change: float, se: float, df: float, limit: float) -> float:
    """One-sided p for "the change exceeds the limit": small when it clearly does (a test against the limit, not 0)."""
    return _one_sided(change - limit, se, df)


def _adjust(p_bins: np.ndarray, p_groups: np.ndarray, correction: str, rho: float = math.nan,
            df: float = math.nan) -> tuple[np.ndarray, np.ndarray]:
    """Adjusted p-values: the bins and the aggregates split alpha (GROUP_ALPHA_SHARE to the aggregates, Bonferroni
    between the two families) and are adjusted within each family: ``correction`` for bins; for two aggregates
    whose statistics correlate by ``rho`` on ``df`` degrees of freedom, a step-down max-T (the smaller p against
    the pair's joint null, then the other alone), else Holm."""
    if p_groups.size == 0:
        return stats.adjust_pvalues(p_bins, correction), p_groups
    qb = np.minimum(stats.adjust_pvalues(p_bins, correction) / (1 - GROUP_ALPHA_SHARE), 1.0)
    if p_groups.size == 2 and math.isfinite(rho) and np.isfinite(p_groups).all() and df >= 1:
        first = int(np.argmin(p_groups))
        q1 = min(stats.pair_max_sf(float(p_groups[first]), rho, df), 1.0)
        qg = np.empty(2)
        qg[first], qg[1 - first] = q1, max(q1, float(p_groups[1 - first]))
        return qb, np.minimum(qg / GROUP_ALPHA_SHARE, 1.0)
    qg = np.minimum(stats.adjust_pvalues(p_groups, "holm") / GROUP_ALPHA_SHARE, 1.0)
    return qb, qg


def _pair_df(st: "_BinStats") -> float:
    """Degrees of freedom the aggregates' joint test assumes: the smaller of theirs (fewer is the safe side)."""
    return min((float(g[4]) for g in st.groups), default=math.nan)


def decide(st: _BinStats, *, tolerance: float = TOLERANCE, alpha: float = ALPHA,
           correction: str = CORRECTION) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(p, q) of every bin and (p, q) of every aggregate for "the relative change exceeds ``tolerance``".

    A bin (or aggregate) regresses when its change exceeds the tolerance and q <= alpha: the lower end of its
    one-sided interval, after the correction, lies above the tolerance.
    """
    se = np.sqrt(st.var)
    p = np.array([_p_above(st.change[k], se[k], st.df[k], tolerance) if np.isfinite(st.change[k]) else np.nan
                  for k in range(st.change.size)])
    pg = np.array([_p_above(g[2], math.sqrt(g[3]), g[4], tolerance) for g in st.groups])
    q, qg = _adjust(p, pg, correction, st.group_rho, _pair_df(st))
    return p, q, pg, qg


def _loss_checks(grid, sel, base, cand, rules, alpha, correction, max_lag, lstar, single, lo, hi, allowance,
                 unit: str = "loss"):
    """One check per bin (and per bin for excess, when its rule is on) plus the aggregates; returns (checks, lag, notes)."""
    process = base[0].process
    nb = process.num_bins
    R0 = len(base)
    x_all = 0.5 * (grid.start + np.maximum(grid.end, grid.start)).astype(np.float64)
    span = float(hi - lo + 1)
    rule, xrule = rules["loss"], rules["excess"]
    if single:
        lim = rule.limit if rule.relative and rule.limit is not None else TOLERANCE
        win_end = int(min(grid.end[sel[-1]], hi))
        st = single_run_stats(grid.mean[0], grid.mean[1], x_all, sel, span, max_lag=max_lag, allowance=allowance,
                              tolerance=lim, window_share=((int(grid.start[sel[0]]) - lo) / span, (win_end - lo) / span))
    else:
        late, pooled_blocks = late_levels(grid, sel, R0)
        window = (int(grid.start[sel[0]]), int(min(grid.end[sel[-1]], hi)))
        sampling = sampling_variance(base + cand, window[0], window[1], nb)
        lim = rule.limit if rule.relative and rule.limit is not None else TOLERANCE
        lent, said = lent_runs(allowance, base, cand, late, span, window, len(sel), first=lo, unit=unit,
                               tolerance=lim, max_lag=max_lag)
        st = seed_stats(late, pooled_blocks, x_all[sel], span, R0, max_lag=max_lag, tolerance=lim, sampling=sampling,
                        lent=lent)
        if said:
            st.notes.append(said)
    se = np.sqrt(st.var)
    lim = rule.limit if rule.limit is not None else math.inf
    # the loss rule is judged on the relative change; an absolute rule (loss:+0.01) on change * level
    if rule.relative:
        p, q, pg, qg = decide(st, tolerance=lim, alpha=alpha, correction=correction)
    else:
        p = np.array([_p_above(st.change[k] * st.level_a[k], se[k] * st.level_a[k], st.df[k], lim)
                      if np.isfinite(st.change[k]) else np.nan for k in range(nb)])
        pg = np.array([])  # an absolute limit has no meaning for a mean of relative changes
        q, qg = _adjust(p, pg, correction)
    lvl_bins, lvl_groups = _levels(np.isfinite(p).sum(), len(st.groups), alpha, correction)
    lagged = st.lag_cap * st.elastic  # what a rise may lose to the progress lag, per bin
    shift = stats.detectable_shift(se, st.df, lvl_bins)  # relative
    checks = []
    xs = []
    edges = process.bin_edges()
    for k in range(nb):
        words = bin_span(process.kind, edges, k)
        if not np.isfinite(st.change[k]):
            checks.append(Check("loss", f"loss bin {k}", "inconclusive", st.why[k] or "no data", rule=str(rule),
                                bin=k, noise_levels=words, limit=rule.limit, relative=rule.relative))
            continue
        la = st.level_a[k]
        tq = _tq(alpha, st.df[k]) if se[k] > 0 else 0.0
        adj, diff, se_abs = st.change[k] * la, st.raw[k] * la, se[k] * la
        details = {"difference": float(diff), "se": float(se_abs), "df": float(st.df[k]),
                   "lag_adjustment": float(diff - adj), "elasticity": float(st.elastic[k])}
        ex_a = ex_b = None
        if lstar is not None and np.isfinite(lstar[k]):
            ex_a, ex_b = float(la - lstar[k]), float(st.level_b[k] - lstar[k])
            details.update(lstar=float(lstar[k]), excess_baseline=ex_a, excess_candidate=ex_b)
        beyond = (lagged[k] + shift[k]) * la  # in loss units: the rise past the limit that is caught
        det = None if not np.isfinite(beyond) or rule.limit is None else \
            rule.limit + (beyond / la if rule.relative else beyond)
        checks.append(_level_check("loss", rule, k, words, la, st.level_b[k], adj, diff, se_abs, tq,
                                   p[k], q[k], alpha, details, scale=la, detectable=det))
        if not xrule.off and ex_a is not None:
            xl = xrule.limit if xrule.limit is not None else math.inf
            px = (_p_above(adj / ex_a, se_abs / ex_a, st.df[k], xl) if ex_a > 0 else math.nan) if xrule.relative \
                else _p_above(adj, se_abs, st.df[k], xl)
            xdet = None if not (np.isfinite(beyond) and math.isfinite(xl)) else \
                (xl + beyond / ex_a if ex_a > 0 else None) if xrule.relative else xl + beyond
            xs.append((k, words, ex_a, ex_b, adj, diff, se_abs, tq, px, details, xdet))
    if xs:
        qx = stats.adjust_pvalues(np.array([v[8] for v in xs]), correction)
        for (k, words, ex_a, ex_b, adj, diff, se_abs, tq, px, details, xdet), qv in zip(xs, qx):
            checks.append(_level_check("excess", xrule, k, words, ex_a, ex_b, adj, diff, se_abs, tq,
                                       px, qv, alpha, details, scale=ex_a, detectable=xdet))
    dets = group_detectables(st, rule.limit, alpha, correction) if rule.limit is not None else [math.nan] * len(pg)
    for (name, members, ch, v, d, wts), pv, qv, det in zip(st.groups, pg, qg, dets):
        checks.append(_group_check(rule, name, members, ch, math.sqrt(v), d, pv, qv, alpha, st.level_a, st.level_b,
                                   det if math.isfinite(det) else None, wts))
    return checks, st


def group_detectables(st: _BinStats, tolerance: float = TOLERANCE, alpha: float = ALPHA,
                      correction: str = CORRECTION) -> list[float]:
    """The detectable rise of each aggregate of ``st`` (the first: the mean over all bins): the tolerance, plus
    what the progress lag may remove, plus the shift its test catches with 80% probability on its own, at the
    level the first step of the aggregates' joint test (or Holm's) gives it."""
    lvl = _group_level(st, alpha)
    return [tolerance + float(np.sum(wts[members] * st.lag_cap * st.elastic[members]))
            + float(stats.detectable_shift(math.sqrt(v), d, lvl)) for _, members, _, v, d, wts in st.groups]


def group_detectable(st: _BinStats, tolerance: float = TOLERANCE, alpha: float = ALPHA,
                     correction: str = CORRECTION) -> float:
    """The detectable rise of the mean over all bins, as a verdict states it; NaN without aggregates."""
    d = group_detectables(st, tolerance, alpha, correction)
    return d[0] if d else math.nan


def _group_level(st: _BinStats, alpha: float, df: float | None = None) -> float:
    """The one-sided level an aggregate must reach to regress on its own (the first step of :func:`_adjust`):
    the pair's max-T level on ``df`` (default: the aggregates' own) where the two correlate, else Holm's."""
    share = alpha * GROUP_ALPHA_SHARE
    if len(st.groups) == 2 and math.isfinite(st.group_rho):
        return stats.pair_level(share, st.group_rho, _pair_df(st) if df is None else df)
    return share / max(len(st.groups), 1)


def _levels(m_bins: int, m_groups: int, alpha: float, correction: str) -> tuple[float, float]:
    """The one-sided level a single bin and a single aggregate must reach to regress on their own: the first
    step of Holm (alpha / m) or Benjamini-Yekutieli (alpha / (m sum 1/i)), after the split of alpha between
    the bins and the aggregates (:func:`_adjust`)."""
    a_bins = alpha * (1 - GROUP_ALPHA_SHARE) if m_groups else alpha
    m = max(int(m_bins), 1)
    lvl_bins = a_bins / m / (float(np.sum(1.0 / np.arange(1, m + 1))) if correction == "by" else 1.0)
    return lvl_bins, alpha * GROUP_ALPHA_SHARE / max(m_groups, 1)


def _group_check(rule, name, members, ch, se, df, p, q, alpha, level_a, level_b, detectable, weights) -> Check:
    """An aggregate of bins: the ``weights``-weighted mean relative change (after the lag) over a group, tested
    against the tolerance."""
    tq = _tq(alpha, df) if se > 0 else 0.0
    bins = np.flatnonzero(members)
    w = np.asarray(weights, np.float64)
    over = rule.exceeded(ch)
    sig = q <= alpha
    # how many bins the weighted mean rests on, as an equal-weighted mean would count them (Kish)
    n_eff = 1.0 / float(np.sum(w[bins] ** 2)) if bins.size else 0.0
    how = ("bins weighted equally" if np.allclose(w[bins], 1.0 / max(bins.size, 1)) else
           f"each weighted by its precision (as many as {n_eff:.0f} equally weighted bins)")
    said = f"{change_text(ch, True)} averaged over {bins.size} bins ({bin_ranges(bins.tolist())}), {how}"
    status, reason = _decide(said, rule, over, sig, p_is("q", q), f"{p_is('q', q)} > {alpha:g}")
    return Check("loss_mean", f"loss, {name}", status, reason, rule=str(rule),
                 baseline=float(stats.weighted_mean_rows(level_a, w)),
                 candidate=float(stats.weighted_mean_rows(level_b, w)),
                 change=float(ch), relative=True, lo=float(ch - tq * se), hi=float(ch + tq * se), p=float(p),
                 q=float(q), limit=rule.limit,
                 details={"bins": bins.tolist(), "weights": [round(float(v), 6) for v in w[bins]],
                          "se": float(se), "df": float(df)},
                 detectable=detectable)


def _level_check(metric, rule, k, words, va, vb, adj, diff, se, tq, p, q, alpha, details, *, scale,
                 detectable=None) -> Check:
    """A per-bin check: change in the rule's unit, its interval, and the decision (limit and significance)."""
    name = f"{'loss' if metric == 'loss' else 'excess'} bin {k}"
    if rule.relative:
        if not (scale > 0):
            return Check(metric, name, "inconclusive", f"baseline {metric} {va:.4g} is not positive: a relative change "
                         "is undefined", rule=str(rule), baseline=float(va), candidate=float(vb), bin=k,
                         noise_levels=words, limit=rule.limit, details=details)
        raw, ch, c_lo, c_hi = diff / scale, adj / scale, (adj - tq * se) / scale, (adj + tq * se) / scale
    else:
        raw, ch, c_lo, c_hi = diff, adj, adj - tq * se, adj + tq * se
    # the change reported, its interval and p are all of the judged quantity: after the progress lag
    details = {**details, "change_raw": float(raw)}
    # decided against the limit, not against 0: significant means "above the limit", after the correction
    over = rule.exceeded(ch)
    sig = over and q <= alpha
    lagged = details.get("lag_adjustment", 0.0) != 0.0
    said = f"{change_text(ch, rule.relative)}" + (f" after the progress lag (raw {change_text(raw, rule.relative)})" if lagged else "")
    status, reason = _decide(said, rule, over, sig, p_is("q", q), f"{p_is('q', q)} > {alpha:g}")
    return Check(metric, name, status, reason, rule=str(rule), baseline=float(va), candidate=float(vb),
                 change=float(ch), relative=rule.relative, lo=float(c_lo), hi=float(c_hi), p=float(p), q=float(q),
                 limit=rule.limit, bin=k, noise_levels=words, details=details,
                 detectable=None if detectable is None else float(detectable))


# ----------------------------------------------------------------------------
# Per-step checks: speed, clip rate, non-finite losses


def _steps_in(r: Run, lo: int, hi: int) -> pl.DataFrame:
    """The run's per-step rows with lo <= step <= hi, in step order (a slice, no copy, when already in order)."""
    s = r.steps
    if s.height == 0:
        return s
    step = s["step"]
    if step.is_sorted():
        a, b = int(step.search_sorted(lo, "left")), int(step.search_sorted(hi, "right"))
        return s.slice(a, b - a)
    return s.filter((pl.col("step") >= lo) & (pl.col("step") <= hi)).sort("step")


def block_means(step: np.ndarray, y: np.ndarray, lo: int, size: int, nblocks: int) -> np.ndarray:
    """Mean of the finite y per block of ``size`` steps from ``lo``; NaN for empty blocks."""
    ok = np.isfinite(y)
    idx = ((step[ok] - lo) // size).astype(np.int64)
    keep = (idx >= 0) & (idx < nblocks)
    n = np.bincount(idx[keep], minlength=nblocks)
    s = np.bincount(idx[keep], weights=y[ok][keep], minlength=nblocks)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / n, np.nan)


def _crossing(curve: np.ndarray, level: float, size: int) -> float:
    """Steps from the start until the block curve first reaches ``level`` (interpolated); inf if never."""
    ok = np.isfinite(curve)
    hit = np.flatnonzero(ok & (curve <= level))
    if hit.size == 0:
        return math.inf
    i = int(hit[0])
    centre = (i + 0.5) * size
    prev = np.flatnonzero(ok[:i])
    if prev.size == 0:
        return centre
    j = int(prev[-1])
    y0, y1 = curve[j], curve[i]
    frac = (y0 - level) / (y0 - y1) if y0 > y1 else 1.0
    return (j + 0.5) * size + frac * (i - j) * size


def _speed_check(base, cand, rule, lo, hi, window, alpha, single, allowance: Allowance) -> Check:
    name = "steps to reach the loss level"
    if rule.off:
        return Check("steps", name, "off", "rule off", rule=str(rule))
    span = hi - lo + 1
    size = max(1, span // SPEED_BLOCKS)
    nblocks = -(-span // size)
    curves = []
    for r in base + cand:
        s = _steps_in(r, lo, hi)
        if s.height == 0:
            curves.append(np.full(nblocks, np.nan))
            continue
        curves.append(block_means(s["step"].to_numpy(), s["loss"].cast(pl.Float64).to_numpy(), lo, size, nblocks))
    curves = np.array(curves)
    R0 = len(base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # blocks no baseline run logged stay NaN
        pooled = np.nanmean(curves[:R0], axis=0)
    fin = np.flatnonzero(np.isfinite(pooled))
    w0 = window[0] if window else lo + int(0.8 * span)
    late_blocks = np.arange(nblocks)[(lo + np.arange(nblocks) * size) >= w0]
    late_vals = pooled[late_blocks][np.isfinite(pooled[late_blocks])] if late_blocks.size else np.array([])
    if fin.size < 3 or late_vals.size == 0:
        return Check("steps", name, "inconclusive", "too few logged steps in the matched range", rule=str(rule))
    early, late = float(pooled[fin[0]]), float(np.mean(late_vals))
    if not (early > late):
        return Check("steps", name, "inconclusive",
                     f"the baseline's loss did not fall ({early:.4g} at the start, {late:.4g} late)", rule=str(rule))
    share = allowance.speed_level if single and allowance.speed_level is not None else \
        speed_level(curves[:R0], size) if R0 >= 3 else SPEED_LEVEL
    level = late + share * (early - late)
    cross = np.array([_crossing(c, level, size) for c in curves])
    ca, cb = cross[:R0], cross[R0:]
    details = {"level": level, "level_share": share, "baseline_runs": [json_float(v) for v in ca],
               "candidate_runs": [json_float(v) for v in cb], "smoothing_steps": size}
    name = f"steps to reach loss {level:.4g}"
    if not np.isfinite(ca).all():
        return Check("steps", name, "inconclusive", "a baseline run never reaches its own side's level", rule=str(rule),
                     details=details)
    va = float(np.mean(ca))
    never = int((~np.isfinite(cb)).sum())
    if never:
        return Check("steps", name, "regression" if rule.limit is not None else "pass",
                     f"{never} of {cb.size} candidate run(s) never reach loss {level:.4g} (baseline: after {va:,.0f} steps)",
                     rule=str(rule), baseline=va, candidate=math.inf, change=math.inf, relative=rule.relative,
                     limit=rule.limit, details=details)
    vb = float(np.mean(cb))
    ch = rule.change(va, vb)
    lo_ = hi_ = p = None
    # judged on log(steps), against the limit: the crossing step of a seed varies multiplicatively
    if not (np.all(ca > 0) and np.all(cb > 0)):
        return Check("steps", name, "inconclusive", "a run reaches the level in its first block", rule=str(rule),
                     baseline=va, candidate=vb, details=details)
    la, lb = np.log(ca), np.log(cb)
    if rule.relative:
        lim = math.log1p(rule.limit)
        to_change = math.expm1
    else:  # an absolute limit in steps, on the log scale at the baseline's mean
        lim = math.log1p(rule.limit / va)
        to_change = lambda v: va * math.expm1(v)  # noqa: E731
    det = None
    if single:
        if allowance.speed > 0:
            per_run = allowance.speed
            if not allowance.calibrated:
                # a built-in allowance is a relative spread seen on other models' crossings; a level crossed early
                # in the run is crossed within a few smoothing blocks, where a block of jitter is a large share:
                # one block of the crossing step, relative, is added (a calibration measures this directly)
                per_run = math.hypot(per_run, size / float(ca[0]))
            sd, sdf = math.sqrt(2.0) * per_run, allowance.df_speed
            d = float(lb[0] - la[0])
            p = _p_above(d, sd, sdf, lim)
            tq = _tq(alpha, sdf)
            lo_, hi_ = to_change(d - tq * sd), to_change(d + tq * sd)
            det = to_change(lim + float(stats.detectable_shift(sd, sdf, alpha)))
            learned = ("calibrated on this model" if allowance.calibrated else
                       f"learned on other models' healthy seeds, plus one {size:,}-step smoothing block of the crossing")
            sig, sig_words = p <= alpha, (f"one run per side: {p_is('p', p)} against the seed-to-seed spread of the "
                                          f"crossing step ({pct(per_run)} per run, {learned})")
        else:
            sig, sig_words = True, "one run per side, no seed allowance: the limit alone decides"
            det = rule.limit
    else:
        try:
            c = stats.compare_seed_means(la, lb, confidence=1 - alpha)
        except InconclusiveError as e:
            return Check("steps", name, "inconclusive", str(e), rule=str(rule), baseline=va, candidate=vb, details=details)
        p = _p_above(c.diff, c.se, c.df, lim)
        tq = _tq(alpha, c.df) if c.se > 0 else 0.0
        lo_, hi_ = to_change(c.diff - tq * c.se), to_change(c.diff + tq * c.se)
        shift = float(stats.detectable_shift(c.se, c.df, alpha))
        det = to_change(lim + shift) if math.isfinite(shift) else to_change(lim)
        sig, sig_words = p <= alpha, f"{p_is('p', p)} over seeds"
    over = rule.exceeded(ch)
    said = f"{va:,.0f} -> {vb:,.0f} steps ({change_text(ch, rule.relative)})"
    status, reason = _decide(said, rule, over, sig, sig_words, sig_words)
    return Check("steps", name, status, reason, rule=str(rule), baseline=va, candidate=vb, change=ch,
                 relative=rule.relative, lo=lo_, hi=hi_, p=p, limit=rule.limit, details=details,
                 detectable=None if det is None or not math.isfinite(det) else float(det))


SPEED_LEVELS = (0.05, 0.1, 0.2, 0.3, 0.5)  # shares of the initial drop the speed check may choose its level from


def speed_level(curves: np.ndarray, size: int) -> float:
    """The share of the initial drop (above the late level) at which healthy seeds' crossing steps agree best:
    the smallest sd of log(crossing step) over the runs' block curves (``SPEED_LEVEL`` when none is crossed
    by every run). Where a loss curve flattens, seeds cross a level near the floor at scattered steps; where
    it still falls steeply, at nearly the same step."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pooled = np.nanmean(curves, axis=0)
    fin = np.flatnonzero(np.isfinite(pooled))
    if fin.size < 3:
        return SPEED_LEVEL
    early, late = float(pooled[fin[0]]), float(np.nanmean(pooled[fin[-max(1, fin.size // 5):]]))
    best, best_sd = SPEED_LEVEL, math.inf
    for share in SPEED_LEVELS:
        cross = np.array([_crossing(c, late + share * (early - late), size) for c in curves])
        if not (np.isfinite(cross).all() and np.all(cross > 0)):
            continue
        sd = float(np.std(np.log(cross), ddof=1))
        if sd < best_sd:
            best, best_sd = share, sd
    return best


def _clip_check(base, cand, rule, lo, hi, alpha, single, allowance: Allowance) -> Check:
    name = "clip rate"
    if rule.off:
        return Check("clip_rate", name, "off", "rule off", rule=str(rule))
    series = []
    for r in base + cand:
        s = _steps_in(r, lo, hi)
        if s.height == 0 or "clipped" not in s.columns:
            series.append(None)
            continue
        s = s.filter(pl.col("clipped").is_not_null())
        series.append((s["step"].to_numpy(), s["clipped"].cast(pl.Float64).to_numpy()) if s.height else None)
    R0 = len(base)
    if any(v is None for v in series):
        missing = [r.name for r, v in zip(base + cand, series) if v is None]
        return Check("clip_rate", name, "inconclusive",
                     f"no clip threshold logged in {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}",
                     rule=str(rule))
    rates = np.array([float(y.mean()) for _, y in series])
    va, vb = float(rates[:R0].mean()), float(rates[R0:].mean())
    ch = rule.change(va, vb)
    try:
        if single:
            (xa, ya, wa), (xb, yb, wb) = (_coarsen(*series[0]), _coarsen(*series[1]))
            c = stats.compare_series(ya, yb, x_a=xa, x_b=xb, weights_a=wa, weights_b=wb, confidence=1 - alpha)
        else:
            c = stats.compare_seed_means(rates[:R0], rates[R0:], confidence=1 - alpha)
    except InconclusiveError as e:
        return Check("clip_rate", name, "inconclusive", str(e), rule=str(rule), baseline=va, candidate=vb)
    scale = abs(va) if rule.relative and va != 0 else 1.0
    # the seed-to-seed spread of the clip rate, an sd of its log-odds per run (seeds of one model clip 0.2-0.5% or
    # 30-57% of steps: the spread scales with p (1 - p)), as an sd of the rate at the two sides' mean rate: added to
    # the within-run error with one run per side; with seeds, a floor under the measured spread
    se, df = c.se, c.df
    if allowance.clip > 0:
        pm = min(max(0.5 * (va + vb), 0.0), 1.0)
        sd = allowance.clip * pm * (1 - pm)
        if single:
            v, d = _satterthwaite(np.array([se * se]), np.array([df]), 2 * sd**2, allowance.df_clip)
            se, df = math.sqrt(float(v[0])), float(d[0])
        else:
            se = max(se, sd * math.sqrt(1 / R0 + 1 / (len(rates) - R0)))
    # tested against the limit (in the rule's unit), not against no change
    p = _p_above(c.diff, se, df, (rule.limit if rule.limit is not None else math.inf) * scale)
    tq = _tq(alpha, df) if se > 0 else 0.0
    lo_, hi_ = (c.diff - tq * se) / scale, (c.diff + tq * se) / scale
    over = rule.exceeded(ch)
    said = f"{pct(va)} -> {pct(vb)} of steps clipped ({change_text(ch, rule.relative)})"
    status, reason = _decide(said, rule, over, p <= alpha, p_is("p", p), p_is("p", p))
    shift = float(stats.detectable_shift(se, df, alpha)) if se > 0 else 0.0
    det = None if rule.limit is None or not math.isfinite(shift) else rule.limit + shift / scale
    return Check("clip_rate", name, status, reason, rule=str(rule), baseline=va, candidate=vb, change=ch,
                 relative=rule.relative, lo=lo_, hi=hi_, p=p, limit=rule.limit,
                 details={"runs": [float(v) for v in rates], "method": c.method}, detectable=det)


def _coarsen(x: np.ndarray, y: np.ndarray, points: int = CLIP_POINTS):
    """(positions, means, counts) of consecutive runs of ``len(x) / points`` values: the same mean, fewer windows.

    Batch means only ever merges contiguous windows, so testing the coarser series is as honest as the
    per-step one; it just spends less time estimating autocorrelation on a million indicators.
    """
    size = max(1, -(-x.size // points))
    if size == 1:
        return x.astype(np.float64), y, np.ones(y.size)
    starts = np.arange(0, x.size, size)
    n = np.diff(np.append(starts, x.size)).astype(np.float64)
    return np.add.reduceat(x.astype(np.float64), starts) / n, np.add.reduceat(y, starts) / n, n


def _nonfinite_check(base, cand, rule, lo, hi) -> Check:
    name = "non-finite losses"
    if rule.off:
        return Check("nonfinite", name, "off", "rule off", rule=str(rule))
    counts = []
    for r in base + cand:
        s = _steps_in(r, lo, hi)
        if s.height:
            counts.append(float(s["nonfinite"].fill_null(0).sum()))
        else:
            tb = r.train_bins.filter((pl.col("step_lo") >= lo) & (pl.col("step_hi") <= hi))
            counts.append(float(tb["nonfinite"].fill_null(0).sum()) if tb.height else 0.0)
    R0 = len(base)
    va, vb = float(np.mean(counts[:R0])), float(np.mean(counts[R0:]))
    ch = rule.change(va, vb)
    said = f"{va:,.4g} -> {vb:,.4g} per run over the matched steps"
    if rule.exceeded(ch):
        status, reason = "regression", f"{said} ({change_text(ch, rule.relative)} > {rule.limit_text()})"
    else:
        status, reason = "pass", f"{said}, within {rule.limit_text()}"
    return Check("nonfinite", name, status, reason, rule=str(rule), baseline=va, candidate=vb, change=ch,
                 relative=rule.relative, limit=rule.limit, details={"runs": counts})


# ----------------------------------------------------------------------------
# Findings


def run_findings(run: Run):
    """The findings of one run, as the findings rule reads them (an analysis without what only pages draw)."""
    return analyze(run, plots=False).findings


def _findings_checks(base, cand, rule, found) -> list[Check]:
    """Findings new in the candidate; ``found`` holds one future of findings per run (baseline runs first)."""
    name = "findings"
    if rule.off:
        return [Check("findings", name, "off", "rule off", rule=str(rule))]
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    per_run = []
    try:
        for future in found:
            per_run.append({})
            for f in future.result():
                sev = str(getattr(f, "severity", "info"))
                fid = str(getattr(f, "id", "?"))
                if rank.get(sev, 0) >= rank.get(per_run[-1].get(fid, ("info", ""))[0], 0) or fid not in per_run[-1]:
                    per_run[-1][fid] = (sev, str(getattr(f, "message", "")))
    except DiffauditError as e:
        return [Check("findings", name, "inconclusive", f"analysis failed: {e}", rule=str(rule))]
    R0 = len(base)
    ids = sorted({fid for d in per_run[R0:] for fid in d})
    checks = []
    for fid in ids:
        def share(runs, level):
            return sum(1 for d in runs if fid in d and rank.get(d[fid][0], 0) >= rank[level]) / len(runs)

        worst = max((d[fid][0] for d in per_run[R0:] if fid in d), key=lambda s: rank.get(s, 0))
        msg = next(d[fid][1] for d in per_run[R0:] if fid in d and d[fid][0] == worst)
        # new at a severity: in at least half of the candidate runs at that severity, in fewer than half of the baseline's
        new_at = [s for s in SEVERITIES if share(per_run[R0:], s) >= 0.5 and share(per_run[:R0], s) < 0.5]
        if not new_at:
            continue
        sev = new_at[-1]
        counts = rank[sev] >= rank[rule.severity]
        status = "regression" if counts else "pass"
        reason = (f"new {sev} finding in the candidate: {msg}" if counts else
                  f"new {sev} finding, below the findings:{rule.severity} limit: {msg}")
        checks.append(Check("findings", f"finding {fid}", status, reason, rule=str(rule),
                            baseline=share(per_run[:R0], sev), candidate=share(per_run[R0:], sev),
                            details={"id": fid, "severity": sev}))
    if not any(c.status == "regression" for c in checks):
        checks.insert(0, Check("findings", name, "pass",
                               f"no finding at {rule.severity} or above that the baseline lacks", rule=str(rule)))
    return checks


# ----------------------------------------------------------------------------
# Overall verdict


def _overall(checks: list[Check], sides: tuple[Side, Side], nblocks: int, sight: dict | None = None) -> tuple[str, str]:
    bins = [c for c in checks if c.metric == "loss"]
    tested = [c for c in bins if c.status in ("pass", "regression")]
    reg = [c for c in checks if c.status == "regression"]
    if reg:
        parts = []
        rb = [c.bin for c in reg if c.metric == "loss"]
        if rb:
            parts.append(f"late loss in {len(rb)} of {len(tested)} noise bins ({bin_ranges(rb)})")
        xb = [c.bin for c in reg if c.metric == "excess"]
        if xb:
            parts.append(f"excess over L* in {len(xb)} bins ({bin_ranges(xb)})")
        parts += [c.name for c in reg if c.metric not in ("loss", "excess")]
        return "regression", "regression: " + "; ".join(parts)
    if not tested:
        why = next((c.reason for c in bins if c.reason), "no noise bin could be compared")
        return "inconclusive", f"inconclusive: no noise bin could be compared ({why})"
    other = [c.name for c in checks if c.metric not in ("loss", "excess", GROUP_METRIC) and c.status == "pass"]
    det = (sight or {}).get("detectable")
    if det is not None:
        seen = f"pass: no regression above {change_text(det, True)} of the mean loss (what this comparison can see)"
        proj = sight.get("projection")
        if proj is not None:
            seen += f"; {proj['baseline_seeds']} baseline seeds would see {change_text(proj['detectable'], True)}"
        if sight.get("weak"):
            seen += "; too weak to gate on (see the notes)"
        return "pass", seen + f"; {len(tested)} noise bins" + (f", {', '.join(dict.fromkeys(other))}" if other else "")
    return "pass", (f"pass: no regression in {len(tested)} noise bins"
                    + (f", {', '.join(dict.fromkeys(other))}" if other else ""))
