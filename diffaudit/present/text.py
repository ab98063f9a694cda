"""The terminal outputs: ``report``'s verdict and findings, ``compare``'s table, ``summary``'s overview,
``optimum``'s per-bin table, ``watch``'s status lines.

Plain text, one list of lines per output; the CLI decides where they go
(stdout, or stderr when a JSON document takes stdout). Importing this module
costs no analysis: ``summary`` starts without scipy, and the compare table's
cells (which read the gate) load when a table is made.
"""

from __future__ import annotations

import math
import statistics

from typing import TYPE_CHECKING

from diffaudit.findings import SEVERITIES
from diffaudit import gate_options as opts
from diffaudit.words import bin_ranges, bin_spans, change_text, clipped, edge_span, noise_unit, num, pct, plus_minus

if TYPE_CHECKING:  # the outputs read the engines' results; importing this module costs no analysis
    from diffaudit.analysis import Analysis
    from diffaudit.gate import Verdict
    from diffaudit.summary import RunSummary
    from diffaudit.watch import Change, Update

MAX_REASONS = 8  # regressions explained one per line under the compare table
MARK = {"fail": "FAIL", "warn": "WARN", "info": "INFO"}  # a finding's tag in the terminal
PROVISIONAL_MARK = "PROV"
VERDICT_WORDS = {
    "healthy": "healthy: no warning or failure found",
    "warnings": "warnings: training works but something costs quality",
    "failing": "failing: training is broken",
}


def report_lines(a: Analysis) -> list[str]:
    """The terminal report: one header line, the state, the verdict, then each finding with its recommendation."""
    r = a.run
    steps = f"steps {r.first_step}-{r.last_step}" if r.first_step is not None else "no per-step rows"
    counts = {s: sum(1 for f in a.findings if f.severity == s) for s in SEVERITIES}
    tally = ", ".join(f"{counts[s]} {s}" for s in reversed(SEVERITIES) if counts[s])
    lines = [f"run {r.name}  {r.process}/{r.prediction}, {r.num_bins} noise bins, {steps}"]
    if a.lifecycle is not None:
        lines.append(f"state: {a.lifecycle.words}")
    lines.append(f"verdict: {VERDICT_WORDS[a.verdict]}" + (" so far" if a.early else "") + (f" ({tally})" if tally else ""))
    if a.early:
        lines.append(f"provisional: {a.early}; findings that need a converged loss are stated as info until then")
    if a.findings:
        lines.append("")
    for f in a.findings:
        lines.append(f"[{finding_mark(f)}] {f.id}: {f.message}")
        lines.append(f"  -> {f.recommendation}")
    return lines


def finding_mark(f) -> str:
    return PROVISIONAL_MARK if f.provisional else MARK[f.severity]


def verdict_text(v: Verdict, *, everything: bool = False) -> str:
    """The compare table: header lines, notes, one row per shown check, the reasons of regressions, the verdict."""
    import diffaudit.present.cells as cells  # reads the gate (and its analysis): not for summary's start-up

    lines = [
        f"baseline:  {v.baseline.label()}",
        f"candidate: {v.candidate.label()}",
    ]
    if v.window is not None:
        lines.append(f"late window: steps {v.window[0]:,}-{v.window[1]:,} ({v.window_blocks} matched blocks); "
                     f"noise model: {cells.noise_model_words(v)}; "
                     f"{cells.CORRECTION_WORDS[v.settings.get('correction') or opts.CORRECTION]} across bins "
                     f"at alpha {v.settings.get('alpha'):g}")
    for n in v.notes:
        lines.append(f"note: {n}")
    rows = [cells.row(c) for c in cells.shown(v, everything)]
    if rows:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(cells.COLUMNS)]
        lines.append("")
        lines.append("  ".join(h.ljust(w) for h, w in zip(cells.COLUMNS, widths)).rstrip())
        lines.append("  ".join("-" * w for w in widths))
        for r in rows:
            lines.append("  ".join(x.rjust(w) if num else x.ljust(w) for x, w, num in
                                   zip(r, widths, cells.NUMERIC)).rstrip())
        hidden = len(v.checks) - len(rows)
        if hidden:
            lines.append(f"({hidden} more passing bin checks; -v shows every row)")
    reg = v.regressions
    if reg:
        lines.append("")
        for c in reg[:MAX_REASONS]:
            lines.append(f"REGRESSION {cells.name(c)}: {c.reason}")
        if len(reg) > MAX_REASONS:
            lines.append(f"... and {len(reg) - MAX_REASONS} more regressions (in the table above)")
    lines.append("")
    lines.append(cells.headline(v))
    return "\n".join(lines) + "\n"


def summary_lines(s: RunSummary) -> list[str]:
    """``diffaudit summary``'s overview: the run, steps covered, state, segments and ranks, losses, windows."""
    lines = [f"run {s.name}  (id {s.run_id})  {s.process}/{s.prediction}, {s.num_bins} noise bins"]
    if s.first_step is not None:
        gap = f", {s.missing_steps} missing inside" if s.missing_steps else ""
        lines.append(f"steps {s.first_step}..{s.last_step}: {s.steps_logged} logged{gap}")
    lines.append(f"state: {s.lifecycle.words}")
    lines.append(f"segments {s.segments} (restarts: {s.restarts}), ranks {s.ranks}, "
                 f"rows superseded by restarts {s.superseded_rows}")
    lines.append(f"loss {num(s.first_loss)} -> {num(s.last_loss)} (median of first/last 5% of steps); "
                 f"non-finite losses {s.nonfinite}; clip rate {pct(s.clip_rate)}")
    lines.append(f"eval windows {s.eval_windows} (held-out, live weights), EMA eval windows {s.ema_windows}, "
                 f"gradient-probe steps {s.probe_steps}")
    return lines


def recent_loss_lines(s: RunSummary) -> list[str]:
    """``diffaudit summary``'s table of recent loss per noise level (merged bins), after a blank line; [] if none."""
    if not s.recent:
        return []
    unit = noise_unit(s.process)
    lines = ["", f"recent loss per noise level (steps >= {s.recent_from_step}):",
             f"  {'bins':>9}  {unit + ' range':>19}  {'count':>8}  {'mean':>10}  {'std':>10}"]
    for b in s.recent:
        rng = edge_span(s.process, b.t_lo, b.t_hi)
        lines.append(f"  {bin_ranges(range(b.bin_lo, b.bin_hi)):>9}  {rng:>19}  {b.count:>8}  {num(b.mean):>10}  "
                     f"{num(b.std, 3):>10}")
    return lines


def optimum_table(process, result, bound) -> list[str]:
    """``diffaudit optimum``'s table: per noise bin, L*_emp with its standard error (and the Gaussian L* if known)."""
    unit = noise_unit(process.kind)
    ranges = bin_spans(process.kind, process.bin_edges())
    head = f"  {'bin':>4}  {unit + ' range':>15}  {'L*_emp ± stderr':>21}"
    if bound is not None:
        head += f"  {'Gaussian L*':>11}"
    lines = [head]
    for b in range(process.num_bins):
        line = f"  {b:>4}  {ranges[b]:>15}  {result.loss_opt[b]:>10.4g} ± {result.stderr[b]:<8.2g}"
        if bound is not None:
            line += f"  {bound[b]:>11.4g}"
        lines.append(line)
    return lines


def watch_update_line(u: Update, clock: str) -> str:
    """``diffaudit watch``: the run's state at a poll that found something, stamped with the wall-clock time."""
    step = "" if u.last_step is None else f" step {u.last_step:,}"
    return f"{clock}{step}: {u.lifecycle}; verdict {u.verdict}"


def watch_change_line(c: Change) -> str:
    """``diffaudit watch``: one finding that appeared, changed severity or cleared."""
    if c.kind == "cleared":
        return f"  cleared  {c.id} (was {c.before})"
    mark = PROVISIONAL_MARK if c.provisional else MARK[c.severity]
    what = "new" if c.kind == "appeared" else f"{c.before} -> {c.severity}"
    return f"  [{mark}] {what:<12} {c.id}: {c.message}"


def allowance_lines(al, *, saved: str | None, sight: dict | None = None, tolerance: float | None = None) -> list[str]:
    """``diffaudit calibrate``'s report: what was measured on what, the spreads, what compare will see with it
    (``sight``: :func:`diffaudit.gate.projected_sight`) and where it went."""
    m = al.measured_on
    runs = m.get("runs", [])
    noise = m.get("noise", {})
    win = m.get("window", {})
    pool = m.get("pooling", {})
    pairs = [(s, d) for s, d in zip(al.bins, al.df_bins) if s == s and d == d]  # NaN: a bin not every run sampled
    sd = [s for s, _ in pairs]
    lines = [f"calibrated on {len(runs)} runs ({', '.join(r['name'] for r in runs[:4])}{', …' if len(runs) > 4 else ''}): "
             f"{noise.get('process')}/{noise.get('prediction')}, {noise.get('num_bins')} noise bins, "
             f"steps {m['steps']['first']:,}-{m['steps']['last']:,}, late window {win.get('first', 0):,}-"
             f"{win.get('last', 0):,} ({win.get('blocks')} blocks)"]
    if m.get("forced"):
        lines.append(f"note: --force: the runs' config differs in {', '.join(m['forced'])}")
    if pairs:
        lines.append(f"late loss per noise bin, sd per run: {pct(min(sd))} to {pct(max(sd))} "
                     f"(median {pct(statistics.median(sd))}), on {statistics.median(d for _, d in pairs):.0f} degrees of freedom "
                     f"({pool.get('own_df', 0):g} of its own, {pool.get('prior_df', 0):.1f} pooled from the profile over "
                     f"{pool.get('effective_bins', 0):.1f} effectively independent bins)")
    eq_sd = al.equal_mean_sd()[0]
    lines.append(f"mean over bins (each bin weighted by its precision, as compare weighs it), sd per run: {pct(al.mean)} "
                 + (f"(equally weighted: {pct(eq_sd)}) " if al.profile is not None and math.isfinite(eq_sd) else "")
                 + f"on {al.df_mean:g} degrees of freedom"
                 + (f" ({al.df_mean + 1:g} when compare's baseline is another run of this configuration, over the same "
                    "late window: it counts as one more run)"
                    if al.reference is not None else ""))
    if al.speed_level is not None:
        lines.append(f"steps to reach the loss level ({pct(al.speed_level)} of the initial drop above the late level, "
                     f"where these seeds agree best), sd of log steps: {pct(al.speed)}")
    else:
        lines.append("steps to reach the loss level: not measured (a run's loss did not fall, or it logged no steps)")
    lines.append(f"clip rate, sd of its log-odds: {al.clip:.3g}" if al.clip else
                 "clip rate: not measured (no clip threshold logged)")
    if sight:
        seeds = "; ".join(f"{k} baseline seeds against one candidate, its runs lent to theirs, "
                          f"{change_text(v, True)}" for k, v in list(sight["baseline_seeds"].items())[:2])
        lines.append(f"what compare will see with it (the smallest rise of the mean loss over bins it catches 80% of "
                     f"the time), about, if the compared runs spread as these did: one run per side "
                     f"{change_text(sight['one_run_per_side'], True)}; {seeds}")
        if tolerance is not None and sight["one_run_per_side"] > 2 * tolerance:
            enough = [k for k, v in sight["baseline_seeds"].items() if v <= 2 * tolerance]
            lines.append(f"one run per side would be too weak to gate on (more than twice the {change_text(tolerance, True)} "
                         "tolerance)" + (f": gate with {enough[0]} baseline seeds or more" if enough else
                                         f": even {max(sight['baseline_seeds'])} baseline seeds would be; these seeds "
                                         "differ too much for a gate this tight, so raise --tolerance"))
    lines.append(f"saved to {saved}: use it with compare --allowance {saved}" if saved else
                 "not saved: give -o FILE to keep it for compare --allowance")
    if al.deviations is not None and len(al.deviations) >= 2:
        n = len(al.deviations)
        lines.append(f"several baseline seeds of this configuration (compare --allowance): these {n} runs, where none of "
                     f"them is compared, lend the seeds their scatter ({n - 1} more degrees of freedom for the mean over "
                     "bins)")
    return lines


SWEEP_RUN_COLUMNS = (("run", "name"), ("state", "state"), ("steps", None), ("verdict", "verdict"),
                     ("worst findings", "worst"), ("L* ratio", "lstar_ratio"), ("low", "ratio_low"),
                     ("mid", "ratio_mid"), ("high", "ratio_high"), ("clip", "clip_rate"))


def _cell(v, col: str) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if col == "clip_rate":
        return pct(v)
    if isinstance(v, float):
        return num(v)
    return str(v)


def _table(header: list[str], rows: list[list[str]], numeric: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(x.rjust(w) if i in numeric else x.ljust(w) for i, (x, w) in enumerate(zip(r, widths))).rstrip())
    return out


def sweep_lines(s, *, sort: str = "lstar_ratio", top: int | None = None) -> list[str]:
    """``diffaudit sweep``'s terminal output: the run table, the configurations with the best set, the effects."""
    runs = s.runs
    n = runs.height
    lines = [f"{n} run(s); {runs.filter(runs['error'].is_null()).height} readable, {s.cached} from the cache; "
             f"ranked by {'late loss / L* of its own target' if s.metric == 'lstar_ratio' else 'late loss as logged'}; "
             f"bands by log-SNR: low = the noisiest third of the bins"]
    for note in s.notes:
        lines.append(f"note: {note}")
    key = sort.lstrip("-")
    ordered = runs.sort(key, descending=sort.startswith("-"), nulls_last=True)
    if top:
        ordered = ordered.head(top)
    extra = list(s.varying[:4])
    header = [h for h, _ in SWEEP_RUN_COLUMNS] + extra
    rows = []
    for r in ordered.iter_rows(named=True):
        steps = "-" if r["last_step"] is None else (f"{r['last_step'] + 1:,}" + (f"/{r['planned_steps']:,}" if r["planned_steps"] else ""))
        cells = [steps if col is None else _cell(r[col], col) for _, col in SWEEP_RUN_COLUMNS]
        if r["error"] is not None:
            cells[3] = "error"
            cells[4] = r["error"][:60]
        elif r["provisional"]:
            cells[3] += " (so far)"
        rows.append(cells + [clipped(r[k], 20) for k in extra])
    lines += [""] + _table(header, rows, {2, 5, 6, 7, 8, 9})
    if top and n > top:
        lines.append(f"({n - top} more runs; --top shows more)")
    g = s.groups
    if g.height:
        m = s.metric
        best = s.best.get(m, {})
        members = set(best.get("members", []))
        cols = [m] + ([c for c in ("ratio_low", "ratio_mid", "ratio_high") if c in g.columns])
        header = ["configuration", "runs"] + [("L* ratio" if c == "lstar_ratio" else "late loss" if c == "late_loss"
                                               else c.removeprefix("ratio_")) for c in cols] + ["best set"]
        rows = []
        for r in g.sort(m, nulls_last=True).iter_rows(named=True):
            cells = [clipped(r["label"], 60), str(r["n"])]
            for c in cols:
                cells.append(plus_minus(r.get(c), r.get(f"{c}_se")))
            cells.append("best" if r["group"] == best.get("best") else "in" if r["group"] in members else "out")
            rows.append(cells)
        lines += ["", f"configurations (mean ± 95% half-width; seed spread from {s.spread.get('source')}, "
                      f"sd {pct(s.spread.get('sd') or 0)} of the mean)"]
        lines += _table(header, rows, set(range(1, len(header) - 1)))
        labels = {k: clipped(v, 60) for k, v in zip(g["group"].to_list(), g["label"].to_list())}
        for metric, b in s.best.items():
            if b.get("best") is None:
                continue
            what = "overall" if metric == m else f"{metric.removeprefix('ratio_')}-log-SNR band"
            inn = [labels[x] for x in b["members"]]
            lines.append(f"best set ({what}): {'; '.join(inn[:6])}{' …' if len(inn) > 6 else ''}")
            if metric == m:
                for grp, why in list(b["out"].items())[:5]:
                    lines.append(f"  out: {labels[grp]}: {why}")
    for k, per in s.effects.items():
        parts = []
        for v, e in per.items():
            vals = "/".join("-" if e.get(c) is None else num(e[c]) for c in ("ratio_low", "ratio_mid", "ratio_high"))
            parts.append(f"{clipped(v, 24)}: {vals}")
        lines.append(f"effect of {k} (L* ratio low/mid/high): " + "; ".join(parts))
    return lines
