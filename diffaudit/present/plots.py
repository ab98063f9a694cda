"""Report figures: matplotlib on the Agg canvas, exported as inline SVG (or base64 PNG).

Every function here takes plain arrays (or small dataclasses of arrays) and
returns an :class:`Image`; none of them knows about runs or analyses, so the
report page and the compare page (:mod:`diffaudit.present.html`) draw with the
same helpers, one run or several overlaid.

Why no pyplot: pyplot keeps a global registry of open figures and a "current
axes"; a library that renders reports inside someone else's process must not
touch it. Figures are made with :class:`matplotlib.figure.Figure` on their own
Agg canvas, and the style is applied with ``rc_context`` around each drawing,
so nothing leaks into the caller's rcParams.

Why downsample: a report is looked at on a screen about a thousand pixels wide.
A million-step series drawn as a line is a megabyte of SVG path that shows
nothing more than its per-pixel-column minimum and maximum. :func:`envelope`
reduces a series to that min/max band (which keeps every spike visible, unlike
averaging or LTTB's one-point-per-bucket) plus the column mean, in O(n) numpy.
Dense heatmaps are rasterized inside the SVG.

Text from logs (run names, scalar names) goes through :func:`plain` before it
reaches matplotlib: a ``$`` would otherwise start mathtext and fail to parse.
In the SVG every glyph is a path, so no log string survives as text; the
comments matplotlib writes with the original strings are removed.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import math
import re
from dataclasses import dataclass
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib import colors as mcolors
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

# ----------------------------------------------------------------------------
# Style

FIG_WIDTH = 11.5  # inches; at 96 px/in about the width of the report's main column
PX_PER_IN = 96.0
RASTER_DPI = 144  # resolution of rasterized parts (heatmaps) inside SVGs
COLUMNS = 1000  # pixel columns a step series is reduced to
MARGINS = dict(left=0.07, right=0.985, top=0.86, bottom=0.17)  # fixed, so step plots line up one under another

#: severity colours, the same in figures and in the page's CSS
SEVERITY_COLORS = {"fail": "#c62828", "warn": "#e65100", "info": "#1565c0", "ok": "#2e7d32"}
#: colours for overlaid runs (Okabe-Ito: distinguishable with colour-blindness)
RUN_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
#: early -> late training: light to dark of one hue
PHASE_COLORS = ("#9ecae1", "#4292c6", "#08306b")
REFERENCE_COLOR = "#222222"
EVENT_COLOR = SEVERITY_COLORS["fail"]
MUTED = "#777777"

_RC = {
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.labelsize": 9.0,
    "legend.fontsize": 8.0,
    "legend.frameon": False,
    "xtick.labelsize": 8.0,
    "ytick.labelsize": 8.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.alpha": 0.35,
    "grid.linewidth": 0.5,
    "axes.edgecolor": "#888888",
    "lines.linewidth": 1.3,
    "svg.fonttype": "path",
    "svg.hashsalt": "diffaudit",  # deterministic ids: same figure, same bytes
    "path.simplify": True,
    "agg.path.chunksize": 20000,
    "image.interpolation": "nearest",
}


def _styled(fn):
    """Run a drawing function inside the report style, restoring the caller's rcParams after."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(_RC):
            return fn(*args, **kwargs)

    return wrapper


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_LABEL = 120  # characters of a log-derived label drawn; a longer run name is cut with an ellipsis


def plain(s) -> str:
    """A log-derived string made safe for matplotlib text: no mathtext, no control characters, bounded length."""
    s = _CONTROL.sub(" ", str(s))
    if len(s) > MAX_LABEL:
        s = s[: MAX_LABEL - 1] + "…"
    return s.replace("$", r"\$")


def _figure(height: float, width: float = FIG_WIDTH, *, constrained: bool = True) -> Figure:
    fig = Figure(figsize=(width, height), dpi=PX_PER_IN, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


# ----------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class Image:
    """A rendered figure: an inline ``<svg>`` element, or a base64 PNG."""

    format: str  # "svg" or "png"
    data: str  # the SVG markup (matplotlib's own, ids made unique) or base64 PNG bytes
    alt: str  # what the figure shows, for screen readers and when images are off
    width: int  # CSS pixels at 100% zoom
    height: int

    @property
    def data_uri(self) -> str:
        mime = "image/svg+xml" if self.format == "svg" else "image/png"
        payload = self.data.encode() if self.format == "svg" else base64.b64decode(self.data)
        return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"

    @property
    def nbytes(self) -> int:
        return len(self.data)


_SVG_START = re.compile(r"<svg\b")
_COMMENT = re.compile(r"<!--.*?-->\s*", re.S)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_ID = re.compile(r'\bid="([^"]+)"')
_REF = re.compile(r'(href="#|url\(#)')


def _export(fig: Figure, alt: str, fmt: str = "svg") -> Image:
    w, h = (int(round(v * PX_PER_IN)) for v in fig.get_size_inches())
    buf = io.BytesIO()
    if fmt == "png":
        fig.savefig(buf, format="png", dpi=RASTER_DPI, metadata={"Software": None})
        return Image("png", base64.b64encode(buf.getvalue()).decode("ascii"), alt, w, h)
    fig.savefig(buf, format="svg", dpi=RASTER_DPI, metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = buf.getvalue().decode("utf-8")
    svg = svg[_SVG_START.search(svg).start():]  # drop the XML prologue and doctype: it is inlined in HTML
    svg = _METADATA.sub("", _COMMENT.sub("", svg))
    # Several SVGs share one HTML document and so one id namespace: prefix every id
    # (glyphs, clip paths, markers) with a hash of the figure.
    prefix = "f" + hashlib.sha1(svg.encode()).hexdigest()[:8] + "-"
    svg = _REF.sub(lambda m: m.group(1) + prefix, _ID.sub(lambda m: f'id="{prefix}{m.group(1)}"', svg))
    return Image("svg", svg.strip(), alt, w, h)


# ----------------------------------------------------------------------------
# Downsampling


@dataclass(frozen=True, eq=False)
class Envelope:
    """A series reduced to pixel columns: per column the min, max and mean of its finite points."""

    x: np.ndarray  # column position (mean x of its points); NaN for empty columns
    lo: np.ndarray
    hi: np.ndarray
    mean: np.ndarray
    n: np.ndarray  # finite points per column
    per_column: float  # points per non-empty column, on average (1.0: not reduced)


def envelope(x, y, columns: int = COLUMNS) -> Envelope:
    """Reduce (x, y) to at most ``columns`` min/max/mean columns over equal slices of the x range.

    Non-finite y are ignored (the caller marks them separately). Series with at
    most ``2 * columns`` points are returned as they are.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(y) & np.isfinite(x)
    x, y = x[ok], y[ok]
    if x.size <= 2 * columns:
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
        return Envelope(x, y, y, y, np.ones(x.size, np.int64), 1.0)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    lo_x, hi_x = x[0], x[-1]
    col = np.minimum(((x - lo_x) / max(hi_x - lo_x, 1e-300) * columns).astype(np.int64), columns - 1)
    starts = np.flatnonzero(np.r_[True, col[1:] != col[:-1]])
    n = np.diff(np.r_[starts, x.size])
    ymin = np.minimum.reduceat(y, starts)
    ymax = np.maximum.reduceat(y, starts)
    ymean = np.add.reduceat(y, starts) / n
    xmean = np.add.reduceat(x, starts) / n
    # keep gaps visible: an empty column between two filled ones becomes NaN
    out = np.full(columns, np.nan)
    cols = col[starts]

    def spread(v):
        o = out.copy()
        o[cols] = v
        return o

    cnt = np.zeros(columns, np.int64)
    cnt[cols] = n
    keep = _trim(cnt)
    return Envelope(
        spread(xmean)[keep], spread(ymin)[keep], spread(ymax)[keep], spread(ymean)[keep], cnt[keep], float(x.size / starts.size)
    )


def _trim(cnt: np.ndarray) -> np.ndarray:
    """Columns to keep: the filled ones, and one empty column per gap (it breaks the line)."""
    filled = cnt > 0
    gap_start = ~filled & np.r_[False, filled[:-1]]
    return filled | gap_start


def bucket_mean(x, y, buckets: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(edges, mean of y per bucket, points per bucket) over ``buckets`` equal slices of the x range.

    For rates: y a 0/1 indicator gives the fraction per bucket. Non-finite y are ignored.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size == 0:
        return np.array([0.0, 1.0]), np.array([np.nan]), np.array([0])
    lo, hi = float(x.min()), float(x.max()) + 1.0  # steps are integers: a bucket is [lo, hi)
    buckets = max(1, min(int(buckets), int(hi - lo)))
    edges = np.linspace(lo, hi, buckets + 1)
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, buckets - 1)
    n = np.bincount(idx, minlength=buckets)
    s = np.bincount(idx, weights=y, minlength=buckets)
    with np.errstate(invalid="ignore", divide="ignore"):
        return edges, np.where(n > 0, s / n, np.nan), n


def event_columns(x, columns: int = COLUMNS, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Positions of events reduced to one per occupied pixel column (enough to draw a rug)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size <= columns:
        return np.unique(x)
    lo = float(x.min()) if lo is None else lo
    hi = float(x.max()) if hi is None else hi
    width = max(hi - lo, 1e-300) / columns
    col = np.unique(np.floor((x - lo) / width))
    return lo + (col + 0.5) * width


# ----------------------------------------------------------------------------
# Axes helpers


def _step_formatter(v, _pos=None) -> str:
    a = abs(v)
    if a >= 1e6:
        s = f"{v / 1e6:.3g}M"
    elif a >= 1e3:
        s = f"{v / 1e3:.3g}k"
    else:
        s = f"{v:.4g}"
    return s


def auto_log(*arrays, ratio: float = 10.0) -> bool:
    """True when the positive values span more than ``ratio`` (robustly), so a log axis reads better."""
    vals = [np.asarray(a, dtype=np.float64).ravel() for a in arrays if a is not None and np.size(a)]
    if not vals:
        return False
    v = np.concatenate(vals)
    v = v[np.isfinite(v)]
    if v.size == 0 or np.any(v <= 0):
        return False
    # the top is the maximum, not a percentile: one explosion is reason enough for a log axis
    lo = np.percentile(v, 1) if v.size > 100 else v.min()
    return bool(v.max() / max(lo, 1e-300) > ratio)


def _plain_number(x, _pos=None) -> str:
    if x == 0:
        return "0"
    a = abs(x)
    if 1e-3 <= a < 1e4:
        return f"{x:.6g}"
    m, e = f"{x:.1e}".split("e")
    m = m.rstrip("0").rstrip(".")
    return f"{m}e{int(e)}"


def _log_axis(ax, which: str = "y") -> None:
    """Readable log ticks: plain numbers (0.2, 0.5, 1) instead of 10^x; 1-2-5 steps across few decades."""
    lo, hi = ax.get_ylim() if which == "y" else ax.get_xlim()
    axis = ax.yaxis if which == "y" else ax.xaxis
    lo, hi = min(lo, hi), max(lo, hi)
    if not (lo > 0 and np.isfinite(hi)):
        return
    decades = math.log10(hi / lo)
    if decades < 2.5:
        k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        for steps in ((1, 2, 5), (1, 2, 3, 5), tuple(range(1, 10))):  # the coarsest that labels >= 4 ticks
            ticks = [m * 10.0**k for k in range(k0, k1 + 1) for m in steps]
            ticks = [t for t in ticks if lo <= t <= hi]
            if len(ticks) >= 4:
                break
        if len(ticks) >= 2:
            axis.set_major_locator(ticker.FixedLocator(ticks))
        axis.set_minor_locator(ticker.LogLocator(base=10, subs=np.arange(2, 10), numticks=12))
    else:
        axis.set_major_locator(ticker.LogLocator(base=10, numticks=8))
    axis.set_major_formatter(ticker.FuncFormatter(_plain_number))
    axis.set_minor_formatter(ticker.NullFormatter())


def _legend(ax, **kw):
    """Legend outside the axes on the right (constrained layout makes room for it)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kw)


def _legend_above(ax, **kw):
    """Legend in one row above the axes: keeps the full width for the curve (fixed-margin step plots)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.01), borderaxespad=0.0, ncol=len(handles),
                  handlelength=1.8, columnspacing=1.6, **kw)


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color=MUTED, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


# ----------------------------------------------------------------------------
# Step series (loss, gradient norm, clip rate; one run or several)


@dataclass(frozen=True, eq=False)
class Series:
    """One curve over training steps.

    style: ``envelope`` (min-max band of each pixel column plus its mean; for raw
    per-step values), ``line``, ``dashed`` (e.g. a clip threshold), ``points``
    (sparse values such as held-out evaluations), ``marks`` (open circles around
    notable points, e.g. detected spikes), ``steps`` (piecewise constant over
    ``x`` as bucket edges, len(x) == len(y) + 1; for rates).
    """

    label: str
    x: np.ndarray
    y: np.ndarray
    color: str | None = None
    style: str = "envelope"


@dataclass(frozen=True, eq=False)
class Events:
    """Steps where something happened (clipped, non-finite), drawn as a rug at the top or bottom."""

    label: str
    x: np.ndarray
    color: str = EVENT_COLOR
    where: str = "top"  # or "bottom"
    marker: str = "|"


@dataclass(frozen=True)
class VLine:
    """A vertical marker across the plot at a step (a resumed segment, the end of warm-up)."""

    x: float
    label: str
    color: str = MUTED


@_styled
def step_plot(
    series: Sequence[Series],
    *,
    ylabel: str,
    title: str = "",
    log: bool | None = None,
    events: Sequence[Events] = (),
    vlines: Sequence[VLine] = (),
    ylim: tuple[float | None, float | None] | None = None,
    yformat: str | None = None,
    columns: int = COLUMNS,
    height: float = 3.0,
    alt: str = "",
    empty: str = "nothing logged",
) -> Image:
    """Curves over training steps, each reduced to pixel columns; events as rugs, resumes as vertical lines."""
    fig = _figure(height, constrained=False)
    fig.subplots_adjust(**MARGINS)
    ax = fig.add_subplot()
    drawn = [s for s in series if np.size(s.y) and np.isfinite(np.asarray(s.y, dtype=float)).any()]
    if not drawn:
        _note(ax, empty)
        return _export(fig, alt or empty)
    envs = []
    for i, s in enumerate(drawn):
        color = s.color or RUN_COLORS[i % len(RUN_COLORS)]
        if s.style == "steps":
            y = np.asarray(s.y, dtype=float)
            ax.stairs(y, np.asarray(s.x, dtype=float), color=color, label=plain(s.label), fill=True, alpha=0.25)
            ax.stairs(y, np.asarray(s.x, dtype=float), color=color, linewidth=1.0)
            envs.append(y)
            continue
        env = envelope(s.x, s.y, columns)
        envs.append(env.hi)
        envs.append(env.lo)
        if s.style == "envelope":
            if env.per_column > 1.0:
                ax.fill_between(env.x, env.lo, env.hi, color=color, alpha=0.22, linewidth=0, label=None)
                # the band's edges too: a spike one column wide is a sliver of fill, but a visible line
                ax.plot(env.x, env.hi, color=color, linewidth=0.5, alpha=0.55)
                ax.plot(env.x, env.lo, color=color, linewidth=0.5, alpha=0.55)
            ax.plot(env.x, env.mean, color=color, linewidth=1.0, label=plain(s.label))
        elif s.style == "dashed":
            ax.plot(env.x, env.mean, color=color, linewidth=1.0, linestyle="--", label=plain(s.label))
        elif s.style == "points":
            ax.plot(env.x, env.mean, color=color, linestyle="none", marker="o", markersize=3.5, label=plain(s.label))
        elif s.style == "marks":
            ax.plot(env.x, env.mean, linestyle="none", marker="o", markersize=7, markerfacecolor="none",
                    markeredgecolor=color, markeredgewidth=1.3, label=plain(s.label), zorder=5)
        else:
            ax.plot(env.x, env.mean, color=color, label=plain(s.label))
    if log is None:
        log = auto_log(*envs)
    if log:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    if log:
        _log_axis(ax)
    xlo, xhi = ax.get_xlim()
    for ev in events:
        xs = event_columns(ev.x, columns, xlo, xhi)
        if xs.size == 0:
            continue
        y = 0.985 if ev.where == "top" else 0.015
        tr = blended_transform_factory(ax.transData, ax.transAxes)
        ax.plot(xs, np.full(xs.size, y), linestyle="none", marker=ev.marker, markersize=7 if ev.marker == "|" else 5,
                color=ev.color, transform=tr, label=plain(f"{ev.label} ({np.size(ev.x):,})"), clip_on=False)
    for i, v in enumerate(vlines):
        ax.axvline(v.x, color=v.color, linestyle=":", linewidth=1.0, label=plain(v.label) if i == 0 else None)
    ax.set_xlim(xlo, xhi)
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(_step_formatter))
    if yformat == "percent":
        ax.yaxis.set_major_formatter(ticker.PercentFormatter(xmax=100, decimals=0 if ax.get_ylim()[1] >= 5 else None))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, pad=22)
    _legend_above(ax)
    return _export(fig, alt or title or ylabel)


# ----------------------------------------------------------------------------
# Noise-level axis


@dataclass(frozen=True, eq=False)
class NoiseAxis:
    """How to draw a noise-level axis: timesteps (or sigma) with log-SNR on the opposite side."""

    label: str  # e.g. "timestep t (more noise →)"
    scale: str  # "linear" or "log"
    lo: float
    hi: float
    grid: np.ndarray  # sorted positions where log-SNR is known
    log_snr: np.ndarray  # log-SNR at `grid` (may hold +-inf at the ends)

    def _spaced(self, pos: np.ndarray, min_gap: float = 0.06) -> np.ndarray:
        """Which of ``pos`` to keep so that labels sit at least ``min_gap`` of the axis apart (log-SNR
        changes fastest near t = 0, where round values crowd)."""
        f = (np.log(pos) - math.log(self.lo)) / (math.log(self.hi) - math.log(self.lo)) if self.scale == "log" \
            else (pos - self.lo) / (self.hi - self.lo)
        keep = np.zeros(pos.size, bool)
        last = -np.inf
        for i in np.argsort(-f):  # from the noisy end, where the spacing is wide, towards t = 0
            if abs(f[i] - last) >= min_gap:
                keep[i] = True
                last = f[i]
        return keep

    def snr_ticks(self, target: int = 7) -> tuple[np.ndarray, list[str]]:
        """Positions and labels for the log-SNR axis: round values if log-SNR is monotone, else sampled."""
        g, v = self.grid, self.log_snr
        fin = np.isfinite(v)
        if fin.sum() < 2:
            return np.array([]), []
        gf, vf = g[fin], v[fin]
        d = np.diff(vf)
        if np.all(d < 0) or np.all(d > 0):
            vals = ticker.MaxNLocator(nbins=target, steps=[1, 2, 2.5, 5, 10]).tick_values(vf.min(), vf.max())
            vals = vals[(vals >= vf.min()) & (vals <= vf.max())]
            inc = d[0] > 0
            pos = np.interp(vals, vf if inc else vf[::-1], gf if inc else gf[::-1])
            if self.scale == "log":  # interpolate in log position for a log axis
                pos = np.exp(np.interp(vals, vf if inc else vf[::-1], np.log(gf) if inc else np.log(gf)[::-1]))
            keep = self._spaced(pos)
            return pos[keep], [f"{x:g}" for x in vals[keep]]
        # not monotone (a defective schedule): label evenly spaced positions with their values
        pos = np.linspace(gf[0], gf[-1], target)
        return pos, [f"{x:.3g}" for x in np.interp(pos, gf, vf)]


def noise_axis(process) -> NoiseAxis:
    """The noise-level axis of a :class:`diffaudit.noise.Process`: vp/flow timesteps t, edm sigma (log)."""
    e = process.bin_edges()
    if process.kind == "vp":
        T = process.num_timesteps
        grid = np.arange(T, dtype=np.float64)
        return NoiseAxis("timestep t   (more noise →)", "linear", 0.0, float(T), grid, process.log_snr(grid))
    if process.kind == "flow":
        grid = np.linspace(0.0, 1.0, 401)
        return NoiseAxis("flow time t   (more noise →)", "linear", 0.0, 1.0, grid, process.log_snr(grid))
    grid = np.exp(np.linspace(math.log(e[0]), math.log(e[-1]), 401))
    return NoiseAxis("noise level σ   (more noise →)", "log", float(e[0]), float(e[-1]), grid, process.log_snr(grid))


def _noise_x(ax, axis: NoiseAxis, *, snr: bool = True) -> None:
    if axis.scale == "log":
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(_plain_number))
    ax.set_xlim(axis.lo, axis.hi)
    ax.set_xlabel(axis.label)
    if snr:
        pos, labels = axis.snr_ticks()
        if len(pos):
            top = ax.secondary_xaxis("top")
            top.set_xticks(pos, labels=labels)
            top.set_xlabel("log-SNR  ln(α²/σ²)", fontsize=8, color="#444444")
            top.tick_params(labelsize=7.5, colors="#444444")


def _noise_y(ax, axis: NoiseAxis) -> None:
    if axis.scale == "log":
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(_plain_number))
    ax.set_ylim(axis.lo, axis.hi)
    ax.set_ylabel(axis.label)
    pos, labels = axis.snr_ticks(target=6)
    if len(pos):
        right = ax.secondary_yaxis("right")
        right.set_yticks(pos, labels=labels)
        right.set_ylabel("log-SNR", fontsize=8, color="#444444")
        right.tick_params(labelsize=7.5, colors="#444444")


# ----------------------------------------------------------------------------
# Per-noise-level curves


@dataclass(frozen=True, eq=False)
class Curve:
    """Values per noise bin: a model's loss at some point of training, a reference L*, a probe."""

    label: str
    x: np.ndarray  # bin positions on the noise axis
    y: np.ndarray
    color: str | None = None
    style: str = "line"  # line | dashed | dotted
    lo: np.ndarray | None = None  # optional band (a standard error)
    hi: np.ndarray | None = None
    marker: str | None = "o"
    width: float = 1.4


_LINESTYLES = {"line": "-", "dashed": "--", "dotted": ":"}


@_styled
def noise_plot(
    curves: Sequence[Curve],
    axis: NoiseAxis,
    *,
    ylabel: str,
    title: str = "",
    log: bool | None = None,
    height: float = 3.4,
    alt: str = "",
    empty: str = "nothing to show",
    legend_title: str | None = None,
) -> Image:
    """Curves over noise levels (x: timestep or sigma, top axis: log-SNR); bands for standard errors."""
    fig = _figure(height)
    ax = fig.add_subplot()
    drawn = [c for c in curves if np.size(c.y) and np.isfinite(np.asarray(c.y, dtype=float)).any()]
    if not drawn:
        _note(ax, empty)
        return _export(fig, alt or empty)
    for i, c in enumerate(drawn):
        color = c.color or RUN_COLORS[i % len(RUN_COLORS)]
        x, y = np.asarray(c.x, dtype=float), np.asarray(c.y, dtype=float)
        if c.lo is not None and c.hi is not None:
            ax.fill_between(x, c.lo, c.hi, color=color, alpha=0.18, linewidth=0)
        ax.plot(x, y, color=color, linestyle=_LINESTYLES.get(c.style, "-"), marker=c.marker, markersize=3.2,
                linewidth=c.width, label=plain(c.label))
    if log is None:
        log = auto_log(*[c.y for c in drawn])
    if log:
        ax.set_yscale("log")
        _log_axis(ax)
    _noise_x(ax, axis)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    _legend(ax, title=plain(legend_title) if legend_title else None)
    return _export(fig, alt or title or ylabel)


# ----------------------------------------------------------------------------
# Step x noise-level heatmap


@_styled
def heatmap(
    step_edges: np.ndarray,
    noise_edges: np.ndarray,
    values: np.ndarray,
    axis: NoiseAxis,
    *,
    label: str,
    norm: str = "diverging",
    title: str = "",
    height: float = 3.6,
    alt: str = "",
) -> Image:
    """A (noise bin x step window) grid of values, rasterized inside the SVG.

    ``values`` has shape (len(noise_edges) - 1, len(step_edges) - 1); NaN cells
    are drawn grey. ``norm``: ``diverging`` (symmetric log around 0, red above,
    blue below: for an excess over a reference), ``log`` (positive values), or
    ``linear``.
    """
    fig = _figure(height)
    ax = fig.add_subplot()
    v = np.asarray(values, dtype=np.float64)
    fin = v[np.isfinite(v)]
    if fin.size == 0:
        _note(ax, "no per-bin statistics logged")
        return _export(fig, alt or title)
    if norm == "diverging":
        cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#e6e6e6")
        # the top at a high percentile, not the maximum: one blow-up would wash out every other cell
        # (cells beyond it saturate and the colour bar gets an arrow); the linear band around 0 no
        # wider than the small values of the map, and at most 4 decades below the top
        top = float(np.percentile(np.abs(fin), 98)) or float(np.abs(fin).max()) or 1.0
        lin = max(top * 1e-4, float(np.percentile(np.abs(fin), 10)), 1e-12)
        lin = min(lin, top / 10)
        nrm = mcolors.SymLogNorm(linthresh=lin, linscale=1.0, vmin=-top, vmax=top, base=10)
        extend = "both" if np.abs(fin).max() > top else "neither"
    elif norm == "log":
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#e6e6e6")
        pos = fin[fin > 0]
        lo_, hi_ = (np.percentile(pos, [0.5, 99.5]) if pos.size else (1e-3, 1.0))
        nrm = mcolors.LogNorm(vmin=max(lo_, 1e-12), vmax=max(hi_, lo_ * 10))
        extend = "neither"
    else:
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#e6e6e6")
        nrm = mcolors.Normalize(*np.percentile(fin, [0.5, 99.5]))
        extend = "neither"
    mesh = ax.pcolormesh(np.asarray(step_edges, float), np.asarray(noise_edges, float), np.ma.masked_invalid(v),
                         cmap=cmap, norm=nrm, shading="flat", rasterized=True)
    ax.grid(False)
    ax.set_xlim(step_edges[0], step_edges[-1])
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(_step_formatter))
    ax.set_xlabel("optimizer step")
    _noise_y(ax, axis)
    if axis.scale != "log":
        ax.set_ylim(noise_edges[0], noise_edges[-1])
    cb = fig.colorbar(mesh, ax=ax, pad=0.02, fraction=0.04, extend=extend)
    cb.set_label(label)
    if norm == "diverging":
        cb.set_ticks(_symlog_ticks(nrm.linthresh, nrm.vmax))
        cb.ax.yaxis.set_major_formatter(ticker.FuncFormatter(_decade_label))
        cb.ax.yaxis.set_minor_locator(ticker.NullLocator())
    if title:
        ax.set_title(title)
    return _export(fig, alt or title)


@_styled
def runs_heatmap(values: np.ndarray, names: Sequence[str], noise_edges: np.ndarray, axis: NoiseAxis, *, label: str,
                 height: float = 3.8, alt: str = "") -> Image:
    """A (noise bin x run) grid of ratios to L* on a log colour scale centred on 1 (blue below, red above), one
    column per run, rasterized inside the SVG; runs are named on the axis when there are few enough to read."""
    fig = _figure(height)
    ax = fig.add_subplot()
    v = np.asarray(values, dtype=np.float64)
    fin = v[np.isfinite(v) & (v > 0)]
    if fin.size == 0:
        _note(ax, "no run has L* units")
        return _export(fig, alt)
    top = float(np.percentile(np.abs(np.log10(fin)), 98)) or 0.1
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#e6e6e6")
    nrm = mcolors.LogNorm(vmin=10 ** -top, vmax=10 ** top)
    mesh = ax.pcolormesh(np.arange(v.shape[1] + 1, dtype=float), np.asarray(noise_edges, float),
                         np.ma.masked_where(~(np.isfinite(v) & (v > 0)), v), cmap=cmap, norm=nrm, shading="flat",
                         rasterized=True)
    ax.grid(False)
    if len(names) <= 40:
        ax.set_xticks(np.arange(len(names)) + 0.5, labels=[plain(n) for n in names], rotation=90, fontsize=7)
    else:
        ax.set_xlabel(f"{len(names)} runs, in the table's order")
        ax.set_xticks([])
    _noise_y(ax, axis)
    if axis.scale != "log":
        ax.set_ylim(noise_edges[0], noise_edges[-1])
    cb = fig.colorbar(mesh, ax=ax, pad=0.02, fraction=0.04,
                      extend="both" if np.abs(np.log10(fin)).max() > top else "neither")
    cb.set_label(label)
    return _export(fig, alt)


def _symlog_ticks(linthresh: float, top: float, per_side: int = 4) -> list[float]:
    """0 and the powers of ten between the linear band and the top, on both sides, at most ``per_side`` each."""
    k0 = math.ceil(math.log10(linthresh) - 1e-9)  # +-linthresh sit a decade's width from 0 (linscale=1)
    k1 = math.floor(math.log10(top))
    ks = list(range(k0, k1 + 1))
    while len(ks) > per_side:
        ks = ks[1::2] if len(ks) % 2 == 0 else ks[::2]
    pos = [10.0**k for k in ks]
    return [-v for v in reversed(pos)] + [0.0] + pos


def _decade_label(x, _pos=None) -> str:
    if x == 0:
        return "0"
    k = math.log10(abs(x))
    if abs(k - round(k)) < 1e-9:
        return ("−" if x < 0 else "") + f"1e{int(round(k))}"
    return f"{x:.2g}"


# ----------------------------------------------------------------------------
# Schedule


@_styled
def schedule_plot(axis: NoiseAxis, alpha_bar: np.ndarray, *, log_snr: np.ndarray | None = None,
                  bin_edges: np.ndarray | None = None, title: str = "", alt: str = "",
                  labels: Sequence[str] = ()) -> Image:
    """ᾱ (signal fraction) and log-SNR along the noise axis; bin edges as ticks.

    ``alpha_bar`` and ``log_snr`` (default: the axis's own) are one array per
    schedule (shape (n,) or (k, n) over ``axis.grid``), with ``labels`` naming
    them when several schedules are overlaid.
    """
    fig = _figure(2.9)
    a1, a2 = fig.subplots(1, 2)
    ab = np.atleast_2d(np.asarray(alpha_bar, dtype=np.float64))
    snr = np.atleast_2d(axis.log_snr if log_snr is None else np.asarray(log_snr, dtype=np.float64))
    for i in range(ab.shape[0]):
        color = RUN_COLORS[i % len(RUN_COLORS)]
        lab = plain(labels[i]) if i < len(labels) else None
        a1.plot(axis.grid, ab[i], color=color, label=lab)
        a2.plot(axis.grid, snr[min(i, snr.shape[0] - 1)], color=color, label=lab)
    for a in (a1, a2):
        if axis.scale == "log":
            a.set_xscale("log")
            a.xaxis.set_major_formatter(ticker.FuncFormatter(_plain_number))
        a.set_xlim(axis.lo, axis.hi)
        a.set_xlabel(axis.label)
        if bin_edges is not None:
            tr = blended_transform_factory(a.transData, a.transAxes)
            a.plot(bin_edges, np.zeros(len(bin_edges)), linestyle="none", marker="|", markersize=5, color=MUTED,
                   transform=tr, clip_on=False)
    a1.set_ylabel("ᾱ  (signal variance fraction)" if axis.scale == "linear" else "α² / (α² + σ²)")
    a1.set_ylim(-0.02, 1.02)
    a1.set_title("signal level")
    a2.set_ylabel("log-SNR  ln(α²/σ²)")
    a2.set_title("log signal-to-noise ratio")
    a2.axhline(0.0, color=MUTED, linewidth=0.8)
    if labels:
        a2.legend(loc="upper right")
    if title:
        fig.suptitle(title)
    return _export(fig, alt or title or "noise schedule")
