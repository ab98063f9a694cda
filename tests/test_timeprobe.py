"""The time-sensitivity probe against runs whose answer is known: real time-ignoring and healthy runs."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import diffaudit
from diffaudit.timeprobe import IGNORED_MARGIN, time_probe

FAMILIES = Path(__file__).resolve().parents[1] / "sample_logs" / "families"
CORPUS = FAMILIES.parent / "corpus"  # the digits MLP family
LABELS = json.loads((FAMILIES / "labels.json").read_text())["families"] if (FAMILIES / "labels.json").exists() else {}


def _runs(kind_or_name):
    if kind_or_name == "no_time":
        yield pytest.param("..", "corpus/no_time", id="digits_mlp/no_time")
    if kind_or_name == "healthy":
        for d in sorted(CORPUS.glob("healthy_s*")):
            yield pytest.param("..", f"corpus/{d.name}", id=f"digits_mlp/{d.name}")
    for fam, entry in sorted(LABELS.items()):
        for name, lab in sorted(entry["runs"].items()):
            if (FAMILIES / fam / name).is_dir() and (lab["kind"] == kind_or_name or name == kind_or_name):
                yield pytest.param(fam, name, id=f"{fam}/{name}")


def _synthetic(ratio_by_bin, steps=(0, 250, 500, 750)):
    rows = []
    for s in steps:
        for b, r in enumerate(ratio_by_bin):
            rows.append({"split": "probe_true", "step_lo": s, "step_hi": s, "bin": b, "count": 10, "mean": 0.5})
            rows.append({"split": "probe_t", "step_lo": s, "step_hi": s, "bin": b, "count": 10, "mean": 0.5 * r})
    return pl.DataFrame(rows)


def test_reads_a_known_ratio_per_bin():
    tp = time_probe(_synthetic([1.0, 1.5, 2.0, 1.0], steps=(0, 250, 500, 750, 1000)))
    assert tp.probed and tp.steps == (750, 1000) and tp.all_steps == 5
    np.testing.assert_allclose(tp.ratio, [1.0, 1.5, 2.0, 1.0])
    assert tp.ignored_share == 0.5 and not tp.ignores_t
    assert time_probe(_synthetic([1.0 + IGNORED_MARGIN / 2] * 20)).ignores_t
    assert not time_probe(_synthetic([1.0] * 20, steps=(0,))).ignores_t  # only the untrained network was probed
    assert not time_probe(pl.DataFrame({"split": ["train"], "step_lo": [0], "bin": [0], "count": [1], "mean": [1.0]})).probed


@pytest.mark.parametrize("fam,name", list(_runs("no_time")))
def test_fires_on_every_time_ignoring_run(fam, name):
    tp = time_probe(diffaudit.load_run(FAMILIES / fam / name).bins)
    assert tp.ignores_t, (tp.median_ratio, tp.ignored_share)
    assert max(tp.ratio) < 1 + 1e-4  # the same outputs: only rounding separates the two losses


@pytest.mark.parametrize("fam,name", list(_runs("healthy")))
def test_never_fires_on_a_healthy_run_at_any_read_point(fam, name):
    bins = diffaudit.load_run(FAMILIES / fam / name).bins
    probe_steps = sorted(bins.filter(pl.col("split") == "probe_t")["step_lo"].unique().to_list())
    assert probe_steps, "the generator logs the probe on every healthy run"
    for k in range(1, len(probe_steps) + 1):  # read after each probe, as a run is read while it trains
        tp = time_probe(bins.filter(pl.col("step_lo") <= probe_steps[k - 1]))
        assert not tp.ignores_t, (k, tp.median_ratio, tp.ignored_share)
