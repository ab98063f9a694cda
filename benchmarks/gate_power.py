"""What ``diffaudit compare`` can see: power on injected rises, false positives, and whether the stated
detectable rise is honest, on real runs of every family and in simulation.

    python benchmarks/gate_power.py                       # every family in sample_logs/ + the simulation
    python benchmarks/gate_power.py --families shapes_mlp --rises 0 5 10 --trials 20
    python benchmarks/gate_power.py --sim-only            # the simulation alone (library functions)
    python benchmarks/gate_power.py --rises 5 --trials 280 --sim-trials 0   # every seed combination at +5%, no simulation
    python benchmarks/gate_power.py --read-at 0.6 --sim-trials 0          # every run read at 60% of its steps
    python benchmarks/gate_power.py --equal-weights ...                   # the means over bins weighted equally

Real runs. For each family, its healthy seeds (all differ only in their seed);
a candidate is a healthy seed with every logged training loss raised by a known
relative amount (mean, min and max x (1 + r), m2 x (1 + r)^2: what a model that
is r worse at every noise level logs). Designs, each at the gate's defaults:

* ``1v1 built-in``: one run per side, the built-in allowance (other models'
  seeds): ordered pairs of distinct seeds.
* ``1v1 calibrated``: one run per side, with an allowance calibrated
  (:func:`diffaudit.calibration.calibrate`) on 3 *other* seeds of the family:
  splits into 3 calibration seeds and an ordered pair of 2 others.
* ``3v1`` and ``5v1``: 3 or 5 baseline seeds against one candidate seed not
  among them (the prediction interval, per-bin spread pooled across bins).
* ``3v1 + calibrated on 3``: 3 baseline seeds against one candidate, with a
  calibration on 3 *other* seeds, which lend the baseline seeds their scatter
  (:func:`diffaudit.gate.lent_runs`: the mean over bins on 4 df instead of 2).

Rise 0 gives the false-positive rate, over every combination of seeds up to
``--null-trials`` (all 56 pairs, 280 3v1 and 168 5v1 trials of 8 seeds; 280 of
the 1,120 calibrated splits of either kind); other rises the power, over ``--trials`` of them. "honest" counts
the trials whose injected rise is at or above the detectable rise the verdict
states, and how many of those were caught (the claim: at least 80%).
The findings rule is off (the injected runs have the seed's own findings) and
the speed and clip checks see the per-step loss, which the injection leaves
alone: the figures are those of the per-bin and mean-loss checks.

Simulation. :func:`diffaudit.gate.seed_stats` and :func:`diffaudit.gate.decide`
on synthetic block means: 50 bins, AR(1) window noise (phi 0.9, 30% shared by
the bins), per-run seed effects (1% common, 1.5% per bin), the bins alike ("even") or their own seed
effect and window noise scaled along the noise levels from x0.5 in the middle to
x10 at the extremes ("uneven", as EDM-style training gives); 30 blocks (3,000
steps in windows of 100) and 300 blocks (30,000 steps); 3 and 5 baseline
seeds against one candidate raised in every bin; and one run per side
(:func:`diffaudit.gate.single_run_stats`) with a calibration on 3 other seeds
(:func:`diffaudit.calibration.level_spreads`) that counts the baseline among
its runs (:func:`diffaudit.gate.with_baseline`), shown as 0 seeds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # the synthetic AR(1) noise the gate's simulation tests share

from diffaudit import gate, gate_options, stats  # noqa: E402
from diffaudit.allowance import Allowance  # noqa: E402
from diffaudit.calibration import calibrate, level_spreads  # noqa: E402
from diffaudit.load import load_run  # noqa: E402
from _stats import ar1_rows  # noqa: E402

NO_FINDINGS = ("findings:off",)


def raised(run, factor: float):
    """The run with every logged training loss (per bin and per step) x factor."""
    hit = pl.col("split") == "train"
    bins = run.bins.with_columns(
        *[pl.when(hit).then(pl.col(c) * factor).otherwise(pl.col(c)).alias(c) for c in ("mean", "min", "max")],
        pl.when(hit).then(pl.col("m2") * factor**2).otherwise(pl.col("m2")).alias("m2"),
    )
    steps = run.steps.with_columns(pl.col("loss") * factor) if run.steps.height else run.steps
    return replace(run, bins=bins, steps=steps, path=run.path.with_name(run.path.name + f"+{factor:g}"))


def read_at(run, share: float):
    """The run as it stood when ``share`` of its logged steps were done (a mid-training read): windows and steps
    after that point dropped."""
    last = int(run.steps["step"].max()) if run.steps.height else int(run.train_bins["step_hi"].max())
    hi = int(share * last)
    bins = run.bins.filter(pl.col("step_hi") <= hi)
    steps = run.steps.filter(pl.col("step") <= hi) if run.steps.height else run.steps
    probes = run.probes.filter(pl.col("step") <= hi) if run.probes.height and "step" in run.probes.columns \
        else run.probes
    return replace(run, bins=bins, steps=steps, probes=probes, path=run.path.with_name(run.path.name + f"@{share:g}"))


def families(root: Path, only: set[str] | None) -> dict[str, tuple[str, list]]:
    out = {}
    corpus = root / "corpus"
    if (not only or "digits_mlp" in only) and (corpus / "labels.json").is_file():
        labels = json.loads((corpus / "labels.json").read_text())
        out["digits_mlp"] = ("calibration", [load_run(corpus / n) for n, lab in sorted(labels.items())
                                             if lab.get("defect") == "none"][:8])
    fl = json.loads((root / "families" / "labels.json").read_text())["families"]
    for name, f in sorted(fl.items()):
        if f.get("role") not in ("calibration", "heldout") or (only and name not in only):
            continue
        runs = [load_run(root / "families" / name / r) for r, lab in sorted(f["runs"].items())
                if lab.get("kind") == "healthy"]
        out[name] = (f["role"], runs)
    return out


def designs(runs: list, trials: int, null_trials: int, rng, only=None) -> dict[str, list]:
    """Per design, the trials as (baseline runs, candidate seed, calibration runs or None): every combination
    when there are at most ``null_trials`` of them (in random order), else that many drawn at random. Rises use
    the first ``trials``; rise 0 (false positives) uses them all."""
    n = len(runs)
    idx = list(range(n))

    def pick(combos):
        order = rng.permutation(len(combos))[:null_trials]
        return [combos[i] for i in order]

    out = {"1v1 built-in": [([runs[a]], runs[b], None) for a, b in pick(list(itertools.permutations(idx, 2)))]}
    cal = [(c, a, b) for c in itertools.combinations(idx, 3) for a, b in
           itertools.permutations([i for i in idx if i not in c], 2)]
    out["1v1 calibrated on 3"] = [([runs[a]], runs[b], [runs[i] for i in c]) for c, a, b in pick(cal)]
    for k in (3, 5):
        combos = [(g, c) for c in idx for g in itertools.combinations([i for i in idx if i != c], k)]
        out[f"{k}v1"] = [([runs[i] for i in g], runs[c], None) for g, c in pick(combos)]
    # 3 baseline seeds, and a calibration on 3 runs that are neither baseline nor candidate: they lend the seeds
    # their scatter (gate.lent_runs)
    lend = [(g, c, k) for c in idx for g in itertools.combinations([i for i in idx if i != c], 3)
            for k in itertools.combinations([i for i in idx if i != c and i not in g], 3)]
    out["3v1 + calibrated on 3"] = [([runs[i] for i in g], runs[c], [runs[i] for i in k]) for g, c, k in pick(lend)]
    return {k: v for k, v in out.items() if only is None or k in only}


def run_family(name: str, role: str, runs: list, rises: list[float], trials: int, null_trials: int,
               seed: int, only=None) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    cache = {}
    for design, every in designs(runs, trials, null_trials, rng, only).items():
        for rise in rises:
            tr = every if rise == 0 else every[:trials]
            caught = honest_n = honest_caught = inconclusive = 0
            dets = []
            for base, cand, cal_runs in tr:
                al = None
                if cal_runs is not None:
                    key = tuple(id(r) for r in cal_runs)
                    if key not in cache:
                        cache[key] = calibrate(cal_runs)
                    al = cache[key]
                c = raised(cand, 1 + rise / 100) if rise else cand
                v = gate.compare(base, c, rules=NO_FINDINGS, allowance=al if al is not None else gate.DEFAULT_ALLOWANCE)
                hit = v.status == "regression"
                caught += hit
                inconclusive += v.status == "inconclusive"
                if v.detectable is not None:
                    dets.append(v.detectable)
                    if rise / 100 >= v.detectable:
                        honest_n += 1
                        honest_caught += hit
            rows.append({"family": name, "role": role, "design": design, "rise": rise, "trials": len(tr),
                         "flagged": caught, "inconclusive": inconclusive,
                         "detectable_median": float(np.median(dets)) if dets else None,
                         "at_or_above_detectable": honest_n, "caught_there": honest_caught})
    return rows


# ----------------------------------------------------------------------------
# Simulation against the library's functions

B, PHI, AR_SD, WHITE_SD, COMMON = 50, 0.9, 0.01, 0.02, 0.3
SEED_COMMON, SEED_BIN = 0.01, 0.015
SIM_BASELINE = SimpleNamespace(name="baseline", path=Path("/simulated/baseline"), meta={})  # what with_baseline reads of a run


def _curves(K: int) -> np.ndarray:
    t = np.arange(K) + 0.5
    floor = 0.02 + 0.5 * np.exp(-np.arange(B) / 12.0)
    return floor[:, None] * (1.0 + 1.5 * np.exp(-t[None, :] / (0.15 * K)))


# how each bin's own seed effect and window noise scale along the noise levels: "even" bins alike; "uneven" as
# EDM-style training gives, the extreme noise levels far noisier (x10) than the middle ones (x0.5)
PROFILES = {"even": np.ones(B), "uneven": 0.5 + 9.5 * np.linspace(-1.0, 1.0, B) ** 4}


def _sim_runs(rng, n: int, K: int, rise: float, profile: str = "even") -> np.ndarray:
    """(n, bins, blocks) block means of n seeds, the last raised by ``rise`` in every bin."""
    base = _curves(K)
    prof = PROFILES[profile]
    runs = []
    for r in range(n):
        effect = np.maximum(1 + SEED_COMMON * rng.standard_normal() + SEED_BIN * prof * rng.standard_normal(B), 0.2)
        mean = base * effect[:, None] * (1 + rise if r == n - 1 else 1.0)
        drift = np.sqrt(1 - COMMON) * ar1_rows(rng, B, K, PHI) + np.sqrt(COMMON) * ar1_rows(rng, 1, K, PHI)
        runs.append(mean * np.maximum(1 + AR_SD * drift + WHITE_SD * prof[:, None] * rng.standard_normal((B, K)), 0.05))
    return np.array(runs)


def _flagged(st) -> bool:
    p, q, pg, qg = gate.decide(st)
    return bool(((q <= gate_options.ALPHA) & (st.change > gate_options.TOLERANCE)).any() or
                any(qv <= gate_options.ALPHA and g[2] > gate_options.TOLERANCE for g, qv in zip(st.groups, qg)))


def simulate(seeds: int, K: int, rise: float, trials: int, seed: int, profile: str = "even", lend: int = 0
             ) -> tuple[float, float, int, int]:
    """(share flagged, median stated detectable rise, trials whose rise is at or above their own stated rise, those
    of them flagged) of ``seeds`` baseline seeds vs one candidate x (1 + rise).
    ``seeds`` 0: one run per side, with a calibration on 3 other seeds and the baseline counted among them.
    ``lend``: that many other seeds, calibrated, lend the baseline seeds their scatter."""
    rng = np.random.default_rng(seed)
    x = (np.arange(K) + 0.5) * 100.0
    n_sel = max(gate_options.MIN_WINDOWS, round(0.2 * K))
    sel = np.arange(K - n_sel, K)
    span = 100.0 * K
    hits, dets, above, caught = 0, [], 0, 0
    for _ in range(trials):
        if seeds:
            blocks = _sim_runs(rng, seeds + 1, K, rise, profile)[:, :, sel]
            lent = None
            if lend:
                cal = _sim_runs(rng, lend, K, 0.0, profile)[:, :, sel]
                dev = np.array(level_spreads(cal.mean(axis=2), cal.mean(axis=0), x[sel], span)["deviations"])
                lent = dev - dev.mean(axis=0)
            st = gate.seed_stats(blocks.mean(axis=2), blocks[:seeds].mean(axis=0), x[sel], span, seeds, lent=lent)
        else:
            runs = _sim_runs(rng, 5, K, rise, profile)  # 3 calibration seeds, the baseline, the candidate
            cal = runs[:3][:, :, sel]
            fields = level_spreads(cal.mean(axis=2), cal.mean(axis=0), x[sel], span)
            fields.pop("pooling")
            window = (int(x[sel[0]]), int(x[sel[-1]]))
            al = Allowance(**fields, steps=int(span), source="simulation",
                           measured_on={"window": {"first": window[0], "last": window[1], "blocks": sel.size}})
            al, _ = gate.with_baseline(al, runs[3][:, sel].mean(axis=1), SIM_BASELINE, window, sel.size)
            st = gate.single_run_stats(runs[3], runs[4], x, sel, span, allowance=al)
        hit = _flagged(st)
        det = gate.group_detectable(st, gate_options.TOLERANCE, gate_options.ALPHA)
        hits += hit
        dets.append(det)
        if rise > 0 and rise >= det:
            above += 1
            caught += hit
    return hits / trials, float(np.nanmedian(dets)), above, caught


def _equal_weights(var, members) -> np.ndarray:
    m = np.asarray(members, bool)
    return m / max(int(m.sum()), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=REPO / "sample_logs")
    ap.add_argument("--families", nargs="*", default=None)
    ap.add_argument("--rises", nargs="*", type=float, default=[0, 3, 5, 10], help="injected rises, in percent")
    ap.add_argument("--trials", type=int, default=20, help="trials per design, family and rise above 0")
    ap.add_argument("--null-trials", type=int, default=280,
                    help="trials at rise 0 (false positives): every combination up to this many")
    ap.add_argument("--sim-trials", type=int, default=300, help="trials per simulated cell (0: no simulation)")
    ap.add_argument("--sim-only", action="store_true")
    ap.add_argument("--read-at", type=float, default=1.0,
                    help="read every run (calibration runs too) at this share of its logged steps: mid-training")
    ap.add_argument("--profiles", nargs="*", default=list(PROFILES), choices=list(PROFILES),
                    help="the simulation's bin profiles")
    ap.add_argument("--equal-weights", action="store_true",
                    help="weigh the bins of the means over bins equally (as before the precision weights): what "
                         "those weights buy")
    ap.add_argument("--designs", nargs="*", default=None, metavar="DESIGN",
                    help="only these real-run designs (as the table names them, e.g. '3v1 + calibrated on 3')")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write every row as JSON")
    a = ap.parse_args()
    if a.equal_weights:
        stats.precision_weights = _equal_weights
        print("the means over bins weigh their bins equally (--equal-weights)")
    t0 = time.time()
    out = {"real": [], "simulation": []}
    if not a.sim_only:
        fams = families(a.root, set(a.families) if a.families else None)
        if a.read_at < 1:
            fams = {k: (role, [read_at(r, a.read_at) for r in runs]) for k, (role, runs) in fams.items()}
            print(f"every run read at {a.read_at:.0%} of its logged steps")
        print(f"{'family':18} {'role':11} {'design':22} {'rise':>5} {'flagged':>9} {'can see (median)':>17} "
              f"{'caught at >= stated':>20}")
        for name, (role, runs) in fams.items():
            for row in run_family(name, role, runs, a.rises, a.trials, a.null_trials, a.seed, a.designs):
                out["real"].append(row)
                det = "-" if row["detectable_median"] is None else f"+{100 * row['detectable_median']:.1f}%"
                honest = (f"{row['caught_there']}/{row['at_or_above_detectable']}" if row["rise"] else "")
                print(f"{name:18} {role:11} {row['design']:22} {row['rise']:>4g}% "
                      f"{row['flagged']:>4}/{row['trials']:<4} {det:>17} {honest:>20}", flush=True)
    if a.sim_trials > 0:
        simulation(a, out)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    print(f"\n({time.time() - t0:.0f} s)")


def simulation(a, out: dict) -> None:
    """The simulation's table (``--sim-trials`` trials a cell), its rows appended to ``out``."""
    print("\nsimulation (library functions): baseline seeds vs one candidate, every bin raised "
          "(seeds 0: one run per side, calibrated on 3 other seeds, the baseline counted among them; 3+3: 3 seeds "
          "and a calibration on 3 others that lend them their scatter)")
    print(f"{'bins':>6} {'seeds':>5} {'steps':>7} {'rise':>5} {'flagged':>8} {'can see (median)':>17} "
          f"{'caught at >= stated':>20}")
    if 0 not in a.rises:
        a.rises = [0.0] + list(a.rises)  # the stated detectable rise is read at rise 0
    for profile in a.profiles:
        for seeds, lend in ((0, 0), (3, 0), (3, 3), (5, 0)):
            for K in (30, 300):
                stated = None
                for rise in list(a.rises) + ["stated"]:
                    r = stated if rise == "stated" else rise / 100
                    share, det, above, caught = simulate(seeds, K, r, a.sim_trials,
                                                         a.seed + 7 * seeds + 11 * lend + K + (rise == "stated"),
                                                         profile, lend)
                    stated = det if rise == 0 else stated
                    out["simulation"].append({"bins": profile, "seeds": seeds, "lent": lend, "steps": 100 * K,
                                              "rise": 100 * r,
                                              "flagged": share, "detectable_median": det, "trials": a.sim_trials,
                                              "at_stated": rise == "stated", "at_or_above_detectable": above,
                                              "caught_there": caught})
                    label = f"{100 * r:>4.1f}%" + (" (the median stated rise)" if rise == "stated" else "")
                    who = f"{seeds}+{lend}" if lend else f"{seeds}"
                    print(f"{profile:>6} {who:>5} {100 * K:>7,} {label} {100 * share:>7.1f}% {100 * det:>16.1f}% "
                          f"{f'{caught}/{above}' if r else '':>20}", flush=True)


if __name__ == "__main__":
    main()
