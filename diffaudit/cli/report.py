"""`diffaudit report`: a verdict and findings a researcher can act on, as text, JSON, Markdown and HTML."""

from __future__ import annotations

import click

from diffaudit.analysis import LATE_FRACTION, analyze
from diffaudit.cli import EXIT_FAIL, STRICT, any_stdout, main, output_option, warn_problems, write_output
from diffaudit.findings import GATE_SEVERITIES, at_or_above
from diffaudit.load import load_run
from diffaudit.present import document, markdown, text


@main.command()
@click.argument("run", type=click.Path(path_type=str))
@output_option("-o", "--html", "html", what="a self-contained HTML report")
@output_option("--json", "json_out", what="the verdict, findings with evidence and the per-bin table as JSON")
@output_option("--markdown", "markdown_out", what="the verdict and findings as Markdown (e.g. $GITHUB_STEP_SUMMARY)")
@click.option("--fail-on", type=click.Choice(GATE_SEVERITIES),
              help="Exit 1 if a finding at or above this severity fires (a gate on the report's own findings).")
@click.option("--late-fraction", default=LATE_FRACTION, show_default=True, type=click.FloatRange(0.01, 1.0),
              help="Fraction of the steps, at the end, that counts as late training.")
@STRICT
def report(run, html, json_out, markdown_out, fail_on, late_fraction, strict):
    """Audit RUN: a verdict, then findings most severe first, each with its evidence and a recommendation.

    Finding ids are stable (see the README's table); --json writes them with their
    evidence and the per-noise-level table (schema_version 1, diffaudit_version: verdict, lifecycle,
    provisional, findings[id, severity, title, message, recommendation, evidence,
    bins], bins[one object per noise bin], run, settings and one object per summary
    the findings read; NaN is null). Every output takes
    a FILE, or '-' for stdout (the terminal report then goes to stderr).

    \b
    Example:
      diffaudit report runs/exp1 -o exp1.html --json exp1.json --fail-on fail
    """
    r = load_run(run, strict=strict)
    a = analyze(r, late_fraction=late_fraction)  # read now: "in progress" or "ended" is as of this moment
    quiet = any_stdout(html, json_out, markdown_out)
    warn_problems([a.run])
    for line in text.report_lines(a):
        click.echo(line, err=quiet)
    if json_out:
        write_output(json_out, document.dumps(document.report_document(a)), "JSON report")
    if markdown_out:
        write_output(markdown_out, markdown.report_markdown(a), "Markdown report")
    if html:
        from diffaudit.present.html import report_page  # matplotlib and jinja2: only when a page is asked for

        write_output(html, report_page(r, a), "HTML report")
        if html != "-":
            click.echo(f"wrote {html}", err=quiet)
    if fail_on and at_or_above(a.findings, fail_on):
        raise click.exceptions.Exit(EXIT_FAIL)
