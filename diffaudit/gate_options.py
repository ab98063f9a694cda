"""The gate's option grammar: its defaults, and the limits and windows ``diffaudit compare`` takes as text.

``--rule METRIC:LIMIT`` becomes a :class:`Rule` (``loss:2%``, ``clip_rate:+0.05``,
``findings:fail``, ``steps:off``), ``--window`` a :class:`Window` (``last:20%``,
``last:5000``, ``from:80000``, ``steps:80000-100000``), ``--tolerance`` and
``--max-lag`` a fraction (``2%`` or ``0.02``), ``--alpha`` a level. Every parser
raises a one-line DiffauditError that names the option and the forms it takes,
so a typo costs nothing (the CLI parses every option before loading a run).
The defaults here are the ones the CLI shows.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable

from diffaudit.errors import DiffauditError
from diffaudit.findings import SEVERITIES
from diffaudit.words import pct

TOLERANCE = 0.02  # a bin regresses only if its late loss rose by more than this (relative)
ALPHA = 0.05  # significance level after correction across bins
WINDOW = "last:20%"  # the late window: this share of the matched steps, at the end
MIN_WINDOWS = 8  # widen the late window to hold at least this many matched blocks (0: never)
MAX_LAG = 0.02  # progress lag a run may have before its level counts, as a share of the matched steps
CORRECTION = "holm"  # p-value adjustment across bins: one of CORRECTIONS
CORRECTIONS = ("holm", "by")  # Holm (FWER) or Benjamini-Yekutieli (FDR under any dependence)
UNITS = ("loss", "lstar")  # as logged; each bin divided by its own Gaussian L* (targets may differ)
DEFAULT_RULES = ("steps:25%", "clip_rate:+0.05", "nonfinite:+0", "findings:fail", "excess:off")
METRICS = ("loss", "excess", "steps", "clip_rate", "nonfinite", "findings")
_METRIC_ALIASES = {"speed": "steps", "clip": "clip_rate", "nan": "nonfinite", "finding": "findings"}
_METRIC_WORDS = {
    "loss": "late loss per noise bin",
    "excess": "late excess over L* per noise bin (e.g. excess:10%)",
    "steps": "steps to reach the baseline's loss level",
    "clip_rate": "rise of the share of clipped steps",
    "nonfinite": "rise of the non-finite losses per run",
    "findings": "findings new in the candidate at this severity or above",
}


# ----------------------------------------------------------------------------
# Rules and windows: small objects parsed from compact strings

_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_RULE_FORMS = ("METRIC:LIMIT, METRIC one of loss, excess, steps, clip_rate, nonfinite, findings; "
               "LIMIT a relative change (2%), an absolute one (+0.05) or off; findings: info, warn, fail or off")
_WINDOW_FORMS = ("last:20% (a share of the matched steps), last:5000 (steps), from:80000 or steps:80000-100000")


def parse_tolerance(text, *, option: str = "--tolerance") -> float:
    """A relative tolerance from ``2%`` or ``0.02`` (a fraction); raises DiffauditError naming ``option``."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        v = float(text)
    else:
        s = str(text).strip()
        m = re.fullmatch(rf"({_NUM})\s*(%?)", s)
        if not m:
            raise DiffauditError(f"{option} {str(text)!r}: expected a relative tolerance such as 2% or 0.02")
        v = float(m[1]) / (100.0 if m[2] else 1.0)
    if not (math.isfinite(v) and 0 <= v < 10):
        raise DiffauditError(f"{option} {text!r}: expected a relative tolerance such as 2% or 0.02 (0 or more, below 1000%)")
    return v


def parse_alpha(text, *, option: str = "--alpha") -> float:
    """A significance level in (0, 1) from ``0.05`` or ``5%``; raises DiffauditError naming ``option``."""
    try:
        v = parse_tolerance(text, option=option)
    except DiffauditError:
        v = math.nan
    if not 0 < v < 1:
        raise DiffauditError(f"{option} {str(text)!r}: expected a level between 0 and 1, such as 0.05")
    return v


@dataclass(frozen=True)
class Rule:
    """A limit on one metric's change, candidate against baseline: computes the change and says why it fails."""

    metric: str  # one of METRICS
    limit: float | None  # None: the check is off
    relative: bool = True  # limit on (cand - base) / |base|; else on cand - base
    severity: str | None = None  # findings: the lowest severity that counts
    text: str = ""  # as written, e.g. "loss:2%"

    @property
    def off(self) -> bool:
        return self.limit is None and self.severity is None

    def change(self, base: float, cand: float) -> float:
        """The number the limit applies to: relative or absolute increase."""
        if not self.relative:
            return cand - base
        if base == 0:
            return 0.0 if cand == 0 else math.copysign(math.inf, cand)
        return (cand - base) / abs(base)

    def exceeded(self, change: float) -> bool:
        return self.limit is not None and change > self.limit

    def limit_text(self) -> str:
        if self.metric == "findings":
            return "off" if self.severity is None else f"new {self.severity}"
        if self.limit is None:
            return "off"
        return f"+{pct(self.limit)}" if self.relative else f"+{self.limit:g}"

    def __str__(self) -> str:
        return self.text or f"{self.metric}:{self.limit_text()}"


def parse_rule(text: str, *, option: str = "--rule") -> Rule:
    """A :class:`Rule` from ``loss:2%``, ``clip_rate:+0.05``, ``steps:25%``, ``nonfinite:+0``, ``findings:warn``, ``excess:off``."""
    s = str(text).strip()
    metric, sep, value = s.partition(":")
    metric = _METRIC_ALIASES.get(metric.strip().lower(), metric.strip().lower())
    value = value.strip().lower()
    if not sep or metric not in METRICS or not value:
        raise DiffauditError(f"{option} {s!r}: expected {_RULE_FORMS}")
    if metric == "findings":
        if value == "off":
            return Rule(metric, None, severity=None, text=s)
        if value not in SEVERITIES:
            raise DiffauditError(f"{option} {s!r}: findings takes info, warn, fail or off")
        return Rule(metric, None, severity=value, text=s)
    if value == "off":
        return Rule(metric, None, text=s)
    m = re.fullmatch(rf"\+?({_NUM})\s*(%?)", value)
    if not m:
        raise DiffauditError(f"{option} {s!r}: expected {_RULE_FORMS}")
    relative = bool(m[2])
    limit = float(m[1]) / (100.0 if relative else 1.0)
    if not math.isfinite(limit):
        raise DiffauditError(f"{option} {s!r}: the limit must be a finite number")
    return Rule(metric, limit, relative=relative, text=s)


def rule_lines() -> list[str]:
    """One line per metric for ``compare --help``: its default rule and what it limits."""
    default = rule_set(TOLERANCE, ())
    return [f"  {str(default[m]):<18} {_METRIC_WORDS[m]}" for m in METRICS]


def rule_set(tolerance: float, rules: Iterable) -> dict[str, Rule]:
    """Defaults, then ``tolerance`` as the loss rule, then the user's rules (last one per metric wins)."""
    out = {r.metric: r for r in map(parse_rule, DEFAULT_RULES)}
    out["loss"] = Rule("loss", float(tolerance), relative=True, text=f"loss:{pct(tolerance)}")
    for r in rules:
        r = r if isinstance(r, Rule) else parse_rule(r)
        out[r.metric] = r
    return out


@dataclass(frozen=True)
class Window:
    """The late window, resolved against the matched steps [lo, hi] with :meth:`resolve`."""

    kind: str  # "last_share", "last_steps", "from", "steps"
    a: float
    b: float | None = None
    text: str = ""

    def resolve(self, lo: int, hi: int) -> tuple[int, int]:
        """First and last step of the window (inclusive), before clipping to [lo, hi]."""
        span = hi - lo + 1
        if self.kind == "last_share":
            return hi + 1 - max(1, int(round(self.a * span))), hi
        if self.kind == "last_steps":
            return hi + 1 - int(self.a), hi
        if self.kind == "from":
            return int(self.a), hi
        return int(self.a), int(self.b)

    def __str__(self) -> str:
        return self.text


def parse_window(text, *, option: str = "--window") -> Window:
    """A :class:`Window` from ``last:20%``, ``last:5000``, ``from:80000`` or ``steps:80000-100000``."""
    if isinstance(text, Window):
        return text
    s = str(text).strip()
    low = s.lower().replace(" ", "")
    bad = DiffauditError(f"{option} {s!r}: expected {_WINDOW_FORMS}")
    if m := re.fullmatch(rf"last:({_NUM})%", low):
        v = float(m[1]) / 100.0
        if not 0 < v <= 1:
            raise DiffauditError(f"{option} {s!r}: the share must be in (0%, 100%]")
        return Window("last_share", v, text=s)
    if m := re.fullmatch(r"last:(\d+)", low):
        if int(m[1]) < 1:
            raise bad
        return Window("last_steps", int(m[1]), text=s)
    if m := re.fullmatch(r"from:(\d+)", low):
        return Window("from", int(m[1]), text=s)
    if m := re.fullmatch(r"steps:(\d+)-(\d+)", low):
        a, b = int(m[1]), int(m[2])
        if b < a:
            raise DiffauditError(f"{option} {s!r}: the last step comes before the first")
        return Window("steps", a, b, text=s)
    raise bad


