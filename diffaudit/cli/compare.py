"""`diffaudit compare`: the regression gate (parse options, call diffaudit.gate.compare, write outputs, exit)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import click

from diffaudit import allowance, gate, gate_options as opts
from diffaudit.sides import load_sides
from diffaudit.cli import (EXIT_FAIL, EXIT_INCONCLUSIVE, EXIT_OK, STRICT, any_stdout, main, output_option, warn_problems,
                           write_output)
from diffaudit.present import document, text
from diffaudit.present import junit as present_junit
from diffaudit.present import markdown as present_markdown
from diffaudit.words import pct

EXIT_BY_STATUS = {"pass": EXIT_OK, "regression": EXIT_FAIL, "inconclusive": EXIT_INCONCLUSIVE}

HELP = """Did CANDIDATE train worse than BASELINE? Exit 0 no regression, 1 regression, 2 bad input, 3 inconclusive.

BASELINE and CANDIDATE are each one run (a run directory or an exported
.parquet), a folder of runs, or a quoted glob ("runs/base_s*"): several runs of
one configuration with different seeds; a run may also be a URL (s3://...).
Several baseline seeds against one candidate (the recommended CI setup): the
candidate is tested against a prediction interval from the baseline seeds.
Several seeds on both sides: the seed-to-seed spread is the noise. One run per
side: within-run variability plus a seed-to-seed allowance: the one
`diffaudit calibrate` measured on your model's healthy seeds (--allowance, or a
diffaudit-allowance.json in the BASELINE folder), else a built-in one learned on
other models, and the notes say which. With several baseline seeds, a
calibration's runs that are not compared lend the seeds their scatter (more
degrees of freedom for the mean over bins). Every check states the smallest rise it
could have caught with 80% probability (the "can see" column, "detectable" in
--json); the verdict says when that is too large to gate on.

Steps and noise bins are matched, then compared: the late loss of every noise
bin (with its excess over L*), its mean over bins, steps to reach the
baseline's loss level, the clip rate, non-finite losses, and findings new in
the candidate. A bin regresses only if its rise is significantly above
--tolerance after correction across bins. --unit lstar compares runs with
different prediction targets (each loss divided by its own L*).

\b
Rules (--rule, repeatable; the last one per metric wins), the defaults:
{rules}
A limit with % is relative (loss:1%), one without absolute (clip_rate:+0.1);
METRIC:off disables a rule; findings takes a severity (info, warn, fail);
--tolerance is the loss rule's limit.

\b
Windows (--window): {window} (the default; a share of the matched steps),
last:5000 (steps), from:80000, steps:80000-100000. The window is widened to
--min-windows matched blocks when it holds fewer.

\b
Exit codes: 0 no regression, 1 regression, 2 bad input or usage (missing run,
mismatched schedule or prediction without --force, bad option), 3 inconclusive
(too little overlap or data; --inconclusive pass|fail maps it to 0 or 1).

\b
Examples:
  diffaudit compare runs/main runs/pr --junit gate.xml --markdown "$GITHUB_STEP_SUMMARY"
  diffaudit compare runs/main runs/pr --json verdict.json     # or --json - for stdout
  diffaudit compare "base/seed*" runs/pr --rule loss:1% --html compare.html
  diffaudit compare --unit lstar runs/eps runs/vpred
""".format(rules="\n".join(opts.rule_lines()), window=opts.WINDOW)


@main.command(help=HELP, short_help="Gate on a regression: compare CANDIDATE run(s) with BASELINE run(s).")
@click.argument("baseline", type=str)
@click.argument("candidate", type=str)
@click.option("--tolerance", default=pct(opts.TOLERANCE), show_default=True,
              help="Relative rise of a bin's late loss that counts (2% or 0.02).")
@click.option("--alpha", default=f"{opts.ALPHA:g}", show_default=True, help="Significance level after correction across bins.")
@click.option("--window", default=opts.WINDOW, show_default=True, help="Late window: last:20%, last:5000, from:S, steps:A-B.")
@click.option("--min-windows", default=opts.MIN_WINDOWS, show_default=True, type=click.IntRange(0, 10_000),
              help="Widen the late window to at least this many matched blocks (0: never).")
@click.option("--rule", "rules", multiple=True, metavar="METRIC:LIMIT", help="A limit, e.g. loss:2%, clip_rate:+0.05 (repeatable).")
@click.option("--max-lag", default=pct(opts.MAX_LAG), show_default=True,
              help="Progress lag (share of the matched steps) a run may have before its per-bin level counts.")
@click.option("--correction", type=click.Choice(opts.CORRECTIONS), default=opts.CORRECTION, show_default=True,
              help="Multiple-testing correction across bins: Holm or Benjamini-Yekutieli.")
@click.option("--inconclusive", "on_inconclusive", type=click.Choice(["pass", "fail"]), default=None,
              help="Exit 0 (pass) or 1 (fail) instead of 3 when the verdict is inconclusive.")
@click.option("--force", is_flag=True, help="Compare runs whose schedule or prediction differ (refused by default).")
@click.option("--allowance", "allowance_path", type=click.Path(dir_okay=False, path_type=str), metavar="FILE", default=None,
              help="One run per side: the seed-to-seed spread measured by `diffaudit calibrate` on this model's healthy "
                   "seeds, instead of the built-in one; several baseline seeds: its other runs lend them their scatter "
                   f"(default: {allowance.FILE_NAME} in a BASELINE folder, if any).")
@click.option("--unit", type=click.Choice(opts.UNITS), default=opts.UNITS[0], show_default=True,
              help="lstar: each run's per-bin loss divided by its own Gaussian L*, so runs with different prediction "
                   "targets (epsilon vs v, ...) compare on one scale; needs data_var or data_spectrum.")
@output_option("--json", "json_out", what="the verdict as JSON")
@output_option("--junit", what="JUnit XML (one testcase per check)")
@output_option("--markdown", what="a Markdown summary (e.g. $GITHUB_STEP_SUMMARY)")
@output_option("--html", what="a self-contained HTML page: the verdict, per-bin changes, curves and every check")
@click.option("-v", "--verbose", is_flag=True, help="Show every check in the table, not only regressions and the closest bins.")
@STRICT
def compare(baseline, candidate, tolerance, alpha, window, min_windows, rules, max_lag, correction, on_inconclusive,
            force, allowance_path, unit, json_out, junit, markdown, html, verbose, strict):
    # parse every option before loading anything, so a typo costs nothing
    tol = opts.parse_tolerance(tolerance)
    lvl = opts.parse_alpha(alpha)
    win = opts.parse_window(window)
    parsed = [opts.parse_rule(r) for r in rules]
    lag = opts.parse_tolerance(max_lag, option="--max-lag")
    cal = allowance.read_allowance(allowance_path) if allowance_path else None  # a bad file costs nothing either
    # each run's findings (a whole analysis) start on another thread as soon as it is read, beside the next
    # read and then the gate's statistics
    started = {}
    pool = ThreadPoolExecutor(max_workers=1)
    start = None if opts.rule_set(tol, parsed)["findings"].off else (
        lambda run: started.setdefault(id(run), pool.submit(gate.run_findings, run)))
    try:
        base, cand = load_sides(baseline, candidate, strict=strict, each=start)
        warn_problems(base + cand)
        if cal is None and len(base) == 1 == len(cand):
            found = allowance.find_in(baseline) if os.path.isdir(baseline) else None
            cal = allowance.read_allowance(found) if found else None
        v = gate.compare(base, cand, tolerance=tol, alpha=lvl, window=win, rules=parsed, correction=correction,
                         min_windows=min_windows, max_lag=lag, force=force, unit=unit, allowance=cal,
                         findings_of=lambda run: started[id(run)].result())
    finally:
        # on success every analysis is done (the verdict waited for them); on an error (a damaged candidate,
        # say) the one under way is not waited for and the queued ones do not start: the error shows at once
        pool.shutdown(wait=False, cancel_futures=True)
    if json_out:
        write_output(json_out, document.dumps(document.verdict_document(v)), "JSON verdict")
    if junit:
        write_output(junit, present_junit.verdict_junit(v), "JUnit XML")
    if markdown:
        write_output(markdown, present_markdown.verdict_markdown(v, everything=verbose), "Markdown summary")
    if html:
        from diffaudit.present.html import compare_page  # matplotlib and jinja2: only when a page is asked for

        write_output(html, compare_page(v, base, cand), "HTML page")
    click.echo(text.verdict_text(v, everything=verbose), nl=False, err=any_stdout(json_out, junit, markdown, html))
    code = EXIT_BY_STATUS[v.status]
    if v.status == "inconclusive" and on_inconclusive:
        code = EXIT_OK if on_inconclusive == "pass" else EXIT_FAIL
    click.get_current_context().exit(code)
