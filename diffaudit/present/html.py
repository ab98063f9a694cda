"""The two pages: a run's report and the gate's verdict, each one self-contained HTML file (jinja2 + matplotlib).

Rendering is the last step of the one-way flow (files -> frames -> dataclasses ->
HTML): it reads a loaded :class:`~diffaudit.load.Run` and its analysis, builds
small view dataclasses (:class:`ReportPage` and friends: formatted text and
:class:`~diffaudit.present.plots.Image` objects), and hands them to the templates, which
hold all of the HTML. Python never builds markup: the only markup it passes in
is matplotlib's SVG, which contains no text from the logs (glyphs are paths).

The page must stay safe and small whatever the run holds:

* everything from a log (config strings, run names, scalar names, problems,
  finding evidence) reaches the page through jinja2 autoescaping, quoted
  attributes only; there is no JavaScript;
* nothing is fetched when the page is opened: the CSS is inlined, figures are
  inline SVG (PNG inside the SVG for dense heatmaps);
* per-step series are reduced to pixel columns (:func:`diffaudit.present.plots.envelope`)
  and the heatmap is drawn from the analysis's coarsened ``bin_series`` (at
  most a few hundred time rows), rasterized: a 1,000,000-step run gives a page
  of under 1 MB; the size is set by the figures, not by the run length.

Which numbers come from where: everything the analysis concluded (phases,
per-bin table, L*, excess, trends, spikes, clip rates, schedule facts, probe
summary, findings, verdict) is read from the :class:`~diffaudit.analysis.Analysis`,
never recomputed; the raw per-step series, probe rows and run.json come from
the :class:`~diffaudit.load.Run`, because drawing them needs every point.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import functools
import importlib.resources
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import jinja2
import matplotlib
import numpy as np
import polars as pl
from matplotlib import colors as mcolors

from diffaudit import __version__
from diffaudit import words
from diffaudit.analysis import BIN_COLUMNS
from diffaudit.gate import Verdict, block_means
from diffaudit.present import cells
from diffaudit.present import plots
from diffaudit.present.plots import Image

RATE_BUCKETS = 200  # step buckets of the clip-rate plot
PROBE_LINES = 6  # probe steps drawn in the per-bin gradient plot
SEVERITY_ORDER = ("fail", "warn", "info")
MISSING = "—"  # how a missing or undefined number is shown, everywhere on the page


# ----------------------------------------------------------------------------
# Templates


def _template_dir() -> Path | None:
    """The source tree's templates/ (editable installs and running from a checkout)."""
    d = Path(__file__).resolve().parents[2] / "templates"
    return d if (d / "base.html.j2").is_file() else None


def _load_template(name: str) -> str:
    # Installed (wheel or editable): the top-level templates/ folder ships as the package
    # diffaudit.templates (pyproject's package-dir). Run from a source checkout without an
    # install (PYTHONPATH=., as the benchmarks do) that package does not exist: read the folder.
    try:
        res = importlib.resources.files("diffaudit.templates").joinpath(name)
        if res.is_file():
            return res.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError, TypeError):
        pass
    d = _template_dir()
    if d is not None and (d / name).is_file():
        return (d / name).read_text(encoding="utf-8")
    raise jinja2.TemplateNotFound(name)


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The jinja2 environment of every diffaudit page (autoescaped, strict about undefined names).

    :func:`report_page` and :func:`compare_page` render with it (``report.html.j2`` and
    ``compare.html.j2``, each extending ``base.html.j2``); ``num``/``pct``/``step`` filters and the ``ui`` macros
    in base.html.j2 are available to any template.
    """
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: (_load_template(name), None, lambda: True)),  # never reloaded
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = fmt_num
    env.filters["pct"] = fmt_pct
    env.filters["step"] = fmt_step
    env.globals["severity_colors"] = plots.SEVERITY_COLORS
    env.globals["severity_order"] = SEVERITY_ORDER
    env.globals["MISSING"] = MISSING
    return env


def render_page(template: str, **context) -> str:
    """Render a template of the environment with ``version`` and ``generated`` filled in."""
    context.setdefault("version", __version__)
    context.setdefault("script", None)  # a page's own static script (templates/*.js); none on most pages
    context.setdefault("script_hash", None)
    context.setdefault("generated", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    return environment().get_template(template).render(**context)


# ----------------------------------------------------------------------------
# Numbers: the shared vocabulary (diffaudit.words), with the page's own mark for a missing value


def fmt_num(v, digits: int = 4) -> str:
    """A number for people: ints with separators, floats to ``digits`` significant digits, missing as a dash."""
    return words.num(v, digits, missing=MISSING)


def fmt_pct(v, digits: int = 3) -> str:
    """A fraction as a percentage."""
    return words.pct(v, digits, missing=MISSING)


def fmt_step(v) -> str:
    return MISSING if words.is_missing(v) else f"{int(v):,}"


def fmt_value(v, depth: int = 0) -> str:
    """Any evidence or config value as one line of text (lists and dicts shortened)."""
    if isinstance(v, (pl.Series, np.ndarray)):
        v = v.tolist()
    if isinstance(v, dict):
        if depth > 1:
            return json.dumps(v, default=str)[:200]
        items = list(v.items())
        more = f", … (+{len(items) - 12})" if len(items) > 12 else ""
        return ", ".join(f"{k}: {fmt_value(x, depth + 1)}" for k, x in items[:12]) + more
    if isinstance(v, (list, tuple)):
        items = [fmt_value(x, depth + 1) for x in v[:12]]
        more = f", … (+{len(v) - 12})" if len(v) > 12 else ""
        return "[" + ", ".join(items) + more + "]"
    if isinstance(v, str):
        return v
    return fmt_num(v)


# ----------------------------------------------------------------------------
# View dataclasses: what the templates read


@dataclass(frozen=True)
class Item:
    """A labelled value (a definition-list row)."""

    label: str
    value: str
    cls: str = ""  # a CSS class for emphasis: "fail", "warn", "ok", "muted"


@dataclass(frozen=True)
class Cell:
    text: str
    cls: str = ""
    note: str = ""  # secondary text shown smaller after the value (an interval)
    href: str = ""  # a relative link (a run's report, written by the same command)


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[Cell]]
    numeric: list[bool]  # right-align these columns
    titles: list[str] = field(default_factory=list)  # a tooltip per column header ("" for none)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FigureView:
    """A figure and the words under it."""

    id: str
    title: str
    image: Image
    caption: str


@dataclass(frozen=True)
class FindingView:
    id: str
    severity: str  # fail | warn | info
    title: str
    message: str
    recommendation: str
    evidence: list[Item]
    bins: str  # the noise levels it concerns, in words; "" for the whole run
    provisional: bool = False  # the run is early: stated at `info`, judged again when it has converged


@dataclass(frozen=True)
class VerdictView:
    level: str  # fail | warn | info | ok
    label: str  # one or two words
    text: str  # a sentence


@dataclass(frozen=True)
class Section:
    id: str
    title: str


@dataclass(frozen=True)
class Metadata:
    run: list[Item]
    process: list[Item]
    logging: list[Item]
    versions: list[Item]
    config: list[Item]
    other: list[Item]  # run.json fields shown nowhere else
    segments: Table
    ranks: str
    extra_scalars: list[str]
    problems: list[str]


@dataclass(frozen=True)
class ReportPage:
    title: str
    run_name: str
    run_path: str
    verdict: VerdictView
    headline: list[Item]
    finding_counts: dict[str, int]
    findings: list[FindingView]
    figures: dict[str, FigureView]
    bin_table: Table
    trend_note: str
    trend_alpha: str  # the level a q-value is shown bold below
    schedule: list[Item]
    probe_note: str
    metadata: Metadata
    sections: list[Section]
    lifecycle: str = ""  # finished / failed / in progress / ended without a close, with its evidence
    lifecycle_state: str = ""
    provisional: str = ""  # why convergence-dependent findings are provisional on this reading ("" if not)
    scalar_figures: list = field(default_factory=list)  # the user's own scalars, one small plot each


SECTIONS = (
    Section("summary", "Summary"),
    Section("findings", "Findings"),
    Section("per-bin-loss", "Loss per noise level vs L*"),
    Section("lstar-units", "Loss in units of L*"),
    Section("excess-heatmap", "Excess over L*, step × noise level"),
    Section("loss-curve", "Loss over training"),
    Section("grad-norm", "Gradient norm and clipping"),
    Section("clip-rate", "Clip rate over training"),
    Section("scalars", "Your scalars"),
    Section("trend-table", "Per-bin trends"),
    Section("probe-gradients", "Per-bin gradient norms (probe)"),
    Section("schedule", "Noise schedule"),
    Section("metadata", "Run metadata"),
)


# ----------------------------------------------------------------------------
# Entry points


def report_page(run, analysis, *, generated: str | None = None) -> str:
    """Return the report of one run (a :class:`~diffaudit.analysis.Analysis` of it) as a self-contained HTML document."""
    page = build_report(run, analysis)
    ctx = {"page": page, "sections": page.sections}
    if generated is not None:
        ctx["generated"] = generated
    return render_page("report.html.j2", **ctx)


def build_report(run, analysis) -> ReportPage:
    """The report's view model: every number formatted, every figure drawn."""
    a = analysis
    axis = plots.noise_axis(run.process)
    findings = finding_views(a.findings, run.process)
    counts = {s: sum(1 for f in findings if f.severity == s) for s in SEVERITY_ORDER}
    figures = {
        "per-bin-loss": per_bin_loss_figure(run, a, axis),
        "lstar-units": lstar_units_figure(run, a, axis),
        "excess-heatmap": excess_heatmap_figure(run, a, axis),
        "loss-curve": loss_figure(run, a),
        "grad-norm": grad_norm_figure(run, a),
        "clip-rate": clip_rate_figure(run, a),
        "probe-gradients": probe_figure(run, a, axis),
        "schedule": schedule_figure(run, axis),
    }
    return ReportPage(
        title=f"diffaudit report: {run.name}",
        run_name=run.name,
        run_path=str(run.path),
        verdict=verdict_view(a.verdict, counts, provisional=bool(getattr(a, "early", None))),
        headline=headline(a),
        finding_counts=counts,
        findings=findings,
        figures=figures,
        bin_table=bin_table(run, a),
        trend_note=trend_note(a),
        trend_alpha=fmt_num(_trend_levels(a)[0]),
        schedule=schedule_items(run, a),
        probe_note=probe_note(a),
        metadata=metadata_view(run, a),
        sections=[x for x in SECTIONS if (x.id != "scalars" or run.extra_scalars)
                  and (x.id != "lstar-units" or figures["lstar-units"] is not None)],
        scalar_figures=scalar_figures(run),
        lifecycle=_sentence(a.lifecycle.words) if getattr(a, "lifecycle", None) is not None else "",
        lifecycle_state=a.lifecycle.state if getattr(a, "lifecycle", None) is not None else "",
        provisional=_sentence(a.early) if getattr(a, "early", None) else "",
    )


def _trend_levels(a) -> tuple[float, float]:
    """(alpha, stagnation margin) the analysis tested its trends at."""
    th = a.settings["thresholds"]
    return th["alpha"], th["stagnation_margin"]


def trend_note(a) -> str:
    t = a.phases.trend
    alpha, margin = _trend_levels(a)
    where = f" (the trend stretch, {_span_text(t)})" if t else ""
    flat = f", flat: the change is shown to lie within ±{fmt_pct(margin)}" if margin is not None else ""
    return (f"Change: relative change of the bin's loss over the last part of training{where}, Theil–Sen on batch "
            f"means, with its 95% interval. q: Benjamini–Yekutieli adjusted p-values over the bins; the trend is "
            f"increasing or decreasing when q < {fmt_num(alpha)}{flat}.")


# ----------------------------------------------------------------------------
# Verdict, headline, findings


_VERDICT_WORDS = {
    "fail": ("Failing", "Training is broken: at least one finding is a failure."),
    "warn": ("Needs attention", "Training works, but something costs quality."),
    "ok": ("Healthy", "No warning or failure found."),
}
_LEVEL_ALIASES = {
    "healthy": "ok", "ok": "ok", "pass": "ok", "info": "ok",
    "warnings": "warn", "warning": "warn", "warn": "warn",
    "failing": "fail", "fail": "fail", "failed": "fail",
}


def verdict_view(verdict: str, counts: dict[str, int], *, provisional: bool = False) -> VerdictView:
    """The banner at the top, from the analysis's verdict ("healthy", "warnings", "failing")."""
    worst = next((s for s in ("fail", "warn") if counts.get(s)), "ok")
    level = _LEVEL_ALIASES.get(str(verdict).lower(), worst)
    label, text = _VERDICT_WORDS[level]
    if provisional:
        label += " so far"
        text += " The run is early: findings that need a converged loss are provisional."
    if level == "ok" and counts.get("info"):
        text += f" {counts['info']} note{'s' if counts['info'] > 1 else ''} for information below."
    return VerdictView(level, label, text)


def finding_views(findings: Iterable, process) -> list[FindingView]:
    """Findings as the page shows them: most severe first, evidence formatted, bins in noise-level words."""
    out = [
        FindingView(
            id=f.id,
            severity=f.severity if f.severity in SEVERITY_ORDER else "info",
            title=f.title or f.id,
            message=_sentence(f.message),
            recommendation=_sentence(f.recommendation),
            evidence=[_evidence_item(k, v) for k, v in (f.evidence or {}).items()],
            bins=describe_bins(f.bins, process),
            provisional=bool(getattr(f, "provisional", False)),
        )
        for f in findings
    ]
    rank = {s: i for i, s in enumerate(SEVERITY_ORDER)}
    return sorted(out, key=lambda v: rank[v.severity])  # stable: the analysis's order within a severity


def _sentence(s) -> str:
    s = str(s or "").strip()
    return s[:1].upper() + s[1:]


def _evidence_item(key, value) -> Item:
    text = fmt_value(value)
    return Item(str(key), text, "wide" if len(text) > 48 else "")


def describe_bins(bins, process) -> str:
    """The noise levels a finding concerns ('' for the whole run)."""
    return words.describe_bins(process.kind, process.bin_edges(), bins) if bins else ""


def headline(a) -> list[Item]:
    """The summary numbers under the verdict."""
    r, loss, clip, nf = a.run, a.loss, a.clip, a.nonfinite
    items = [
        Item("steps", f"{fmt_step(r.first_step)} – {fmt_step(r.last_step)}" if r.first_step is not None else MISSING),
        Item("process", f"{r.process} / {r.prediction}, {r.num_bins} bins"),
        Item("loss, first → last 10%", f"{fmt_num(loss.first_level)} → {fmt_num(loss.late_level)}"),
    ]
    if loss.excess_share is not None:
        items.append(Item("late loss above L*", fmt_pct(loss.excess_share)))
    if clip.available:
        items.append(Item("clip rate, late", fmt_pct(clip.late_rate), "warn" if (clip.late_rate or 0) >= 0.5 else ""))
    items.append(Item("non-finite losses", fmt_num(nf.loss_samples), "fail" if nf.loss_samples else ""))
    if a.spikes.n_events:
        items.append(Item("loss spikes", fmt_num(a.spikes.n_events)))
    items.append(Item("segments / ranks", f"{r.segments} / {r.ranks}"))
    if r.problems:
        items.append(Item("problems", fmt_num(len(r.problems)), "warn"))
    return items


# ----------------------------------------------------------------------------
# Figures


def _bin_col(a, name: str) -> np.ndarray | None:
    """A per-bin column as float64 (NaN for null), or None when absent or entirely null."""
    if name not in a.bins.columns or a.bins[name].null_count() == a.bins.height:
        return None
    return a.bins[name].cast(pl.Float64).fill_null(np.nan).to_numpy()


def _span_text(span) -> str:
    if span is None:
        return ""
    return f"step {fmt_step(span[0])}" if span[0] == span[1] else f"steps {fmt_step(span[0])}–{fmt_step(span[1])}"


def per_bin_loss_figure(run, a, axis) -> FigureView:
    x = run.process.bin_centers().astype(np.float64)
    curves = []
    for col, phase, color in zip(("early_mean", "mid_mean", "late_mean"), ("early", "mid", "late"), plots.PHASE_COLORS):
        y = _bin_col(a, col)
        if y is not None:
            name = "middle" if phase == "mid" else phase
            curves.append(plots.Curve(f"train, {name} ({_span_text(getattr(a.phases, phase))})", x, y, color))
    ev = _bin_col(a, "eval_late_mean")
    if ev is not None:
        curves.append(plots.Curve(f"held-out, late (from step {fmt_step(a.eval.late_from_step)})", x, ev,
                                  plots.RUN_COLORS[1], style="dashed", marker="s"))
    lg, le = _bin_col(a, "lstar_gauss"), _bin_col(a, "lstar_emp")
    if lg is not None:
        curves.append(plots.Curve("L* Gaussian bound", x, lg, plots.REFERENCE_COLOR, style="dashed", marker=None))
    if le is not None:
        se = np.nan_to_num(_bin_col(a, "lstar_emp_se") if _bin_col(a, "lstar_emp_se") is not None else np.zeros_like(le))
        curves.append(plots.Curve("L* empirical (memorization floor)", x, le, "#7a7a7a", style="dotted", marker=None,
                                  lo=le - 2 * se, hi=le + 2 * se))
    img = plots.noise_plot(curves, axis, ylabel="mean loss per element", alt="loss per noise bin against L*",
                           empty="no per-bin statistics logged")
    cap = ["Mean training loss per noise bin in the early, middle and late phases of training."]
    if lg is not None:
        cap.append("Dashed black: the Gaussian L*, the loss of the best linear denoiser for data with the run's "
                   "covariance; it bounds the irreducible loss from above, so a bin above it is worse than linear there.")
    else:
        cap.append("No Gaussian L*: run.json has no data_var or data_spectrum.")
    if le is not None:
        cap.append("Dotted grey (±2 standard errors): the empirical L* of the training set, the lowest loss any "
                   "model can reach; a model that generalizes stays above it at low noise.")
    return FigureView("per-bin-loss", "Loss per noise level against L*", img, " ".join(cap))


def lstar_units_figure(run, a, axis) -> FigureView | None:
    """Per-bin loss divided by the bin's Gaussian L*: the one scale on which every prediction target reads alike."""
    lg = _bin_col(a, "lstar_gauss")
    if lg is None or not np.isfinite(lg).any():
        return None
    x = run.process.bin_centers().astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = np.isfinite(lg) & (lg > 0)
        curves = []
        for col, phase, color in zip(("early_mean", "mid_mean", "late_mean"), ("early", "mid", "late"),
                                     plots.PHASE_COLORS):
            y = _bin_col(a, col)
            if y is not None:
                curves.append(plots.Curve(f"train, {'middle' if phase == 'mid' else phase}", x,
                                          np.where(ok, y / lg, np.nan), color))
        ev = _bin_col(a, "eval_late_mean")
        if ev is not None:
            curves.append(plots.Curve("held-out, late", x, np.where(ok, ev / lg, np.nan), plots.RUN_COLORS[1],
                                      style="dashed", marker="s"))
    curves.append(plots.Curve("1 = the best linear denoiser", x, np.ones_like(x), plots.REFERENCE_COLOR,
                              style="dashed", marker=None))
    img = plots.noise_plot(curves, axis, ylabel="loss / Gaussian L*", alt="loss per noise bin in units of L*")
    cap = (f"The same losses divided by each bin's Gaussian L* for this run's target ({run.process.prediction}). "
           "Every target's error is the implied x0's error times a known factor at each noise level, and so is L*, "
           "so this ratio reads the same whether the network predicts epsilon, x0, v or the flow velocity: "
           "reports of runs with different targets can be set side by side on this plot "
           "(diffaudit compare --unit lstar compares them).")
    return FigureView("lstar-units", "Loss in units of L*", img, cap)


def heatmap_grid(series: pl.DataFrame, value: str, nb: int) -> tuple[np.ndarray, np.ndarray]:
    """(step edges, values of shape (nb, rows)) from the analysis's coarsened window x bin series."""
    rows = series.select("step_lo", "step_hi").unique().sort("step_lo")
    row_of = {int(v): i for i, v in enumerate(rows["step_lo"].to_list())}
    grid = np.full((nb, rows.height), np.nan)
    b = series["bin"].to_numpy().astype(np.int64)
    c = np.array([row_of[int(v)] for v in series["step_lo"].to_list()], dtype=np.int64)
    v = series[value].cast(pl.Float64).fill_null(np.nan).to_numpy()
    ok = (b >= 0) & (b < nb) & (series["count"].to_numpy() > 0)
    grid[b[ok], c[ok]] = v[ok]
    edges = np.r_[rows["step_lo"].to_numpy(), rows["step_hi"].to_numpy()[-1] + 1].astype(np.float64)
    return edges, grid


def excess_heatmap_figure(run, a, axis) -> FigureView:
    nb = run.process.num_bins
    edges_y = run.process.bin_edges().astype(np.float64)
    s = a.bin_series
    if s.height == 0:
        img = plots.heatmap(np.array([0.0, 1.0]), edges_y, np.full((nb, 1), np.nan), axis, label="", alt="no data")
        return FigureView("excess-heatmap", "Excess loss over L*", img, "No per-bin statistics were logged.")
    rows = s["step_lo"].n_unique()
    merged = (f" ({fmt_num(a.run.windows)} bin windows merged into {rows} columns)"
              if a.run.windows > rows else "")
    lg, le = _bin_col(a, "lstar_gauss"), _bin_col(a, "lstar_emp")
    if lg is None and le is None:
        edges_x, grid = heatmap_grid(s, "mean", nb)
        img = plots.heatmap(edges_x, edges_y, grid, axis, label="mean loss", norm="log", alt="mean loss per bin and step")
        cap = ("Mean training loss per noise bin and stretch of training" + merged + ". There is no L* for this run "
               "(run.json has no data_var or data_spectrum), so this shows the loss itself.")
        return FigureView("excess-heatmap", "Loss, step × noise level", img, cap)
    if lg is not None:
        edges_x, excess = heatmap_grid(s, "excess", nb)
        what = "Gaussian L*"
    else:
        edges_x, grid = heatmap_grid(s, "mean", nb)
        excess = grid - le[:, None]
        what = "empirical L*"
    img = plots.heatmap(edges_x, edges_y, excess, axis, label=f"loss − {what}", norm="diverging",
                        alt=f"excess loss over the {what} per bin and step")
    cap = (f"Mean training loss minus the {what}, per noise bin and stretch of training{merged}. Red: above L* "
           "(what training can still remove, or a defect if it stays); blue: below it (possible under the Gaussian "
           "bound for data that is not Gaussian). Symmetric log colour scale; grey: no samples.")
    return FigureView("excess-heatmap", "Excess loss over L*, step × noise level", img, cap)


def _segment_lines(run) -> list[plots.VLine]:
    seg = run.segments
    if seg is None or seg.height < 2:
        return []
    first = seg.group_by("rank").agg(pl.col("segment").min().alias("_first"))
    later = seg.join(first, on="rank").filter(pl.col("segment") > pl.col("_first"))
    starts = sorted({int(v) for v in later["start"].drop_nulls().to_list()})
    return [plots.VLine(v, "resumed (new segment)") for v in starts]


def _col(df: pl.DataFrame, name: str) -> np.ndarray:
    if name not in df.columns:
        return np.array([])
    return df[name].cast(pl.Float64).fill_null(np.nan).to_numpy()


def loss_figure(run, a) -> FigureView:
    s = run.steps
    steps, loss = _col(s, "step"), _col(s, "loss")
    series = [plots.Series("train loss (batch mean)", steps, loss, plots.RUN_COLORS[0])]
    eb = run.eval_bins
    if eb.height:
        ev = (eb.filter(pl.col("count") > 0).group_by("step_hi")
              .agg(((pl.col("mean") * pl.col("count")).sum() / pl.col("count").sum()).alias("m")).sort("step_hi"))
        series.append(plots.Series("held-out loss", ev["step_hi"].to_numpy(), ev["m"].to_numpy(), plots.RUN_COLORS[1],
                                   "points"))
    events = a.spikes.events
    if events:
        n = a.spikes.n_events
        label = (f"detected spike{'s' if n > 1 else ''} ({n})" if n <= len(events)
                 else f"detected spikes ({n}; the largest {len(events)} marked)")
        series.append(plots.Series(label,
                                   np.array([e["step"] for e in events], float), np.array([e["loss"] for e in events], float),
                                   plots.SEVERITY_COLORS["warn"], "marks"))
    marks = []
    if s.height and "nonfinite" in s.columns:
        bad = s.filter(pl.col("nonfinite") > 0)["step"].to_numpy()
        if bad.size:
            marks.append(plots.Events("steps with non-finite losses", bad, plots.EVENT_COLOR, "bottom", "x"))
    img = plots.step_plot(series, ylabel="loss", events=marks, vlines=_segment_lines(run),
                          alt="training loss over steps", empty="no steps logged")
    env = plots.envelope(steps, loss)
    cap = "Training loss of each optimizer step (the batch mean over all noise levels)"
    if env.per_column > 1:
        cap += (f", reduced to pixel columns of about {fmt_num(round(env.per_column))} steps: the band is each "
                "column's min–max, so every spike stays visible, the line its mean")
    cap += "."
    if plots.auto_log(env.hi, env.lo):
        cap += " Log scale: the loss spans more than a decade."
    if eb.height:
        cap += " Dots: held-out loss (all noise levels pooled) at each evaluation."
    if events:
        cap += (f" Open circles: spikes the analysis detected (robust z > {fmt_num(a.spikes.threshold, 3)} against a "
                "rolling median: at least 8, more where the run's own step noise is heavy-tailed).")
    return FigureView("loss-curve", "Loss over training", img, cap)


def grad_norm_figure(run, a) -> FigureView:
    s = run.steps
    steps, gn = _col(s, "step"), _col(s, "grad_norm")
    series = [plots.Series("pre-clip gradient norm", steps, gn, plots.RUN_COLORS[2])]
    thr = _col(s, "clip_threshold")
    if thr.size and np.isfinite(thr).any():
        series.append(plots.Series("clip threshold", steps, thr, plots.REFERENCE_COLOR, "dashed"))
    events = []
    if "clipped" in s.columns:
        clipped = s.filter(pl.col("clipped").fill_null(False))["step"].to_numpy()
        if clipped.size:
            events.append(plots.Events("clipped steps", clipped, plots.EVENT_COLOR, "top"))
    img = plots.step_plot(series, ylabel="gradient norm", events=events, vlines=_segment_lines(run),
                          alt="pre-clip gradient norm over steps", empty="no gradient norm logged")
    if not np.isfinite(gn).any():
        cap = "The run logged no gradient norm (pass grad_norm= to RunLogger.log)."
    else:
        cap = ("Total gradient norm before clipping (what clip_grad_norm_ returns): min–max band and mean per pixel "
               "column. Dashed: the clip threshold; red ticks along the top: columns with clipped steps.")
    return FigureView("grad-norm", "Gradient norm and clip events", img, cap)


MAX_SCALAR_FIGURES = 12  # the user's scalars drawn (the rest are named); a report must stay small


def scalar_figures(run) -> list[FigureView]:
    """One small plot per extra scalar the user logged (``logger.log(..., ema_decay=...)``), in name order."""
    s = run.steps
    out = []
    for name in run.extra_scalars[:MAX_SCALAR_FIGURES]:
        y = _col(s, name)
        img = plots.step_plot([plots.Series(name, _col(s, "step"), y, plots.RUN_COLORS[0])], ylabel=name, height=2.2,
                              vlines=_segment_lines(run), alt=f"the logged scalar {name} over steps",
                              empty="never logged")
        out.append(FigureView(f"scalar-{len(out)}", name, img,
                              f"{fmt_num(int(np.isfinite(y).sum()))} logged values; min–max band and mean per pixel "
                              "column."))
    return out


def clip_rate_figure(run, a) -> FigureView:
    s = run.steps
    if not a.clip.available or s.height == 0 or "clipped" not in s.columns:
        img = plots.step_plot([], ylabel="clipped steps (%)", empty="no clip threshold logged",
                              alt="clip rate (not logged)")
        return FigureView("clip-rate", "Clip rate over training", img,
                          "No clip rate: the run logged no clip_threshold (or no gradient norm).")
    sub = s.filter(pl.col("clipped").is_not_null())
    edges, rate, _n = plots.bucket_mean(_col(sub, "step"), _col(sub, "clipped"), RATE_BUCKETS)
    top = float(np.nanmax(rate)) * 100 if np.isfinite(rate).any() else 0.0
    img = plots.step_plot([plots.Series(f"clipped share per bucket (overall {fmt_pct(a.clip.rate)})", edges, rate * 100,
                                        plots.SEVERITY_COLORS["warn"], "steps")],
                          ylabel="clipped steps", yformat="percent", log=False,
                          ylim=(0, min(100.0, max(5.0, top * 1.15))), alt="clip rate over steps")
    width = (edges[-1] - edges[0]) / max(1, edges.size - 1)
    cap = (f"Share of steps whose pre-clip gradient norm exceeded the threshold (median {fmt_num(a.clip.threshold)}), "
           f"per bucket of {fmt_num(round(width))} steps: {fmt_pct(a.clip.rate)} of all steps, "
           f"{fmt_pct(a.clip.early_rate)} early and {fmt_pct(a.clip.late_rate)} late in training.")
    return FigureView("clip-rate", "Clip rate over training", img, cap)


def probe_figure(run, a, axis) -> FigureView:
    p = run.probes
    title = "Per-bin gradient norms (probe)"
    if a.probes.n_steps == 0:
        img = plots.noise_plot([], axis, ylabel="gradient norm", empty="no gradient probes in this run",
                               alt="per-bin gradient norms (none)")
        return FigureView("probe-gradients", title, img, "No gradient probe ran in this run.")
    # ranks probe the same step on their own batches: average them, as the analysis does
    agg = (p.filter(pl.col("grad_norm").is_not_null() & pl.col("grad_norm").is_finite())
           .group_by("step", "probe_bin", "bin_lo", "bin_hi").agg(pl.col("grad_norm").cast(pl.Float64).mean())
           .sort("step", "probe_bin"))
    steps = np.unique(agg["step"].to_numpy())
    pick = steps[np.unique(np.round(np.linspace(0, steps.size - 1, min(PROBE_LINES, steps.size))).astype(int))]
    e = run.process.bin_edges().astype(np.float64)
    cmap = matplotlib.colormaps["viridis"]
    curves = []
    for i, st in enumerate(pick):
        r = agg.filter(pl.col("step") == st)
        lo = e[np.clip(r["bin_lo"].to_numpy(), 0, e.size - 1)]
        hi = e[np.clip(r["bin_hi"].to_numpy(), 0, e.size - 1)]
        x = np.sqrt(lo * hi) if axis.scale == "log" else 0.5 * (lo + hi)
        color = mcolors.to_hex(cmap(0.92 * i / max(1, pick.size - 1)))
        curves.append(plots.Curve(f"step {fmt_step(st)}", x, r["grad_norm"].to_numpy(), color))
    img = plots.noise_plot(curves, axis, ylabel="‖∇ (mean loss of the bin)‖", alt="per-bin gradient norms from the probe",
                           legend_title="probe step", log=True)
    cap = ("Norm of the gradient of each coarse bin's mean loss, from the gradient probe; "
           f"{len(pick)} of the {fmt_num(a.probes.n_steps)} probe steps, early (dark) to late (light). "
           "A bin whose gradient dwarfs the others dominates the direction of every update.")
    if a.probes.max_over_median is not None:
        cap += f" Late in training the largest bin's norm is {fmt_num(a.probes.max_over_median, 3)}× the median bin's."
    return FigureView("probe-gradients", title, img, cap)


def probe_note(a) -> str:
    every = a.probes.probe_every
    if not every:
        return "The gradient probe was off (probe_every = 0)."
    return (f"The probe ran every {fmt_num(int(every))} steps: {fmt_num(a.probes.n_steps)} probe steps in this run, "
            "each the cost of a few training steps.")


def schedule_figure(run, axis) -> FigureView:
    pr = run.process
    if pr.kind == "vp":
        ab = pr.alpha_bar.astype(np.float64)
    else:
        al, sg = pr.alpha_sigma(axis.grid)
        ab = al**2 / (al**2 + sg**2)
    img = plots.schedule_plot(axis, ab, bin_edges=pr.bin_edges(), alt="noise schedule: signal level and log-SNR")
    cap = ("Left: the share of x_t's variance that is signal (ᾱ for a discrete schedule). Right: log-SNR; it should "
           "fall steadily and end far below 0 (terminal SNR near 0: at the last step no signal is left to leak). "
           "Ticks along the x axis: edges of the noise bins.")
    return FigureView("schedule", "Noise schedule", img, cap)


def schedule_items(run, a) -> list[Item]:
    sc, pr = a.schedule, run.process
    items = [Item("process", f"{pr.kind}, {pr.prediction} prediction"), Item("noise bins", fmt_num(pr.num_bins))]
    if sc.kind == "vp":
        items += [
            Item("timesteps T", fmt_num(sc.num_timesteps)),
            Item("1 − ᾱ at t = 0", fmt_num(sc.one_minus_first)),
            Item(f"ᾱ at t = {sc.num_timesteps - 1}", fmt_num(sc.terminal_alpha_bar)),
        ]
    snr = sc.terminal_snr
    items.append(Item("terminal SNR", fmt_num(snr), "" if snr is None else ("fail" if snr > 0.1 else "warn" if snr > 1e-3 else "ok")))
    items.append(Item("log-SNR over the bins", f"{fmt_num(sc.log_snr_min, 3)} … {fmt_num(sc.log_snr_max, 3)}"))
    if sc.kind == "vp":
        items.append(Item("ᾱ decreasing", "yes" if sc.monotone else f"no: {sc.n_increases} increases, first at t = {sc.first_increase_t}",
                          "" if sc.monotone else "fail"))
        src = "betas (1 − ᾱ without cancellation)" if sc.from_betas else f"alphas_cumprod, {sc.dtype or 'dtype unknown'}"
        items.append(Item("schedule from", src))
        if sc.one_minus_rel_error is not None:
            items.append(Item("error of 1 − ᾱ at t = 0", fmt_pct(sc.one_minus_rel_error),
                              "warn" if sc.one_minus_rel_error > 1e-2 else ""))
        if sc.zero_noise_steps:
            items.append(Item("timesteps with σ = 0", fmt_num(sc.zero_noise_steps), "fail"))
    return items


# ----------------------------------------------------------------------------
# Per-bin trend table


def _col_desc(name: str) -> str:
    return BIN_COLUMNS.get(name, "")


_TREND_CLASS = {"increasing": "above", "decreasing": "good", "flat": "muted", "inconclusive": "muted"}


def bin_table(run, a) -> Table:
    """One row per noise bin: levels by phase, L*, excess, the trend over the trend stretch (from the analysis)."""
    df = a.bins
    alpha = _trend_levels(a)[0]
    if df.height == 0:
        return Table([], [], [], [], ["The run has no per-bin statistics."])
    has = {c for c in df.columns if df[c].null_count() < df.height}
    # (header, tooltip, numeric, cell function)
    spec = [
        ("bin", _col_desc("bin"), True, lambda r: Cell(fmt_num(r["bin"]))),
        (words.noise_unit(run.process.kind), "noise levels of the bin", True,
         lambda r: Cell(words.edge_span(run.process.kind, r["t_lo"], r["t_hi"]))),
        ("log\u2011SNR", _col_desc("log_snr"), True, lambda r: Cell(fmt_num(r["log_snr"], 3))),
        ("early", _col_desc("early_mean"), True, lambda r: Cell(fmt_num(r.get("early_mean")))),
        ("middle", _col_desc("mid_mean"), True, lambda r: Cell(fmt_num(r.get("mid_mean")))),
        ("late", _col_desc("late_mean"), True, lambda r: Cell(fmt_num(r.get("late_mean")))),
    ]
    if "lstar_gauss" in has:
        spec += [
            ("L*\u00a0Gauss", _col_desc("lstar_gauss"), True, lambda r: Cell(fmt_num(r["lstar_gauss"]))),
            ("excess", _col_desc("excess"), True, lambda r: Cell(fmt_num(r.get("excess")), _sign_class(r.get("excess")))),
            ("of run loss", _col_desc("excess_share"), True, lambda r: Cell(fmt_pct(r.get("excess_share")))),
        ]
    if "lstar_emp" in has:
        spec += [("L*\u00a0emp.", _col_desc("lstar_emp"), True, lambda r: Cell(fmt_num(r.get("lstar_emp"))))]
    spec += [
        ("change", _col_desc("rel_change") + " [95% interval]", True, _change_cell),
        ("q", _col_desc("q_value"), True, lambda r: Cell(fmt_num(r.get("q_value"), 2), _q_class(r.get("q_value"), alpha))),
        ("flat\u00a0q", _col_desc("tost_q"), True, lambda r: Cell(fmt_num(r.get("tost_q"), 2), _q_class(r.get("tost_q"), alpha))),
        ("trend", _col_desc("trend"), False, lambda r: Cell(str(r.get("trend") or MISSING), _TREND_CLASS.get(r.get("trend"), ""))),
    ]
    if "coverage" in has and _uneven(df["coverage"]):  # only worth a column when the sampler is not uniform
        spec.insert(3, ("coverage", _col_desc("coverage"), True, lambda r: Cell(fmt_num(r.get("coverage"), 2),
                                                                              "above" if (r.get("coverage") or 1) < 0.2 else "")))
    if "eval_gap" in has:
        spec += [("eval\u00a0gap", _col_desc("eval_gap"), True, lambda r: Cell(fmt_pct(r.get("eval_gap"))))]
    if "grad_norm_probe" in has:
        spec += [("probe\u00a0‖g‖", _col_desc("grad_norm_probe"), True, lambda r: Cell(fmt_num(r.get("grad_norm_probe"), 3)))]
    rows = [[fn(r) for _h, _t, _n, fn in spec] for r in df.iter_rows(named=True)]
    return Table([h for h, *_ in spec], rows, [n for _h, _t, n, _f in spec], [t for _h, t, *_ in spec])


def _uneven(coverage: pl.Series) -> bool:
    c = coverage.drop_nulls().drop_nans()
    return c.len() > 0 and (float(c.min()) < 0.7 or float(c.max()) > 1.4)


def _sign_class(v) -> str:
    if words.is_missing(v):
        return ""
    return "above" if v > 0 else "below"


def _q_class(q, alpha: float) -> str:
    return "sig" if not words.is_missing(q) and q < alpha else ""


def _change_cell(r) -> Cell:
    c = r.get("rel_change")
    if words.is_missing(c):
        return Cell(MISSING)
    lo, hi = r.get("rel_lo"), r.get("rel_hi")
    ci = "" if words.is_missing(lo) or words.is_missing(hi) else f"[{_signed_pct(lo)}, {_signed_pct(hi)}]"
    return Cell(_signed_pct(c), note=ci)


def _signed_pct(v) -> str:
    return words.signed_pct(v, 2, missing=MISSING)


# ----------------------------------------------------------------------------
# Metadata

_SHOWN_KEYS = {
    "run_id", "created", "host", "format", "format_version", "diffaudit_version", "torch_version",
    "python_version", "process", "prediction", "num_bins", "num_timesteps", "sigma_min", "sigma_max",
    "sigma_data", "bin_edges", "alphas_cumprod_dtype", "schedule_from_betas", "schedule_sha", "data_var",
    "data_spectrum", "data_dim", "window", "flush_every", "probe_every", "probe_bins", "world_size", "config",
}


def _flatten(d, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


def _spectrum_text(spec) -> str:
    if not spec:
        return MISSING
    a = np.asarray(spec, dtype=np.float64)
    return f"{a.size} eigenvalues, {fmt_num(float(a.max()))} … {fmt_num(float(a.min()))} (mean {fmt_num(float(a.mean()))})"


def metadata_view(run, a=None) -> Metadata:
    m = run.meta

    def items(keys) -> list[Item]:
        return [Item(label, fmt_value(m.get(k))) for k, label in keys if k in m]

    seg = run.segments
    seg_cols = [c for c in ("rank", "segment", "start", "first_step", "last_step", "steps") if c in seg.columns]
    seg_rows = [[Cell(fmt_value(v)) for v in r] for r in seg.select(seg_cols).iter_rows()] if seg.height else []
    segments = Table([c.replace("_", " ") for c in seg_cols], seg_rows, [True] * len(seg_cols), [],
                     [f"{fmt_num(run.superseded_rows)} rows of earlier segments were superseded by a resumed segment."]
                     if run.superseded_rows else [])
    process = items([("process", "process"), ("prediction", "prediction"), ("num_bins", "noise bins"),
                     ("num_timesteps", "timesteps"), ("sigma_min", "σ min"), ("sigma_max", "σ max"),
                     ("sigma_data", "σ data"), ("data_var", "data variance"), ("data_dim", "data dimension"),
                     ("alphas_cumprod_dtype", "alphas_cumprod dtype"), ("schedule_from_betas", "schedule from betas"),
                     ("schedule_sha", "schedule hash")])
    if m.get("data_spectrum"):
        process.append(Item("data spectrum", _spectrum_text(m.get("data_spectrum"))))
    return Metadata(
        run=[Item("name", run.name), Item("path", str(run.path))]
        + items([("run_id", "run id"), ("created", "created"), ("host", "host"), ("format_version", "format version")]),
        process=process,
        logging=items([("window", "steps per bin window"), ("flush_every", "flush every"),
                       ("probe_every", "probe every"), ("probe_bins", "probe bins"), ("world_size", "world size")]),
        versions=items([("diffaudit_version", "diffaudit (logger)"), ("torch_version", "torch"),
                        ("python_version", "python")]) + [Item("diffaudit (report)", __version__)],
        config=[Item(k, fmt_value(v)) for k, v in _flatten(m.get("config") or {})],
        other=[Item(k, fmt_value(v)) for k, v in _flatten({k: v for k, v in m.items() if k not in _SHOWN_KEYS})],
        segments=segments,
        ranks=", ".join(str(r) for r in run.ranks) or MISSING,
        extra_scalars=list(run.extra_scalars),
        problems=list(dict.fromkeys([str(p) for p in run.problems] + list(a.run.problems if a is not None else []))),
    )


# ----------------------------------------------------------------------------
# The compare page

CURVE_POINTS = 400  # block means per side drawn in the training-loss figure
_RESULT_CLASS = {"regression": "fail", "inconclusive": "warn", "pass": "ok"}
_STATUS_LEVEL = {"pass": "ok", "regression": "fail", "inconclusive": "warn"}
_SIDE_COLORS = {"baseline": plots.RUN_COLORS[0], "candidate": plots.RUN_COLORS[1]}


def side_curves(side: str, runs) -> plots.Series | None:
    """One side's per-step loss in CURVE_POINTS blocks over the steps its runs logged: the run's own curve,
    or the mean over seeds (blocks no run logged are left out)."""
    steps = [r.steps for r in runs if r.steps.height]
    if not steps:
        return None
    lo = min(int(s["step"].min()) for s in steps)
    hi = max(int(s["step"].max()) for s in steps)
    size = max(1, -(-(hi - lo + 1) // CURVE_POINTS))
    n = -(-(hi - lo + 1) // size)
    ys = np.array([block_means(s["step"].to_numpy(), s["loss"].cast(pl.Float64).to_numpy(), lo, size, n) for s in steps])
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # blocks no run logged: NaN, left out
        y = np.nanmean(ys, axis=0)
    x = lo + (np.arange(n) + 0.5) * size
    ok = np.isfinite(y)
    name = runs[0].name if len(runs) == 1 else f"mean of {len(runs)} runs"
    return plots.Series(f"{side}: {name}", x[ok], y[ok], color=_SIDE_COLORS[side], style="line")


def _bin_change_figure(v: Verdict, bins: list) -> FigureView:
    axis = plots.noise_axis(v.process)
    x = np.asarray(v.process.bin_centers(), dtype=np.float64)[[c.bin for c in bins]]
    y = np.array([100 * c.change for c in bins])
    lo = np.array([np.nan if c.lo is None else 100 * c.lo for c in bins])
    hi = np.array([np.nan if c.hi is None else 100 * c.hi for c in bins])
    lim = bins[0].limit
    curves = [plots.Curve("change, with its interval", x, y, lo=lo, hi=hi, color=plots.RUN_COLORS[1])]
    if lim is not None and bins[0].relative:
        curves.append(plots.Curve(f"tolerance +{fmt_pct(lim)}", x, np.full(x.size, 100 * lim), color="#777777",
                                  style="dashed", marker=None))
    reg = np.array([c.status == "regression" for c in bins])
    if reg.any():
        curves.append(plots.Curve("regressed", x, np.where(reg, y, np.nan), color="#c62828", style="dotted", width=0.0))
    alpha = v.settings.get("alpha")
    return FigureView("bins", "Change of the late loss per noise level", plots.noise_plot(
        curves, axis, ylabel="late loss change (%)" if bins[0].relative else "late loss change", log=False,
        alt="relative change of the late loss per noise bin with its interval"),
        f"Candidate against baseline, late loss per noise bin (after removing any progress lag), with "
        f"{fmt_pct(1 - alpha) if alpha is not None else ''} intervals (uncorrected); red marks the bins that "
        "regressed (above the tolerance and significant after correction across bins).")


def compare_page(v: Verdict, baseline=(), candidate=(), *, generated: str | None = None) -> str:
    """The gate's verdict as a self-contained HTML page.

    It opens with the verdict in one sentence and the per-bin change plot; then the
    late loss of both sides per noise level, their training-loss curves (drawn from
    ``baseline`` and ``candidate``, the loaded runs; left out when not given), the
    table of every check with the reason of each regression, and the notes.
    """
    in_lstar = v.settings.get("unit") == "lstar"
    figs = []
    bins = [c for c in v.checks if c.metric == "loss" and c.change is not None and c.bin is not None]
    if bins and v.process is not None:
        figs.append(_bin_change_figure(v, bins))
        axis = plots.noise_axis(v.process)
        x = np.asarray(v.process.bin_centers(), dtype=np.float64)[[c.bin for c in bins]]
        level = [plots.Curve("baseline", x, np.array([c.baseline for c in bins]), color=_SIDE_COLORS["baseline"]),
                 plots.Curve("candidate", x, np.array([c.candidate for c in bins]), color=_SIDE_COLORS["candidate"])]
        ls = np.array([c.details.get("lstar", np.nan) for c in bins], dtype=np.float64)
        if np.isfinite(ls).any():
            level.append(plots.Curve(f"L* ({v.lstar_kind})", x, ls, color="#222222", style="dashed", marker=None))
        figs.append(FigureView("levels", "Late loss per noise level", plots.noise_plot(
            level, axis, ylabel="late loss / own L*" if in_lstar else "late loss",
            alt="late loss per noise bin of both sides"),
            "Late-window loss per noise bin on each side (mean over seeds), "
            + ("each divided by the Gaussian L* of its own prediction target (1: as good as the best linear "
               "denoiser)." if in_lstar else "with the reference L*.")))
    series = [s for s in (side_curves("baseline", baseline), side_curves("candidate", candidate)) if s is not None]
    if series and not in_lstar:
        vlines = [plots.VLine(float(v.window[0]), "late window starts")] if v.window else []
        figs.append(FigureView("curves", "Training loss", plots.step_plot(
            series, ylabel="loss (block mean)", vlines=vlines, log=True,
            alt="per-step training loss of the baseline and candidate runs, block means"),
            "Per-step loss (all noise levels mixed), reduced to block means; with several seeds, their mean. "
            "Baseline blue, candidate orange; the dotted line marks the start of the late window."))
    shown = [c for c in v.checks if c.status != "off"]
    table = Table(
        columns=list(cells.COLUMNS),
        rows=[[Cell(x, _RESULT_CLASS.get(c.status, "") if i == len(cells.COLUMNS) - 1 else "")
               for i, x in enumerate(cells.row(c))] for c in shown],
        numeric=list(cells.NUMERIC),
    )
    head = [Item("baseline", v.baseline.label()), Item("candidate", v.candidate.label()),
            Item("noise model", cells.noise_model_words(v))]
    if in_lstar:
        head.append(Item("unit", "loss / own Gaussian L*"))
    if v.window:
        head.append(Item("late window", f"steps {v.window[0]:,}-{v.window[1]:,} ({v.window_blocks} blocks)"))
    if v.detectable is not None:  # the smallest rise of the mean loss this comparison catches 80% of the time
        head.append(Item("can see", f"rises above {words.change_text(v.detectable, True)} of the weighted mean loss"
                         + (": too weak to gate on" if v.weak else ""), "warn" if v.weak else ""))
    if v.lag is not None and v.lag > 1e-9:  # a lag fitted at zero can come out as -4e-18
        head.append(Item("progress lag absorbed", fmt_pct(v.lag)))
    sections = [Section("figures", "Per-bin change and curves"), Section("checks", "Checks"),
                Section("notes", "Notes")]
    sentence = cells.headline(v).removeprefix(f"{v.status}: ")  # the banner's label says the status
    ctx = dict(verdict=v, headline=sentence[:1].upper() + sentence[1:], level=_STATUS_LEVEL[v.status], head=head, figures=figs,
               checks_table=table, reasons=[(cells.name(c), c.reason) for c in v.regressions], notes=list(v.notes),
               sections=sections,
               settings=[Item(k, json.dumps(x) if not isinstance(x, str) else x) for k, x in v.settings.items()])
    if generated is not None:
        ctx["generated"] = generated
    return render_page("compare.html.j2", **ctx)


# ----------------------------------------------------------------------------
# The sweep page


def sweep_page(s, process, *, reports: dict | None = None, generated: str | None = None) -> str:
    """``diffaudit sweep -o FILE``: the configurations with the best set, the run table, a runs x noise-level heatmap
    in units of L*, the best set's per-noise-level curves and the effects, as one self-contained page.

    ``process``: the noise process the heatmap and curves are drawn on (the runs that share its kind and bins are
    drawn); ``reports``: run name -> relative link to its report, when ``--reports`` wrote them."""
    runs = s.runs
    reports = reports or {}
    m = s.metric
    best = s.best.get(m, {})
    members = set(best.get("members", []))
    labels = dict(zip(s.groups["group"].to_list(), s.groups["label"].to_list())) if s.groups.height else {}
    band_cols = [c for c in ("ratio_low", "ratio_mid", "ratio_high") if c in s.groups.columns]
    group_rows = []
    if s.groups.height:
        for r in s.groups.sort(m, nulls_last=True).iter_rows(named=True):
            mark = "best" if r["group"] == best.get("best") else ("in" if r["group"] in members else "out")
            group_rows.append([Cell(words.clipped(r["label"], 64)), Cell(str(r["n"]))]
                              + [Cell(words.plus_minus(r.get(c), r.get(f"{c}_se"))) for c in [m] + band_cols]
                              + [Cell(mark, "good" if mark != "out" else ""),
                                 Cell(best.get("out", {}).get(r["group"], ""))])
    groups_table = Table(["configuration", "runs", "L* ratio" if m == "lstar_ratio" else "late loss"]
                         + [c.removeprefix("ratio_") for c in band_cols] + ["best set", "why out"],
                         group_rows, [False, True] + [True] * (1 + len(band_cols)) + [False, False])
    run_rows = []
    for r in runs.sort(m, nulls_last=True).iter_rows(named=True):
        link = reports.get(r["name"])
        verdict = "error" if r["error"] else (r["verdict"] or words.MISSING) + (" (so far)" if r["provisional"] else "")
        run_rows.append([Cell(r["name"], href=link), Cell(r["state"] or words.MISSING),
                         Cell(words.MISSING if r["last_step"] is None else
                              f"{r['last_step'] + 1:,}" + (f" / {r['planned_steps']:,}" if r["planned_steps"] else "")),
                         Cell(verdict, {"failing": "fail", "warnings": "warn", "error": "fail"}.get(
                             "error" if r["error"] else r["verdict"] or "", "")),
                         Cell(r["error"] or (r["worst"] or "").replace(",", ", ")),
                         *[Cell(words.plus_minus(r.get(c))) for c in ("lstar_ratio", "ratio_low", "ratio_mid", "ratio_high")],
                         Cell(fmt_pct(r["clip_rate"]) if r["clip_rate"] is not None else words.MISSING),
                         *[Cell(str(r.get(k) or "")) for k in s.varying[:6]]])
    runs_table = Table(["run", "state", "steps", "verdict", "worst findings / error", "L* ratio", "low", "mid", "high",
                        "clip"] + list(s.varying[:6]), run_rows,
                       [False, False, True, False, False, True, True, True, True, True] + [False] * len(s.varying[:6]))
    figs = []
    if process is not None and m == "lstar_ratio":
        axis = plots.noise_axis(process)
        same = runs.filter((pl.col("bin_ratio").list.len() == process.num_bins) & (pl.col("process") == process.kind)
                           ).sort(m, nulls_last=True)
        if same.height:
            values = np.array([[np.nan if v is None else v for v in row] for row in same["bin_ratio"].to_list()]).T
            figs.append(FigureView("heatmap", "Every run, per noise level, in units of L*", plots.runs_heatmap(
                values, same["name"].to_list(), process.bin_edges().astype(np.float64), axis,
                label="late loss / L* (log scale)", alt="late loss over L* per run and noise level"),
                "Each column a run (in the table's order), each row a noise bin; colour: late loss over the Gaussian "
                "L* of the run's own target. White is the best linear denoiser; red above it, blue below it (real "
                "networks beat it where the data is not Gaussian). Grey: no L* or no samples."))
            x = np.asarray(process.bin_centers(), dtype=np.float64)
            curves = []
            for g in best.get("members", [])[:8]:
                part = same.filter(pl.col("group") == g)
                if part.height == 0:
                    continue
                arr = np.array([[np.nan if v is None else v for v in row] for row in part["bin_ratio"].to_list()])
                mean = np.exp(np.nanmean(np.log(arr), axis=0))
                curves.append(plots.Curve(f"{words.clipped(labels.get(g, g), 40)} ({part.height} run"
                                          f"{'s' if part.height > 1 else ''})",
                                          x, mean))
            if curves:
                figs.append(FigureView("best-curves", "The best set per noise level", plots.noise_plot(
                    curves, axis, ylabel="late loss / L*", alt="late loss over L* per noise level of the best set"),
                    "Late loss over L* per noise bin for each configuration in the best set (geometric mean over its "
                    "seeds). 1 is the best linear denoiser's loss."))
    effects = []
    for k, per in s.effects.items():
        rows = [[Cell(v)] + [Cell(str(e["runs"]))] + [Cell(words.plus_minus(e.get(c))) for c in
                                                        ("lstar_ratio", "ratio_low", "ratio_mid", "ratio_high")]
                for v, e in per.items()]
        effects.append((k, Table([k, "runs", "L* ratio", "low", "mid", "high"], rows,
                                 [False, True, True, True, True, True])))
    n_fail = runs.filter(pl.col("verdict") == "failing").height
    n_err = runs.filter(pl.col("error").is_not_null()).height
    head = [Item("runs", f"{runs.height:,}"), Item("configurations", f"{s.groups.height:,}"),
            Item("best", words.clipped(labels.get(best.get("best"), words.MISSING), 60)),
            Item("seed spread", f"{fmt_pct(s.spread.get('sd'))} of the mean, from {s.spread.get('source')}"),
            Item("failing runs", f"{n_fail}"), Item("unreadable runs", f"{n_err}")]
    sections = [Section("configurations", "Configurations and the best set"), Section("figures", "Per noise level"),
                Section("runs", "Runs"), Section("effects", "What each setting does"), Section("notes", "Notes")]
    script = _load_template("sort.js")  # the tables sort on a click: a static file, no data, allowed by its hash
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    ctx = dict(head=head, groups_table=groups_table, runs_table=runs_table, figures=figs, effects=effects,
               notes=list(s.notes), sections=sections, metric=m, script=script, script_hash=f"sha256-{digest}",
               title=f"{runs.height:,} runs, {s.groups.height:,} configurations")
    if generated is not None:
        ctx["generated"] = generated
    return render_page("sweep.html.j2", **ctx)
