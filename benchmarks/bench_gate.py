"""Time and peak memory of ``diffaudit compare`` on two 1,000,000-step runs.

    python benchmarks/bench_gate.py                    # 1e6 steps, 100 bins, logger defaults, in /tmp
    python benchmarks/bench_gate.py --steps 200000 --keep DIR

The runs are written in the logger's on-disk format (run.json, schedule.parquet,
parts/<kind>-r00000-s0001-<seq>.parquet) with pyarrow, as RunLogger would with
its defaults: a bins window of 100 steps, a part every 1,000 steps, 100 noise
bins. The loss per bin decays towards a floor as a power of the step, with the
sampling noise a window of ~128 samples per step would have; the candidate has
the loss of 3 bins raised by 5%. Every compare runs in a fresh subprocess, so
peak RSS (ru_maxrss) is the compare's own, including loading both runs; the
whole CLI (``diffaudit compare A B --json -``) is timed the same way. The
analyzer's findings are part of the default gate and are included.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from diffaudit import runformat as rf
from diffaudit.noise import Process, named_betas, schedule_from_betas

BATCH = 128  # samples per step
WINDOW = 100  # steps per bins window (RunLogger default)
FLUSH = 1000  # steps per part (RunLogger default)


def write_run(path: Path, steps: int, num_bins: int, seed: int, raise_bins=(), factor: float = 1.0) -> None:
    """A synthetic run in the logger's format: per-bin loss L_b(s) = floor_b + amp_b (1 + s / 2000)^-0.5 + noise."""
    rng = np.random.default_rng(seed)
    abar, om = schedule_from_betas(named_betas("linear"))
    proc = Process("vp", "epsilon", num_bins, abar, om)
    path.mkdir(parents=True)
    (path / rf.PARTS_DIR).mkdir()
    meta = {"format": rf.FORMAT_NAME, "format_version": rf.FORMAT_VERSION, "run_id": rf.new_run_id(),
            **proc.to_meta(), "data_var": 0.4, "window": WINDOW, "flush_every": FLUSH, "world_size": 1,
            "config": {"synthetic": True, "seed": seed}}
    (path / rf.RUN_JSON).write_text(json.dumps(meta))
    with np.errstate(divide="ignore"):
        rf.write_table_atomic(pa.table({"t": np.arange(abar.size), "alpha_bar": abar, "one_minus_alpha_bar": om,
                                        "log_snr": np.log(abar) - np.log(om)}), path / rf.SCHEDULE_FILE)
    b = np.arange(num_bins)
    floor = 0.9 * np.exp(-b / (num_bins / 5)) + 0.01
    amp = 0.5 * floor
    bump = np.ones(num_bins)
    bump[list(raise_bins)] = factor
    per_bin = BATCH / num_bins
    nwin = FLUSH // WINDOW
    for seq, s0 in enumerate(range(0, steps, FLUSH)):
        st = np.arange(s0, min(s0 + FLUSH, steps))
        # steps part
        level = float(np.mean(floor + amp * (1 + s0 / 2000) ** -0.5))
        loss = level * (1 + 0.05 * rng.standard_normal(st.size))
        gn = np.exp(rng.normal(-1.0, 0.3, st.size))
        rf.write_table_atomic(pa.table({
            "step": pa.array(st, pa.int64()), "segment": pa.array(np.ones(st.size), pa.int32()),
            "rank": pa.array(np.zeros(st.size), pa.int32()), "time": pa.array(1.7e9 + st * 0.05, pa.float64()),
            "loss": pa.array(loss, pa.float32()), "count": pa.array(np.full(st.size, BATCH), pa.int32()),
            "nonfinite": pa.array(np.zeros(st.size), pa.int32()), "grad_norm": pa.array(gn, pa.float32()),
            "clip_threshold": pa.array(np.ones(st.size), pa.float32()), "clipped": pa.array(gn > 1.0, pa.bool_()),
            "lr": pa.array(np.full(st.size, 1e-4), pa.float64()),
            "loss_scale": pa.array([None] * st.size, pa.float32()), "wloss": pa.array([None] * st.size, pa.float32()),
        }, schema=rf.STEPS_SCHEMA), path / rf.PARTS_DIR / rf.part_name("steps", 0, 1, seq))
        # bins part: nwin windows x num_bins
        lo = s0 + WINDOW * np.repeat(np.arange(nwin), num_bins)
        bb = np.tile(b, nwin)
        mid = lo + WINDOW / 2
        mu = (floor[bb] + amp[bb] * (1 + mid / 2000) ** -0.5) * bump[bb]
        n = rng.poisson(per_bin * WINDOW, mu.size).astype(np.int64) + 2
        sd = 0.5 * mu
        mean = mu + sd / np.sqrt(n) * rng.standard_normal(mu.size)
        m2 = sd**2 * (n - 1) * rng.chisquare(n - 1) / (n - 1)
        rf.write_table_atomic(pa.table({
            "split": pa.array(["train"] * mu.size), "rank": pa.array(np.zeros(mu.size), pa.int32()),
            "segment": pa.array(np.ones(mu.size), pa.int32()), "step_lo": pa.array(lo, pa.int64()),
            "step_hi": pa.array(lo + WINDOW - 1, pa.int64()), "bin": pa.array(bb, pa.int32()),
            "count": pa.array(n, pa.int64()), "mean": pa.array(mean, pa.float64()), "m2": pa.array(m2, pa.float64()),
            "min": pa.array(mean * 0.1, pa.float32()), "max": pa.array(mean * 4, pa.float32()),
            "nonfinite": pa.array(np.zeros(mu.size), pa.int64()), "wsum": pa.array([None] * mu.size, pa.float64()),
            "wmean": pa.array([None] * mu.size, pa.float64()),
        }, schema=rf.BINS_SCHEMA), path / rf.PARTS_DIR / rf.part_name("bins", 0, 1, seq))


_CHILD = """
import resource, sys, time
t0 = time.perf_counter()
from diffaudit import gate
from diffaudit.load import load_run
a = load_run(sys.argv[1]); b = load_run(sys.argv[2])
t1 = time.perf_counter()
v = gate.compare(a, b)
t2 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} {v.status} "
      + ";".join(c.name for c in v.regressions))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--bins", type=int, default=100)
    ap.add_argument("--keep", type=Path, help="write the runs here and keep them (default: a temporary folder)")
    ap.add_argument("--repeat", type=int, default=2, help="timed compares (fresh process each)")
    args = ap.parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="diffaudit-bench-gate-"))
    a, b = root / "baseline", root / "candidate"
    try:
        if not (a / rf.RUN_JSON).exists():
            t = time.perf_counter()
            write_run(a, args.steps, args.bins, seed=1)
            write_run(b, args.steps, args.bins, seed=2, raise_bins=(10, 11, 50), factor=1.05)
            print(f"wrote two {args.steps:,}-step runs ({args.bins} bins, window {WINDOW}, a part every {FLUSH} "
                  f"steps) in {time.perf_counter() - t:.1f} s; {sum(f.stat().st_size for f in root.rglob('*') if f.is_file()) / 1e6:.0f} MB")
        for i in range(args.repeat):
            out = subprocess.run([sys.executable, "-c", _CHILD, str(a), str(b)], capture_output=True, text=True, check=True)
            load_s, cmp_s, rss, status, regs = (out.stdout.strip().split(" ", 4) + [""])[:5]
            print(f"python API, run {i + 1}: load both {float(load_s):.2f} s + compare {float(cmp_s):.2f} s = "
                  f"{float(load_s) + float(cmp_s):.2f} s; peak RSS {int(rss):,} MB; verdict {status}: {regs}")
        t = time.perf_counter()
        cli = subprocess.run([sys.executable, "-c", "from diffaudit.cli import run; run()",
                              "compare", str(a), str(b), "--json", "-"], capture_output=True, text=True)
        wall = time.perf_counter() - t
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        verdict = json.loads(cli.stdout)["status"] if cli.stdout.strip().startswith("{") else cli.stderr.strip()
        print(f"CLI `diffaudit compare A B --json -`: {wall:.2f} s wall, exit {cli.returncode} ({verdict}); "
              f"peak RSS of any child so far {rss:,.0f} MB")
        print("aim: under 30 s and 2 GB")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
