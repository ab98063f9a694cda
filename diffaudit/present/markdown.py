"""Markdown: ``compare --markdown FILE`` and ``report --markdown FILE`` (a CI step summary), TensorBoard's text tab,
and the README's table of finding ids (:func:`findings_table`).

Everything from the logs (run names, notes, reasons, messages) is escaped so it
shows as the text it is: no headings, emphasis, links, images, table pipes or
raw HTML can be smuggled into a CI summary through a run's name.
"""

from __future__ import annotations

import re

from diffaudit.analysis import Analysis
from diffaudit.findings import DETECTORS
from diffaudit.gate import Verdict
from diffaudit.present import cells
from diffaudit.present.text import VERDICT_WORDS, finding_mark

# Markdown that a run's name could carry into a CI summary: line breaks (a new block: a heading),
# emphasis, code, links and images, autolinks, table pipes, raw HTML. Each is escaped
# (CommonMark: any ASCII punctuation may be backslash-escaped).
_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_PUNCT = re.compile(r"([\\`*_\[\]{}|~!#@])")
STATUS_MARK = {"pass": "✅ pass", "regression": "❌ regression", "inconclusive": "⚠️ inconclusive"}
VERDICT_MARK = {"healthy": "✅", "warnings": "⚠️", "failing": "❌"}


def inert(s) -> str:
    """Text from the logs as inert Markdown: one line, no markup, no links or HTML."""
    s = _PUNCT.sub(r"\\\1", _BREAKS.sub(" ", str(s)))
    s = s.replace("<", "&lt;").replace(">", "&gt;")
    return s.replace("://", ":\\/\\/").replace("www.", "www\\.")


def verdict_markdown(v: Verdict, *, everything: bool = False) -> str:
    """A Markdown summary of a verdict: status and the verdict in one sentence, notes, a table of checks."""
    out = [f"## diffaudit compare: {STATUS_MARK[v.status]}", "",
           f"**{inert(cells.headline(v))}**", "",
           f"- baseline: {inert(v.baseline.label())}",
           f"- candidate: {inert(v.candidate.label())}"]
    if v.window is not None:
        out.append(f"- late window: steps {v.window[0]:,}-{v.window[1]:,} ({v.window_blocks} matched blocks); "
                   f"noise model: {cells.noise_model_words(v)}")
    for n in v.notes:
        out.append(f"- {inert(n)}")
    rows = cells.shown(v, everything)
    if rows:
        out += ["", "| " + " | ".join(cells.COLUMNS) + " |",
                "|" + "|".join("---:" if num else ":---" for num in cells.NUMERIC) + "|"]
        for c in rows:
            r = [inert(x) for x in cells.row(c)]
            if c.status == "regression":
                r[-1] = "**REGRESSION**"
            out.append("| " + " | ".join(r) + " |")
        hidden = len(v.checks) - len(rows)
        if hidden:
            out += ["", f"_{hidden} more passing bin checks not shown._"]
    if v.regressions:
        out += ["", "<details><summary>Why</summary>", ""]
        out += [f"- **{inert(cells.name(c))}**: {inert(c.reason)}" for c in v.regressions]
        out += ["", "</details>"]
    return "\n".join(out) + "\n"


def report_markdown(a: Analysis, *, heading: bool = True) -> str:
    """A run's verdict and findings as Markdown: a CI step summary, or TensorBoard's text tab (``heading=False``)."""
    out = []
    if heading:
        out += [f"## diffaudit report: {inert(a.run.name)} {VERDICT_MARK[a.verdict]} {a.verdict}", ""]
        if a.lifecycle is not None:
            out += [f"state: {inert(a.lifecycle.words)}", ""]
    out += [f"**verdict: {inert(VERDICT_WORDS[a.verdict])}{' so far' if a.early else ''}**", ""]
    if a.early:
        out += [f"_provisional: {inert(a.early)}_", ""]
    for f in a.findings:
        out.append(f"- **{finding_mark(f)}** `{f.id}`: {inert(f.message)}")
        out.append(f"  - {inert(f.recommendation)}")
    if not a.findings:
        out.append("no findings")
    return "\n".join(out) + "\n"


def findings_table() -> str:
    """The Markdown table of every finding id the README holds: severities, what fires it (with its default threshold)."""
    lines = ["| id | severity | fires when |", "|---|---|---|"]
    for r in DETECTORS:
        lines.append(f"| `{r.id}` | {r.severities} | {r.fires} |")
    return "\n".join(lines) + "\n"
