"""`diffaudit optimum`: the empirical L* of a run's real training set, stored in the run and read back.

The run is the committed ``sample_logs/healthy_seed0`` (copied, never written to);
its training set is scikit-learn's digits with the split ``examples/make_sample_logs.py``
uses, so N and d are the run's and the command's numbers can be checked against the
library called directly. Few samples per bin: every test takes well under a second
once torch and sklearn are imported.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _cli import one_line_error, run_cli

import diffaudit
from diffaudit import optimum as opt
from diffaudit.datafile import load_samples
from diffaudit.errors import DataError

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RUN = REPO / "sample_logs" / "healthy_seed0"
SPLIT_SEED, HOLDOUT = 20240607, 0.15  # examples/make_sample_logs.py: the train/eval split of every sample run
S = 6  # samples per bin: enough for a standard error, small enough to stay fast


@pytest.fixture(scope="module")
def digits_train() -> np.ndarray:
    """The 1,527 training images of the sample runs, (N, 64) float32 in [-1, 1], in training order."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    x = sklearn_datasets.load_digits().data.astype(np.float32) / 8.0 - 1.0
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    return x[perm[int(round(HOLDOUT * len(x))) :]]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, digits_train) -> Path:
    d = tmp_path_factory.mktemp("data")
    np.save(d / "train.npy", digits_train)
    return d


@pytest.fixture
def run(tmp_path) -> Path:
    dst = tmp_path / "healthy_seed0"
    shutil.copytree(SAMPLE_RUN, dst)
    return dst


_cli = run_cli
_one_line_error = one_line_error


def _optimum_parts(run: Path) -> list[Path]:
    return sorted((run / "parts").glob("optimum-*.parquet"))


# ----------------------------------------------------------------------------
# The result, stored and read back


def test_the_data_are_the_runs_training_set(digits_train):
    meta = json.loads((SAMPLE_RUN / "run.json").read_text())
    assert digits_train.shape == (meta["config"]["n_train"], meta["data_dim"]) == (1527, 64)
    # the per-element variance the logger recorded is this split's, not another one's
    assert digits_train.astype(np.float64).var(axis=0).mean() == pytest.approx(meta["data_var"], rel=1e-5)


def test_writes_a_part_that_load_run_reads_and_that_matches_the_library(run, data_dir, digits_train):
    res = _cli("optimum", data_dir / "train.npy", "--run", run, "--samples-per-bin", S, "--seed", 3)
    assert res.exit_code == 0, res.output
    parts = _optimum_parts(run)
    assert [p.name for p in parts] == ["optimum-r00000-s0000-000000.parquet"]
    assert f"wrote {parts[0]}" in res.output
    assert "estimator exact (default: N*d = 97,728 <= 2e+08)" in res.output

    loaded = diffaudit.load_run(run)
    o = loaded.optimum
    assert o is not None and o["bin"].to_list() == list(range(20))
    loss, se = o["loss_opt"].to_numpy(), o["stderr"].to_numpy()
    assert np.all(np.isfinite(loss)) and np.all(loss >= 0) and np.all(np.isfinite(se)) and np.all(se >= 0)
    assert o["n"].to_list() == [S] * 20
    # the same seed gives the same draws: the command is the library, stored
    direct = opt.bin_empirical_optimal_loss(loaded.process, digits_train, samples_per_bin=S, seed=3)
    np.testing.assert_allclose(loss, direct.loss_opt, rtol=1e-12, atol=0)
    np.testing.assert_allclose(se, direct.stderr, rtol=1e-12, atol=0)
    # the memorization floor: at the lowest noise the posterior sits on x0, at mid noise it does not
    assert loss[0] < 1e-6 and loss[8] > 1e-2

    info = json.loads(pq.read_schema(parts[0]).metadata[b"diffaudit.optimum"])
    assert info["estimator"] == "exact" and info["samples_per_bin"] == S and info["seed"] == 3
    assert (info["n_samples"], info["dim"], info["data_file"]) == (1527, 64, "train.npy")
    assert len(info["data_sha256"]) == 64 and info["diffaudit_version"] == diffaudit.__version__
    assert info["created"]


def test_the_table_shows_each_bin_with_its_gaussian_bound(run, data_dir):
    res = _cli("optimum", data_dir / "train.npy", "--run", run, "--samples-per-bin", S)
    assert res.exit_code == 0, res.output
    o = diffaudit.load_run(run).optimum
    bound = opt.bin_gaussian_optimal_loss(diffaudit.load_run(run).process,
                                          spectrum=json.loads((run / "run.json").read_text())["data_spectrum"])
    rows = [ln.split() for ln in res.output.splitlines() if ln.strip()[:1].isdigit()]
    assert len(rows) == 20
    b, trange, loss, pm, se, gauss = rows[7]
    assert (b, trange, pm) == ("7", "350-399", "±")
    assert float(loss) == pytest.approx(o["loss_opt"][7], rel=1e-3)
    assert float(gauss) == pytest.approx(bound[7], rel=1e-3)
    # the Gaussian bound is an upper bound; at the lowest noise L*_emp is far below it
    assert float(rows[0][2]) < 1e-3 * float(rows[0][5])


def test_a_second_run_adds_a_part_and_the_newest_wins(run, data_dir):
    assert _cli("optimum", data_dir / "train.npy", "--run", run, "--samples-per-bin", 4, "-q").exit_code == 0
    first = diffaudit.load_run(run).optimum
    res = _cli("optimum", data_dir / "train.npy", "--run", run, "--samples-per-bin", S, "--seed", 1, "-q")
    assert res.exit_code == 0, res.output
    parts = _optimum_parts(run)
    assert [p.name[-14:] for p in parts] == ["000000.parquet", "000001.parquet"]
    assert res.output.strip() == f"wrote {parts[1]}"  # --quiet: the path only
    second = diffaudit.load_run(run).optimum
    assert second.height == 20 and second["n"].to_list() == [S] * 20
    assert not np.allclose(second["loss_opt"].to_numpy(), first["loss_opt"].to_numpy())
    newest = pq.read_table(parts[1]).to_pydict()
    np.testing.assert_array_equal(second["loss_opt"].to_numpy(), newest["loss_opt"])


def test_report_then_shows_the_empirical_optimum(run, data_dir, tmp_path):
    assert _cli("optimum", data_dir / "train.npy", "--run", run, "--samples-per-bin", S, "-q").exit_code == 0
    res = _cli("report", run, "--json", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["run"]["empirical_optimum"] is True
    stored = diffaudit.load_run(run).optimum["loss_opt"].to_list()
    assert [b["lstar_emp"] for b in doc["bins"]] == pytest.approx(stored, rel=1e-12, abs=0)
    assert all(b["lstar_emp_se"] is not None for b in doc["bins"])


def test_dry_run_writes_nothing_and_json_has_the_result(run, data_dir, tmp_path):
    res = _cli("optimum", data_dir / "train.npy", "--run", run, "--dry-run", "--estimator", "stratified", "--subset", 256)
    assert res.exit_code == 0, res.output
    assert "dry run: would compute 20 bins x 64 samples x 256 points" in res.output
    assert _optimum_parts(run) == []

    res = _cli("optimum", data_dir / "train.npy", "--run", run, "--samples-per-bin", S, "--json", "-")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)  # the table goes to stderr when JSON owns stdout
    assert doc["part"] == str(_optimum_parts(run)[0]) and doc["data"]["n"] == 1527
    stored = diffaudit.load_run(run).optimum
    assert [b["loss_opt"] for b in doc["bins"]] == pytest.approx(stored["loss_opt"].to_list(), rel=1e-12)
    assert all(b["lstar_gauss"] > 0 for b in doc["bins"])


def test_subset_implies_the_stratified_estimator(run, data_dir, digits_train):
    res = _cli("optimum", data_dir / "train.npy", "--run", run, "--samples-per-bin", 4, "--subset", 128)
    assert res.exit_code == 0, res.output
    assert "estimator stratified (--subset implies a subsampled estimator)" in res.output
    info = json.loads(pq.read_schema(_optimum_parts(run)[0]).metadata[b"diffaudit.optimum"])
    assert (info["estimator"], info["subset_size"]) == ("stratified", 128)
    direct = opt.bin_empirical_optimal_loss(
        diffaudit.load_run(run).process, digits_train, samples_per_bin=4, estimator="stratified", subset_size=128
    )
    np.testing.assert_allclose(diffaudit.load_run(run).optimum["loss_opt"].to_numpy(), direct.loss_opt, rtol=1e-12)


def test_parts_are_never_overwritten_even_when_a_writer_races(run, data_dir, digits_train, monkeypatch):
    from diffaudit import runformat as rf

    process = diffaudit.load_run(run).process
    a = opt.bin_empirical_optimal_loss(process, digits_train, samples_per_bin=2, seed=0)
    b = opt.bin_empirical_optimal_loss(process, digits_train, samples_per_bin=3, seed=1)
    first = rf.write_optimum_part(run, a, metadata={"who": "first"})
    before = first.read_bytes()
    # a concurrent writer took seq 0 after this one listed the folder: it must move on, not replace it
    monkeypatch.setattr(rf.os, "listdir", lambda path: [])
    second = rf.write_optimum_part(run, b, metadata={"who": "second"})
    monkeypatch.undo()
    assert (first.name, second.name) == ("optimum-r00000-s0000-000000.parquet", "optimum-r00000-s0000-000001.parquet")
    assert first.read_bytes() == before
    assert not list((run / "parts").glob(".*"))  # no temporary file left behind
    assert diffaudit.load_run(run).optimum["n"].to_list() == [3] * 20


def test_samples_in_another_scaling_are_flagged(run, data_dir, digits_train, tmp_path):
    raw = tmp_path / "raw.npy"
    np.save(raw, ((digits_train + 1.0) * 8.0).astype(np.uint8))  # the pixels 0..16 the model never saw
    res = _cli("optimum", raw, "--run", run, "--samples-per-bin", 16, "-q")
    assert res.exit_code == 0, res.output
    assert f"warning: {raw}: the samples' variance per element is 18.88 but the run's data had 0.295" in res.output
    assert "L*_emp is above the Gaussian bound" in res.output
    # the real training set raises neither
    ok = _cli("optimum", data_dir / "train.npy", "--run", run, "--samples-per-bin", 16, "-q")
    assert ok.exit_code == 0 and "warning" not in ok.output, ok.output


# ----------------------------------------------------------------------------
# Data files: every container gives the same (N, d) array


def test_npz_parquet_columns_and_list_columns_load_the_same_samples(tmp_path, digits_train):
    x = digits_train[:50]
    np.savez(tmp_path / "one.npz", train=x)
    np.savez(tmp_path / "two.npz", train=x, labels=np.arange(50))
    pq.write_table(pa.table({f"p{i}": x[:, i] for i in range(64)}), tmp_path / "cols.parquet")
    rows = pa.array([r.reshape(8, 8).tolist() for r in x], pa.list_(pa.list_(pa.float32(), 8)))
    pq.write_table(pa.table({"img": rows, "label": np.arange(50)}), tmp_path / "nested.parquet")
    np.save(tmp_path / "images.npy", (x.reshape(50, 8, 8) * 8).astype(np.int16))  # integers -8..8
    for got in (
        load_samples(tmp_path / "one.npz"),
        load_samples(tmp_path / "two.npz", key="train"),
        load_samples(tmp_path / "cols.parquet"),
        load_samples(tmp_path / "nested.parquet", column="img"),
    ):
        assert got.shape == (50, 64) and got.dtype == np.float32
        np.testing.assert_array_equal(got, x)
    ints = load_samples(tmp_path / "images.npy")  # (N, 8, 8) integers: flattened, as float
    assert ints.shape == (50, 64) and ints.dtype == np.float32
    np.testing.assert_array_equal(ints, x * 8)


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda p: pq.write_table(pa.table({"x": pa.array([[1.0, 2.0], [1.0]])}), p / "d.parquet"),
         "ragged lists: sample 1 has a list of 1 values where sample 0 has 2"),
        (lambda p: pq.write_table(pa.table({"x": [1.0, 2.0], "name": ["a", "b"]}), p / "d.parquet"),
         "non-numeric column(s) name (string)"),
        (lambda p: np.save(p / "d.npy", np.zeros((0, 64), np.float32)), "no samples (N = 0"),
        (lambda p: (p / "d.npy").write_bytes(b"not numpy"), "not a valid .npy file"),
        (lambda p: np.save(p / "d.npy", np.array([1, "a"], dtype=object), allow_pickle=True),
         "holds Python objects, not numbers"),
    ],
    ids=["ragged", "non-numeric", "empty", "not-npy", "object-array"],
)
def test_unusable_data_files_are_one_line_data_errors(tmp_path, make, needle):
    make(tmp_path)
    path = next(tmp_path.glob("d.*"))
    with pytest.raises(DataError) as e:
        load_samples(path)
    assert str(e.value).startswith(f"{path}: ") and needle in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------
# Bad input: one line naming the problem, exit code 2, nothing written


def _bad_data(tmp_path, digits_train, kind) -> Path:
    if kind == "wide":
        np.save(tmp_path / "wide.npy", np.zeros((10, 3072), np.float32))
        return tmp_path / "wide.npy"
    if kind == "nan":
        x = digits_train.copy()
        x[5, 3] = np.nan
        np.save(tmp_path / "nan.npy", x)
        return tmp_path / "nan.npy"
    if kind == "two-arrays":
        np.savez(tmp_path / "two.npz", images=digits_train, labels=np.arange(len(digits_train)))
        return tmp_path / "two.npz"
    if kind == "extension":
        (tmp_path / "train.csv").write_text("1,2\n")
        return tmp_path / "train.csv"
    if kind == "missing":
        return tmp_path / "nowhere.npy"
    if kind == "1-d":
        np.save(tmp_path / "flat.npy", digits_train[:, 0])
        return tmp_path / "flat.npy"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind,needle",
    [
        ("wide", "training samples have dimension 3072 but the run's data has 64"),
        ("nan", "training samples contain NaN (first at sample 5)"),
        ("two-arrays", "holds 2 arrays (images, labels); pick one with --key"),
        ("extension", "unknown file type ('.csv'); expected .npy, .npz, .parquet"),
        ("missing", "no such file"),
        ("1-d", "a 1-D array of 1527 values; expected an N x d array of samples"),
    ],
)
def test_bad_data_is_one_line_exit_2_and_writes_nothing(run, tmp_path, digits_train, kind, needle):
    path = _bad_data(tmp_path, digits_train, kind)
    res = _cli("optimum", path, "--run", run, "--samples-per-bin", S)
    _one_line_error(res, f"error: {path}: {needle}")
    assert _optimum_parts(run) == []


def test_an_exported_run_is_refused(run, data_dir, tmp_path):
    export = tmp_path / "exp.parquet"
    assert _cli("export", run, "-o", export).exit_code == 0
    before = export.read_bytes()
    res = _cli("optimum", data_dir / "train.npy", "--run", export, "--samples-per-bin", S)
    _one_line_error(res, f"error: {export}: an exported .parquet run is read-only")
    assert export.read_bytes() == before


@pytest.mark.parametrize(
    "damage,needle",
    [
        (lambda r: _edit_meta(r, prediction="x0"), "prediction 'x0' is not valid for process 'vp'"),
        (lambda r: _edit_meta(r, process="ode"), "unknown process 'ode'"),
        (lambda r: (r / "schedule.parquet").unlink(), "schedule.parquet: missing; a discrete (vp) run needs its schedule"),
    ],
    ids=["prediction", "process", "no-schedule"],
)
def test_a_run_without_a_usable_process_is_one_line_exit_2(run, data_dir, damage, needle):
    damage(run)
    _one_line_error(_cli("optimum", data_dir / "train.npy", "--run", run, "--samples-per-bin", S), needle)
    assert _optimum_parts(run) == []


def _edit_meta(run: Path, **changes) -> None:
    meta = json.loads((run / "run.json").read_text())
    meta.update(changes)
    (run / "run.json").write_text(json.dumps(meta))


def test_subset_with_the_exact_estimator_is_a_usage_error(run, data_dir):
    res = _cli("optimum", data_dir / "train.npy", "--run", run, "--estimator", "exact", "--subset", 100)
    _one_line_error(res, "--subset applies to the subsampled estimators")
