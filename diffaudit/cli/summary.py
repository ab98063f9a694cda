"""`diffaudit summary`: what a run holds, at a glance."""

from __future__ import annotations

import click

from diffaudit.cli import STRICT, main, warn_problems
from diffaudit.load import load_run
from diffaudit.present import text
from diffaudit.summary import MAX_ROWS, summarize


@main.command()
@click.argument("run", type=click.Path(path_type=str))
@STRICT
@click.option("--rows", default=MAX_ROWS, show_default=True, type=click.IntRange(1, 1000), help="Noise-level rows in the table.")
def summary(run, strict, rows):
    """Print an overview of RUN: state, steps, segments, ranks, losses, recent loss per noise level.

    The state is finished, failed (with the error), in progress (last write N s ago, step S of
    planned P) or ended without a close (no close marker, no write for long).

    \b
    Example:
      diffaudit summary runs/exp1
    """
    r = load_run(run, strict=strict)
    s = summarize(r, max_rows=rows)
    for line in text.summary_lines(s):
        click.echo(line)
    warn_problems([s])
    for line in text.recent_loss_lines(s):
        click.echo(line)
