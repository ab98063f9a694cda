"""`diffaudit sweep`: many runs at once, per noise band in units of L*, with the best set and what moves what."""

from __future__ import annotations

import os
import re

import click
import polars as pl

from diffaudit import allowance as allowance_file
from diffaudit import sweeps as sweep_lib
from diffaudit.analysis import analyze
from diffaudit.errors import DiffauditError
from diffaudit.load import load_run
from diffaudit.cli import EXIT_FAIL, EXIT_OK, any_stdout, main, not_stdout, output_option, write_output
from diffaudit.present import document, text

FAIL_ON = ("fail", "warn", "never")

HELP = f"""Read many runs at once: one row per run, configurations with their seed spread, and the best set.

RUNS are run folders, folders of runs, quoted globs ("runs/lr*") or s3:// URLs,
hundreds or thousands of them. Each run's late loss is shown per noise band
(low, mid, high log-SNR: thirds of the bins) as a ratio to the Gaussian L* of
its own target, so runs of different targets share one scale; runs without
data statistics show their loss as logged, and the notes say why. Runs whose
config differs only in a seed are one configuration (mean and seed spread).
The best set is every configuration that cannot be told apart from the best
at --alpha (Holm), overall and per band; each one left out says why.

Runs are read in --jobs worker processes; each run's row is cached outside the
run ({sweep_lib.cache_dir()}/sweep; $DIFFAUDIT_CACHE moves it), keyed by its
files' names, sizes and times and the diffaudit version, so a second call
reads only what changed. A run that cannot be read is a row with its error.
Runs still training are rows with their state and provisional verdicts.

\b
Exit codes: 0 read (every run, readable or not, is a row), 1 --fail-on: a run's
verdict is at that level, 2 bad usage or a pattern that matches nothing.

\b
Examples:
  diffaudit sweep "runs/lr_*" --sort lstar_ratio --top 20
  diffaudit sweep runs/ --json sweep.json --parquet sweep.parquet --fail-on fail
"""


@main.command(help=HELP, short_help="Many runs at once: per noise band in units of L*, the best set, effects.")
@click.argument("runs", nargs=-1, required=True, type=str)
@click.option("--sort", default="lstar_ratio", show_default=True, metavar="COLUMN",
              help="Sort the run table by this column (ascending; a leading - descends), e.g. ratio_low or -clip_rate.")
@click.option("--top", default=None, type=click.IntRange(1, None), help="Show only the first N runs of the table.")
@click.option("--jobs", "-j", default=None, type=click.IntRange(1, 256), help="Worker processes (default: the cores).")
@click.option("--no-cache", is_flag=True, help="Read every run again instead of using cached rows.")
@click.option("--alpha", default=sweep_lib.ALPHA, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Level at which a configuration is shown worse than the best.")
@click.option("--allowance", "allowance_path", type=click.Path(dir_okay=False, path_type=str), metavar="FILE", default=None,
              help="A `diffaudit calibrate` file: the seed spread for configurations without seeds.")
@click.option("--fail-on", type=click.Choice(FAIL_ON), default="never", show_default=True,
              help="Exit 1 when a run's verdict is failing or its logger closed on an exception (fail), or when a "
                   "run has warnings or worse (warn).")
@output_option("-o", "--html", what="a self-contained HTML page: configurations and the best set, a runs x noise-level "
                                    "heatmap in units of L*, the best set's curves, the run table, the effects")
@click.option("--reports", "reports_dir", type=click.Path(file_okay=False, path_type=str), metavar="DIR", default=None,
              help="Also write each readable run's report page into DIR (linked from the -o page).")
@output_option("--json", "json_out", what="runs, groups, best set and effects as JSON")
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False, allow_dash=True, path_type=str), metavar="FILE",
              default=None, help="Write one row per run as CSV to FILE ('-' for stdout).")
@click.option("--parquet", "parquet_out", type=click.Path(dir_okay=False, allow_dash=True, path_type=str), metavar="FILE",
              default=None, callback=not_stdout("a Parquet file is binary, not for a terminal or a pipe"),
              help="Write one row per run as Parquet to FILE (for pandas, polars or DuckDB).")
def sweep(runs, sort, top, jobs, no_cache, alpha, allowance_path, fail_on, html, reports_dir, json_out, csv_out,
          parquet_out):
    al = allowance_file.read_allowance(allowance_path) if allowance_path else None
    s = sweep_lib.sweep(list(runs), jobs=jobs, cache=not no_cache, alpha=alpha, allowance=al)
    if sort.lstrip("-") not in s.runs.columns:
        raise DiffauditError(f"--sort {sort!r}: no such column; one of {', '.join(s.runs.columns)}")
    if json_out:
        write_output(json_out, document.dumps(document.sweep_document(s)), "sweep JSON")
    if csv_out:
        write_output(csv_out, sweep_lib.csv_text(s), "sweep CSV")
    if parquet_out:
        sweep_lib.write_parquet(s, parquet_out)
    links = _write_reports(s, reports_dir, html) if reports_dir else {}
    if html:
        from diffaudit.present.html import sweep_page  # matplotlib and jinja2: only when a page is asked for

        first = s.runs.filter(pl.col("error").is_null() & pl.col("lstar_ratio").is_not_null())
        process = load_run(first["path"][0]).process if first.height else None
        write_output(html, sweep_page(s, process, reports=links), "HTML page")
    for line in text.sweep_lines(s, sort=sort, top=top):
        click.echo(line, err=any_stdout(json_out, csv_out, html))
    bad = {"fail": ("failing",), "warn": ("failing", "warnings"), "never": ()}[fail_on]
    failed = s.runs.filter(pl.col("verdict").is_in(list(bad)) | (pl.col("state") == "failed")).height if bad else 0
    click.get_current_context().exit(EXIT_FAIL if failed else EXIT_OK)


def _write_reports(s, folder: str, page: str | None) -> dict:
    """Each readable run's report page in ``folder``; run name -> link relative to the sweep page."""
    from diffaudit.present.html import report_page  # matplotlib and jinja2: only when pages are asked for

    os.makedirs(folder, exist_ok=True)
    base = os.path.dirname(os.path.abspath(page)) if page and page != "-" else os.getcwd()
    links, used = {}, set()
    for r in s.runs.filter(pl.col("error").is_null()).iter_rows(named=True):
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", r["name"]).strip("._") or "run"
        name, k = stem, 1
        while name in used:
            k += 1
            name = f"{stem}-{k}"
        used.add(name)
        try:
            run = load_run(r["path"])
            target = os.path.join(folder, f"{name}.html")
            write_output(target, report_page(run, analyze(run)), "report page")
        except DiffauditError as e:  # the run changed or broke since its row was read: the table says so
            click.echo(f"warning: {r['name']}: no report written ({e})", err=True)
            continue
        links[r["name"]] = os.path.relpath(os.path.abspath(target), base).replace(os.sep, "/")
    return links
