"""Several baseline seeds borrow the scatter of a calibration's other runs (``gate.lent_runs``).

Three baseline seeds test the mean over bins on a t with 2 df, the weakest part of that design. A calibration of
the same configuration on other seeds measures the same scatter: its runs' deviations from their own mean join
the seeds' (each bin's pooled spread and the mean over bins gain runs - 1 df), while their levels never enter the
comparison. Checked here: the pooled statistic against a Monte Carlo of its own null distribution, size and stated
rise with the library's functions, and on a held-out family's runs what is lent, what counts once, and what is
refused.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from _cli import run_cli
from _runs import raised

from diffaudit import allowance, gate, gate_options, stats
from diffaudit.calibration import calibrate, level_spreads
from diffaudit.load import load_run

REPO = Path(__file__).resolve().parents[1]
SHAPES = REPO / "sample_logs" / "families" / "shapes_mlp"  # held out: no threshold of the gate was set on it
needs_shapes = pytest.mark.skipif(not (SHAPES / "healthy_s07").is_dir(), reason="sample_logs/families not present")


# ----------------------------------------------------------------------------
# The pooled statistic


@pytest.mark.parametrize("seeds,lend", [(3, 3), (2, 5), (4, 2)])
def test_a_mean_with_lent_scatter_is_a_t_on_the_pooled_df_by_monte_carlo(seeds, lend):
    """One candidate against ``seeds`` baseline values, ``lend`` other values lending their scatter (about their
    own mean, which is not compared): under the null, change / se is a t on (seeds - 1) + (lend - 1) df. Its
    tails are checked at the levels the gate uses, against 40,000 draws."""
    rng = np.random.default_rng(seeds * 10 + lend)
    n = 40_000
    t = np.empty(n)
    for i in range(n):
        a = rng.normal(3.0, 1.0, seeds)
        lent = rng.normal(-7.0, 1.0, lend)  # another mean: only the scatter is borrowed
        diff, var, df = gate._lent_group(a, rng.normal(3.0, 1.0, 1), lent - lent.mean())
        t[i] = diff / np.sqrt(var)
    assert df == (seeds - 1) + (lend - 1)
    for level in (0.05, 0.0125):
        crit = stats.t_isf(level, df)
        share = float(np.mean(t > crit))
        assert abs(share - level) < 4 * np.sqrt(level * (1 - level) / n), (level, share)


def test_several_candidates_take_welch_against_the_pooled_baseline():
    a, b, lent = np.array([0.0, 0.01, -0.01]), np.array([0.05, 0.07]), np.array([0.02, -0.02, 0.0])
    diff, var, df = gate._lent_group(a, b, lent)
    s2a = (np.sum((a - a.mean()) ** 2) + np.sum(lent**2)) / 4
    va, vb = s2a / 3, b.var(ddof=1) / 2
    assert diff == pytest.approx(0.06) and var == pytest.approx(va + vb)
    assert df == pytest.approx((va + vb) ** 2 / (va**2 / 4 + vb**2 / 1))


# ----------------------------------------------------------------------------
# Size and stated rise with the library's functions

B, K = 30, 30
T = np.arange(K) + 0.5
X, SEL = T * 100.0, np.arange(K - 8, K)
CURVE = (0.02 + 0.5 * np.exp(-np.arange(B) / 8.0))[:, None] * (1.0 + 1.5 * np.exp(-T / 4.5))[None, :]
SD = np.geomspace(0.003, 0.1, B)  # uneven bins, as EDM-style training gives


def _blocks(rng, n: int, rise: float = 0.0) -> np.ndarray:
    """(n, bins, blocks of the late window): seeds with a 0.4% common and an uneven per-bin effect, the last raised."""
    out = []
    for r in range(n):
        effect = np.maximum(1 + 0.004 * rng.standard_normal() + SD * rng.standard_normal(B), 0.2)
        out.append(CURVE * effect[:, None] * (1 + rise if r == n - 1 else 1.0) * (1 + 0.002 * rng.standard_normal((B, K))))
    return np.array(out)[:, :, SEL]


def _trial(rng, rise: float, lend: int):
    blocks = _blocks(rng, 4, rise)
    lent = None
    if lend:
        cal = _blocks(rng, lend)
        dev = np.array(level_spreads(cal.mean(axis=2), cal.mean(axis=0), X[SEL], 100.0 * K)["deviations"])
        lent = dev - dev.mean(axis=0)
    st = gate.seed_stats(blocks.mean(axis=2), blocks[:3].mean(axis=0), X[SEL], 100.0 * K, 3, lent=lent)
    p, q, pg, qg = gate.decide(st)
    tol = gate_options.TOLERANCE
    flagged = bool(((q <= gate_options.ALPHA) & (st.change > tol)).any()
                   or any(qv <= gate_options.ALPHA and g[2] > tol for g, qv in zip(st.groups, qg)))
    return flagged, gate.group_detectable(st), st


def test_lent_runs_keep_the_level_and_let_three_seeds_see_less():
    """3 seeds, 3 lent runs: the mean over bins on 4 df; where the null is hardest (every bin up by exactly the
    tolerance) at most alpha flagged; they state less than the same 3 seeds alone (the seeds' own t on 2 df); and
    of the comparisons whose rise is at or above the rise each states, at least 80% catch it."""
    rng = np.random.default_rng(5)
    edge = [_trial(rng, gate_options.TOLERANCE, 3) for _ in range(400)]
    assert all(g[4] == 4 for _, _, st in edge[:20] for g in st.groups)
    assert all(st.lent_df == 2 for _, _, st in edge[:20])
    assert np.mean([f for f, _, _ in edge]) <= 0.05
    lent_says = float(np.median([d for _, d, _ in edge]))
    alone_says = float(np.median([_trial(rng, 0.0, 0)[1] for _ in range(150)]))
    assert gate_options.TOLERANCE < lent_says < alone_says - 0.005, (lent_says, alone_says)
    # honest: of the comparisons whose rise is at or above what each states, at least 80% catch it
    judged = [_trial(rng, rise, 3)[:2] for rise in (0.035, 0.04, 0.05) for _ in range(100)]
    rises = np.repeat([0.035, 0.04, 0.05], 100)
    above = [f for (f, d), r in zip(judged, rises) if r >= d]
    assert len(above) >= 100 and np.mean(above) >= 0.8, (len(above), np.mean(above))


# ----------------------------------------------------------------------------
# On a held-out family's runs


@pytest.fixture(scope="module")
def shapes():
    return [load_run(SHAPES / f"healthy_s{i:02d}") for i in range(8)]


def _mean_df(v) -> float:
    return next(c for c in v.checks if c.metric == "loss_mean").details["df"]


@needs_shapes
def test_a_calibration_on_other_seeds_lends_three_baseline_seeds_two_df(shapes):
    al = calibrate(shapes[4:7])
    alone = gate.compare(shapes[:3], shapes[3], rules=["findings:off"])
    lent = gate.compare(shapes[:3], shapes[3], rules=["findings:off"], allowance=al)
    assert _mean_df(alone) == 2 and _mean_df(lent) == 4
    assert alone.allowance is None and lent.allowance == al.source
    assert lent.detectable < alone.detectable
    assert any("lends the baseline seeds the scatter of its 3 other runs" in n and "gain 2 df" in n
               for n in lent.notes)
    assert any("a mean over bins on t with 4 df (2 from these seeds, 2 lent" in n for n in lent.notes)
    assert not any("lends" in n for n in alone.notes)
    assert gate.compare(shapes[:3], raised(shapes[3], 1.05), rules=["findings:off"], allowance=al).status == "regression"


@needs_shapes
def test_compared_runs_among_the_calibration_count_once(shapes):
    # two of the baseline seeds and the candidate are calibration runs: 2 others are left to lend (1 df)
    al = calibrate(shapes[1:6])
    v = gate.compare(shapes[:3], shapes[5], rules=["findings:off"], allowance=al)
    assert _mean_df(v) == 3
    said = next(n for n in v.notes if "lends" in n)
    assert "its 2 other runs" in said and "3 of its runs are compared runs" in said
    assert "healthy_s01" in said and "healthy_s05" in said
    # a copy of a calibration run (another folder, the same levels) is that run
    copy = replace(shapes[3], path=Path("/elsewhere/copy_of_s03"))
    assert _mean_df(gate.compare([shapes[0], copy, shapes[7]], shapes[6], rules=["findings:off"],
                                 allowance=calibrate(shapes[2:5]))) == 2 + 1
    # every calibration run compared: nothing left to lend, and the note says so
    v = gate.compare(shapes[:3], shapes[3], rules=["findings:off"], allowance=calibrate(shapes[:3]))
    assert _mean_df(v) == 2 and any("too few to lend a spread" in n for n in v.notes)


@needs_shapes
def test_a_calibration_of_another_length_or_configuration_lends_nothing_and_says_why(shapes):
    al = calibrate(shapes[4:7])
    longer = replace(al, steps=2 * al.steps)
    v = gate.compare(shapes[:3], shapes[3], rules=["findings:off"], allowance=longer)
    assert _mean_df(v) == 2 and v.allowance is None
    assert any("was measured on runs of 5,000 matched steps" in n and "do not join" in n for n in v.notes)
    other = replace(al, measured_on={**al.measured_on, "config": {**al.measured_on["config"], "lr": 0.123}})
    v = gate.compare(shapes[:3], shapes[3], rules=["findings:off"], allowance=other)
    assert _mean_df(v) == 2 and any("of another configuration" in n and "lr" in n for n in v.notes)


@needs_shapes
def test_a_baseline_folder_of_seeds_with_a_calibration_file_lends_from_it(tmp_path):
    """The CI recipe with several seeds: main's folder holds its runs and a calibration on them; three of them are
    the baseline seeds, and the calibration lends the other three."""
    folder = tmp_path / "main"
    for i in range(6):
        shutil.copytree(SHAPES / f"healthy_s{i:02d}", folder / f"healthy_s{i:02d}")
    res = run_cli("calibrate", folder, "-o", folder / allowance.FILE_NAME)
    assert res.exit_code == 0, res.output
    seeds = str(folder / "healthy_s0[0-2]")  # 3 of main's runs, the calibration's first 3
    res = run_cli("compare", seeds, SHAPES / "healthy_s07", "--json", "-")
    assert res.exit_code == 0, res.output  # a glob is no folder: no calibration found
    assert json.loads(res.stdout)["allowance"] is None
    res = run_cli("compare", seeds, SHAPES / "healthy_s07", "--allowance", folder / allowance.FILE_NAME, "--json", "-")
    assert res.exit_code == 0, res.output
    v = json.loads(res.stdout)
    mean = next(c for c in v["checks"] if c["metric"] == "loss_mean")
    assert mean["details"]["df"] == 2 + 2 and v["allowance"] == str(folder / allowance.FILE_NAME)


EDM = REPO / "sample_logs" / "families" / "patches_edm"  # held out


@pytest.mark.skipif(not (EDM / "healthy_s07").is_dir(), reason="sample_logs/families not present")
def test_three_seeds_too_weak_to_gate_on_are_told_what_a_calibration_would_lend_them():
    runs = [load_run(EDM / f"healthy_s{i:02d}") for i in range(7)]
    v = gate.compare(runs[:3], runs[3], rules=["findings:off"])
    assert v.weak and _mean_df(v) == 2
    proj = v.projection
    assert proj["calibration_runs"] == 3 and proj["with_calibration"] < v.detectable
    said = next(n for n in v.notes if n.startswith("too weak to gate on"))
    assert "a calibration of this configuration on 3 other seeds" in said
    # what it says a calibration would lend, a calibration on 3 other seeds gives, near enough (their spread differs)
    lent = gate.compare(runs[:3], runs[3], rules=["findings:off"], allowance=calibrate(runs[4:7]))
    assert _mean_df(lent) == 4 and lent.detectable < v.detectable
    assert lent.projection is None or "with_calibration" not in lent.projection  # already lent: nothing to project
    assert abs(lent.detectable - proj["with_calibration"]) < 0.5 * (v.detectable - gate_options.TOLERANCE)


# ----------------------------------------------------------------------------
# What compare will see, forecast when calibrating


def _sim_allowance(cal: np.ndarray) -> allowance.Allowance:
    fields = level_spreads(cal.mean(axis=2), cal.mean(axis=0), X[SEL], 100.0 * K)
    fields.pop("pooling")
    return allowance.Allowance(**fields, steps=100 * K, source="simulation")


def test_the_forecast_of_three_lent_seeds_is_what_such_comparisons_state_by_monte_carlo():
    """On average, the forecasts made from 3-run calibrations are what comparisons of 3 seeds lent 3 such runs
    state (each measures its spread anew, on 4 df), within a tenth of the excess over the tolerance."""
    rng = np.random.default_rng(8)
    said, stated = [], []
    for _ in range(150):
        cal = _blocks(rng, 3)
        al = _sim_allowance(cal)
        said.append(gate.projected_sight(al)["baseline_seeds"][3])
        dev = np.array(al.deviations)
        blocks = _blocks(rng, 4)
        st = gate.seed_stats(blocks.mean(axis=2), blocks[:3].mean(axis=0), X[SEL], 100.0 * K, 3,
                             lent=dev - dev.mean(axis=0))
        stated.append(gate.group_detectable(st))
    a, b = float(np.mean(said)), float(np.mean(stated))
    assert abs(a - b) < 0.1 * (b - gate_options.TOLERANCE), (a, b)


@needs_shapes
def test_the_forecast_is_what_compare_states_on_a_held_out_family(shapes):
    for cal in ([4, 5, 6], [0, 1, 2]):
        al = calibrate([shapes[i] for i in cal])
        sight = gate.projected_sight(al)
        rest = [i for i in range(8) if i not in cal]
        one = gate.compare(shapes[rest[0]], shapes[rest[1]], rules=["findings:off"], allowance=al).detectable
        three = gate.compare([shapes[i] for i in rest[:3]], shapes[rest[3]], rules=["findings:off"],
                             allowance=al).detectable
        for said, got in ((sight["one_run_per_side"], one), (sight["baseline_seeds"][3], three)):
            assert abs(said - got) < 0.25 * (got - gate_options.TOLERANCE), (cal, said, got)
        assert sight["baseline_seeds"][5] < sight["baseline_seeds"][3] < sight["one_run_per_side"]
    assert gate.projected_sight(gate.DEFAULT_ALLOWANCE) == {}


@needs_shapes
def test_calibrate_says_what_compare_will_see_and_which_design_to_gate_with():
    res = run_cli("calibrate", *[SHAPES / f"healthy_s0{i}" for i in range(3)])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("what compare will see with it"))
    assert "one run per side +4" in line and "3 baseline seeds against one candidate, its runs lent to theirs, +3" in line
    assert "gate with 3 baseline seeds or more" in res.output


# ----------------------------------------------------------------------------
# What lends nothing, or less, and says so


def _bin_dfs(v) -> dict:
    return {c.bin: c.details["df"] for c in v.checks if c.metric == "loss" and "df" in c.details}


@pytest.mark.skipif(not (EDM / "healthy_s07").is_dir(), reason="sample_logs/families not present")
def test_bins_a_calibration_missed_keep_the_seeds_own_pooled_spread():
    runs = [load_run(EDM / f"healthy_s{i:02d}") for i in range(7)]
    al = calibrate(runs[:3])
    missed = np.flatnonzero(~np.isfinite(np.asarray(al.deviations)).all(axis=0))
    assert missed.size  # EDM's extreme noise levels: some seed of these drew no sample there late
    alone = _bin_dfs(gate.compare(runs[3:6], runs[6], rules=["findings:off"]))
    v = gate.compare(runs[3:6], runs[6], rules=["findings:off"], allowance=al)
    lent = _bin_dfs(v)
    for k in missed:
        if k in alone:
            assert lent[k] == pytest.approx(alone[k]), k  # not cut to the bin's own 2 df
    # elsewhere the lent runs' deviations are the bins' own (each bin's total stays capped at MAX_BIN_DF)
    assert any("4 df per bin of its own" in n for n in v.notes)
    assert any("which the lent runs did not all sample, keep the seeds' own pooled spread" in n for n in v.notes)


@needs_shapes
def test_a_calibration_missing_much_of_a_means_weight_lends_it_nothing_and_says_so(shapes):
    al = calibrate(shapes[4:7])
    dev = np.array(al.deviations)
    dev[0, :10] = np.nan  # one of its runs drew nothing late in 10 bins
    gappy = replace(al, deviations=tuple(tuple(r) for r in dev))
    v = gate.compare(shapes[:3], shapes[3], rules=["findings:off"], allowance=gappy)
    assert _mean_df(v) == 2 and v.allowance == al.source
    assert any("keep the seeds' own df" in n or "keeps the seeds' own df" in n for n in v.notes)
    assert not any("a mean over bins on t with 4 df" in n for n in v.notes)
    assert v.projection is None or "with_calibration" not in v.projection  # a calibration was given


@needs_shapes
@pytest.mark.parametrize("how, said", [
    (dict(window="steps:800-1200"), "over another part of training"),
    (dict(tolerance="1%"), "under another tolerance or --max-lag"),
    (dict(max_lag="1%"), "under another tolerance or --max-lag"),
    (dict(unit="lstar"), "lends nothing in units of L*"),
])
def test_a_calibration_lends_only_the_statistic_the_seeds_measure(shapes, how, said):
    al = calibrate(shapes[4:7])
    v = gate.compare(shapes[:3], shapes[3], rules=["findings:off"], allowance=al, **how)
    assert _mean_df(v) == 2 and v.allowance is None
    assert any(said in n for n in v.notes), v.notes


@needs_shapes
def test_copies_and_reruns_of_calibration_runs_lend_nothing_twice(shapes):
    al = calibrate(shapes[2:5])
    # a copy in another folder whose config lost its seed: told by its late levels
    cfg = {k: v for k, v in shapes[3].meta["config"].items() if k != "seed"}
    copy = replace(shapes[3], path=Path("/elsewhere/copy_of_s03"), meta={**shapes[3].meta, "config": cfg})
    v = gate.compare([shapes[0], copy, shapes[7]], shapes[6], rules=["findings:off"], allowance=al)
    assert _mean_df(v) == 2 + 1 and any("1 of its runs are compared runs" in n for n in v.notes)
    # a rerun of a calibration run's seed kept under a nested key (another folder, other levels)
    nest = [replace(r, meta={**r.meta, "config": {**{k: x for k, x in r.meta["config"].items() if k != "seed"},
                                                   "train": {"seed": 100 + i}}}) for i, r in enumerate(shapes)]
    al = calibrate(nest[2:5])
    assert al.measured_on["runs"][1]["seeds"] == {"train.seed": 103}
    rerun = replace(nest[7], meta={**nest[7].meta, "config": {**nest[7].meta["config"], "train": {"seed": 103}}})
    v = gate.compare([nest[0], rerun, nest[1]], nest[6], rules=["findings:off"], allowance=al)
    assert _mean_df(v) == 2 + 1 and any("its 2 other runs" in n for n in v.notes)


@needs_shapes
def test_one_baseline_run_against_two_candidates_is_judged(shapes):
    """Pooling over one df once divided by zero (the moments of the bins' effective number)."""
    v = gate.compare(shapes[0], shapes[1:3], rules=["findings:off"], allowance=calibrate(shapes[4:7]))
    assert v.status == "pass" and v.detectable is not None
    assert any("lends its runs only to several baseline seeds" in n for n in v.notes)


@needs_shapes
def test_one_run_per_side_over_another_part_of_training_adds_the_calibration_and_says_so(shapes):
    """A calibration measured over the last 20% of its runs is not the whole spread of a window reaching back to
    40% of training, where runs spread more: it is added to the within-run error, as for runs of another length."""
    al = calibrate(shapes[4:7])
    assert al.window_share() == pytest.approx((0.8, 1.0), abs=0.01)
    late = gate.compare(shapes[0], shapes[1], rules=["findings:off"], allowance=al)
    wide = gate.compare(shapes[0], shapes[1], rules=["findings:off"], allowance=al, window="last:60%")
    assert not any("sat elsewhere in training" in n for n in late.notes)
    said = next(n for n in wide.notes if n.startswith("seed allowance calibrated"))
    assert "its late window sat elsewhere in training (80%-100% of its steps), this one at 40%-100%" in said
    assert "added to the within-run variability" in said
    # added, never in place of: every bin's variance holds the within-run part and the calibration's
    assert all(c.details["df"] != al.df_mean for c in wide.checks if c.metric == "loss_mean")
