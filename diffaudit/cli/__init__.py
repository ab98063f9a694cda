"""The ``diffaudit`` command line: the only place that prints and picks exit codes.

Exit codes (documented in ``diffaudit --help`` and the README):
  0  success; for ``compare`` and ``report --fail-on``: no regression / no finding at that level
  1  ``compare``: a regression; ``report --fail-on``: a finding at or above that severity
  2  bad input or usage (missing or corrupt run, wrong option), one line on stderr
  3  ``compare``: inconclusive (too little overlap or data)
  4  internal error (a bug in diffaudit: please report it); DIFFAUDIT_DEBUG=1 shows the traceback
  130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from diffaudit import __version__
from diffaudit.errors import DiffauditError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INCONCLUSIVE, EXIT_INTERNAL = 0, 1, 2, 3, 4

EPILOG = """\b
Exit codes: 0 ok / no regression, 1 regression or --fail-on finding,
2 bad input or usage, 3 inconclusive, 4 internal error, 130 interrupted.
"""


class _Group(click.Group):
    """Turns library errors into one line on stderr and a documented exit code; never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DiffauditError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as e:  # a bug: say so in one line, keep the traceback behind a switch
            if os.environ.get("DIFFAUDIT_DEBUG"):
                raise
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            click.echo(
                f"internal error: {type(e).__name__}: {msg} (a diffaudit bug; rerun with DIFFAUDIT_DEBUG=1 "
                "for the traceback and report it)",
                err=True,
            )
            ctx.exit(EXIT_INTERNAL)


@click.group(cls=_Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="diffaudit")
def main():
    """Is my diffusion model training well? Audit diffusion training from its logs alone.

    RUN is a run directory written by diffaudit.logger.RunLogger, or a single
    .parquet file made by `diffaudit export`.
    """


def write_output(path: str, text: str, what: str) -> None:
    """Write an output file of a command (creating its folder); an OSError becomes one line naming the file."""
    try:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    except OSError as e:
        raise DiffauditError(f"{path}: cannot write the {what} ({e.strerror or e})") from None


def _register():
    from diffaudit.cli import summary  # noqa: F401  (commands register themselves on import)

    for mod in ("optimum", "report", "compare"):
        try:
            __import__(f"diffaudit.cli.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"diffaudit.cli.{mod}":
                raise


_register()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
