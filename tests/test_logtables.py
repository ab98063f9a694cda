"""The logger's table builders, fed a hand-made flush (numpy arrays, no torch): every column against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from diffaudit import logtables as lt


def _batch(samples, shift):
    """A flush of one training window (steps 0-1) over 2 bins from per-sample (step, bin, loss) triples."""
    acc = np.zeros((1, lt.NCOL, 2))
    ring = np.zeros((lt.NCOL, 2))
    lo, hi = np.full((1, 2), np.inf), np.full((1, 2), -np.inf)
    for step, b, x in samples:
        col = np.zeros(lt.NCOL)
        if x < 0:
            col[lt.C_NEG] = 1
        else:
            d = x - shift[b]
            col[[lt.C_COUNT, lt.C_S1, lt.C_S2, lt.C_RAW]] = 1, d, d * d, x
            lo[0, b], hi[0, b] = min(lo[0, b], x), max(hi[0, b], x)
        acc[0, :, b] += col
        ring[:, step] += col
    tensors = {"ring": ring, "shift": shift, "tmin": np.array([0.0, 1.0]), "tmax": np.array([999.0, 998.0]),
               "acc_train": acc, "min_train": lo, "max_train": hi}
    return lt.Batch(seq=0, event=None, tensors=tensors, steps=[0, 1], times=[1.0, 2.0],
                    host_scalars={"lr": [1e-3, None]}, device_scalar_names=[], device_given={},
                    windows={"train": [lt.Window(0, 0, 1)]})


def test_bins_and_steps_match_a_direct_computation():
    rng = np.random.default_rng(0)
    samples = [(int(s), int(b), float(x)) for s, b, x in
               zip(rng.integers(0, 2, 40), rng.integers(0, 2, 40), rng.gamma(2.0, 0.5, 40))]
    samples += [(1, 0, -0.5)]  # a negative loss: counted apart, in no statistic
    shift = np.array([0.9, 1.1])
    tables = lt.part_tables(_batch(samples, shift), num_bins=2, rank=3, segment=2)
    assert set(tables) == {"steps", "bins"}
    bins = tables["bins"].to_pydict()
    for b in (0, 1):
        x = np.array([v for _, bb, v in samples if bb == b and v >= 0])
        i = bins["bin"].index(b)
        assert bins["count"][i] == x.size
        assert bins["mean"][i] == pytest.approx(x.mean(), rel=1e-12)
        assert bins["m2"][i] == pytest.approx(((x - x.mean()) ** 2).sum(), rel=1e-9)
        assert bins["min"][i] == pytest.approx(x.min(), rel=1e-6) and bins["max"][i] == pytest.approx(x.max(), rel=1e-6)
    assert set(bins["rank"]) == {3} and set(bins["segment"]) == {2} and set(bins["step_lo"]) == {0}
    steps = tables["steps"].to_pydict()
    for s in (0, 1):
        x = np.array([v for ss, _, v in samples if ss == s and v >= 0])
        assert steps["loss"][s] == pytest.approx(x.mean(), rel=1e-6) and steps["count"][s] == x.size
    assert steps["negative"] == [0, 1] and steps["lr"] == [1e-3, None]  # a scalar not logged is null, not NaN
    assert steps["grad_norm"] == [None, None] and steps["clipped"] == [None, None]


def test_the_part_ledger_gives_slots_and_keeps_known_scalar_columns_into_the_next_part():
    led = lt.PartLedger()
    assert led.empty()
    assert [led.train_slot(s, 0.0) for s in (5, 5, 6)] == [0, 0, 1]  # a repeated step is gradient accumulation
    assert [led.window_slot("train", k, s) for k, s in ((0, 5), (0, 6), (1, 10))] == [0, 0, 1]
    assert led.windows["train"][0] == lt.Window(0, 5, 6)
    led.set_host_scalar(1, "lr", 2e-4)
    led.given_on_device(0, "grad_norm")
    assert led.host_scalars == {"lr": [None, 2e-4]} and led.device_given == {"grad_norm": [True, False]}
    batch = led.batch(seq=3, event=None, tensors={}, device_scalar_names=["grad_norm"], has_weights=False)
    assert batch.steps == [5, 6] and batch.seq == 3 and batch.windows["train"][1].key == 1
    nxt = led.next()
    assert nxt.empty() and nxt.train_slot(7, 0.0) == 0
    assert nxt.host_scalars == {"lr": [None]} and nxt.device_given == {"grad_norm": [False]}  # null, not absent
