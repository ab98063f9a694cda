"""How one check of a verdict reads: its values, change, interval, p-value, limit and result as table cells.

The terminal table, the Markdown summary, the JUnit messages and the HTML page
all show a :class:`~diffaudit.gate.Check` through :func:`row`, so a number reads
the same in every output of ``diffaudit compare``.
"""

from __future__ import annotations

import math

from diffaudit.gate import GROUP_METRIC, Check, Verdict
from diffaudit.words import MISSING, bin_ranges, change_text, describe_bins, num, p_value, pct

COLUMNS = ("check", "baseline", "candidate", "change", "interval", "p (adj.)", "limit", "can see", "result")
NUMERIC = (False, True, True, True, True, True, True, True, False)  # right-aligned columns
CLOSEST = 3  # with no regressed bin, the bins that came closest are shown so a pass still shows numbers
CORRECTION_WORDS = {"holm": "Holm", "by": "Benjamini-Yekutieli"}


def value(v, metric: str) -> str:
    """One side's value of a metric."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return MISSING
    if math.isinf(v):
        return "never"
    if metric == "clip_rate":
        return pct(v)
    if metric == "steps":
        return f"{v:,.0f}"
    if metric == "findings":
        return f"{100 * v:.0f}% of runs"
    return num(v)


def change(c: Check) -> str:
    return MISSING if c.change is None else change_text(c.change, c.relative)


def interval(c: Check) -> str:
    if c.lo is None or c.hi is None:
        return MISSING
    return f"[{change_text(c.lo, c.relative)}, {change_text(c.hi, c.relative)}]"


def limit(c: Check) -> str:
    if c.metric == "findings":
        return c.rule.split(":", 1)[-1] if ":" in c.rule else c.rule
    if c.limit is None:
        return "off" if c.status == "off" else MISSING
    return f"+{pct(c.limit)}" if c.relative else f"+{c.limit:g}"


def detectable(c: Check) -> str:
    """The smallest change the check catches with 80% probability (its minimum detectable effect)."""
    if c.detectable is None:
        return MISSING
    return change_text(c.detectable, c.relative)


def name(c: Check) -> str:
    """'loss bin 3 (t 60-79)'."""
    return c.name + (f" ({c.noise_levels})" if c.noise_levels else "")


def result(c: Check) -> str:
    return c.status.upper() if c.status == "regression" else c.status


def row(c: Check) -> list[str]:
    """The cells of :data:`COLUMNS` for one check (p shown adjusted across bins where it was)."""
    p = MISSING if c.p is None else p_value(c.q if c.q is not None else c.p)
    return [name(c), value(c.baseline, c.metric), value(c.candidate, c.metric), change(c), interval(c), p, limit(c),
            detectable(c), result(c)]


def shown(v: Verdict, everything: bool) -> list[Check]:
    """Checks to show: all of them, or every non-bin check plus the bins that regressed or could not be tested."""
    if everything:
        return list(v.checks)
    bins = [c for c in v.checks if c.metric in ("loss", "excess")]
    keep = [c for c in bins if c.status in ("regression", "inconclusive")]
    if not any(c.status == "regression" for c in keep):
        ranked = sorted((c for c in bins if c.metric == "loss" and c.change is not None and math.isfinite(c.change)),
                        key=lambda c: -c.change)
        keep += ranked[:CLOSEST]
    keep_ids = {id(c) for c in keep}
    return [c for c in v.checks if c.metric not in ("loss", "excess") or id(c) in keep_ids]


def noise_model_words(v: Verdict) -> str:
    if v.noise_model == "seeds":
        return "seed-to-seed spread" + (" (a calibration's runs lent theirs)" if v.allowance else "")
    return "within-run variability + " + ("calibrated seed allowance" if v.allowance not in (None, "built-in")
                                          else "built-in seed allowance")


def _span(checks: list[Check]) -> str:
    """'+3.1% to +8.4%' (or one value): the span of the changes of some checks."""
    v = sorted(c.change for c in checks if c.change is not None)
    if not v:
        return ""
    rel = checks[0].relative
    lo, hi = change_text(v[0], rel), change_text(v[-1], rel)
    return lo if lo == hi else f"{lo} to {hi}"


def headline(v: Verdict) -> str:
    """The verdict in one sentence: which noise levels regressed and by how much, and any other regression.

    'regression: late loss up in 12 of 50 noise bins: bins 0-11 (t 0-239), by +3.1% to +8.4%; clip rate +0.062
    (limit +0.05)'.
    A pass or an inconclusive verdict reads as the gate's own summary.
    """
    reg = v.regressions
    if not reg:
        return v.summary
    parts = []
    tested = [c for c in v.checks if c.metric == "loss" and c.status in ("pass", "regression")]
    for metric, what, of in (("loss", "late loss", len(tested)), ("excess", "excess over L*", None)):
        hit = [c for c in reg if c.metric == metric and c.bin is not None]
        if not hit:
            continue
        bins = [c.bin for c in hit]
        where = (describe_bins(v.process.kind, v.process.bin_edges(), bins) if v.process is not None
                 else "bins " + bin_ranges(bins))
        count = f"{len(hit)} of {of} noise bins" if of else f"{len(hit)} noise bins"
        parts.append(f"{what} up in {count}: {where}, by {_span(hit)}")
    binned = any(c.metric == "loss" and c.bin is not None for c in reg)
    for c in reg:
        if c.bin is not None or c.metric == "findings" or (binned and c.metric == GROUP_METRIC):
            continue  # bins are said above; a group of them regresses with them; findings are listed below
        if c.change is not None and math.isinf(c.change):
            parts.append(f"{c.name}: never reached")
        else:
            parts.append(c.name if c.change is None else f"{c.name} {change(c)} (limit {limit(c)})")
    new = [c.name.removeprefix("finding ") for c in reg if c.metric == "findings"]
    if new:
        parts.append(f"new finding{'s' if len(new) > 1 else ''} {', '.join(new)}")
    return "regression: " + "; ".join(parts)
