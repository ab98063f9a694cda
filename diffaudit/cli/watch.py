"""`diffaudit watch`: follow a run while it trains, and stop the job when training is broken."""

from __future__ import annotations

import time

import click

from diffaudit.cli import EXIT_FAIL, EXIT_INCONCLUSIVE, EXIT_OK, STRICT, main, not_stdout, write_output
from diffaudit.present.text import watch_change_line, watch_update_line
from diffaudit.watch import DEFAULT_FAIL_ON, DEFAULT_INTERVAL, FAIL_ON, Watcher, stopping


@main.command(epilog="Example: diffaudit watch runs/exp1 -o report.html --fail-on fail && echo 'finished healthy'")
@click.argument("run", type=click.Path(path_type=str))
@click.option("--interval", type=click.FloatRange(min=0.1), default=DEFAULT_INTERVAL, show_default=True,
              help="Seconds between polls; a poll that finds no new file does no other work.")
@click.option("-o", "--html", "html", type=click.Path(dir_okay=False, path_type=str), metavar="FILE",
              callback=not_stdout("watch rewrites the page at every change and prints its status lines on stdout"),
              help="Rewrite this self-contained HTML report (atomically) whenever the run changes. A file, not '-': "
                   "the page is rewritten at every change and stdout holds the status lines.")
@click.option("--fail-on", type=click.Choice(FAIL_ON), default=DEFAULT_FAIL_ON, show_default=True,
              help="Exit 1 as soon as a finding at this level fires (provisional ones never count).")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Stop after this many seconds (exit 3 if the run has not finished by then).")
@STRICT
def watch(run, interval, html, fail_on, timeout, strict):
    """Follow RUN as it grows: print each finding as it appears, changes severity or clears.

    Exits 0 when the run finishes (a clean close) without a finding at the --fail-on level, 1 as soon as
    one fires (so a job script can stop the run and save the GPU hours) or when the logger closed on an
    exception, 3 when the run ended without a close (killed or crashed) or --timeout passed.
    """
    watcher = Watcher(run, strict=strict)
    start = time.time()
    last_state = None
    while True:
        u = watcher.poll()
        if u.changed:
            if u.state != last_state or u.changes:
                click.echo(watch_update_line(u, time.strftime("%H:%M:%S")))
                last_state = u.state
            for c in u.changes:
                click.echo(watch_change_line(c))
            if html:
                from diffaudit.present.html import report_page  # matplotlib and jinja2: only when a page is asked for

                write_output(html, report_page(u.run, u.analysis), "HTML report")  # atomic: a reader never sees half
            bad = stopping(u.findings, fail_on)
            if bad:
                click.echo(f"training is {'broken' if fail_on == 'fail' else 'off'}: "
                           + ", ".join(f"{f.id} ({f.severity})" for f in bad), err=True)
                raise SystemExit(EXIT_FAIL)
            if u.state == "finished":
                click.echo("the run finished")
                raise SystemExit(EXIT_OK)
            if u.state == "failed":
                click.echo("the run's logger closed on an exception", err=True)
                raise SystemExit(EXIT_FAIL)
            if u.state == "ended":
                click.echo("the run ended without a close (killed or crashed)", err=True)
                raise SystemExit(EXIT_INCONCLUSIVE)
        u = None  # the run and its analysis are let go before the next poll reads the run again beside them
        if timeout is not None and time.time() - start >= timeout:
            click.echo(f"--timeout {timeout:g} s passed before the run finished", err=True)
            raise SystemExit(EXIT_INCONCLUSIVE)
        time.sleep(interval)
