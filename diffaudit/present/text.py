"""The terminal outputs: ``diffaudit report``'s verdict and findings, ``diffaudit compare``'s table.

Plain text, one list of lines per output; the CLI decides where they go
(stdout, or stderr when a JSON document takes stdout).
"""

from __future__ import annotations

from diffaudit.analysis import Analysis
from diffaudit.findings import SEVERITIES
from diffaudit import gate_options as opts
from diffaudit.gate import Verdict
from diffaudit.present import cells

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
