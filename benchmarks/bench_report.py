"""Time and peak memory of `diffaudit report` on a 1,000,000-step run, against a bare Parquet scan.

    python benchmarks/bench_report.py                 # 1e6 steps, 100 bins (cached under /tmp)
    python benchmarks/bench_report.py --steps 100000  # smaller
    python benchmarks/bench_report.py --html          # also render the HTML report and print its size

The run is synthetic but in the logger's exact format, at its default settings
(window=100, flush_every=1000): one ``steps`` part (1,000 rows) and one ``bins``
part (10 windows x 100 bins) per 1,000 steps, written with pyarrow and the
schemas of :mod:`diffaudit.runformat` (no torch needed). Losses decay towards
the Gaussian L* of each bin with per-sample Gamma noise; a few spikes and
clipped steps are planted so every detector does real work.

Each measurement runs in its own fresh Python process, so peak RSS
(``ru_maxrss``) is that measurement's alone:

* bare: ``polars.scan_parquet(<parts>).collect()`` of the steps and bins parts;
* report: ``diffaudit report RUN --json FILE`` as the CLI runs it (load_run,
  analyze, JSON), in-process through click, timed after the imports (as the
  bare scan is timed after ``import polars``); the import time, the split into
  load_run / analyze, and the wall time of the whole command are printed too.

Targets (issue 4): report <= 30 s, <= 2 GB, <= 3x the bare scan.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from diffaudit import runformat as rf
from diffaudit.noise import Process, named_betas, schedule_from_betas
from diffaudit.optimum import bin_gaussian_optimal_loss

CACHE = Path("/tmp/diffaudit-bench")
WINDOW, FLUSH, BATCH, T = 100, 1000, 64, 1000


def make_run(path: Path, steps: int, nb: int, seed: int = 0) -> Path:
    """Write a synthetic run of `steps` steps and `nb` bins at the logger's default settings; return it."""
    done = path / ".complete"
    if done.exists():
        return path
    if path.exists():
        import shutil

        shutil.rmtree(path)
    (path / rf.PARTS_DIR).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    ab, om = schedule_from_betas(named_betas("linear"))
    proc = Process("vp", "epsilon", nb, ab, om)
    data_var = 0.3
    ls = bin_gaussian_optimal_loss(proc, data_var=data_var)
    meta = {
        "format": rf.FORMAT_NAME, "format_version": rf.FORMAT_VERSION, "run_id": f"bench{steps}",
        **proc.to_meta(), "alphas_cumprod_dtype": "float64", "schedule_from_betas": True, "data_var": data_var,
        "data_spectrum": None, "window": WINDOW, "flush_every": FLUSH, "probe_every": 1200, "probe_bins": 10,
        "world_size": 1, "config": {"synthetic": True},
    }
    (path / rf.RUN_JSON).write_text(json.dumps(meta))
    with np.errstate(divide="ignore"):
        lsnr = np.log(ab) - np.log(om)
    rf.write_table_atomic(pa.table({"t": np.arange(T), "alpha_bar": ab, "one_minus_alpha_bar": om, "log_snr": lsnr}),
                          path / rf.SCHEDULE_FILE)
    tau = steps / 8
    spike_steps = set(rng.choice(steps, size=20, replace=False).tolist())
    for seq, s0 in enumerate(range(0, steps, FLUSH)):
        s = np.arange(s0, min(s0 + FLUSH, steps))
        # bins: per window, a multinomial split of window*batch samples over the bins
        wins = np.unique(s // WINDOW)
        n = rng.multinomial(WINDOW * BATCH, np.full(nb, 1.0 / nb), size=wins.size).astype(np.int64)
        centre = (wins * WINDOW + WINDOW / 2)[:, None]
        mu = 1.02 * ls[None, :] + (1.0 - 1.02 * ls[None, :]) * np.exp(-centre / tau)
        sd = 0.5 * mu  # Gamma(4): cv 0.5
        mean = mu + sd * rng.standard_normal(mu.shape) / np.sqrt(np.maximum(n, 1))
        m2 = np.maximum(n - 1, 0) * sd**2 * rng.chisquare(np.maximum(n - 1, 1)) / np.maximum(n - 1, 1)
        k = wins.size * nb
        bins = pa.table({
            "split": pa.array(["train"] * k), "rank": pa.array(np.zeros(k, np.int32)),
            "segment": pa.array(np.ones(k, np.int32)),
            "step_lo": pa.array(np.repeat(wins * WINDOW, nb).astype(np.int64)),
            "step_hi": pa.array(np.repeat(wins * WINDOW + WINDOW - 1, nb).astype(np.int64)),
            "bin": pa.array(np.tile(np.arange(nb), wins.size).astype(np.int32)),
            "count": pa.array(n.ravel()), "mean": pa.array(mean.ravel()), "m2": pa.array(m2.ravel()),
            "min": pa.array((0.1 * mu).ravel().astype(np.float32)), "max": pa.array((4 * mu).ravel().astype(np.float32)),
            "nonfinite": pa.array(np.zeros(k, np.int64)), "wsum": pa.nulls(k, pa.float64()),
            "wmean": pa.nulls(k, pa.float64()),
        })
        rf.write_table_atomic(bins, path / rf.PARTS_DIR / rf.part_name("bins", 0, 1, seq))
        # steps: the batch mean over the bins, with its sampling noise
        level = float(np.mean(ls)) * 1.02 + (1 - float(np.mean(ls)) * 1.02) * np.exp(-s / tau)
        loss = level * (1 + 0.15 * rng.standard_normal(s.size))
        loss *= np.where(np.isin(s, list(spike_steps)), 5.0, 1.0)
        g = 0.3 * np.exp(0.3 * rng.standard_normal(s.size))
        steps_t = pa.table({
            "step": pa.array(s.astype(np.int64)), "segment": pa.array(np.ones(s.size, np.int32)),
            "rank": pa.array(np.zeros(s.size, np.int32)), "time": pa.array(1.7e9 + s * 0.1),
            "loss": pa.array(loss.astype(np.float32)), "count": pa.array(np.full(s.size, BATCH, np.int32)),
            "nonfinite": pa.array(np.zeros(s.size, np.int32)), "grad_norm": pa.array(g.astype(np.float32)),
            "clip_threshold": pa.array(np.ones(s.size, np.float32)), "clipped": pa.array(g > 1.0),
            "lr": pa.array(np.full(s.size, 1e-4)), "loss_scale": pa.nulls(s.size, pa.float32()),
            "wloss": pa.nulls(s.size, pa.float32()),
        })
        rf.write_table_atomic(steps_t, path / rf.PARTS_DIR / rf.part_name("steps", 0, 1, seq))
    done.write_text("ok\n")
    return path


_BARE = """
import resource, sys, time, polars as pl
t0 = time.perf_counter()
s = pl.scan_parquet(sys.argv[1] + "/parts/steps-*.parquet").collect()
b = pl.scan_parquet(sys.argv[1] + "/parts/bins-*.parquet").collect()
dt = time.perf_counter() - t0
print(dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, s.height, b.height)
"""

_REPORT = """
import resource, sys, time
t0 = time.perf_counter()
from click.testing import CliRunner
from diffaudit.cli import main
t1 = time.perf_counter()
args = ["report", sys.argv[1], "--json", sys.argv[2]] + (["-o", sys.argv[3]] if len(sys.argv) > 3 else [])
res = CliRunner().invoke(main, args, catch_exceptions=False)
t2 = time.perf_counter()
assert res.exit_code == 0, res.output
print(t2 - t1, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, t1 - t0)
print(res.output, file=sys.stderr)
"""

_PHASES = """
import sys, time
import diffaudit
from diffaudit.analysis import analyze
t1 = time.perf_counter(); r = diffaudit.load_run(sys.argv[1])
t2 = time.perf_counter(); a = analyze(r)
t3 = time.perf_counter()
print(t2 - t1, t3 - t2)
"""


def _child(code: str, *args) -> list[str]:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], capture_output=True,
                         text=True, check=False)
    if out.returncode:
        sys.exit(f"benchmark child failed:\n{out.stderr}")
    return out.stdout.split(), out.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--bins", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the best time is reported")
    ap.add_argument("--html", action="store_true", help="also render the HTML report (the renderer's cost)")
    args = ap.parse_args()
    run = CACHE / f"run-{args.steps}-{args.bins}"
    t0 = time.perf_counter()
    fresh = not (run / ".complete").exists()
    make_run(run, args.steps, args.bins)
    if fresh:
        print(f"generated {run} in {time.perf_counter() - t0:.1f} s")
    parts = sorted((run / rf.PARTS_DIR).iterdir())
    size = sum(p.stat().st_size for p in parts)
    print(f"run: {args.steps:,} steps, {args.bins} bins, {len(parts)} parts, {size / 1e6:.1f} MB on disk")

    bare = [_child(_BARE, run)[0] for _ in range(args.repeat)]
    bare_t = min(float(b[0]) for b in bare)
    bare_m = max(float(b[1]) for b in bare)
    print(f"bare scan_parquet().collect(): {bare_t:.2f} s, peak RSS {bare_m / 2**20:.0f} MiB "
          f"({bare[0][2]} step rows, {bare[0][3]} bin rows)")

    js = CACHE / "report.json"
    html = CACHE / "report.html"
    extra = [html] if args.html else []
    rep = [_child(_REPORT, run, js, *extra) for _ in range(args.repeat)]
    rep_t = min(float(r[0][0]) for r in rep)
    rep_m = max(float(r[0][1]) for r in rep)
    imp_t = min(float(r[0][2]) for r in rep)
    load_t, an_t = zip(*[(float(x[0]), float(x[1])) for x in (_child(_PHASES, run)[0] for _ in range(args.repeat))])
    cmd = [sys.executable, "-c", "from diffaudit.cli import main; main()", "report", str(run), "--json", str(js)]
    walls = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=False)
        walls.append(time.perf_counter() - t)
    print(f"diffaudit report (load + analyze + JSON{' + HTML' if args.html else ''}): {rep_t:.2f} s, "
          f"peak RSS {rep_m / 2**20:.0f} MiB; of which load_run {min(load_t):.2f} s, analyze {min(an_t):.2f} s "
          f"(imports before it: {imp_t:.2f} s; the whole `diffaudit report` process: {min(walls):.2f} s)")
    print(f"ratio report / bare scan: {rep_t / bare_t:.2f}; analyze alone / bare scan: {min(an_t) / bare_t:.2f} "
          "(targets: <= 30 s, <= 2048 MiB, ratio <= 3)")
    print(f"JSON {js.stat().st_size / 1e3:.0f} kB" + (f", HTML {html.stat().st_size / 1e6:.2f} MB" if args.html else ""))
    print("report output:\n" + textwrap.indent(rep[0][1].strip(), "  "))
    ok = rep_t <= 30 and rep_m <= 2 * 2**30 and rep_t / bare_t <= 3
    print("within targets" if ok else "OUTSIDE TARGETS")


if __name__ == "__main__":
    main()
