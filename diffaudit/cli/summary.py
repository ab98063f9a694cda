"""`diffaudit summary`: what a run holds, at a glance."""

from __future__ import annotations

import click

from diffaudit.cli import STRICT, main, warn_problems
from diffaudit.lifecycle import lifecycle
from diffaudit.load import load_run
from diffaudit.summary import summarize
from diffaudit.words import bin_ranges, edge_span, noise_unit, num, pct


@main.command()
@click.argument("run", type=click.Path(path_type=str))
@STRICT
@click.option("--rows", default=20, show_default=True, type=click.IntRange(1, 1000), help="Noise-level rows in the table.")
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
    echo = click.echo
    echo(f"run {s.name}  (id {s.run_id})  {s.process}/{s.prediction}, {s.num_bins} noise bins")
    if s.first_step is not None:
        gap = f", {s.missing_steps} missing inside" if s.missing_steps else ""
        echo(f"steps {s.first_step}..{s.last_step}: {s.steps_logged} logged{gap}")
    echo(f"state: {lifecycle(r).words}")
    echo(f"segments {s.segments} (restarts: {max(s.segments - s.ranks, 0)}), ranks {s.ranks}, "
         f"rows superseded by restarts {s.superseded_rows}")
    echo(f"loss {num(s.first_loss)} -> {num(s.last_loss)} (median of first/last 5% of steps); "
         f"non-finite losses {s.nonfinite}; clip rate {pct(s.clip_rate)}")
    ema = int(r.ema_bins["step_lo"].n_unique()) if r.ema_bins.height else 0
    echo(f"eval windows {s.eval_windows} (held-out, live weights), EMA eval windows {ema}, "
         f"gradient-probe steps {s.probe_steps}")
    warn_problems([s])
    if s.recent:
        unit = noise_unit(s.process)
        echo(f"\nrecent loss per noise level (steps >= {s.recent_from_step}):")
        echo(f"  {'bins':>9}  {unit + ' range':>19}  {'count':>8}  {'mean':>10}  {'std':>10}")
        for b in s.recent:
            rng = edge_span(s.process, b.t_lo, b.t_hi)
            echo(f"  {bin_ranges(range(b.bin_lo, b.bin_hi)):>9}  {rng:>19}  {b.count:>8}  {num(b.mean):>10}  "
                 f"{num(b.std, 3):>10}")
