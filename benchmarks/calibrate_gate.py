"""False-positive rate and power of ``diffaudit compare`` per data/model family, and the fit of its seed allowance.

    python benchmarks/calibrate_gate.py                              # digits corpus + sample_logs/families
    python benchmarks/calibrate_gate.py --families DIR --quick       # fewer trials
    python benchmarks/calibrate_gate.py --fit                        # learn the seed allowance (calibration families)
    python benchmarks/calibrate_gate.py --inject                     # also: injected per-bin rises (digits)

Families. The bundled digits corpus (``sample_logs/corpus``, flat ``labels.json``)
is the family ``digits_mlp``; ``sample_logs/families/labels.json`` adds more, each
with a role: ``calibration`` (the gate's constants may be set on it) or
``heldout`` (figures are reported on it; nothing is tuned to it). Without a
labels.json a folder's subfolders are read as families: ``healthy_*`` runs are
healthy seeds, every other run is expected to regress, and the role comes from
``--calibration`` (default: digits_mlp, patches_conv).

What it measures per family, every figure at the gate's default settings:

* FPR, one run per side: every ordered pair of healthy seeds (the CI use,
  ``diffaudit compare run_a run_b``; pairs are not independent trials).
* FPR, several baseline seeds against one healthy candidate (the recommended
  CI setup: a prediction interval from the baseline's seeds): every healthy
  candidate against random groups of ``--baseline-seeds`` other healthy seeds.
* Power: every non-healthy run against every healthy seed as the baseline (one
  run per side) and against groups of healthy seeds; a run labelled
  ``gate: pass`` counts as a false alarm when flagged. Runs whose schedule
  differs are refused (exit 2) by the gate; they are compared with
  ``force=True`` and marked.
* ``--fit``: the seed allowance, from every ordered healthy pair of the
  calibration families compared with the allowance off: per bin, the variance
  of the lag-adjusted change that within-run variability does not explain,
  modelled as ``(b^2 + f^2 (Lbar / L_k)^2)`` per run (b relative to the bin's
  level, f relative to the run's mean loss over bins, so bins of tiny loss get a
  larger relative allowance); the same for the mean over bins; and the
  seed-to-seed sd of log(steps to reach the loss level).

Findings are computed once per run (cached): the analyzer is deterministic.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from diffaudit import gate, gate_options
from diffaudit.errors import DiffauditError, MismatchError
from diffaudit.load import load_run

REPO = Path(__file__).resolve().parents[1]
INJECT = 0.10  # relative rise injected into a bin's loss (--inject)
INJECT_SHARE = 0.10  # share of the bins injected
DEFAULT_CALIBRATION = ("digits_mlp", "patches_conv")
FIT_QUANTILE = 0.9  # the allowance covers the per-bin seed variance up to this quantile over bins
RATIO_SPLIT = 3.0  # bins whose loss is within this factor of the run's mean loss over bins set b; the others f


@dataclass
class Family:
    name: str
    role: str  # "calibration" or "heldout"
    healthy: list = field(default_factory=list)  # loaded runs
    others: dict = field(default_factory=dict)  # name -> (run, label dict with "gate" and "change")


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

            try:
                self.cache[key] = analyze(run).findings
            except DiffauditError:
                self.cache[key] = []
        return self.cache[key]


def rate(k: int, n: int) -> str:
    if n == 0:
        return "n/a"
    z = 1.959964  # Wilson 95% interval
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"{k}/{n} = {100 * p:.1f}% (95% CI {100 * max(c - h, 0):.1f}-{100 * min(c + h, 1):.1f}%)"


def what(v) -> str:
    return ", ".join(sorted({c.metric for c in v.regressions})) or "-"


def named_bins(v) -> set[int]:
    return {c.bin for c in v.regressions if c.metric == "loss"}


# ----------------------------------------------------------------------------
# Loading the families


def load_digits(corpus: Path, role: str) -> Family | None:
    path = corpus / "labels.json"
    if not path.is_file():
        return None
    labels = json.loads(path.read_text())
    fam = Family("digits_mlp", role)
    for name, lab in sorted(labels.items()):
        if not (corpus / name).is_dir():
            continue
        defect = str(lab.get("defect"))
        if defect == "none":
            fam.healthy.append(load_run(corpus / name))
        elif defect.startswith("none ("):  # a healthy run that is not a plain seed (killed and resumed)
            fam.others[name] = (load_run(corpus / name), {"gate": "pass", "change": defect, "kind": "control"})
        else:
            fam.others[name] = (load_run(corpus / name), {"gate": "regression", "change": defect, "kind": "defect"})
    return fam


def _load(p: Path):
    """A run, or None (with a line saying why) when it cannot be loaded, e.g. still being written."""
    try:
        return load_run(p)
    except DiffauditError as e:
        print(f"  skipped {p}: {e}")
        return None


def load_families(root: Path, calibration: set[str], only: set[str] | None = None) -> list[Family]:
    out = []
    labels_path = root / "labels.json"
    if labels_path.is_file():
        labels = json.loads(labels_path.read_text())["families"]
        for fname, fl in sorted(labels.items()):
            if (only and fname not in only) or fl.get("role") not in ("calibration", "heldout"):
                continue  # families made for other questions (e.g. "units") are not the gate's
            fam = Family(fname, fl.get("role", "heldout"))
            for rname, lab in sorted(fl.get("runs", {}).items()):
                p = root / fname / rname
                if not (p / "run.json").is_file():
                    continue
                run = _load(p)
                if run is None:
                    continue
                if lab.get("kind") == "healthy":
                    fam.healthy.append(run)
                else:
                    fam.others[rname] = (run, lab)
            out.append(fam)
        return out
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir() and (not only or p.name in only)):
        fam = Family(d.name, "calibration" if d.name in calibration else "heldout")
        for r in sorted(p for p in d.iterdir() if (p / "run.json").is_file()):
            run = _load(r)
            if run is None:
                continue
            if r.name.startswith("healthy"):
                fam.healthy.append(run)
            else:
                fam.others[r.name] = (run, {"gate": "regression", "change": r.name, "kind": "defect"})
        out.append(fam)
    return out


# ----------------------------------------------------------------------------
# Measurements


def fpr_pairs(fam: Family, cmp) -> tuple[int, int, dict]:
    k = n = 0
    by: dict[str, int] = {}
    for a, b in itertools.permutations(fam.healthy, 2):
        v = cmp(a, b)
        n += 1
        if v.status == "regression":
            k += 1
            for c in v.regressions:
                key = c.metric
                by[key] = by.get(key, 0) + 1
    return k, n, by


def baseline_groups(fam: Family, m: int, per: int, rng, exclude=None) -> list[list]:
    pool = [r for r in fam.healthy if r is not exclude]
    if len(pool) < m:
        return []
    combos = list(itertools.combinations(range(len(pool)), m))
    pick = rng.choice(len(combos), size=min(per, len(combos)), replace=False)
    return [[pool[i] for i in combos[j]] for j in sorted(pick)]


def fpr_seeds(fam: Family, cmp, m: int, per: int, rng) -> tuple[int, int, int, dict]:
    k = n = inc = 0
    by: dict[str, int] = {}
    for c in fam.healthy:
        for g in baseline_groups(fam, m, per, rng, exclude=c):
            v = cmp(g, c)
            n += 1
            k += v.status == "regression"
            inc += v.status == "inconclusive"
            for m_ in {c.metric for c in v.regressions}:
                by[m_] = by.get(m_, 0) + 1
    return k, n, inc, by


def power(fam: Family, cmp, m: int, per: int, rng) -> list[tuple]:
    rows = []
    for name, (run, lab) in fam.others.items():
        k = refused = inc = 0
        by: dict[str, int] = {}
        for a in fam.healthy:
            try:
                v = cmp(a, run)
            except MismatchError:
                refused += 1
                v = cmp(a, run, force=True)
            k += v.status == "regression"
            inc += v.status == "inconclusive"
            for c in {c.metric for c in v.regressions}:
                by[c] = by.get(c, 0) + 1
        groups = baseline_groups(fam, m, per, rng)
        kg = 0
        for g in groups:
            try:
                kg += cmp(g, run).status == "regression"
            except MismatchError:
                kg += cmp(g, run, force=True).status == "regression"
        rows.append((name, lab, k, len(fam.healthy), refused, inc, kg, len(groups), by))
    return rows


# ----------------------------------------------------------------------------
# Fitting the seed allowance (calibration families, allowance off)


def fit_allowance(families: list[Family], cmp) -> gate.Allowance:
    zero = gate.Allowance()
    rows_b, rows_m, speed, clip = [], [], [], []
    for fam in families:
        ch, se, ratio, gch, gse = [], [], [], [], []
        for a, b in itertools.permutations(fam.healthy, 2):
            v = cmp(a, b, allowance=zero)
            bins = [c for c in v.by_metric("loss") if c.change is not None]
            if not bins:
                continue
            lev = np.array([c.baseline for c in bins])
            row_ch = np.full(a.process.num_bins, np.nan)
            row_se = np.full(a.process.num_bins, np.nan)
            row_r = np.full(a.process.num_bins, np.nan)
            for c in bins:
                row_ch[c.bin] = c.change
                row_se[c.bin] = c.details["se"] / c.baseline
                row_r[c.bin] = float(np.mean(lev)) / c.baseline
            ch.append(row_ch)
            se.append(row_se)
            ratio.append(row_r)
            for c in v.by_metric(gate.GROUP_METRIC):
                gch.append(c.change)
                gse.append(c.details["se"])
        if not ch:
            continue
        ch, se, ratio = np.array(ch), np.array(se), np.array(ratio)
        # per bin: variance of the change not explained by the within-run error, per run (a pair has two runs)
        excess = (np.nanmean(ch**2, axis=0) - np.nanmean(se**2, axis=0)) / 2
        r = np.nanmean(ratio, axis=0)
        for k in range(ch.shape[1]):
            if np.isfinite(excess[k]):
                rows_b.append((fam.name, k, float(excess[k]), float(r[k])))
        if gch:
            rows_m.append((fam.name, float((np.mean(np.square(gch)) - np.mean(np.square(gse))) / 2)))
        logs = []
        for run in fam.healthy:
            v = cmp(fam.healthy[0], run, allowance=zero) if run is not fam.healthy[0] else None
            sc = None if v is None else next((c for c in v.checks if c.metric == "steps"), None)
            if sc is not None and sc.details.get("candidate_runs"):
                logs.append(math.log(sc.details["candidate_runs"][0]))
            elif v is None:
                sc0 = next((c for c in cmp(run, fam.healthy[1], allowance=zero).checks if c.metric == "steps"), None)
                if sc0 is not None and sc0.details.get("baseline_runs"):
                    logs.append(math.log(sc0.details["baseline_runs"][0]))
        if len(logs) >= 3:
            speed.append((fam.name, float(np.std(logs, ddof=1)), len(logs)))
        rates = []
        for run in fam.healthy:
            st = run.steps
            c = st["clipped"].drop_nulls() if st.height and "clipped" in st.columns else None
            if c is not None and c.len():
                n = c.len()  # log-odds of the rate, kept finite (half a step at either end)
                r = min(max(float(c.cast(pl.Float64).mean()), 0.5 / n), 1 - 0.5 / n)
                rates.append(math.log(r / (1 - r)))
        if len(rates) >= 3:
            clip.append((fam.name, float(np.std(rates, ddof=1)), len(rates)))
    print("\nFIT (calibration families, every ordered healthy pair, allowance off)")
    print("  per-bin seed variance not explained by within-run noise (sd per run, %), and Lbar / L_bin:")
    for fam_name in sorted({r[0] for r in rows_b}):
        rr = [r for r in rows_b if r[0] == fam_name]
        print(f"  {fam_name:<14} " + " ".join(f"{100 * math.sqrt(max(r[2], 0)):.1f}" for r in rr))
        print(f"  {'':<14} " + " ".join(f"{r[3]:.0f}" for r in rr))
    # upper envelope excess <= b^2 + f^2 ratio^2, per family, then the largest over the calibration families:
    # b covers FIT_QUANTILE of the bins whose loss is near the run's mean (ratio <= RATIO_SPLIT), f the rest
    b = f = 0.0
    for fam_name in sorted({r[0] for r in rows_b}):
        rr = [r for r in rows_b if r[0] == fam_name]
        sd = np.sqrt(np.maximum([r[2] for r in rr], 0.0))
        ratio = np.array([r[3] for r in rr])
        near = ratio <= RATIO_SPLIT
        bf = float(np.quantile(sd[near], FIT_QUANTILE)) if near.any() else 0.0
        rest = np.sqrt(np.maximum(sd[~near] ** 2 - bf**2, 0.0)) / ratio[~near]
        ff = float(np.quantile(rest, FIT_QUANTILE)) if rest.size else 0.0
        print(f"  {fam_name}: b = {100 * bf:.2f}% ({near.sum()} bins with Lbar/L <= {RATIO_SPLIT:g}), "
              f"f = {100 * ff:.3f}% ({(~near).sum()} bins)")
        b, f = max(b, bf), max(f, ff)
    mean_sd = math.sqrt(max(max((r[1] for r in rows_m), default=0.0), 0.0))
    speed_sd = max((s[1] for s in speed), default=0.0)
    print("  mean over bins, seed variance not explained (sd per run): "
          + ", ".join(f"{n} {100 * math.sqrt(max(x, 0)):.2f}%" for n, x in rows_m))
    print("  log(steps to reach the loss level), sd over seeds: "
          + ", ".join(f"{n} {100 * s:.1f}% ({k} seeds)" for n, s, k in speed))
    clip_sd = max((s[1] for s in clip), default=0.0)
    print("  log-odds of the clip rate over all steps, sd over seeds: " + ", ".join(f"{n} {s:.4f} ({k} seeds)" for n, s, k in clip))
    al = gate.Allowance(b, mean_sd, speed_sd, f, clip_sd)
    print(f"  => SEED_BIN_SD = {b:.4f}, SEED_FLOOR_SD = {f:.5f}, SEED_MEAN_SD = {mean_sd:.4f}, "
          f"SEED_SPEED_SD = {speed_sd:.4f}, SEED_CLIP_SD = {clip_sd:.4f}")
    return al


# ----------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=REPO / "sample_logs" / "corpus", help="the digits corpus")
    ap.add_argument("--families", type=Path, default=REPO / "sample_logs" / "families")
    ap.add_argument("--calibration", default=",".join(DEFAULT_CALIBRATION),
                    help="families used to set the defaults when a folder has no labels.json")
    ap.add_argument("--only", default="", help="comma-separated family names to measure (default all)")
    ap.add_argument("--baseline-seeds", type=int, default=5, help="seeds in a baseline group (prediction interval)")
    ap.add_argument("--groups", type=int, default=21,
                    help="baseline groups per healthy candidate / defect (all of them when there are fewer: 21 = C(7, 5))")
    ap.add_argument("--quick", action="store_true", help="fewer baseline groups, no all-pairs sweep on digits")
    ap.add_argument("--fit", action="store_true", help="learn the seed allowance on the calibration families")
    ap.add_argument("--inject", action="store_true", help="injected per-bin rises on the digits corpus")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    calib = set(filter(None, args.calibration.split(",")))
    t0 = time.perf_counter()
    fams = []
    d = None
    if not args.only or "digits_mlp" in args.only.split(","):
        d = load_digits(args.corpus, "calibration" if "digits_mlp" in calib else "heldout")
    if d is not None:
        fams.append(d)
    keep = set(filter(None, args.only.split(",")))
    fams += [f for f in load_families(args.families, calib, keep) if f.name != "digits_mlp" or d is None]
    if keep:
        fams = [f for f in fams if f.name in keep]
    find = Findings()

    def cmp(a, b, **kw):
        return gate.compare(a, b, findings_of=find, **kw)

    print(f"loaded {sum(len(f.healthy) + len(f.others) for f in fams)} runs in {len(fams)} families "
          f"({time.perf_counter() - t0:.1f} s)")
    print(f"gate defaults: tolerance {gate_options.TOLERANCE:.0%}, alpha {gate_options.ALPHA}, window {gate_options.WINDOW} "
          f"(min {gate_options.MIN_WINDOWS} blocks), max lag {gate_options.MAX_LAG:.0%}, lag share {gate.LAG_SHARE:.0%}, "
          f"allowance {gate.DEFAULT_ALLOWANCE}, floor {gate.SEED_FLOOR_SD}, rules {', '.join(gate_options.DEFAULT_RULES)}")
    if args.fit:
        fit_allowance([f for f in fams if f.role == "calibration"], cmp)
        return 0
    m, per = args.baseline_seeds, (2 if args.quick else args.groups)
    summary = []
    for fam in fams:
        t = time.perf_counter()
        print(f"\n== {fam.name} ({fam.role}): {len(fam.healthy)} healthy seeds, {len(fam.others)} other runs")
        if len(fam.healthy) < 2:
            print("  too few healthy seeds")
            continue
        if args.quick and len(fam.healthy) > 12:
            pairs = [(fam.healthy[i], fam.healthy[i + 1]) for i in range(0, len(fam.healthy) - 1, 2)]
            k = sum(cmp(a, b).status == "regression" for a, b in pairs)
            n, by = len(pairs), {}
            print(f"  FPR one run per side, disjoint healthy pairs: {rate(k, n)}")
        else:
            k, n, by = fpr_pairs(fam, cmp)
            print(f"  FPR one run per side, all ordered healthy pairs: {rate(k, n)}" + (f"; by {by}" if by else ""))
        mm = min(m, len(fam.healthy) - 1)
        ks, ns, inc, bys = fpr_seeds(fam, cmp, mm, per, rng)
        print(f"  FPR {mm} baseline seeds vs one healthy candidate: {rate(ks, ns)}"
              + (f" ({inc} inconclusive)" if inc else "") + (f"; by {bys}" if bys else ""))
        rows = power(fam, cmp, mm, per, rng)
        if rows:
            print(f"  {'run':<16} {'expected':<10} {'1 run/side':>16} {f'vs {mm} seeds':>12}  by / change")
        for name, lab, k1, n1, refused, inc1, kg, ng, by1 in rows:
            tag = f"{k1}/{n1}" + (f" ({refused} refused)" if refused else "") + (f" ({inc1} inc.)" if inc1 else "")
            print(f"  {name:<16} {str(lab.get('gate')):<10} {tag:>16} {f'{kg}/{ng}':>12}  "
                  + ", ".join(f"{key} {val}" for key, val in sorted(by1.items(), key=lambda kv: -kv[1]))
                  + f"  [{str(lab.get('change', ''))[:50]}]")
        summary.append((fam, k, n, ks, ns, rows))
        print(f"  ({time.perf_counter() - t:.1f} s)")

    print("\nSUMMARY (regression verdicts; power counts runs labelled gate: regression)")
    for role in ("calibration", "heldout"):
        part = [s for s in summary if s[0].role == role]
        if not part:
            continue
        print(f"  {role}:")
        for fam, k, n, ks, ns, rows in part:
            reg = [r for r in rows if r[1].get("gate") == "regression"]
            ok = [r for r in rows if r[1].get("gate") == "pass"]
            hit = sum(r[2] for r in reg)
            tot = sum(r[3] for r in reg)
            hitg = sum(r[6] for r in reg)
            totg = sum(r[7] for r in reg)
            fa = sum(r[2] for r in ok)
            fat = sum(r[3] for r in ok)
            print(f"    {fam.name:<16} FPR pairs {rate(k, n)}; FPR seeds->1 {rate(ks, ns)}; power 1/side {rate(hit, tot)}; "
                  f"power seeds->1 {rate(hitg, totg)}" + (f"; labelled-pass runs flagged {rate(fa, fat)}" if fat else ""))

    if args.inject and fams and fams[0].name == "digits_mlp":
        injected(fams[0], cmp, rng, per)
    return 0


def injected(fam: Family, cmp, rng, trials: int) -> None:
    healthy = fam.healthy
    nb = healthy[0].process.num_bins
    ninj = max(1, int(round(INJECT_SHARE * nb)))
    for factor in (1.05, 1.10, 1.20):
        exact = flag = n = 0
        for i in range(0, len(healthy) - 1, 2):
            a, b = healthy[i], healthy[i + 1]
            bins = rng.choice(nb, ninj, replace=False)
            v = cmp(a, inject(b, bins, factor))
            n += 1
            flag += v.status == "regression"
            exact += named_bins(v) == set(bins.tolist())
        print(f"INJECTED x{factor:g} in {ninj} of {nb} bins of another seed, one run per side: flagged {rate(flag, n)}; "
              f"exactly those bins {rate(exact, n)}")
    for factor in (1.05, 1.10):
        exact = flag = n = 0
        for _ in range(4 * trials):
            idx = rng.permutation(len(healthy))
            bins = rng.choice(nb, ninj, replace=False)
            v = cmp([healthy[i] for i in idx[:5]], inject(healthy[idx[5]], bins, factor))
            n += 1
            flag += v.status == "regression"
            exact += named_bins(v) == set(bins.tolist())
        print(f"INJECTED x{factor:g} in {ninj} of {nb} bins of one candidate against 5 baseline seeds: "
              f"flagged {rate(flag, n)}; exactly those bins {rate(exact, n)}")


if __name__ == "__main__":
    sys.exit(main())
