"""`diffaudit report`: a verdict and findings a researcher can act on, as text, JSON and HTML."""

from __future__ import annotations

import json
import sys

import click

from diffaudit.analysis import analysis_to_dict, analyze
from diffaudit.cli import EXIT_FAIL, main, write_output
from diffaudit.cli.summary import STRICT
from diffaudit.findings import SEVERITIES, at_or_above
from diffaudit.load import load_run

_MARK = {"fail": "FAIL", "warn": "WARN", "info": "INFO"}
_VERDICT = {
    "healthy": "healthy: no warning or failure found",
    "warnings": "warnings: training works but something costs quality",
    "failing": "failing: training is broken",
}


def _render_html(run, analysis) -> str:
    from diffaudit.render import render_report_html  # matplotlib: imported only when a page is asked for

    return render_report_html(run, analysis)


def format_report(a) -> list[str]:
    """The terminal report: one header line, the verdict, then each finding with its recommendation."""
    r = a.run
    steps = f"steps {r.first_step}-{r.last_step}" if r.first_step is not None else "no per-step rows"
    counts = {s: sum(1 for f in a.findings if f.severity == s) for s in SEVERITIES}
    tally = ", ".join(f"{counts[s]} {s}" for s in reversed(SEVERITIES) if counts[s])
    early = getattr(a, "early", None)
    lines = [
        f"run {r.name}  {r.process}/{r.prediction}, {r.num_bins} noise bins, {steps}",
    ]
    if getattr(a, "lifecycle", None) is not None:
        lines.append(f"state: {a.lifecycle.words}")
    lines.append(f"verdict: {_VERDICT[a.verdict]}" + (" so far" if early else "") + (f" ({tally})" if tally else ""))
    if early:
        lines.append(f"provisional: {early}; findings that need a converged loss are stated as info until then")
    if a.findings:
        lines.append("")
    for f in a.findings:
        mark = "PROV" if getattr(f, "provisional", False) else _MARK[f.severity]
        lines.append(f"[{mark}] {f.id}: {f.message}")
        lines.append(f"  -> {f.recommendation}")
    return lines


@main.command()
@click.argument("run", type=click.Path(path_type=str))
@click.option("-o", "--html", "html", type=click.Path(dir_okay=False, path_type=str),
              help="Write a self-contained HTML report to this file.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, allow_dash=True, path_type=str),
              help="Write findings and the per-bin table as JSON to this file ('-' for stdout).")
@click.option("--fail-on", type=click.Choice(["warn", "fail"]),
              help="Exit 1 if a finding at or above this severity fires (a gate on the report's own findings).")
@click.option("--late-fraction", default=0.2, show_default=True, type=click.FloatRange(0.01, 1.0),
              help="Fraction of the steps, at the end, that counts as late training.")
@STRICT
def report(run, html, json_out, fail_on, late_fraction, strict):
    """Audit RUN: a verdict, then findings most severe first, each with its evidence and a recommendation.

    Finding ids are stable (see the README's table); --json writes them with their
    evidence and the per-noise-level table (schema: diffaudit_version, run, verdict,
    findings[id, severity, title, message, recommendation, evidence, bins], bins[...];
    NaN is null).

    \b
    Example:
      diffaudit report runs/exp1 -o exp1.html --json exp1.json --fail-on fail
    """
    r = load_run(run, strict=strict)
    a = analyze(r, late_fraction=late_fraction)  # read now: "in progress" or "ended" is as of this moment
    to_stdout = json_out == "-"
    for p in a.run.problems:
        click.echo(f"warning: {p}", err=True)
    for line in format_report(a):
        click.echo(line, err=to_stdout)
    if json_out:
        text = json.dumps(analysis_to_dict(a), indent=1, allow_nan=False) + "\n"
        if to_stdout:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            write_output(json_out, text, "JSON report")
    if html:
        write_output(html, _render_html(r, a), "HTML report")
        click.echo(f"wrote {html}", err=to_stdout)
    if fail_on and at_or_above(a.findings, fail_on):
        raise click.exceptions.Exit(EXIT_FAIL)
