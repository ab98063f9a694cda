"""Shared checks for CLI tests: the real click entry point, and the one-line error contract."""

from click.testing import CliRunner

from diffaudit.cli import main


def run_cli(*args):
    """Invoke ``diffaudit ARGS`` in-process; a traceback in the output fails the test."""
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in res.output, res.output
    return res


def one_line_error(res, *needles) -> str:
    """Assert exit code 2 and exactly one line ``error: ...`` that contains every needle; return it."""
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]
