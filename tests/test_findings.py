"""The findings on real training runs: each labelled defect fires its finding, no healthy run warns.

The corpus (``sample_logs/corpus/``, made by ``examples/make_sample_logs.py``)
holds real DDPM trainings of an 8x8-digits denoiser: many healthy seeds, a
resumed (SIGKILLed, then continued) healthy run, and runs with exactly one
defect each. ``labels.json`` says, per run, the defect and the finding ids it
must produce (``expected_findings``) and those that are also true of it
(``may_also_find``). This file asserts:

* every expected finding fires on its run, at ``warn`` or ``fail``;
* no ``warn`` or ``fail`` finding fires on any healthy run (every seed);
* the evidence of a few findings matches what the defect implies, computed
  independently from the run's own configuration.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

import diffaudit
from diffaudit.analysis import analyze
from diffaudit.findings import DETECTORS, at_or_above

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "sample_logs" / "corpus"
LABELS_FILE = CORPUS / "labels.json"
LABELS = json.loads(LABELS_FILE.read_text()) if LABELS_FILE.exists() else {}
# the two loose runs next to the corpus (the README's examples) are healthy too
EXTRA_HEALTHY = [p for p in (ROOT / "sample_logs" / n for n in ("healthy_seed0", "healthy_seed1", "resumed")) if p.is_dir()]

pytestmark = pytest.mark.skipif(
    not LABELS,
    reason=f"no labelled corpus at {LABELS_FILE.relative_to(ROOT)}: run `python examples/make_sample_logs.py`",
)


def _healthy(label: dict) -> bool:
    d = str(label.get("defect", ""))
    return d == "none" or d.startswith("none ")


HEALTHY = sorted(n for n, lab in LABELS.items() if _healthy(lab))
DEFECTS = sorted(n for n, lab in LABELS.items() if lab.get("expected_findings"))


@lru_cache(maxsize=None)
def _analysis(path: str):
    return analyze(diffaudit.load_run(path))


def _run(name: str):
    return _analysis(str(CORPUS / name))


def _show(a) -> str:
    return "\n".join(f"[{f.severity}] {f.id}: {f.message}" for f in a.findings) or "(no findings)"


def test_corpus_has_several_healthy_seeds_and_the_defects():
    assert len(HEALTHY) >= 5, HEALTHY
    expected = {i for n in DEFECTS for i in LABELS[n]["expected_findings"]}
    for need in ("loss.exploding", "clip.rate_high", "loss.stagnant_above_optimum", "nonfinite.loss",
                 "schedule.terminal_snr", "time_conditioning.broken"):
        assert need in expected, f"no corpus run is labelled with {need}"


def test_labels_name_only_known_findings():
    known = {r.id for r in DETECTORS}
    for name, lab in LABELS.items():
        for i in list(lab.get("expected_findings", [])) + list(lab.get("may_also_find", [])):
            assert i in known, f"{name}: label names unknown finding {i!r}"


@pytest.mark.parametrize("name", DEFECTS)
def test_defect_fires_its_finding(name):
    a = _run(name)
    fired = {f.id for f in at_or_above(a.findings, "warn")}
    missing = [i for i in LABELS[name]["expected_findings"] if i not in fired]
    assert not missing, f"{name} ({LABELS[name]['defect']}): {missing} did not fire at warn or fail\n{_show(a)}"


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_run_raises_no_warning(name):
    a = _run(name)
    bad = at_or_above(a.findings, "warn")
    assert not bad, f"{name}: warn/fail on a healthy run\n{_show(a)}"
    assert a.verdict == "healthy"


@pytest.mark.parametrize("path", EXTRA_HEALTHY, ids=lambda p: p.name)
def test_loose_healthy_runs_raise_no_warning(path):
    a = _analysis(str(path))
    assert not at_or_above(a.findings, "warn"), _show(a)


# ----------------------------------------------------------------------------
# The evidence says what the defect implies


def _config(name: str) -> dict:
    return json.loads((CORPUS / name / "run.json").read_text())["config"]


def test_signal_leak_evidence_is_the_schedules_terminal_snr():
    if "signal_leak" not in LABELS:
        pytest.skip("no signal_leak run")
    cfg = _config("signal_leak")
    T = diffaudit.load_run(CORPUS / "signal_leak").process.num_timesteps
    betas = np.linspace(cfg["beta_start"], cfg["beta_end"], T)
    ab = np.prod(1.0 - betas)
    f = _run("signal_leak").by_id("schedule.terminal_snr")
    assert f.evidence["terminal_snr"] == pytest.approx(ab / (1.0 - ab), rel=1e-9)
    assert f.severity == "fail"


def test_fp16_nonfinite_losses_sit_at_the_lowest_timesteps():
    """sigma rounds to 0 only at t < 2, so every non-finite loss is in the bin holding t = 0, 1."""
    if "fp16_overflow" not in LABELS:
        pytest.skip("no fp16_overflow run")
    a = _run("fp16_overflow")
    f = a.by_id("nonfinite.loss")
    run = diffaudit.load_run(CORPUS / "fp16_overflow")
    assert set(f.bins) == {int(run.process.bin_of(np.array([0]))[0])}
    # about 2 / T of the samples have t < 2
    assert f.evidence["share"] == pytest.approx(2 / run.process.num_timesteps, rel=0.3)


def test_frozen_model_sits_at_its_initial_loss():
    if "frozen" not in LABELS:
        pytest.skip("no frozen run")
    a = _run("frozen")
    assert a.loss.stagnant and abs(a.loss.trend_rel) < 0.05
    assert a.loss.late_over_early == pytest.approx(1.0, abs=0.02)
    assert a.by_id("loss.stagnant_above_optimum").severity == "fail"


def test_memorize_divergence_is_at_low_noise():
    if "memorize" not in LABELS:
        pytest.skip("no memorize run")
    a = _run("memorize")
    f = a.by_id("eval.divergence")
    assert max(f.bins) < a.run.num_bins // 2  # memorization shows where the posterior collapses: low noise
    assert a.eval.eval_rise > 0.05


def test_lr_high_blows_up_during_warmup():
    if "lr_high" not in LABELS:
        pytest.skip("no lr_high run")
    f = _run("lr_high").by_id("loss.exploding")
    assert f.evidence["max_ratio"] >= 10
    assert f.evidence["max_ratio_step"] < _config("lr_high")["steps"] // 2
