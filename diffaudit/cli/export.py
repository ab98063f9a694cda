"""`diffaudit export`: a run as one self-describing .parquet file, or as TensorBoard events."""

from __future__ import annotations

import click

from diffaudit.cli import STRICT, main, not_stdout, warn_problems
from diffaudit.load import export_run, load_run


@main.command()
@click.argument("run", type=click.Path(path_type=str))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=str), metavar="FILE",
              callback=not_stdout("an export is a binary Parquet file, not text for stdout"),
              help="The .parquet file to write (a file: not '-', Parquet is binary).")
@click.option("--tensorboard", type=click.Path(file_okay=False, path_type=str), metavar="DIR",
              callback=not_stdout("TensorBoard events are a folder of files, not text for stdout", "a folder"),
              help="Also (or only) write TensorBoard events here: per-noise-level loss and excess over L*, clip rate, "
                   "grad norm, your scalars, and the findings as text (needs the tensorboard extra; a folder, not '-').")
@STRICT
def export(run, output, tensorboard, strict):
    """Write RUN as one self-describing .parquet file (for CI artifacts), or as TensorBoard events.

    \b
    Examples:
      diffaudit export runs/exp1 -o exp1.parquet
      diffaudit export runs/exp1 --tensorboard tb/exp1     # then: tensorboard --logdir tb
    """
    if not output and not tensorboard:
        raise click.UsageError("give -o FILE.parquet, --tensorboard DIR, or both")
    r = load_run(run, strict=strict)
    warn_problems([r])
    if output:
        out = export_run(r, output)
        click.echo(f"wrote {out} ({r.steps.height} steps, {r.bins.height} bin rows)")
    if tensorboard:
        # the analysis (scipy) and the writer (tensorboard): only when events are asked for
        from diffaudit.analysis import analyze
        from diffaudit.present.markdown import report_markdown
        from diffaudit.present.tensorboard import write_tensorboard

        a = analyze(r)
        lstar = a.bins["lstar_gauss"].to_numpy() if "lstar_gauss" in a.bins.columns else None
        counts = write_tensorboard(r, tensorboard, findings_markdown=report_markdown(a, heading=False), lstar=lstar)
        curves = sum(1 for t in counts if t.startswith("loss_by_noise/"))
        click.echo(f"wrote TensorBoard events to {tensorboard} ({len(counts)} tags, {curves} noise levels)")
