"""Calibration and power of ``diffaudit compare`` on the real runs of the sample corpus.

    python benchmarks/calibrate_gate.py                      # sample_logs/corpus, default settings
    python benchmarks/calibrate_gate.py --corpus DIR --quick # disjoint pairs and defects only

What it measures, every figure at the gate's default settings:

* False-positive rate, one run per side: disjoint pairs of healthy runs that
  differ only in their seed (s00 vs s01, s02 vs s03, ...: independent trials),
  then every ordered pair (more trials, not independent).
* False-positive rate, several seeds per side: disjoint groups of healthy seeds,
  then random splits.
* Power on each defect run of the labelled corpus (``labels.json``) against
  every healthy run as baseline (one run per side) and against groups of
  healthy seeds. A defect that changes the schedule is refused (exit 2) by
  default; it is also compared with ``force=True``.
* Power on injected regressions: a real healthy run's per-bin records with the
  loss raised by 3% in 10% of the bins (2 of 20, chosen at random), (a) against
  the same run's original records, (b) against another seed (one run per
  side), (c) several injected seeds against several healthy ones. A trial
  counts when the verdict is a regression *and* exactly the injected bins are
  named.

Findings are computed once per run (cached): the analyzer is deterministic.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl

from diffaudit import gate
from diffaudit.errors import MismatchError
from diffaudit.load import load_run

REPO = Path(__file__).resolve().parents[1]
INJECT = 0.03  # relative rise injected into a bin's loss
INJECT_SHARE = 0.10  # share of the bins injected
SEEDS_PER_SIDE = 5  # runs per side for the seed-level figures


def inject(run, bins, factor: float = 1.0 + INJECT):
    """The run with its training per-bin loss (mean, min, max) scaled by ``factor`` in ``bins``; m2 by factor^2."""
    hit = (pl.col("split") == "train") & pl.col("bin").is_in([int(b) for b in bins])
    scaled = run.bins.with_columns(
        *[pl.when(hit).then(pl.col(c) * factor).otherwise(pl.col(c)).alias(c) for c in ("mean", "min", "max")],
        pl.when(hit).then(pl.col("m2") * factor**2).otherwise(pl.col("m2")).alias("m2"),
    )
    return replace(run, bins=scaled, path=run.path.with_name(run.path.name + "+inj"))


class Findings:
    """Findings per run, computed once."""

    def __init__(self):
        self.cache = {}

    def __call__(self, run):
        key = str(run.path)
        if key not in self.cache:
            from diffaudit.analysis import analyze

            self.cache[key] = analyze(run).findings
        return self.cache[key]


def rate(k: int, n: int) -> str:
    if n == 0:
        return "n/a"
    # Wilson 95% interval
    z = 1.959964
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"{k}/{n} = {100 * p:.1f}% (95% CI {100 * max(c - h, 0):.1f}-{100 * min(c + h, 1):.1f}%)"


def what(v) -> str:
    return ", ".join(sorted({c.metric if c.metric != "loss" else "loss" for c in v.regressions})) or "-"


def named_bins(v) -> set[int]:
    return {c.bin for c in v.regressions if c.metric == "loss"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=REPO / "sample_logs" / "corpus")
    ap.add_argument("--quick", action="store_true", help="disjoint pairs, defects and injection only (no all-pairs sweep)")
    ap.add_argument("--trials", type=int, default=200, help="random splits / injections per seed-level figure")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    labels = json.loads((args.corpus / "labels.json").read_text())
    healthy_names = sorted(n for n, lab in labels.items() if lab.get("defect") == "none" and (args.corpus / n).is_dir())
    defect_names = sorted(n for n, lab in labels.items()
                          if not str(lab.get("defect")).startswith("none") and (args.corpus / n).is_dir())
    # healthy runs that are not plain seeds (a killed-and-resumed run): negative controls
    control_names = sorted(n for n, lab in labels.items() if str(lab.get("defect")).startswith("none (")
                           and (args.corpus / n).is_dir())
    t0 = time.perf_counter()
    healthy = [load_run(args.corpus / n) for n in healthy_names]
    defects = {n: load_run(args.corpus / n) for n in defect_names}
    controls = {n: load_run(args.corpus / n) for n in control_names}
    find = Findings()
    print(f"corpus {args.corpus}: {len(healthy)} healthy runs, {len(defects)} other runs "
          f"(loaded in {time.perf_counter() - t0:.1f} s)")
    print(f"gate defaults: tolerance {gate.TOLERANCE:.0%}, alpha {gate.ALPHA}, window {gate.WINDOW} "
          f"(min {gate.MIN_WINDOWS} blocks), {gate.CORRECTION} across bins, max lag {gate.MAX_LAG:.0%}, "
          f"rules {', '.join(gate.DEFAULT_RULES)}")

    def cmp(a, b, **kw):
        return gate.compare(a, b, findings_of=find, **kw)

    # -- false positives, one run per side -------------------------------------------------
    t = time.perf_counter()
    pairs = [(healthy[i], healthy[i + 1]) for i in range(0, len(healthy) - 1, 2)]
    flagged = []
    for a, b in pairs:
        v = cmp(a, b)
        if v.status != "pass":
            flagged.append(f"{a.name} -> {b.name}: {v.status} ({what(v)})")
    print(f"\nFALSE POSITIVES, one run per side, disjoint healthy pairs: {rate(len(flagged), len(pairs))}")
    for f in flagged:
        print(f"  {f}")
    if not args.quick:
        k = n = 0
        by = {}
        for a, b in itertools.permutations(healthy, 2):
            v = cmp(a, b)
            n += 1
            if v.status != "pass":
                k += 1
                by[what(v)] = by.get(what(v), 0) + 1
        print(f"FALSE POSITIVES, one run per side, all ordered healthy pairs: {rate(k, n)}"
              + (f"; flagged by {by}" if by else ""))
    for name, run in controls.items():
        k = sum(cmp(a, run).status != "pass" for a in healthy if a.name != "healthy_s00")
        print(f"FALSE POSITIVES, control {name} ({labels[name]['defect']}) vs each other healthy run: "
              f"{rate(k, len(healthy) - 1)}")
    print(f"  ({time.perf_counter() - t:.1f} s)")

    # -- false positives, several seeds per side ---------------------------------------------
    t = time.perf_counter()
    m = SEEDS_PER_SIDE
    groups = [healthy[i:i + m] for i in range(0, len(healthy) - m + 1, m)]
    disjoint = [(groups[i], groups[i + 1]) for i in range(0, len(groups) - 1, 2)]
    k = sum(cmp(a, b).status != "pass" for a, b in disjoint)
    print(f"\nFALSE POSITIVES, {m} seeds per side, disjoint groups: {rate(k, len(disjoint))}")
    k = 0
    for _ in range(args.trials):
        idx = rng.permutation(len(healthy))
        v = cmp([healthy[i] for i in idx[:m]], [healthy[i] for i in idx[m:2 * m]])
        k += v.status != "pass"
    print(f"FALSE POSITIVES, {m} seeds per side, random splits: {rate(k, args.trials)}")
    print(f"  ({time.perf_counter() - t:.1f} s)")

    # -- power on the labelled defects ----------------------------------------------------------
    t = time.perf_counter()
    print("\nDEFECTS against healthy baselines (flagged = regression verdict; refused = exit 2 mismatch)")
    print(f"  {'run':<14} {'defect':<58} {'1 run/side':>14} {'vs ' + str(m) + ' seeds':>12}  by")
    total = hit = 0
    for name, run in defects.items():
        lab = labels[name]
        k = refused = 0
        by: dict[str, int] = {}
        for a in healthy:
            try:
                v = cmp(a, run)
            except MismatchError:
                refused += 1
                v = cmp(a, run, force=True)
            k += v.status == "regression"
            for c in {c.metric for c in v.regressions}:
                by[c] = by.get(c, 0) + 1
        kg = sum(cmp(g, run, force=True).status == "regression" for g in groups)
        total += len(healthy)
        hit += k
        tag = f"{k}/{len(healthy)}" + (f" ({refused} refused)" if refused else "")
        print(f"  {name:<14} {lab.get('defect', '')[:58]:<58} {tag:>14} {f'{kg}/{len(groups)}':>12}  "
              + ", ".join(f"{key} {val}" for key, val in sorted(by.items(), key=lambda kv: -kv[1])))
    print(f"  all defects, one run per side: {rate(hit, total)} flagged  ({time.perf_counter() - t:.1f} s)")
    print("  (refused runs are counted with --force; without it the gate exits 2 on them, which also stops CI)")

    # -- power on injected regressions ------------------------------------------------------------
    t = time.perf_counter()
    nb = healthy[0].process.num_bins
    ninj = max(1, int(round(INJECT_SHARE * nb)))
    print(f"\nINJECTED: loss x{1 + INJECT:g} in {ninj} of {nb} bins of a real run's records "
          "(counted when the verdict is a regression naming exactly those bins)")
    exact = flag = 0
    per_bin = np.zeros((2, nb))
    for a in healthy:
        bins = rng.choice(nb, ninj, replace=False)
        v = cmp(a, inject(a, bins))
        flag += v.status == "regression"
        exact += named_bins(v) == set(bins.tolist())
        per_bin[0, bins] += 1
        per_bin[1, bins] += [b in named_bins(v) for b in bins]
    print(f"  (a) run vs the same run injected: flagged {rate(flag, len(healthy))}; right bins {rate(exact, len(healthy))}")
    exact = flag = 0
    per_bin_b = np.zeros((2, nb))
    for a, b in pairs + [(y, x) for x, y in pairs]:
        bins = rng.choice(nb, ninj, replace=False)
        v = cmp(a, inject(b, bins))
        flag += v.status == "regression"
        exact += named_bins(v) == set(bins.tolist())
        per_bin_b[0, bins] += 1
        per_bin_b[1, bins] += [x in named_bins(v) for x in bins]
    n = 2 * len(pairs)
    print(f"  (b) another seed injected, one run per side: flagged {rate(flag, n)}; right bins {rate(exact, n)}")
    with np.errstate(invalid="ignore"):
        print("      per-bin detection (bins 0..%d): %s" % (nb - 1, " ".join(
            "-" if per_bin_b[0, i] == 0 else f"{per_bin_b[1, i] / per_bin_b[0, i]:.1f}" for i in range(nb))))
    for mm in (m, 2 * m):
        exact = flag = extra = 0
        for _ in range(args.trials // 2):
            idx = rng.permutation(len(healthy))
            bins = rng.choice(nb, ninj, replace=False)
            base = [healthy[i] for i in idx[:mm]]
            cand = [inject(healthy[i], bins) for i in idx[mm:2 * mm]]
            v = cmp(base, cand)
            flag += v.status == "regression"
            got = named_bins(v)
            exact += got == set(bins.tolist())
            extra += bool(got - set(bins.tolist()))
        nt = args.trials // 2
        print(f"  (c) {mm} seeds per side, every candidate seed injected: flagged {rate(flag, nt)}; "
              f"right bins {rate(exact, nt)}; a wrong bin named in {extra}")
    print(f"  ({time.perf_counter() - t:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
