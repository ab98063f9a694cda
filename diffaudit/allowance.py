"""The seed allowance: how much seeds of one model differ, which one run per side cannot see.

``diffaudit compare run_a run_b`` sees how a run's late loss wanders within the
run, but not how another seed of the same configuration would have landed. That
is covered by an :class:`Allowance`: the run-to-run standard deviation of the
late loss per noise bin, of its mean over a group of bins, of the steps to reach
a loss level and of the clip rate.

Two kinds:

* **built-in** (``DEFAULT``): learned on the project's own small models (see
  ``diffaudit.gate.SEED_BIN_SD``). It is a property of *those* models, so it is
  generous, and a comparison that leans on it sees only large rises.
* **calibrated** (``diffaudit calibrate RUN RUN RUN -o FILE``): measured on three
  or more healthy seeds of the user's own configuration, saved in a small JSON
  file (:data:`FORMAT`) that says what it was measured on. Its spread is the
  *whole* run-to-run spread of a run's lag-adjusted late level (seed effects and
  the within-run noise of a late window of that length together), which is what
  the difference of two runs carries; so with a calibration that matches the
  runs' length, the comparison's variance is twice the calibrated one (never less
  than the within-run variance it sees) on the calibration's degrees of freedom.

A folder of baseline runs that holds :data:`FILE_NAME`, or a baseline run inside such a folder, uses it by
itself (:func:`find_in`). The file's ``reference`` (each bin's pooled late level, mean deviation, elasticity
and sampling scale) lets a comparison count a baseline run outside the calibration as one more of its runs
(:func:`diffaudit.gate.with_baseline`); a file without it still reads.
Everything here raises :class:`~diffaudit.errors.AllowanceError` with one line
naming the file and what is wrong; nothing prints.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffaudit import stats
from diffaudit.errors import AllowanceError, DiffauditError

FORMAT = 1  # the version of the calibration file; a newer one is refused with a clear error
FILE_NAME = "diffaudit-allowance.json"  # a baseline folder holding this file uses it without --allowance
KIND = "diffaudit-allowance"  # the file's "kind", so a stray JSON file is named as what it is not
LENGTH_SLACK = 0.25  # the calibration stands for the runs' own spread when their matched steps are within 25%
WINDOW_SLACK = 0.05  # ... and their late window sits where its did, within 5% of the run (runs spread more earlier)


@dataclass(frozen=True)
class Allowance:
    """Seed-to-seed variation that one run per side cannot see, as relative standard deviations per run.

    The scalar fields are the built-in model: ``bin`` and ``floor`` give each bin's sd from its level; a
    calibrated allowance carries ``bins`` (one sd per noise bin) and ``deviations`` (each calibration run's
    relative late level per bin, after its progress lag), from which a group of bins' mean sd is exact.
    ``Allowance(0, 0, 0)`` turns the allowance off (within-run variability only).
    """

    bin: float = 0.0  # of a noise bin's late loss
    mean: float = 0.0  # of the late loss averaged over a group of bins
    speed: float = 0.0  # of log(steps to reach the loss level)
    floor: float = 0.0  # of a bin's late loss, relative to the run's mean loss over bins (small-loss bins)
    clip: float = 0.0  # of the clip rate's log-odds: added with one run per side, a floor under the seeds' spread
    # ---- calibrated (None / inf for the built-in one)
    bins: tuple | None = None  # per-bin sd (pooled across bins), relative
    # per-bin sd of the smooth profile over the noise levels that ``bins`` shrink towards: what the precision
    # weights of a mean over bins come from (a profile of a few parameters cannot favour the bins whose few
    # deviations happened to be small, as their own spreads would; None in files written before it was kept)
    profile: tuple | None = None
    df_bins: tuple | None = None  # their degrees of freedom
    df_mean: float = math.inf  # of ``mean`` (runs - 1)
    df_speed: float = math.inf
    df_clip: float = math.inf
    speed_level: float | None = None  # share of the initial drop above the late level where the seeds agree best
    deviations: tuple | None = None  # (runs, bins) each run's lag-adjusted relative late level
    steps: int | None = None  # matched steps of the calibration runs (their late windows' length follows)
    source: str = "built-in"  # "built-in", or the calibration file
    measured_on: dict = field(default_factory=dict, compare=False)
    # per bin: the calibration's pooled late level (and each run's), its mean lag-adjusted deviation, elasticity and
    # sampling scale, the still-falling bins, and the lag bounds it used: what another run's deviation is measured from
    reference: dict | None = field(default=None, compare=False)
    baseline_run: str | None = None  # a comparison's baseline run counted as one more calibration run

    @property
    def runs(self) -> int:
        """Runs the spreads were measured on (a counted baseline run included)."""
        return len(self.deviations) if self.deviations is not None else int(self.df_mean) + 1

    @property
    def calibrated(self) -> bool:
        return self.bins is not None

    def bin_sd(self, level: np.ndarray, mean_level: float) -> np.ndarray:
        """Relative allowance (sd per run) of each bin: calibrated per bin, or sqrt(bin^2 + (floor * mean_level /
        level)^2)."""
        if self.bins is not None:
            return np.asarray(self.bins, np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(self.bin**2 + (self.floor * mean_level / level) ** 2)

    def bin_df(self, n: int) -> np.ndarray:
        return np.asarray(self.df_bins, np.float64) if self.df_bins is not None else np.full(n, math.inf)

    def weight_sd(self) -> np.ndarray | None:
        """Per-bin sd for the precision weights of a mean over bins: the smooth profile the file keeps, else the
        one its deviations give (a file written before the profile was kept: the bins' own spreads, shrunk from
        those very deviations, would favour the bins that happened to vary little); None without either."""
        if self.profile is not None:
            return np.asarray(self.profile, np.float64)
        if self.deviations is None:
            return None
        dev = np.asarray(self.deviations, np.float64)
        scale = None if self.reference is None else np.asarray(self.reference["sampling_scale"], np.float64)
        try:
            prior = stats.pooled_spread(dev, scale=scale).prior
        except DiffauditError:
            return None
        return np.where(np.isfinite(dev).all(axis=0), np.sqrt(prior), np.nan)

    def group_sd(self, members: np.ndarray, weights=None) -> tuple[float, float] | None:
        """(sd per run, df) of the mean over ``members`` bins (weighted by ``weights``, else equally), from the
        calibration runs' own deviations."""
        if self.deviations is None:
            return None
        dev = np.asarray(self.deviations, np.float64)
        w = np.asarray(members, np.float64) if weights is None else np.where(members, weights, 0.0)
        m = stats.weighted_mean_rows(dev, w) if dev.size else np.array([])
        m = m[np.isfinite(m)]
        if m.size < 2:
            return None
        return float(np.std(m, ddof=1)), float(m.size - 1)

    def equal_mean_sd(self) -> tuple[float, float]:
        """(sd per run, df) of the *equally* weighted mean over the bins every calibration run sampled (what a
        sweep's geometric mean over bins varies by); ``mean`` where the file kept no deviations. ``mean`` itself is
        the precision-weighted mean's, as the gate takes it."""
        if self.deviations is not None:
            dev = np.asarray(self.deviations, np.float64)
            got = self.group_sd(np.isfinite(dev).all(axis=0)) if dev.size else None
            if got is not None:
                return got
        return self.mean, self.df_mean

    def matches_length(self, steps: int) -> bool:
        """True when runs of ``steps`` matched steps are close enough to the calibration's length that its
        spread stands for theirs (the within-run part of it depends on the late window's length)."""
        return self.steps is not None and abs(steps / self.steps - 1) <= LENGTH_SLACK

    def window_share(self) -> tuple[float, float] | None:
        """Where the calibration's late window sat: its first and last step as shares of the matched steps."""
        w, st = self.measured_on.get("window", {}), self.measured_on.get("steps", {})
        try:
            n = float(st["last"]) - float(st["first"]) + 1
            return (float(w["first"]) - float(st["first"])) / n, (float(w["last"]) - float(st["first"])) / n
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return None

    def matches_window(self, share: tuple[float, float]) -> bool:
        """True when a late window at ``share`` (first and last step, as shares of the matched steps) sits where
        the calibration's did, within WINDOW_SLACK of the run: the spread of a window earlier in training is
        larger, so the calibration's would not stand for it."""
        mine = self.window_share()
        return mine is not None and max(abs(share[0] - mine[0]), abs(share[1] - mine[1])) <= WINDOW_SLACK

    def words(self) -> str:
        if self.calibrated:
            b = np.asarray(self.bins, np.float64)
            runs = (f"{self.runs} runs" if self.baseline_run is None else
                    f"{self.runs - 1} runs plus the baseline run {self.baseline_run}")
            return (f"calibrated on {runs} ({self.source}): sd per run {_pct(float(np.nanmin(b)))}-"
                    f"{_pct(float(np.nanmax(b)))} of a bin's loss, {_pct(self.mean)} for the"
                    f"{' precision-weighted' if self.profile is not None else ''} mean over bins")
        return (f"sd per run {_pct(self.bin)} of a bin's loss plus {_pct(self.floor)} of the run's mean loss over "
                f"bins, {_pct(self.mean)} for a mean over bins, {_pct(self.speed)} for the steps to reach the loss level, "
                f"{self.clip:.2g} for the log-odds of the clip rate")


def _pct(x: float) -> str:
    return f"{100 * x:.2g}%"


# ----------------------------------------------------------------------------
# What a calibration was measured on, and whether a run fits it


def process_fingerprint(process) -> dict:
    """What must match between a calibration and the runs it is used for: process, target, bins, schedule."""
    out = {"process": process.kind, "prediction": process.prediction, "num_bins": int(process.num_bins),
           "bin_edges": [float(e) for e in process.bin_edges()]}
    if process.kind == "vp":
        a = np.round(np.asarray(process.alpha_bar, np.float64), 9)
        out["schedule"] = hashlib.sha256(a.tobytes()).hexdigest()[:16]
        out["timesteps"] = int(a.size)
    return out


def check_fits(al: Allowance, process, *, what: str = "the runs") -> None:
    """Raise AllowanceError (naming the file and what differs) when ``process`` is not what ``al`` measured."""
    if not al.calibrated:
        return
    want = al.measured_on.get("noise", {})
    have = process_fingerprint(process)
    for key, words in (("process", "process"), ("prediction", "prediction"), ("num_bins", "noise bins"),
                       ("timesteps", "schedule length"), ("schedule", "noise schedule")):
        if want.get(key) != have.get(key):
            raise AllowanceError(f"allowance {al.source}: measured on {words} {want.get(key)}, but {what} have "
                                 f"{have.get(key)}; calibrate on runs of this configuration")
    if not np.allclose(want.get("bin_edges", []), have["bin_edges"], rtol=1e-9, atol=1e-12):
        raise AllowanceError(f"allowance {al.source}: measured on other noise-bin edges than {what} have")


# ----------------------------------------------------------------------------
# The file


def to_document(al: Allowance) -> dict:
    """The calibration file's content: what it was measured on first, then the spreads, then the raw deviations."""
    dev = None if al.deviations is None else [[_num(v) for v in row] for row in al.deviations]
    return {
        "kind": KIND,
        "format": FORMAT,
        **al.measured_on,
        "bins": {"sd": [_num(v) for v in al.bins or ()], "df": [_num(v) for v in al.df_bins or ()],
                 **({} if al.profile is None else {"profile_sd": [_num(v) for v in al.profile]})},
        "mean": {"sd": _num(al.mean), "df": _num(al.df_mean)},
        "speed": None if al.speed_level is None else {"level_share": al.speed_level, "sd": _num(al.speed),
                                                      "df": _num(al.df_speed)},
        "clip": None if not al.clip else {"sd_log_odds": _num(al.clip), "df": _num(al.df_clip)},
        "deviations": dev,
        "reference": _reference_document(al.reference),
    }


def _reference_document(ref: dict | None) -> dict | None:
    if ref is None:
        return None
    out = {k: [_num(v) for v in ref[k]] for k in REFERENCE_LISTS}
    out["late_runs"] = [[_num(v) for v in row] for row in ref["late_runs"]]
    out["still_falling"] = [int(k) for k in ref["still_falling"]]
    out.update({k: _num(ref[k]) for k in ("max_lag", "tolerance")})
    return out


REFERENCE_LISTS = ("late", "center", "elasticity", "sampling_scale")  # one value per bin (null: not measured)


def _reference(ref, nb: int) -> dict | None:
    """The file's optional "reference" section, checked; None when absent (files before it still read)."""
    if ref is None:
        return None
    if not isinstance(ref, dict):
        raise ValueError("reference must be an object")
    lacking = [k for k in (*REFERENCE_LISTS, "late_runs", "still_falling", "max_lag", "tolerance") if k not in ref]
    if lacking:
        raise ValueError(f"reference.{lacking[0]} is missing")
    out = {}
    for k in REFERENCE_LISTS:
        v = ref[k]
        if not isinstance(v, list) or len(v) != nb:
            raise ValueError(f"reference.{k} must hold {nb} values, one per noise bin")
        out[k] = tuple(math.nan if x is None else _number(x, f"reference.{k}") for x in v)
    if any(x <= 0 for x in out["late"] if math.isfinite(x)):
        raise ValueError("reference.late holds a level that is not positive")
    rows = ref["late_runs"]
    if not (isinstance(rows, list) and len(rows) >= 2 and all(isinstance(r, list) and len(r) == nb for r in rows)):
        raise ValueError(f"reference.late_runs must hold one list of {nb} values per calibration run")
    out["late_runs"] = tuple(tuple(math.nan if x is None else _number(x, "reference.late_runs") for x in r)
                             for r in rows)
    falling = ref["still_falling"]
    if not (isinstance(falling, list) and all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k < nb
                                              for k in falling)):
        raise ValueError(f"reference.still_falling must list bin numbers 0-{nb - 1}")
    out["still_falling"] = tuple(falling)
    out["max_lag"] = _positive(ref["max_lag"], "reference.max_lag")
    out["tolerance"] = _positive(ref["tolerance"], "reference.tolerance")
    return out


def _number(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ValueError(f"{what} holds {v!r}, not a number")
    return float(v)


def _num(v):
    v = float(v)
    return v if math.isfinite(v) else None


_NUMBER_LIST = re.compile(r"\[\s*((?:-?[\d.eE+-]+|null)(?:,\s*(?:-?[\d.eE+-]+|null))*)\s*\]")


def dumps(al: Allowance) -> str:
    """The file's text: indented JSON with every list of numbers on one line (a bin per column, a run per row)."""
    text = json.dumps(to_document(al), indent=1)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m[1].split(",")) + "]", text) + "\n"


def write_allowance(al: Allowance, path) -> None:
    """Write the file atomically (a temporary name, then a rename), so a reader never sees half of it."""
    text = dumps(al)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise AllowanceError(f"allowance {path}: cannot write ({e.strerror or e})") from None


def read_allowance(path) -> Allowance:
    """The calibrated :class:`Allowance` in ``path``; AllowanceError naming the file and what is wrong."""
    name = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise AllowanceError(f"allowance {name}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AllowanceError(f"allowance {name}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise AllowanceError(f"allowance {name}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise AllowanceError(f"allowance {name}: not a diffaudit calibration file (no \"kind\": \"{KIND}\")")
    fmt = doc.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise AllowanceError(f"allowance {name}: format {fmt!r} is not a version number")
    if fmt > FORMAT:
        raise AllowanceError(f"allowance {name}: format {fmt} is newer than this diffaudit reads ({FORMAT}); "
                             "upgrade diffaudit")
    try:
        return _from_document(doc, name)
    except (KeyError, TypeError, ValueError) as e:
        raise AllowanceError(f"allowance {name}: damaged ({_what(e)})") from None


def _what(e: Exception) -> str:
    return f"missing {e}" if isinstance(e, KeyError) else str(e)


def _positive(v, what: str, *, allow_zero: bool = True) -> float:
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{what} is {v!r}, not a number")
    v = float(v)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{what} is {v!r}, expected a finite number {'>= 0' if allow_zero else '> 0'}")
    return v


def _from_document(doc: dict, name: str) -> Allowance:
    noise = doc["noise"]
    nb = int(noise["num_bins"])
    sd = doc["bins"]["sd"]
    df = doc["bins"]["df"]
    if not isinstance(sd, list) or len(sd) != nb or not isinstance(df, list) or len(df) != nb:
        raise ValueError(f"bins.sd and bins.df must hold {nb} values, one per noise bin")
    sd = tuple(math.nan if v is None else _positive(v, f"bins.sd[{i}]") for i, v in enumerate(sd))
    df = tuple(math.nan if v is None else _positive(v, f"bins.df[{i}]", allow_zero=False) for i, v in enumerate(df))
    profile = doc["bins"].get("profile_sd")
    if profile is not None:
        if not isinstance(profile, list) or len(profile) != nb:
            raise ValueError(f"bins.profile_sd must hold {nb} values, one per noise bin")
        profile = tuple(math.nan if v is None else _positive(v, f"bins.profile_sd[{i}]", allow_zero=False)
                        for i, v in enumerate(profile))
        if not all(math.isnan(v) or (v * v > 0 and math.isfinite(v * v)) for v in profile):
            raise ValueError("bins.profile_sd holds a value whose square is not a finite positive number")
    mean = doc["mean"]
    runs = doc["runs"]
    if not isinstance(runs, list) or len(runs) < 2:
        raise ValueError("runs must list the calibration runs")
    dev = doc.get("deviations")
    if dev is not None:
        if not (isinstance(dev, list) and all(isinstance(r, list) and len(r) == nb for r in dev)):
            raise ValueError(f"deviations must be one list of {nb} values per run")
        dev = tuple(tuple(math.nan if v is None else float(v) for v in r) for r in dev)
    speed = doc.get("speed")
    clip = doc.get("clip")
    steps = doc["steps"]
    return Allowance(
        mean=_positive(mean["sd"], "mean.sd"),
        df_mean=_positive(mean["df"], "mean.df", allow_zero=False),
        speed=0.0 if not speed else _positive(speed["sd"], "speed.sd"),
        df_speed=math.inf if not speed else _positive(speed["df"], "speed.df", allow_zero=False),
        speed_level=None if not speed else _positive(speed["level_share"], "speed.level_share"),
        clip=0.0 if not clip else _positive(clip["sd_log_odds"], "clip.sd_log_odds"),
        df_clip=math.inf if not clip else _positive(clip["df"], "clip.df", allow_zero=False),
        bins=sd, df_bins=df, profile=profile, deviations=dev,
        steps=int(_positive(steps["matched"], "steps.matched", allow_zero=False)),
        source=name, reference=_reference(doc.get("reference"), nb),
        measured_on={k: doc[k] for k in ("created", "diffaudit_version", "noise", "steps", "window", "runs", "config",
                                         "pooling", "forced")
                     if k in doc},
    )


def find_in(baseline) -> Path | None:
    """The calibration file for a baseline, if any: in the folder of runs it names, or, for one run, beside it in
    its folder of runs (``runs/main/diffaudit-allowance.json`` for ``runs/main/latest``)."""
    p = Path(baseline)
    if not p.is_dir():
        return None
    places = [p, p.parent] if (p / "run.json").is_file() else [p]
    return next((q / FILE_NAME for q in places if (q / FILE_NAME).is_file()), None)
