"""The shared vocabulary: how numbers, percentages, p-values, bin ranges and noise levels read.

Every message, table, JSON document and page of diffaudit says a number the same
way because they all say it through this module. It imports nothing but the
standard library's :mod:`math`, so any module may use it (the engines for the
reasons they write, the presentation package for everything it shows) without
pulling in anything else.

Conventions:

* a missing or undefined number reads ``-`` (HTML pages pass their own mark);
* numbers keep 4 significant digits by default, integers get thousands
  separators, and very large or very small magnitudes switch to ``1.2e-05``;
* a fraction is shown as a percentage (``0.0213`` -> ``2.13%``);
* bins read as ranges (``0-3, 7, 9-11``), and a run's bins as the noise levels
  they cover, in the process's own unit: timestep ``t`` for vp (integers, the
  upper edge excluded) and flow, ``sigma`` for edm;
* JSON has no NaN or infinity: they become ``null``.

Values are duck-typed: NumPy scalars (``.item()``), arrays (``.tolist()``) and
polars Series (``.to_list()``) are accepted without importing either here.
"""

from __future__ import annotations

import math

MISSING = "-"  # a missing or undefined number in text
NOISE_UNIT = {"vp": "t", "flow": "t", "edm": "sigma"}  # the noise-level coordinate of each process kind
MAX_RANGES = 8  # more separate runs of bins than this and only their count and hull are spelled out


def _scalar(v):
    """A Python scalar from a NumPy scalar or 0-d array; anything else unchanged."""
    item = getattr(v, "item", None)
    if item is not None and getattr(v, "ndim", 0) == 0 and not isinstance(v, (int, float, bool, str)):
        try:
            return item()
        except (TypeError, ValueError):
            return v
    return v


def is_missing(v) -> bool:
    """None or NaN."""
    v = _scalar(v)
    return v is None or (isinstance(v, float) and math.isnan(v))


def num(v, digits: int = 4, *, missing: str = MISSING) -> str:
    """A number for people: ``12,345``, ``0.0213``, ``1.5e-05``, ``inf``; bools as yes/no; missing as ``missing``."""
    v = _scalar(v)
    if is_missing(v):
        return missing
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if not isinstance(v, float):
        return str(v)
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6 or a < 1e-3:
        m, e = f"{v:.{max(digits - 1, 0)}e}".split("e")
        if "." in m:
            m = m.rstrip("0").rstrip(".")
        return f"{m}e{int(e)}"
    if a >= 10 ** digits:  # 12,345 rather than 1.234e+04
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def pct(v, digits: int = 3, *, missing: str = MISSING) -> str:
    """A fraction as a percentage: ``0.0213`` -> ``2.13%``, ``1.5`` -> ``150%``."""
    v = _scalar(v)
    if is_missing(v):
        return missing
    p = 100.0 * float(v)
    if p == 0:
        return "0%"
    if math.isinf(p):
        return ("inf" if p > 0 else "-inf") + "%"
    if abs(p) >= 100:
        return f"{p:,.0f}%"
    if abs(p) < 0.01:
        return num(p, 2) + "%"
    return f"{p:.{digits}g}%"


def signed_pct(v, digits: int = 3, *, missing: str = MISSING) -> str:
    """A relative change: ``+2.13%``, ``-0.5%``, ``0%``."""
    v = _scalar(v)
    if is_missing(v):
        return missing
    if v == 0:
        return "0%"
    return ("+" if v > 0 else "-") + pct(abs(v), digits)


def signed(v, digits: int = 3, *, missing: str = MISSING) -> str:
    """An absolute change: ``+0.0123``, ``-4``, ``+inf``."""
    v = _scalar(v)
    if is_missing(v):
        return missing
    return num(v, digits) if v < 0 or math.isnan(v) else "+" + num(v, digits)


def change_text(v, relative: bool, *, missing: str = MISSING) -> str:
    """A change as the rule that judges it states its limit: relative as a signed percentage, else absolute."""
    return signed_pct(v, missing=missing) if relative else signed(v, missing=missing)


def plus_minus(v, se=None, *, missing: str = MISSING) -> str:
    """'0.7025 ± 0.0015': a value and its 95% half-width (1.96 se), both to the precision the half-width allows."""
    v = _scalar(v)
    if is_missing(v):
        return missing
    se = _scalar(se)
    if is_missing(se) or not se > 0:
        return num(v)
    h = 1.96 * se
    digits = max(0, 1 - int(math.floor(math.log10(h))))
    return f"{v:.{digits}f} ± {h:.{digits}f}"


def clipped(text, width: int) -> str:
    """``text`` cut to ``width`` characters, an ellipsis marking the cut (tables and legends; JSON keeps it whole)."""
    text = str(text)
    return text if len(text) <= width else text[:width - 1] + "…"


def p_value(p, *, missing: str = MISSING) -> str:
    """A p-value: two significant digits, scientific below 1e-4."""
    p = _scalar(p)
    if is_missing(p) or math.isinf(p):
        return missing
    if p < 1e-300:
        return "<1e-300"  # below what a double resolves: the data are far from the limit
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def p_is(name: str, p) -> str:
    """'q = 0.043', 'p < 1e-300': a p-value in a sentence, the relation right where a value is a bound."""
    text = p_value(p)
    return f"{name} < {text[1:]}" if text.startswith("<") else f"{name} = {text}"


def json_float(v):
    """A float for JSON: NaN and infinities become None."""
    v = _scalar(v)
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def jsonable(v):
    """``v`` with NumPy values made plain, tuples made lists, NaN and infinities made None (JSON has neither)."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    tolist = getattr(v, "tolist", None)
    if tolist is not None and not isinstance(v, (str, bytes)):
        return jsonable(tolist())  # arrays, NumPy scalars (their tolist is the Python scalar)
    to_list = getattr(v, "to_list", None)  # polars Series
    if to_list is not None:
        return jsonable(to_list())
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    return v


# ----------------------------------------------------------------------------
# Bins and noise levels


def runs_of(bins) -> list[tuple[int, int]]:
    """Consecutive runs of bin indices: [0, 1, 2, 3, 7] -> [(0, 3), (7, 7)] (sorted, duplicates dropped)."""
    out: list[tuple[int, int]] = []
    for b in sorted({int(i) for i in bins}):
        if out and b == out[-1][1] + 1:
            out[-1] = (out[-1][0], b)
        else:
            out.append((b, b))
    return out


def bin_ranges(bins) -> str:
    """'0-3, 7, 9-11' from bin indices."""
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs_of(bins))


def noise_unit(kind: str) -> str:
    """The coordinate a process kind bins: 't' (vp, flow) or 'sigma' (edm)."""
    return NOISE_UNIT.get(kind, "t")


def edge_span(kind: str, lo, hi) -> str:
    """The numbers of a noise-level span from its edges: vp '0-199' (integers, upper edge excluded), else '0.1-0.2'."""
    if kind == "vp":
        return f"{int(lo)}-{int(hi) - 1}"
    return f"{float(lo):.4g}-{float(hi):.4g}"


def bin_span(kind: str, edges, b: int) -> str:
    """The noise levels of bin ``b`` given the bin edges: 't 0-19', 'sigma 0.002-0.0051'."""
    return f"{noise_unit(kind)} {edge_span(kind, edges[b], edges[b + 1])}"


def bin_spans(kind: str, edges) -> list[str]:
    """The span of every bin, without the unit ('0-19', '20-39', ...)."""
    return [edge_span(kind, edges[b], edges[b + 1]) for b in range(len(edges) - 1)]


def describe_bins(kind: str, edges, bins) -> str:
    """Bins and the noise levels they cover: 'bins 0-3, 7 (t 0-199, 350-399)', 'all 50 bins (t 0-999)'.

    ``edges`` are the bin edges (``process.bin_edges()``, one more than the bins).
    Indices outside the bins are ignored; none left reads 'no bins'. More than
    :data:`MAX_RANGES` separate runs read '23 bins: 0, 2, ... (within t 0-999)'.
    """
    nb = len(edges) - 1
    ix = sorted({int(b) for b in bins if 0 <= int(b) < nb})
    if not ix:
        return "no bins"
    unit = noise_unit(kind)
    rs = runs_of(ix)
    if len(ix) == nb:
        return f"all {nb} bins ({unit} {edge_span(kind, edges[0], edges[-1])})"
    head = "bin" if len(ix) == 1 else "bins"
    if len(rs) > MAX_RANGES:
        return f"{len(ix)} {head}: {bin_ranges(ix)} (within {unit} {edge_span(kind, edges[ix[0]], edges[ix[-1] + 1])})"
    spans = ", ".join(edge_span(kind, edges[a], edges[b + 1]) for a, b in rs)
    return f"{head} {bin_ranges(ix)} ({unit} {spans})"


def process_words(process) -> str:
    """'vp/epsilon, 50 bins'."""
    return f"{process.kind}/{process.prediction}, {process.num_bins} bins"
