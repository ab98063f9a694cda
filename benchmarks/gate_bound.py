"""How much any test could catch on a family's real seeds: an upper bound on the gate's power at a given rise.

    python benchmarks/gate_bound.py                      # every family in sample_logs/families
    python benchmarks/gate_bound.py --families patches_edm --rises 5 10

A rise of every noise level moves the mean over bins, and runs of one configuration differ in that mean by their
seeds. For each family this takes its 8 healthy seeds' lag-adjusted relative late levels (a calibration on all 8,
as ``compare`` reads runs), each run's mean over bins weighted by precision as the gate weighs it, and asks what the
*ideal* test of that mean would catch: one-sided t against the tolerance at the full alpha, no share of alpha
left to the per-bin checks, no correction, no progress lag absorbed, on the degrees of freedom the design has
(k baseline seeds: k - 1; one run per side calibrated on 3 others with the baseline counted: 3; 3 seeds lent a
calibration's 3 others: 4). Its power is computed two ways:

* model: the noncentral t at the spread measured over all 8 seeds;
* data: over every combination of the real seeds (the candidate's levels raised by r), the share it catches.

For a normal spread this t test is the most powerful test of its level among those that do not depend on the
unknown spread's scale (uniformly most powerful invariant), so no test of that mean, the gate included, catches
more. Another weighting of the bins cannot escape the part of the seeds' spread that every bin shares: its sd,
from the covariance of two interleaved halves of the bins, is printed beside the weighted mean's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats as sps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from diffaudit import gate_options  # noqa: E402
from diffaudit.calibration import calibrate  # noqa: E402
from diffaudit.load import load_run  # noqa: E402


def family_means(runs) -> tuple[np.ndarray, float]:
    """(each run's precision-weighted mean relative deviation over the bins every run sampled, the sd of the part
    of the seeds' spread every bin shares)."""
    al = calibrate(runs)
    dev = np.asarray(al.deviations, np.float64)
    ok = np.isfinite(dev).all(axis=0)
    d, prof = dev[:, ok], np.asarray(al.profile, np.float64)[ok]
    w = 1.0 / prof**2
    half = np.arange(d.shape[1]) % 2 == 0
    ma = d[:, half] @ (w[half] / w[half].sum())
    mb = d[:, ~half] @ (w[~half] / w[~half].sum())
    common = float(np.cov(ma, mb)[0, 1])
    return d @ (w / w.sum()), float(np.sqrt(max(common, 0.0)))


def _rejects(diff: float, se: float, df: int, tol: float, alpha: float) -> bool:
    return se > 0 and (diff - tol) / se > sps.t.isf(alpha, df)


def designs(n: int):
    """(name, df, se factor, trials): each trial (baseline runs, candidate, runs lending their scatter)."""
    idx = range(n)
    out = []
    for k in (3, 5):
        trials = [(list(g), c, []) for c in idx for g in itertools.combinations([i for i in idx if i != c], k)]
        out.append((f"{k}v1", k - 1, np.sqrt(1 + 1 / k), trials))
    # one run per side, calibrated on 3 others, the baseline counted among the calibration's runs: 4 runs, 3 df
    trials = [([b], c, list(g)) for g in itertools.combinations(idx, 3)
              for b, c in itertools.permutations([i for i in idx if i not in g], 2)]
    out.append(("1v1 calibrated on 3", 3, np.sqrt(2.0), trials))
    trials = [(list(g), c, list(h)) for c in idx for g in itertools.combinations([i for i in idx if i != c], 3)
              for h in itertools.combinations([i for i in idx if i != c and i not in g], 3)]
    out.append(("3v1 + calibrated on 3", 4, np.sqrt(1 + 1 / 3), trials))
    return out


def bound(m: np.ndarray, rise: float, tol: float, alpha: float) -> list[dict]:
    sd = float(np.std(m, ddof=1))
    rows = []
    for name, df, factor, trials in designs(m.size):
        model = float(sps.nct.sf(sps.t.isf(alpha, df), df, (rise - tol) / (sd * factor)))
        caught = 0
        for base, c, lend in trials:
            cand = m[c] + rise * (1 + m[c])  # every level x (1 + rise), as a relative deviation
            if name.startswith("1v1"):
                pool = m[[*lend, *base]]  # the calibration's runs and the counted baseline
                ss, d = float(np.sum((pool - pool.mean()) ** 2)), pool.size - 1
            else:
                g, h = m[base], m[lend]
                ss = float(np.sum((g - g.mean()) ** 2) + (np.sum((h - h.mean()) ** 2) if h.size else 0.0))
                d = (g.size - 1) + (max(h.size - 1, 0))
            se = np.sqrt(ss / d) * factor
            caught += _rejects(cand - float(np.mean(m[base])), se, d, tol, alpha)
        rows.append({"design": name, "df": df, "rise": rise, "model": model, "caught": caught,
                     "trials": len(trials)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=REPO / "sample_logs" / "families")
    ap.add_argument("--families", nargs="*", default=None)
    ap.add_argument("--rises", nargs="*", type=float, default=[5.0, 10.0], help="in percent")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    tol, alpha = gate_options.TOLERANCE, gate_options.ALPHA
    labels = json.loads((a.root / "labels.json").read_text())["families"]
    out = []
    print(f"the ideal test of the weighted mean over bins: one-sided t against the {tol:.0%} tolerance at alpha "
          f"{alpha:g}, nothing spent elsewhere\n")
    print(f"{'family':18} {'role':11} {'sd/run':>7} {'shared':>7} {'design':22} {'df':>3} {'rise':>5} "
          f"{'model':>7} {'data':>12}")
    for name, f in sorted(labels.items()):
        if f.get("role") not in ("calibration", "heldout") or (a.families and name not in a.families):
            continue
        runs = [load_run(a.root / name / r) for r, lab in sorted(f["runs"].items()) if lab.get("kind") == "healthy"][:8]
        m, common = family_means(runs)
        for rise in a.rises:
            for row in bound(m, rise / 100, tol, alpha):
                row.update(family=name, role=f["role"], sd=float(np.std(m, ddof=1)), shared=common)
                out.append(row)
                print(f"{name:18} {f['role']:11} {100 * row['sd']:>6.2f}% {100 * common:>6.2f}% {row['design']:22} "
                      f"{row['df']:>3} {rise:>4g}% {100 * row['model']:>6.1f}% "
                      f"{row['caught']:>5}/{row['trials']:<6}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
