"""The logger's device accumulator on its own: every sum against a brute-force count, both reductions, on the CPU."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from diffaudit import logtables as lt  # noqa: E402
from diffaudit.accumulator import DeviceAccumulator, bin_of  # noqa: E402
from diffaudit.noise import Process, named_betas, schedule_from_betas  # noqa: E402

NB = 7


@pytest.fixture(scope="module")
def process():
    ab, om = schedule_from_betas(named_betas("linear"))
    return Process("vp", "epsilon", NB, ab, om)


def _acc(process, reduction, buffer_size=50):
    return DeviceAccumulator(process, "cpu", flush_every=12, window=4, buffer_size=buffer_size, probe_bins=3,
                             reduction=reduction)


def _feed(acc, rng, calls):
    """Random calls (window slot, step slot, t, x) with a few non-finite, negative and impossible samples."""
    log = []
    for win, slot, n in calls:
        t = rng.integers(0, 1000, n).astype(np.float64)
        x = rng.gamma(2.0, 0.3, n)
        x[rng.random(n) < 0.05] = np.nan
        x[rng.random(n) < 0.05] = -0.25
        t[rng.random(n) < 0.05] = 1000.5  # not a timestep of a 1,000-step schedule
        acc.append("train", win, torch.from_numpy(x), torch.from_numpy(t), slot, None)
        log += [(win, slot, ti, xi) for ti, xi in zip(t, x)]
    return log


@pytest.mark.parametrize("reduction", ["bincount", "index_add"])
@pytest.mark.parametrize("buffer_size", [50, 7])  # 7: calls larger than the whole buffer are reduced directly
def test_window_and_step_sums_match_a_brute_force_count(process, reduction, buffer_size):
    rng = np.random.default_rng(0)
    acc = _acc(process, reduction, buffer_size)
    calls = [(0, 0, 9), (0, 0, 5), (0, 1, 12), (1, 2, 30), (1, 3, 1), (2, 4, 20)]
    log = _feed(acc, rng, calls)
    tensors, event = acc.copy_to_host(5, {"train": 3, "eval": 0, "ema": 0, "probe_t": 0, "probe_true": 0}, 0)
    assert event is None and set(tensors) == {"ring", "shift", "tmin", "tmax", "acc_train", "min_train", "max_train"}
    shift = tensors["shift"].numpy()
    a, amin, ring = tensors["acc_train"].numpy(), tensors["min_train"].numpy(), tensors["ring"].numpy()
    assert a.shape == (3, lt.NCOL, NB) and ring.shape == (lt.NCOL, 5)
    for w in range(3):
        for b in range(NB):
            good = [x for (ww, _, t, x) in log if ww == w and t < 1000 and process.bin_of(np.array([t]))[0] == b
                    and math.isfinite(x) and x >= 0]
            assert a[w, lt.C_COUNT, b] == len(good)
            d = np.array(good) - shift[b]
            assert a[w, lt.C_S1, b] == pytest.approx(d.sum(), abs=1e-12)
            assert a[w, lt.C_S2, b] == pytest.approx((d * d).sum(), abs=1e-12)
            assert amin[w, b] == (min(good) if good else math.inf)
    for s in range(5):
        mine = [(t, x) for (_, ss, t, x) in log if ss == s]
        assert ring[lt.C_BADT, s] == sum(t >= 1000 for t, _ in mine)
        assert ring[lt.C_NEG, s] == sum(t < 1000 and x < 0 for t, x in mine)
        assert ring[lt.C_NONFINITE, s] == sum(t < 1000 and not math.isfinite(x) for t, x in mine)
        good = [x for t, x in mine if t < 1000 and math.isfinite(x) and x >= 0]
        assert ring[lt.C_RAW, s] == pytest.approx(sum(good))
        assert tensors["tmax"][s] == max(t for t, _ in mine)


def test_the_first_shift_is_the_first_mean_and_restart_moves_it_to_each_bins_mean(process):
    acc = _acc(process, "bincount")
    t = torch.tensor([10.0, 10.0, 990.0, 990.0])
    acc.append("train", 0, torch.tensor([1.0, 3.0, 10.0, 14.0]), t, 0, None)
    acc.reduce("train")
    assert acc.shift.tolist() == [7.0] * NB  # every bin starts at the mean of all the first data
    acc.restart(1)
    b = bin_of(process, t).tolist()
    assert acc.shift[b[0]].item() == pytest.approx(2.0) and acc.shift[b[2]].item() == pytest.approx(12.0)
    assert acc.shift[3].item() == 7.0  # a bin without data keeps its shift
    assert not acc.acc["train"].any() and acc.ring.abs().sum() == 0 and math.isinf(acc.min["train"][0, 0])


def test_a_new_window_slot_folds_the_buffered_samples_into_the_old_one_and_grow_keeps_them(process):
    acc = _acc(process, "index_add")
    acc.append("eval", 0, torch.tensor([0.5]), torch.tensor([1.0]), 0, None)
    for w in range(1, acc.windows("eval")):
        acc.append("eval", w, torch.tensor([0.5]), torch.tensor([1.0]), 0, None)
    n = acc.windows("eval")
    acc.grow("eval")
    assert acc.windows("eval") == 2 * n
    acc.append("eval", n, torch.tensor([0.25, 0.25]), torch.tensor([1.0, 1.0]), 0, None)
    acc.reduce("eval")
    assert acc.acc["eval"][:, lt.C_COUNT, 0].tolist() == [1.0] * n + [2.0] + [0.0] * (n - 1)
    assert acc.ring.abs().sum() == 0  # evaluation samples are no training step's loss


def test_weights_scalars_and_probes_are_kept_per_slot(process):
    acc = _acc(process, "bincount")
    acc.append("train", 0, torch.tensor([1.0, 2.0]), torch.tensor([5.0, 5.0]), 0, torch.tensor([1.0, 3.0]))
    acc.append("train", 0, torch.tensor([4.0]), torch.tensor([5.0]), 1, None)
    assert acc.set_scalar("grad_norm", 1, torch.tensor(2.5)) and not acc.set_scalar("grad_norm", 0, torch.tensor(1.5))
    for row in range(20):  # past the table's rows: it doubles
        acc.set_probe(row, torch.full((3,), float(row)), torch.ones(3))
    tensors, _ = acc.copy_to_host(2, {"train": 1, "eval": 0, "ema": 0, "probe_t": 0, "probe_true": 0}, 20)
    assert acc.has_weights
    ring = tensors["ring"].numpy()
    assert ring[lt.C_W].tolist() == [4.0, 0.0] and ring[lt.C_WX].tolist() == [7.0, 0.0]
    assert tensors["dev_grad_norm"].tolist() == [1.5, 2.5]
    assert tensors["probe"][:, 0, 0].tolist() == [float(r) for r in range(20)]


def test_an_unknown_reduction_is_refused(process):
    with pytest.raises(ValueError, match="reduction"):
        _acc(process, "scatter")
