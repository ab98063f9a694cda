"""Where each command's outputs go: '-' is stdout for text outputs; file-only outputs refuse it in one line."""

import json
import shutil
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


# ----------------------------------------------------------------------------
# The commands' text comes from diffaudit.present; what it counts, from the library


def test_summary_prints_the_presentation_of_the_library_summary():
    import diffaudit
    from diffaudit.present.text import recent_loss_lines, summary_lines
    from diffaudit.summary import summarize

    s = summarize(diffaudit.load_run(LOGS / "resumed"), max_rows=4)
    assert (s.segments, s.ranks, s.restarts, s.lifecycle.state) == (2, 1, 1, "finished")
    lines = summary_lines(s)
    assert "segments 2 (restarts: 1), ranks 1" in lines[3] and lines[2] == f"state: {s.lifecycle.words}"
    table = recent_loss_lines(s)
    assert table[0] == "" and len(table) == 3 + 4  # blank, title, header, one row per merged group
    res = run_cli("summary", LOGS / "resumed", "--rows", 4)
    assert res.exit_code == 0 and res.output.splitlines() == lines + table, res.output


def test_watch_change_lines():
    from diffaudit.present.text import watch_change_line
    from diffaudit.watch import Change

    assert watch_change_line(Change("cleared", "loss.spikes", None, "warn")) == "  cleared  loss.spikes (was warn)"
    assert watch_change_line(Change("appeared", "a.b", "fail", None, "m")) == "  [FAIL] new          a.b: m"
    assert watch_change_line(Change("changed", "a.b", "warn", "info", "m", provisional=True)) == \
        "  [PROV] info -> warn a.b: m"


def test_optimum_table_shows_the_gaussian_column_only_when_known():
    from types import SimpleNamespace

    import numpy as np

    import diffaudit
    from diffaudit.present.text import optimum_table

    process = diffaudit.load_run(RUN).process
    k = process.num_bins
    result = SimpleNamespace(loss_opt=np.linspace(0.1, 1, k), stderr=np.full(k, 0.01))
    bare, full = optimum_table(process, result, None), optimum_table(process, result, np.ones(k))
    assert len(bare) == len(full) == k + 1
    assert "Gaussian L*" not in bare[0] and full[0].endswith("Gaussian L*") and full[1].endswith("1")


# ----------------------------------------------------------------------------
# Defaults and choices come from the library, never retyped


def _param(command, name):
    import importlib

    cmd = getattr(importlib.import_module(f"diffaudit.cli.{command}"), command)
    return next(p for p in cmd.params if p.name == name)


def _default(func, name):
    import inspect

    return inspect.signature(func).parameters[name].default


def test_cli_defaults_are_the_library_defaults():
    from diffaudit import optimum, summary, watch

    assert _param("summary", "rows").default == _default(summary.summarize, "max_rows") == summary.MAX_ROWS
    f = optimum.bin_empirical_optimal_loss
    assert _param("optimum", "samples_per_bin").default == _default(f, "samples_per_bin") == optimum.DEFAULT_SAMPLES_PER_BIN
    assert _param("optimum", "seed").default == _default(f, "seed") == optimum.DEFAULT_SEED
    assert _param("watch", "fail_on").default == _default(watch.stopping, "fail_on") == watch.DEFAULT_FAIL_ON
    assert _param("watch", "interval").default == watch.DEFAULT_INTERVAL


def test_fail_on_levels_are_the_findings_severities():
    from diffaudit.findings import GATE_SEVERITIES, SEVERITIES

    assert tuple(_param("report", "fail_on").type.choices) == GATE_SEVERITIES == ("warn", "fail")
    assert set(GATE_SEVERITIES) < set(SEVERITIES)
    assert tuple(_param("watch", "fail_on").type.choices) == ("fail", "warn", "never")


def test_what_stops_a_watch():
    from types import SimpleNamespace as F

    from diffaudit.findings import SEVERITY_RANK
    from diffaudit.watch import stopping

    found = [F(id=s, severity=s, rank=SEVERITY_RANK[s], provisional=False) for s in ("info", "warn", "fail")]
    found.append(F(id="early", severity="fail", rank=2, provisional=True))
    assert [f.id for f in stopping(found)] == ["fail"]  # the default level; a provisional finding never counts
    assert [f.id for f in stopping(found, "warn")] == ["warn", "fail"]
    assert stopping(found, "never") == []


# ----------------------------------------------------------------------------
# watch's exit codes, as documented


@pytest.mark.parametrize("args,code", [
    ([RUN], 0),  # finished, nothing at fail
    ([LOGS / "lr_high"], 1),  # finished, but the loss exploded
    ([RUN, "--fail-on", "never"], 0),
    (["not_started_yet", "--timeout", "0"], 3),  # --timeout passed before the run finished
])
def test_watch_exit_codes(tmp_path, monkeypatch, args, code):
    monkeypatch.chdir(tmp_path)
    assert run_cli("watch", *args, "--interval", "0.1").exit_code == code


def test_the_exit_codes_of_watch_are_documented():
    from diffaudit.cli import EPILOG, __doc__ as doc

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text().split("### Exit codes", 1)[1]
    rows = {ln.split("|")[1].strip(): ln for ln in readme.splitlines() if ln.startswith("| ") and ln[2].isdigit()}
    for code in ("0", "1", "3"):
        assert "`watch`" in rows[code], rows[code]
    epilog = " ".join(EPILOG.split())
    assert "1 regression, --fail-on finding or watched run failed" in epilog
    assert "3 inconclusive or watched run ended without a close / --timeout" in epilog
    assert doc.count("``watch``") == 3


@pytest.mark.parametrize("close,code,said", [
    ({"status": "failed", "error": "RuntimeError: CUDA out of memory"}, 1, "CUDA out of memory"),  # closed on an exception
    (None, 3, "the run ended without a close (killed or crashed)"),  # no close and no write for long
])
def test_watch_exit_codes_of_runs_that_did_not_finish(tmp_path, close, code, said):
    run = tmp_path / "r"
    shutil.copytree(RUN, run)
    marker = next((run / "segments").glob("close-*.json"))
    if close is None:
        marker.unlink()
    else:
        marker.write_text(json.dumps({**json.loads(marker.read_text()), **close}))
    res = run_cli("watch", run, "--interval", "0.1", "--fail-on", "never", "--timeout", "60")  # 60 s: a hang guard
    assert res.exit_code == code, res.output
    assert said in res.output and "--timeout" not in res.output
