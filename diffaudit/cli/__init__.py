"""The ``diffaudit`` command line: the only place that prints and picks exit codes.

Exit codes (documented in ``diffaudit --help`` and the README):
  0  success; for ``compare`` and ``report --fail-on``: no regression / no finding at that level;
     ``watch``: the run finished (a clean close) without a finding at its --fail-on level
  1  ``compare``: a regression; ``report --fail-on``: a finding at or above that severity; ``sweep --fail-on``:
     a run at that level;
     ``watch``: a finding at its --fail-on level fired, or the run's logger closed on an exception
  2  bad input or usage (missing or corrupt run, wrong option), one line on stderr
  3  ``compare``: inconclusive (too little overlap or data); ``calibrate``: too few shared steps;
     ``watch``: the run ended without a close
     (killed or crashed), or --timeout passed before it finished
  4  internal error (a bug in diffaudit: please report it); DIFFAUDIT_DEBUG=1 shows the traceback
  130 interrupted (Ctrl-C)
  141 the reader of the output went away (``| head``): what a tool killed by SIGPIPE returns
"""

from __future__ import annotations

import importlib
import os
import stat
import sys
import warnings
from pathlib import Path

import click

from diffaudit import __version__
from diffaudit.errors import DiffauditError

# ----------------------------------------------------------------------------
# Memory: freed pages go back to the system promptly

JEMALLOC_CONF = "dirty_decay_ms:20,muzzy_decay_ms:0"  # polars' allocator (its own default: 500 and 1,000 ms)
# watch holds the run's decoded parts between polls and runs for hours: it gives every freed page back at once
# (a poll costs ~40% more time, ~1.4 s per million steps after a flush; its peak at 1,000,000 steps 395 -> 384 MiB)
WATCH_JEMALLOC_CONF = "dirty_decay_ms:0,muzzy_decay_ms:0"


def prompt_allocators() -> None:
    """Ask polars' allocator to hand freed memory back within milliseconds, not seconds: a command's peak memory
    is what a job's memory limit is held to.

    polars' jemalloc keeps freed pages 0.5 s ("dirty"), then 1 s more ("muzzy", still resident), before it gives
    them back; a report reads, checks and analyzes a 1,000,000-step run in about that long, so nearly every
    temporary it made counted toward its peak (~470 MiB instead of ~390). Within 20 ms a freed page is either
    reused or returned, and the time is unchanged (0 ms costs ~30%: each free becomes a system call; ``watch``
    pays it, see :data:`WATCH_JEMALLOC_CONF`). polars
    reads the setting once, when it is imported: this runs before any command imports it, and a
    ``_RJEM_MALLOC_CONF`` of the user's is left as it is.
    """
    if "polars" not in sys.modules:
        command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
        os.environ.setdefault("_RJEM_MALLOC_CONF", WATCH_JEMALLOC_CONF if command == "watch" else JEMALLOC_CONF)


prompt_allocators()

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INCONCLUSIVE, EXIT_INTERNAL = 0, 1, 2, 3, 4
EXIT_PIPE = 141  # 128 + SIGPIPE: never 0, so a gate piped into `head` cannot pass by accident

EPILOG = """\b
Exit codes: 0 ok / no regression / watched run finished, 1 regression,
--fail-on finding or watched run failed, 2 bad input or usage,
3 inconclusive or watched run ended without a close / --timeout,
4 internal error, 130 interrupted, 141 output pipe closed early.
"""

# Parameters of the commands that name what they read and what they write (by click parameter name).
INPUT_PARAMS = ("run", "run_path", "data", "baseline", "candidate", "runs")
OUTPUT_PARAMS = ("html", "json_out", "junit", "markdown", "markdown_out", "output", "tensorboard", "csv_out",
                 "parquet_out")
TEXT_OUTPUTS = ("html", "json_out", "junit", "markdown", "markdown_out", "csv_out")  # '-' means stdout for these (see output_option)
# export's -o (binary Parquet) and --tensorboard (a folder), watch's -o (a page rewritten at every change): files only,
# '-' refused before anything runs (not_stdout)


# ----------------------------------------------------------------------------
# Outputs never land in an input


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _identities(path: str) -> set:
    """(device, inode) of a file, or of every file one level or two inside a run directory (hard links count)."""
    out = set()
    try:
        st = os.stat(path)
    except OSError:
        return out
    if not stat.S_ISDIR(st.st_mode):
        return {(st.st_dev, st.st_ino)}
    stack = [(path, 0)]
    while stack:
        d, level = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                s = e.stat()
            except OSError:
                continue
            if stat.S_ISDIR(s.st_mode):
                if level < 1:
                    stack.append((e.path, level + 1))
            else:
                out.add((s.st_dev, s.st_ino))
    return out


def _input_paths(ctx) -> list[str]:
    paths = []
    for name in INPUT_PARAMS:
        v = ctx.params.get(name)
        if not v:
            continue
        if name in ("baseline", "candidate", "runs"):
            from diffaudit.sides import resolve_side  # polars: not for `diffaudit --help`

            try:
                paths += [str(p) for p in resolve_side(v, role=name)]
            except DiffauditError:
                pass  # the command names this error itself, after checking its options
        else:
            paths.append(str(v))
    return paths


def check_outputs(ctx) -> None:
    """Refuse an output file that lies inside an input run or is an input file, or two outputs that are one file."""
    opts = {p.name: "/".join(p.opts) for p in ctx.command.params}
    given = [(n, opts.get(n, n), str(ctx.params[n])) for n in OUTPUT_PARAMS if ctx.params.get(n)]
    stdout = [opt for n, opt, out in given if out == "-" and n in TEXT_OUTPUTS]  # '-' is stdout, not a file
    if len(stdout) > 1:
        raise DiffauditError(f"{' and '.join(stdout)} both write to stdout ('-'); give all but one a file")
    outs = [(opt, out) for n, opt, out in given if not (out == "-" and n in TEXT_OUTPUTS)]
    if not outs:
        return
    inputs = [(i, os.path.realpath(i), _identities(i)) for i in _input_paths(ctx)]
    seen = {}
    for opt, out in outs:
        real = os.path.realpath(out)
        if real in seen:
            raise DiffauditError(f"{seen[real]} and {opt} name the same file {out}; give each output its own file")
        seen[real] = opt
        try:
            st = os.stat(out)
            ident = (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None
        except OSError:
            ident = None
        for given, root, ids in inputs:
            if _inside(real, root) or (ident is not None and ident in ids):
                what = "is the input" if real == root or not os.path.isdir(root) else "lies inside the input run"
                raise DiffauditError(f"{opt} {out}: {what} {given}; diffaudit never writes into its inputs")


class _Command(click.Command):
    """A command whose output files are checked against its inputs before it runs."""

    def invoke(self, ctx):
        check_outputs(ctx)
        return super().invoke(ctx)


def _quiet_stdout() -> None:
    # the reader is gone: later writes (and the flush at exit) go nowhere instead of raising again
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except Exception:  # no real descriptor (a test runner's buffer): nothing to quiet
        pass


# Commands are imported when they run, not when `diffaudit --help` lists them: the analysis pulls in
# scipy and matplotlib, which a help text or `summary` does not need. name -> (module, one line of help).
COMMANDS = {
    "summary": ("diffaudit.cli.summary", "The run's state, steps, segments, ranks and recent loss per noise level."),
    "report": ("diffaudit.cli.report", "Audit a run: a verdict and findings with recommendations; HTML and JSON."),
    "compare": ("diffaudit.cli.compare", "Gate on a regression: compare CANDIDATE run(s) with BASELINE run(s)."),
    "watch": ("diffaudit.cli.watch", "Follow a run while it trains; exit 1 as soon as training is broken."),
    "optimum": ("diffaudit.cli.optimum", "The empirical L* of the training set per noise bin, stored in the run."),
    "export": ("diffaudit.cli.export", "A run as one .parquet file, or as TensorBoard events."),
    "calibrate": ("diffaudit.cli.calibrate", "Measure how seeds of your model differ, for one-run-per-side gates."),
    "sweep": ("diffaudit.cli.sweep", "Many runs at once: per noise band in units of L*, the best set, effects."),
}


class _Group(click.Group):
    """Turns library errors into one line on stderr and a documented exit code; never a traceback.

    Commands load lazily (:data:`COMMANDS`): a command's module registers it on import.
    """

    command_class = _Command

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx, name):
        if name not in self.commands and name in COMMANDS:
            importlib.import_module(COMMANDS[name][0])
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        rows = [(n, self.commands[n].get_short_help_str(70) if n in self.commands else COMMANDS[n][1])
                for n in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx):
        debug = bool(os.environ.get("DIFFAUDIT_DEBUG"))
        try:
            with warnings.catch_warnings():
                if not debug:  # numeric warnings of NaN-aware code and font warnings are not the user's business
                    warnings.simplefilter("ignore", RuntimeWarning)
                    warnings.filterwarnings("ignore", message=r"Glyph .* missing from", category=UserWarning)
                try:
                    return super().invoke(ctx)
                finally:
                    sys.stdout.flush()  # a closed pipe shows here, inside the handlers below, not at exit
        except BrokenPipeError:
            _quiet_stdout()
            ctx.exit(EXIT_PIPE)
        except DiffauditError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except BaseException as e:  # a bug: say so in one line, keep the traceback behind a switch
            # (BaseException: a panic in polars' Rust code arrives as pyo3's PanicException, not an Exception)
            if os.environ.get("DIFFAUDIT_DEBUG") or not (isinstance(e, Exception) or type(e).__name__ == "PanicException"):
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


def run() -> None:
    """The ``diffaudit`` console script: the CLI, then an immediate exit once stdout and stderr are flushed.

    A command's work is done when it returns: its files are written, closed and renamed into place
    (:func:`write_output`). Python's own shutdown would then free every frame and array of the runs
    it read, one object at a time: 0.2-0.25 s of a ``report`` on a 1,000,000-step run on the 2-core
    machine, more for ``compare``. ``os._exit`` skips that. ``main`` (what tests call in-process) exits
    the usual way.
    """
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    if code is None:
        code = 0
    if not isinstance(code, int):  # a message for Python to print: leave the usual way
        raise SystemExit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that is gone, or a closed stream: nothing more can be said
            pass
    os._exit(code)


# ----------------------------------------------------------------------------
# What every command shares: --strict, output options, warnings, writing outputs

STRICT = click.option("--strict", is_flag=True, help="A damaged part is fatal (exit 2) instead of skipped with a warning.")


def output_option(*decls: str, what: str):
    """An option that names an output file, the one convention of every command: FILE, or '-' for stdout."""
    return click.option(*decls, type=click.Path(dir_okay=False, allow_dash=True, path_type=str), metavar="FILE",
                        default=None, help=f"Write {what} to FILE ('-' for stdout).")


def not_stdout(why: str, want: str = "a file name"):
    """A click callback for an output that can only be a file or a folder: '-' is refused (exit 2), saying why."""

    def check(ctx, param, value):
        if value == "-":
            raise DiffauditError(f"{'/'.join(param.opts)} -: {why}; give {want}")
        return value

    return check


def any_stdout(*paths) -> bool:
    """Whether an output goes to stdout: then the human-readable text goes to stderr."""
    return any(p == "-" for p in paths)


def warn_problems(runs) -> None:
    """One 'warning:' line on stderr per problem met while loading (skipped parts, repaired rows, ...)."""
    for r in runs:
        for p in r.problems:
            click.echo(f"warning: {p}", err=True)


def write_output(path: str, text: str, what: str) -> None:
    """Write an output of a command: '-' to stdout; a file through a temporary file and a rename (a reader
    never sees half of it; its folder is created), unless it is a device or pipe (/dev/stdout), written in place.
    An OSError becomes one line naming the file."""
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    p = Path(path)
    try:
        if p.exists() and not p.is_file():
            with open(p, "w", encoding="utf-8") as f:
                f.write(text)
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as e:
        raise DiffauditError(f"{path}: cannot write the {what} ({e.strerror or e})") from None


if __name__ == "__main__":  # pragma: no cover
    run()
