"""Where each command's outputs go: '-' is stdout for text outputs; file-only outputs refuse it in one line."""

from pathlib import Path

import pytest
from _cli import one_line_error, run_cli

import diffaudit.cli.export  # noqa: F401  (registers the commands these tests call directly)
import diffaudit.cli.watch  # noqa: F401

LOGS = Path(__file__).resolve().parents[1] / "sample_logs"
RUN = LOGS / "healthy_seed0"


@pytest.mark.parametrize("args,needles", [
    (["export", RUN, "-o", "-"], ["-o/--output -", "binary Parquet", "give a file name"]),
    (["export", RUN, "-o", "x.parquet", "--tensorboard", "-"], ["--tensorboard -", "folder", "give a folder"]),
    (["watch", RUN, "-o", "-", "--timeout", "0"], ["-o/--html -", "rewrites the page", "give a file name"]),
])
def test_a_file_only_output_refuses_stdout(tmp_path, monkeypatch, args, needles):
    monkeypatch.chdir(tmp_path)
    one_line_error(run_cli(*args), *needles)
    assert not list(tmp_path.iterdir())  # refused before anything was read or written: no file named '-'


def test_export_writes_a_file_named_dash_when_asked_as_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run_cli("export", RUN, "-o", "./-")
    assert res.exit_code == 0 and (tmp_path / "-").stat().st_size > 0, res.output


@pytest.mark.parametrize("command,option", [("export", "--output"), ("export", "--tensorboard"), ("watch", "--html")])
def test_the_help_of_a_file_only_output_says_it_is_not_stdout(command, option):
    options = " ".join(run_cli(command, "--help").output.split("Options:")[1].split())
    assert option in options and "not '-'" in options.split(option, 1)[1].split(" --", 1)[0]


def test_the_readme_says_which_outputs_take_stdout():
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert "`export -o`/`--tensorboard` and `watch -o` write files only" in readme
