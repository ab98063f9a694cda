"""Bad input: one line naming the file and the problem, exit code 2, never a traceback, no data lost."""

import json
import os
import shutil

import numpy as np
import pytest
from _cli import one_line_error, run_cli

torch = pytest.importorskip("torch")

import diffaudit
from diffaudit.logger import RunLogger


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, ):
    from diffaudit.noise import named_betas, schedule_from_betas

    path = tmp_path_factory.mktemp("runs") / "good"
    a = schedule_from_betas(named_betas("linear"))[0]
    with RunLogger(path, alphas_cumprod=a, num_bins=10, flush_every=10, window=5) as lg:
        for s in range(40):
            lg.log(s, timesteps=torch.randint(0, 1000, (8,)), losses=torch.rand(8), grad_norm=torch.tensor(0.5), clip_threshold=1.0)
    return path


def _copy(good_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(good_run, dst)
    return dst


_cli = run_cli
_one_line_error = one_line_error


def _first_part(run, kind="steps"):
    return sorted((run / "parts").glob(f"{kind}-*.parquet"))[0]


@pytest.mark.parametrize(
    "damage,needle",
    [
        (lambda f: f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2]), "not a readable Parquet file"),
        (lambda f: f.write_bytes(b""), "zero-byte file"),
        (lambda f: f.write_bytes(np.random.default_rng(0).bytes(3000)), "not a readable Parquet file"),
    ],
    ids=["truncated", "zero-byte", "random-bytes"],
)
def test_damaged_part_skipped_and_reported_or_fatal_with_strict(good_run, tmp_path, damage, needle):
    run = _copy(good_run, tmp_path)
    part = _first_part(run)
    damage(part)
    res = _cli("summary", run)
    assert res.exit_code == 0
    assert f"warning: {part}: damaged part skipped: {needle}" in res.output
    loaded = diffaudit.load_run(run)
    assert loaded.steps.height == 30  # the other three steps parts are all there
    _one_line_error(_cli("summary", run, "--strict"), str(part), needle)
    assert part.exists()  # nothing is deleted or rewritten


def test_part_with_wrong_columns_is_damaged(good_run, tmp_path):
    run = _copy(good_run, tmp_path)
    shutil.copy(_first_part(run, "bins"), run / "parts" / "steps-r00000-s0001-000099.parquet")
    res = _cli("summary", run)
    assert res.exit_code == 0 and "not a steps part (missing column(s) step" in res.output


def test_leftover_temp_file_is_reported_and_ignored(good_run, tmp_path):
    run = _copy(good_run, tmp_path)
    (run / "parts" / ".steps-r00000-s0001-000009.parquet.123.tmp").write_bytes(b"PAR1 half a file")
    res = _cli("summary", run)
    assert res.exit_code == 0 and "leftover temporary file of an interrupted write, ignored" in res.output
    assert diffaudit.load_run(run).steps.height == 40


def test_missing_run_json(good_run, tmp_path):
    run = _copy(good_run, tmp_path)
    (run / "run.json").unlink()
    _one_line_error(_cli("summary", run), f"{run / 'run.json'}: missing; the directory has")


def test_corrupt_run_json(good_run, tmp_path):
    run = _copy(good_run, tmp_path)
    (run / "run.json").write_text("{not json")
    _one_line_error(_cli("summary", run), "run.json: not valid JSON")


def test_future_format_version(good_run, tmp_path):
    run = _copy(good_run, tmp_path)
    meta = json.loads((run / "run.json").read_text())
    meta["format_version"] = 99
    (run / "run.json").write_text(json.dumps(meta))
    _one_line_error(_cli("summary", run), "format version 99 is newer than this diffaudit reads (1)")


def test_path_that_does_not_exist(tmp_path):
    _one_line_error(_cli("summary", tmp_path / "nope"), "nope: no such file or directory")


def test_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    _one_line_error(_cli("summary", tmp_path / "empty"), "empty directory, not a diffaudit run")


def test_run_with_no_steps_yet(tmp_path, linear_alpha_bar):
    RunLogger(tmp_path / "fresh", alphas_cumprod=linear_alpha_bar).close()
    _one_line_error(_cli("summary", tmp_path / "fresh"), "the run has no logged steps yet")


def test_parquet_that_is_not_an_export(good_run, tmp_path):
    _one_line_error(_cli("summary", _first_part(good_run)), "not an exported diffaudit run")


def test_random_file_given_as_run(tmp_path):
    f = tmp_path / "x.parquet"
    f.write_bytes(b"garbage")
    _one_line_error(_cli("summary", f), "x.parquet: not a readable Parquet file")


def test_unknown_option_is_a_usage_error(good_run):
    res = _cli("summary", good_run, "--bogus")
    assert res.exit_code == 2 and "No such option" in res.output


def test_export_round_trip(good_run, tmp_path):
    out = tmp_path / "one.parquet"
    res = _cli("export", good_run, "-o", out)
    assert res.exit_code == 0, res.output
    a, b = diffaudit.load_run(good_run), diffaudit.load_run(out)
    assert a.meta == b.meta
    assert a.steps.equals(b.steps.select(a.steps.columns))
    assert a.bins.equals(b.bins.select(a.bins.columns))
    np.testing.assert_array_equal(a.process.alpha_bar, b.process.alpha_bar)
    assert _cli("summary", out).exit_code == 0


def test_middle_part_missing_a_column_is_reported_not_read_as_nulls(good_run, tmp_path):
    import pyarrow.parquet as pq

    run = _copy(good_run, tmp_path)
    parts = sorted((run / "parts").glob("steps-*.parquet"))
    middle = parts[len(parts) // 2]
    pq.write_table(pq.read_table(middle).drop(["loss"]), middle)
    res = _cli("summary", run)
    assert res.exit_code == 0 and f"{middle}: damaged part skipped: not a steps part (missing column(s) loss)" in res.output
    assert diffaudit.load_run(run).steps["loss"].null_count() == 0
    _one_line_error(_cli("summary", run, "--strict"), str(middle), "missing column(s) loss")


def test_a_step_split_by_a_mid_step_flush_is_merged_and_reported(tmp_path, linear_alpha_bar):
    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=4) as lg:
        lg.log(0, timesteps=torch.tensor([1, 2]), losses=torch.tensor([1.0, 1.0]))
        lg.log(1, timesteps=torch.tensor([1, 2]), losses=torch.tensor([1.0, 1.0]))
        lg.flush()  # the user flushes between two micro-batches of step 1
        lg.log(1, timesteps=torch.tensor([1, 2]), losses=torch.tensor([4.0, 4.0]), grad_norm=0.5)
    run = diffaudit.load_run(tmp_path / "r")
    s = run.steps
    assert s["step"].to_list() == [0, 1] and s["count"].to_list() == [2, 4]
    assert s["loss"].to_list() == [1.0, 2.5] and s["grad_norm"].to_list() == [None, 0.5]
    assert any("written in two or more parts" in p.message for p in run.problems)


@pytest.mark.parametrize("target,needle", [("/proc/nope/x.parquet", "cannot write the export"),
                                           ("/dev/null", "exists and is not a regular file")])
def test_export_to_an_unwritable_or_special_path(good_run, target, needle):
    _one_line_error(_cli("export", good_run, "-o", target), target, needle)
    assert not os.path.isfile("/dev/null")  # the device node is still a device node
