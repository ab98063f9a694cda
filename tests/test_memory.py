"""Long runs in bounded memory (issue 24): the paths that work a stretch of rows at a time, or hand out views,
give exactly what the whole-array ones give. Tiny stretches force many of them on the sample runs; the
memory itself is measured by benchmarks/bench_report.py and bench_watch.py, not here."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import diffaudit
from diffaudit import analysis, load

LOGS = Path(__file__).resolve().parents[1] / "sample_logs"


@pytest.fixture(scope="module")
def run():
    return diffaudit.load_run(LOGS / "healthy_seed0")


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def test_a_split_of_a_loaded_runs_bins_is_a_view_holding_the_rows_a_filter_gives(run):
    assert run.bins["split"].n_unique() > 2  # train among other splits
    for split in ("train", "eval", "ema", "probe_t", "none"):
        assert run.split_bins(split).equals(run.bins.filter(pl.col("split") == split))
    whole, train = run.bins["step_lo"].to_numpy(allow_copy=False), run.train_bins["step_lo"].to_numpy(allow_copy=False)
    assert train.size < whole.size and np.shares_memory(whole, train)  # a slice of the run's frame, not a copy
    # a split's rows among other splits' rows (a frame built by hand, not sorted by split) are filtered
    mixed = replace(run, bins=run.bins.sample(fraction=1.0, shuffle=True, seed=1))
    assert mixed.train_bins.equals(mixed.bins.filter(pl.col("split") == "train"))
    assert mixed.eval_bins.equals(mixed.bins.filter(pl.col("split") == "eval"))


def test_the_grid_made_a_stretch_of_rows_at_a_time_is_the_grid_made_at_once(run, monkeypatch):
    monkeypatch.setattr(analysis, "GRID_STRETCH", 7)  # windows (one row per bin) across the stretches' borders
    tb, nb = run.train_bins, run.process.num_bins
    got, want = analysis._Grid._from_ordered(tb, nb), analysis._Grid._from_any(tb, nb)
    assert got is not None and got.W > 10
    for f in ("step_lo", "step_hi", "x", "n", "mean", "m2", "nonfinite"):
        assert _same(getattr(got, f), getattr(want, f)), f
    # rows that repeat a (window, bin), or are out of window order, take the whole-array path
    assert analysis._Grid._from_ordered(pl.concat([tb, tb.tail(1)]), nb) is None
    assert analysis._Grid._from_ordered(tb.reverse(), nb) is None
    assert _same(analysis._Grid.from_bins(tb.reverse(), nb).mean, want.mean)


def test_the_plotted_series_reduced_a_stretch_at_a_time_is_the_series_reduced_at_once(run, monkeypatch):
    whole = analysis._step_series(run.steps, 100)
    monkeypatch.setattr(analysis, "STEP_SERIES_STRETCH", 1)  # one group of rows per stretch
    assert whole.height == 100 and analysis._step_series(run.steps, 100).equals(whole)


@pytest.mark.parametrize("at", range(1, 8))
def test_the_order_checks_see_a_row_out_of_order_wherever_it_falls_among_the_stretches(monkeypatch, at):
    monkeypatch.setattr(load, "ORDER_CHECK_STRETCH", 3)
    keys = ["rank", "segment", "step"]
    rows = pl.DataFrame({"rank": [0] * 8, "segment": [1] * 8, "step": list(range(8))})
    repeat = rows.with_columns(pl.when(pl.int_range(8) == at).then(at - 1).otherwise(pl.col("step")).alias("step"))
    back = rows.with_columns(pl.when(pl.int_range(8) == at).then(-1).otherwise(pl.col("step")).alias("step"))
    assert not load._has_repeated_keys(rows, keys)
    assert load._has_repeated_keys(repeat, keys)
    assert not load._has_repeated_keys(back, keys)  # out of order, no repeat: the hash says so
    assert load._sorted(rows, keys) is rows and load._sorted(repeat, keys) is repeat
    assert load._sorted(back, keys)["step"].to_list() == sorted(back["step"].to_list())


def test_the_careful_readers_cache_keeps_each_group_of_parts_as_one_frame_and_reuses_it(monkeypatch):
    monkeypatch.setattr(load, "FAST_READ_GROUP", 2)  # the sample run's parts in a few groups
    cache = {}
    first = load.load_run(LOGS / "healthy_seed0", cache=cache)
    frames = {id(v.frame) for v in cache.values() if isinstance(v, load._Decoded)}
    assert len(frames) > 2
    again = load.load_run(LOGS / "healthy_seed0", cache=cache)
    assert {id(v.frame) for v in cache.values() if isinstance(v, load._Decoded)} == frames  # nothing stacked anew
    fast = load.load_run(LOGS / "healthy_seed0")  # polars' reader, no cache
    for r in (first, again):
        assert r.steps.equals(fast.steps) and r.bins.equals(fast.bins) and r.probes.equals(fast.probes)


@pytest.mark.parametrize("window", [3, 11, 201])
def test_robust_z_a_stretch_at_a_time_is_the_robust_z_of_the_whole_series(window, monkeypatch):
    from diffaudit import stats

    rng = np.random.default_rng(window)
    x = np.exp(rng.normal(0, 0.3, 5000)) + np.linspace(2, 0, 5000)
    x[rng.integers(0, 5000, 40)] = np.nan  # non-finite points are dropped before the filters
    x[rng.integers(0, 5000, 5)] *= 50  # spikes, and equal values (a MAD of 0 takes the floor)
    x[1000:1300] = 1.0
    whole = stats.robust_z(x, window=window)
    for stretch in (1, 7, window, 1000):  # borders everywhere, down to a stretch of one point
        monkeypatch.setattr(stats, "ROBUST_Z_STRETCH", stretch)
        part = stats.robust_z(x, window=window)
        assert _same(part.z, whole.z) and _same(part.pos, whole.pos)


@pytest.mark.parametrize("axis", [0, 1])
def test_coarsen_moments_a_stretch_of_rows_at_a_time_is_the_merge_made_at_once(axis, monkeypatch):
    from diffaudit import stats

    rng = np.random.default_rng(axis)
    count = rng.integers(0, 5, (60, 9)).astype(np.float64)  # windows x bins, some empty
    mean = np.where(count > 0, rng.normal(1, 0.2, count.shape), np.nan)
    m2 = np.where(count > 0, rng.gamma(1.0, 0.1, count.shape), np.nan)
    L = count.shape[axis]
    starts = stats.batch_starts(L, 4)
    whole = stats.coarsen_moments(count, mean, m2, starts, axis=axis)
    for stretch in (1, L, 2 * L + 1):  # one row (a bin) at a time, exactly one, and a stretch across rows
        monkeypatch.setattr(stats, "MOMENT_STRETCH", stretch)
        part = stats.coarsen_moments(count, mean, m2, starts, axis=axis)
        for f in ("count", "mean", "m2"):
            assert _same(getattr(part, f), getattr(whole, f))
    assert whole.count.shape == ((4, 9) if axis == 0 else (60, 4))


def test_correlations_a_few_columns_at_a_time_are_those_of_all_columns_at_once(monkeypatch):
    from diffaudit import stats

    rng = np.random.default_rng(5)
    e = rng.normal(size=(400, 12))
    y = np.empty_like(e)
    y[0] = e[0]
    for i in range(1, 400):  # AR(1) columns of different strengths: taus from ~1 to ~19
        y[i] = np.linspace(0, 0.9, 12) * y[i - 1] + e[i]
    keep = np.ones(y.shape, bool)
    keep[::7, :4] = False  # two groups of columns with different kept rows
    whole = stats.correlations(y, keep)
    assert whole[0][-1] > 5 * whole[0][0]
    for stretch in (1, 400, 401, 1200):  # one column at a time, exactly one, and a few together
        monkeypatch.setattr(stats, "CORRELATION_STRETCH", stretch)
        for a, b in zip(stats.correlations(y, keep), whole):
            np.testing.assert_allclose(a, b, rtol=1e-12)


def test_the_analysis_on_one_thread_is_the_analysis_on_two(run):
    from diffaudit.present.document import dumps, report_document

    one, two = analysis.analyze(run, now=1e10, threads=1), analysis.analyze(run, now=1e10, threads=2)
    assert dumps(report_document(one)) == dumps(report_document(two))
    assert one.findings and one.findings == two.findings


@pytest.mark.parametrize("argv,want", [
    (["report", "RUN"], "JEMALLOC_CONF"),
    (["watch", "RUN", "--fail-on", "warn"], "WATCH_JEMALLOC_CONF"),
    (["--help"], "JEMALLOC_CONF"),
])
def test_the_cli_sets_polars_allocator_before_polars_is_imported(argv, want):
    import os
    import subprocess
    import sys

    from diffaudit import cli

    code = ("import os, sys; sys.argv[1:] = {!r}; import diffaudit.cli; assert 'polars' not in sys.modules; "
            "print(os.environ['_RJEM_MALLOC_CONF'])").format(argv)
    env = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == getattr(cli, want)
    env["_RJEM_MALLOC_CONF"] = "narenas:1"  # the user's own setting is left as it is
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "narenas:1"
