"""`diffaudit calibrate`: measure the seed-to-seed spread of a configuration and save it for `compare`."""

from __future__ import annotations

import click

from diffaudit import allowance as allowance_file
from diffaudit import gate
from diffaudit import gate_options as opts
from diffaudit.calibration import MIN_RUNS, calibrate as measure
from diffaudit.cli import STRICT, main, warn_problems, write_output
from diffaudit.load import load_run
from diffaudit.present import text
from diffaudit.sides import resolve_side
from diffaudit.words import pct

HELP = f"""Measure how much healthy seeds of one configuration differ, and save it for `compare`.

RUNS are {MIN_RUNS} or more healthy runs of one configuration that differ only in
their seed (run folders, folders of runs, quoted globs, s3:// URLs). The spread
of their late loss per noise bin is pooled across bins (a smooth profile over
the noise levels with shrinkage), so a few seeds give each bin many degrees of
freedom; the mean over bins, the steps to reach a loss level (at the level
where the seeds agree best) and the clip rate get their sd over runs.

`compare --allowance FILE` then uses it for one run per side instead of the
built-in allowance, learned on other models; with several baseline seeds, its
runs that are not compared lend the seeds their scatter; a baseline folder
holding a file named {allowance_file.FILE_NAME} uses it without the option. It
says what compare will see with it, one run per side and with 3 or 5 seeds. The file is JSON and
says what it was measured on (process, prediction, bins, steps, runs, date);
`compare` refuses it (exit 2) for runs of another process, target or bins.

\b
CI recipe: calibrate on the main branch's recent healthy runs, refreshed as they
accumulate, and gate each pull request's one run against main's newest:
  diffaudit calibrate "runs/main/*" -o runs/main/{allowance_file.FILE_NAME}
  diffaudit compare runs/main/latest runs/pr --allowance runs/main/{allowance_file.FILE_NAME}

\b
Exit codes: 0 measured (and saved with -o), 2 bad input (fewer than {MIN_RUNS} runs,
runs whose config differs in more than a seed without --force, a damaged run),
3 the runs share too few steps for a late window.

\b
Examples:
  diffaudit calibrate runs/base_s0 runs/base_s1 runs/base_s2 -o allowance.json
  diffaudit calibrate "runs/base_s*" -o runs/{allowance_file.FILE_NAME} --json -
"""


@main.command(help=HELP, short_help="Measure how seeds of your model differ, for one-run-per-side gates.")
@click.argument("runs", nargs=-1, required=True, type=str)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=str), metavar="FILE", default=None,
              help=f"Save the calibration to FILE (JSON; name it {allowance_file.FILE_NAME} inside a baseline folder "
                   "for compare to find it).")
@click.option("--window", default=opts.WINDOW, show_default=True, help="Late window, as compare reads it.")
@click.option("--min-windows", default=opts.MIN_WINDOWS, show_default=True, type=click.IntRange(0, 10_000),
              help="Widen the late window to at least this many matched blocks.")
@click.option("--max-lag", default=pct(opts.MAX_LAG), show_default=True,
              help="Progress lag (share of the matched steps) removed from each run, as compare does.")
@click.option("--force", is_flag=True, help="Calibrate even though config keys other than a seed differ.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, allow_dash=True, path_type=str), metavar="FILE",
              default=None, help="Also write the calibration's JSON to FILE ('-' for stdout).")
@STRICT
def calibrate(runs, output, window, min_windows, max_lag, force, json_out, strict):
    win = opts.parse_window(window)
    lag = opts.parse_tolerance(max_lag, option="--max-lag")
    paths = resolve_side(list(runs), role="calibration runs")
    loaded = [load_run(p, strict=strict) for p in paths]
    warn_problems(loaded)
    al = measure(loaded, window=win, min_windows=min_windows, max_lag=lag, force=force)
    if output:
        al = allowance_file.Allowance(**{**al.__dict__, "source": output})
        allowance_file.write_allowance(al, output)
    if json_out:
        write_output(json_out, allowance_file.dumps(al), "calibration JSON")
    sight = gate.projected_sight(al, seeds=gate.PROJECT_SEEDS)
    for line in text.allowance_lines(al, saved=output, sight=sight, tolerance=opts.TOLERANCE):
        click.echo(line, err=json_out == "-")
