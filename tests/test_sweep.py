"""``diffaudit sweep``: many runs at once, checked on a family whose truth is labelled.

shapes_mlp holds 8 healthy seeds of one configuration and 8 runs each with one real change
(learning rate / 10 and 50x, narrower nets, frozen weights, ...): the seeds must form one
configuration, the healthy configuration must be the best, and every labelled regression that
trains measurably worse must be out of the best set with its reason.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from _cli import one_line_error, run_cli
from _runs import snapshot

from diffaudit import sweeps as sweep_lib

REPO = Path(__file__).resolve().parents[1]
SHAPES = REPO / "sample_logs" / "families" / "shapes_mlp"
UNITS = REPO / "sample_logs" / "families" / "digits_mlp_units"
EDM = REPO / "sample_logs" / "families" / "patches_edm"
needs_shapes = pytest.mark.skipif(not (SHAPES / "healthy_s07").is_dir(), reason="sample_logs/families not present")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFAUDIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def shapes_sweep(tmp_path_factory):
    import os

    os.environ["DIFFAUDIT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    return sweep_lib.sweep([str(SHAPES)], jobs=2)


@needs_shapes
def test_seeds_are_one_configuration_and_the_healthy_one_is_best(shapes_sweep):
    s = shapes_sweep
    assert s.runs.height == 16 and s.runs["error"].null_count() == 16
    healthy = s.runs.filter(pl.col("name").str.starts_with("healthy"))
    assert healthy["group"].n_unique() == 1  # seed and name differ; nothing else does
    g = healthy["group"][0]
    assert s.groups.filter(pl.col("group") == g)["n"][0] == 8
    assert s.metric == "lstar_ratio" and s.best["lstar_ratio"]["best"] == g
    assert s.spread["source"] == "the sweep's own seeds" and s.spread["df"] == 7
    out = s.best["lstar_ratio"]["out"]
    by_name = dict(zip(s.runs["name"].to_list(), s.runs["group"].to_list()))
    for worse in ("lr_div10", "width_div4", "narrow16", "lr_high", "frozen"):
        assert by_name[worse] in out and "above the best" in out[by_name[worse]], worse
    assert {"lr_mult", "width"} <= set(s.varying) and "seed" not in s.varying and "name" not in s.varying
    assert set(s.effects["width"]) == {"128", "32", "8"}


@needs_shapes
def test_rows_are_in_lstar_units_by_band_with_error_bars(shapes_sweep):
    r = shapes_sweep.runs.filter(pl.col("name") == "healthy_s00").row(0, named=True)
    assert r["state"] == "finished" and r["verdict"] == "healthy" and r["last_step"] == 2499
    for c in ("lstar_ratio", "ratio_low", "ratio_mid", "ratio_high"):
        assert 0.3 < r[c] < 2 and 0 < r[f"{c}_se"] < 0.05 * r[c], c
    frozen = shapes_sweep.runs.filter(pl.col("name") == "frozen").row(0, named=True)
    assert frozen["lstar_ratio"] > 2 * r["lstar_ratio"] and frozen["verdict"] == "failing" and frozen["worst"]


def test_runs_of_different_targets_share_one_scale_in_lstar_units():
    s = sweep_lib.sweep([str(UNITS)], jobs=1)
    assert any("different processes or prediction targets" in n for n in s.notes)
    v = s.runs.filter(pl.col("name").str.starts_with("v_s"))["lstar_ratio"]
    assert v.min() > 0.9 and v.max() < 1.1  # v-prediction reaches its own L* at every noise level: ratio ~1


@needs_shapes
def test_cli_outputs_cache_and_bad_runs(tmp_path):
    folder = tmp_path / "runs"
    for n in ("healthy_s00", "healthy_s01", "lr_div10"):
        shutil.copytree(SHAPES / n, folder / n)
    shutil.copytree(SHAPES / "healthy_s02", folder / "broken")
    (folder / "broken" / "run.json").write_text("{ not json")
    before = snapshot(folder)
    res = run_cli("sweep", folder, "--json", tmp_path / "s.json", "--csv", tmp_path / "s.csv",
                  "--parquet", tmp_path / "s.parquet", "-j", "1")
    assert res.exit_code == 0, res.output
    assert "4 run(s); 3 readable, 0 from the cache" in res.output and "error" in res.output
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["schema"] == "diffaudit.sweep/1" and len(doc["runs"]) == 4
    assert next(r for r in doc["runs"] if r["name"] == "broken")["error"]
    assert {"runs", "groups", "best_set", "effects"} <= set(doc)
    assert pl.read_csv(tmp_path / "s.csv").height == 4
    assert pl.read_parquet(tmp_path / "s.parquet").height == 4
    assert snapshot(folder) == before  # nothing is written into a run
    res = run_cli("sweep", folder, "-j", "1")
    assert "3 readable, 3 from the cache" in res.output, res.output  # the broken one is read again
    res = run_cli("sweep", folder, "-j", "1", "--fail-on", "warn")
    assert res.exit_code in (0, 1)
    one_line_error(run_cli("sweep", str(tmp_path / "nope*")), "matches nothing")
    one_line_error(run_cli("sweep", folder, "--sort", "nosuch"), "--sort", "no such column")


@needs_shapes
def test_fail_on_fail_exits_1_when_a_run_fails(tmp_path):
    res = run_cli("sweep", SHAPES / "healthy_s00", SHAPES / "lr_high", "--fail-on", "fail", "-j", "1")
    assert res.exit_code == 1, res.output
    res = run_cli("sweep", SHAPES / "healthy_s00", SHAPES / "healthy_s01", "--fail-on", "fail", "-j", "1")
    assert res.exit_code == 0, res.output


@needs_shapes
def test_a_changed_run_is_read_again(tmp_path):
    folder = tmp_path / "r"
    shutil.copytree(SHAPES / "healthy_s00", folder / "a")
    rows, hits = sweep_lib.run_rows([folder / "a"], jobs=1)
    assert hits == 0 and rows[0]["error"] is None
    rows, hits = sweep_lib.run_rows([folder / "a"], jobs=1)
    assert hits == 1
    part = sorted((folder / "a" / "parts").glob("*.parquet"))[-1]
    part.unlink()  # the run lost a part: its fingerprint changed
    rows, hits = sweep_lib.run_rows([folder / "a"], jobs=1)
    assert hits == 0


@needs_shapes
def test_the_python_api_returns_a_polars_frame():
    import diffaudit

    df = diffaudit.sweep([str(SHAPES / "healthy_s00"), str(SHAPES / "lr_div10")], jobs=1)
    assert isinstance(df, pl.DataFrame) and df.height == 2
    assert df.filter(pl.col("name") == "lr_div10")["lstar_ratio"][0] > df.filter(pl.col("name") == "healthy_s00")["lstar_ratio"][0]


@needs_shapes
def test_html_page_is_self_contained_escaped_and_links_reports(tmp_path):
    folder = tmp_path / "runs"
    shutil.copytree(SHAPES / "healthy_s00", folder / "a")
    shutil.copytree(SHAPES / "healthy_s01", folder / "<img src=x onerror=alert(1)>")
    shutil.copytree(SHAPES / "lr_div10", folder / "c")
    page, reports = tmp_path / "out" / "sweep.html", tmp_path / "out" / "reports"
    res = run_cli("sweep", folder, "-o", page, "--reports", reports, "-j", "1")
    assert res.exit_code == 0, res.output
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>")
    # one script: the static sorter, allowed by its hash alone, holding nothing from the logs
    import base64
    import hashlib
    import re

    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(scripts) == 1 and html.lower().count("<script") == 1
    assert scripts[0] == (REPO / "templates" / "sort.js").read_text()
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in html and "default-src 'none'" in html
    assert 'class="data compact sortable"' in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert html.count("<svg") >= 2  # the heatmap and the best set's curves
    assert 'href="reports/a.html"' in html and (reports / "a.html").is_file() and (reports / "c.html").is_file()
    assert "http://" not in html.replace("http://www.w3.org", "")


def test_the_optuna_example_prunes_a_failing_trial_and_the_sweep_ranks_the_rest(tmp_path):
    pytest.importorskip("optuna")
    import subprocess
    import sys

    out = tmp_path / "optuna"
    res = subprocess.run([sys.executable, str(REPO / "examples" / "optuna_prune.py"), "--out", str(out), "--trials", "2",
                          "--steps", "300", "--first-lr", "1.0"], capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    trials = json.loads(res.stdout)
    assert trials[0]["state"] == "PRUNED" and "loss.exploding" in trials[0]["pruned_because"]
    assert trials[1]["state"] == "COMPLETE" and trials[1]["value"] < trials[0]["value"]
    s = sweep_lib.sweep([str(out)], jobs=1)
    assert s.runs.height == 2 and set(s.varying) == {"lr"}
    assert s.best["lstar_ratio"]["best"] == s.runs.filter(pl.col("name") == "trial_001")["group"][0]


@needs_shapes
def test_a_run_still_training_is_a_provisional_row_and_is_never_cached(tmp_path):
    from _midrun import read_at

    mid = read_at(SHAPES / "healthy_s00", 600, tmp_path / "mid")
    rows, hits = sweep_lib.run_rows([mid], jobs=1)
    r = rows[0]
    assert r["error"] is None and r["state"] in ("in_progress", "ended") and r["last_step"] <= 600
    assert r["provisional"] and r["planned_steps"] == 2500
    rows, hits = sweep_lib.run_rows([mid], jobs=1)
    assert hits == (0 if r["state"] == "in_progress" else 1)  # in progress can turn into ended with time alone


@needs_shapes
def test_rows_in_a_state_that_changes_with_time_alone_are_not_cached(tmp_path, monkeypatch):
    folder = tmp_path / "r"
    shutil.copytree(SHAPES / "healthy_s00", folder / "a")
    real = sweep_lib.run_row
    monkeypatch.setattr(sweep_lib, "run_row", lambda p: {**real(p), "state": "in_progress"})
    assert sweep_lib.run_rows([folder / "a"], jobs=1)[1] == 0
    assert sweep_lib.run_rows([folder / "a"], jobs=1)[1] == 0  # read again: it may have ended since
    monkeypatch.setattr(sweep_lib, "run_row", real)
    sweep_lib.run_rows([folder / "a"], jobs=1)
    assert sweep_lib.run_rows([folder / "a"], jobs=1)[1] == 1  # finished: from the cache


@needs_shapes
def test_outputs_that_cannot_go_where_asked_are_refused_in_one_line(tmp_path):
    one_line_error(run_cli("sweep", SHAPES / "healthy_s00", "--parquet", "-"), "--parquet -", "binary")
    run = tmp_path / "run"
    shutil.copytree(SHAPES / "healthy_s00", run)
    one_line_error(run_cli("sweep", run, "--json", run / "s.json"), "--json", "inside the input run")
    one_line_error(run_cli("calibrate", run, SHAPES / "healthy_s01", SHAPES / "healthy_s02", "-o", run / "a.json"),
                   "-o/--output", "inside the input run")
    assert not (run / "s.json").exists() and not (run / "a.json").exists()


@needs_shapes
def test_without_seeds_the_calibrated_allowance_gives_the_spread_of_an_equally_weighted_mean():
    """A sweep's metric is an equally weighted (geometric) mean over bins; a calibration's ``mean`` is the
    precision-weighted mean's (the gate's): the sweep takes the equally weighted mean's sd from the calibration
    runs' deviations."""
    import numpy as np

    from diffaudit.calibration import calibrate
    from diffaudit.load import load_run

    al = calibrate([load_run(EDM / f"healthy_s0{i}") for i in range(3)])
    dev = np.asarray(al.deviations)
    want = float(np.std(dev[:, np.isfinite(dev).all(axis=0)].mean(axis=1), ddof=1))
    assert al.equal_mean_sd() == (pytest.approx(want, rel=1e-12), 2.0)
    assert want > 1.5 * al.mean  # EDM's extreme noise levels: the two weightings differ
    s = sweep_lib.sweep([str(EDM / n) for n in ("healthy_s03", "frozen")], jobs=1, allowance=al)
    assert s.spread["source"] == "the calibrated seed allowance"
    assert s.spread["sd"] == pytest.approx(want, rel=1e-12) and s.spread["df"] == 2.0
