"""Does the network use the noise level at all? The time-sensitivity probe, read.

Why a probe: a denoiser whose time embedding is missing, zeroed or fed a
constant can still reach a healthy-looking per-bin loss, because the norm of
x_t carries the noise level. The per-bin loss alone cannot tell it from a
healthy model. :meth:`diffaudit.logger.RunLogger.probe_time` asks directly: on
probe steps it evaluates the same training samples twice, once with the network
told the true noise level and once told a level half the noise range away, and
logs both losses binned by the true level (splits ``probe_true`` and
``probe_t``).

What is read: per bin, the ratio R_b = mean(loss, far t) / mean(loss, true t)
over the probes of the judged stretch (the later half of the probes after the
first, at least one: the first probe sees an untrained network, which barely uses
t whatever its architecture). The same samples, noise and targets enter both means, so sampling noise
cancels: a network that ignores t computes exactly the same outputs and R_b is 1
to rounding; one that uses t is hurt by a wrong noise level wherever the best
denoiser depends on it, which for a diffusion model is almost everywhere (R_b of
1.1 to 2.5 on the healthy runs of five data/model families). The rule: the
network *ignores t* when R_b < 1 + ``IGNORED_MARGIN`` in at least
``IGNORED_SHARE`` of the bins that the probe sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

# R_b below 1 + this counts as "no dependence on t". A t-ignoring network gives 1 to float
# rounding (1e-6); healthy networks give > 1.1 in most bins, but 1.01-1.05 in a few bins where
# the loss is nearly t-independent anyway (set on the calibration families' healthy runs).
IGNORED_MARGIN = 0.01
# ... in at least this share of the probed bins (a healthy network is far above in most of them).
IGNORED_SHARE = 0.9


@dataclass(frozen=True)
class TimeProbe:
    """The time-sensitivity probe of one run (``probed`` False when the run has none)."""

    probed: bool
    steps: tuple[int, ...] = ()  # probe steps in the judged stretch
    all_steps: int = 0  # probe steps in the run
    bins: tuple[int, ...] = ()  # bins the probe sampled in the judged stretch
    ratio: tuple[float, ...] = ()  # R_b per sampled bin: loss with far t / loss with true t
    samples: tuple[int, ...] = ()  # samples behind each R_b
    ignored_share: float = float("nan")  # share of sampled bins with R_b < 1 + IGNORED_MARGIN

    @property
    def ignores_t(self) -> bool:
        return self.probed and len(self.bins) > 0 and self.ignored_share >= IGNORED_SHARE

    @property
    def median_ratio(self) -> float:
        return float(np.median(self.ratio)) if self.ratio else float("nan")


def time_probe(bins: pl.DataFrame, *, late_share: float = 0.5) -> TimeProbe:
    """Read the probe from a run's bins frame (``Run.bins``): per-bin ratios over the later probes."""
    if "split" not in bins.columns:
        return TimeProbe(False)
    pb = bins.filter(pl.col("split").is_in(["probe_t", "probe_true"]) & (pl.col("count") > 0))
    if pb.height == 0:
        return TimeProbe(False)
    steps = sorted(set(pb.filter(pl.col("split") == "probe_t")["step_lo"].to_list())
                   & set(pb.filter(pl.col("split") == "probe_true")["step_lo"].to_list()))
    if not steps:
        return TimeProbe(False)
    # the first probe sees the network before (almost) any training: an untrained network barely
    # uses t whatever its architecture, so that probe says nothing about the architecture
    trained = steps[1:]
    if not trained:
        return TimeProbe(True, (), len(steps))
    keep = trained[int(len(trained) * (1 - late_share)):] or trained[-1:]
    late = pb.filter(pl.col("step_lo").is_in(keep))
    per = (
        late.group_by("split", "bin")
        .agg((pl.col("mean") * pl.col("count")).sum().alias("s"), pl.col("count").sum().alias("n"))
        .pivot(on="split", index="bin", values=["s", "n"])
        .drop_nulls()
        .sort("bin")
    )
    if per.height == 0:
        return TimeProbe(True, tuple(keep), len(steps))
    far = per["s_probe_t"].to_numpy() / per["n_probe_t"].to_numpy()
    true = per["s_probe_true"].to_numpy() / per["n_probe_true"].to_numpy()
    ok = np.isfinite(far) & np.isfinite(true) & (true > 0)
    ratio = np.where(ok, far / np.where(ok, true, 1.0), np.nan)
    bins_ = per["bin"].to_numpy()[ok]
    ratio = ratio[ok]
    share = float(np.mean(ratio < 1 + IGNORED_MARGIN)) if ratio.size else float("nan")
    return TimeProbe(
        probed=True,
        steps=tuple(int(s) for s in keep),
        all_steps=len(steps),
        bins=tuple(int(b) for b in bins_),
        ratio=tuple(float(r) for r in ratio),
        samples=tuple(int(n) for n in per["n_probe_true"].to_numpy()[ok]),
        ignored_share=share,
    )
