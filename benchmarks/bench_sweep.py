"""Time and peak memory of `diffaudit sweep` on many runs, against reading each run in-process.

    python benchmarks/bench_sweep.py                      # 500 runs of 10,000 steps (made once under /tmp)
    python benchmarks/bench_sweep.py --runs 100 --steps 10000

The runs are synthetic, in the logger's exact format (``bench_report.make_run``:
100 bins, window 100, a part every 1,000 steps), with a learning rate and a
seed in their config so the sweep has configurations and seeds to group.

Measured, each in its own fresh process:

* reference: one run's in-process ``load_run`` + ``analyze``, times the number
  of runs, divided by the cores (what a perfectly parallel sweep could reach);
* cold: ``diffaudit sweep DIR --json FILE`` with an empty cache (every run read
  in worker processes);
* warm: the same command again (every row from the cache);
* peak memory: the largest resident set of the command and of any of its
  workers (``ru_maxrss`` of the process and of its children).

Targets (issue 23): cold within 1.3x the reference; warm within 5% of cold...
read as: a second call costs at most 5% of the cold one; peak memory within 1.5 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import make_run  # noqa: E402

CACHE = Path("/tmp/diffaudit-bench-sweep")

_ONE = """
import sys, time
t0 = time.perf_counter()
from diffaudit.analysis import analyze
from diffaudit.load import load_run
t1 = time.perf_counter()
n = 0
for p in sys.argv[1:]:
    analyze(load_run(p), plots=False)
    n += 1
print((time.perf_counter() - t1) / n)
"""

_SWEEP = """
import resource, sys, time
from click.testing import CliRunner
from diffaudit.cli import main
t0 = time.perf_counter()
res = CliRunner().invoke(main, ["sweep", sys.argv[1], "--json", sys.argv[2], "--jobs", sys.argv[3]],
                         catch_exceptions=False)
dt = time.perf_counter() - t0
assert res.exit_code == 0, res.output
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(dt, max(own, kids))
print(res.output.splitlines()[0], file=sys.stderr)
"""


def make_sweep(root: Path, runs: int, steps: int) -> Path:
    """``runs`` copies of one synthetic run, each with its own config (4 learning rates x seeds) and run id."""
    done = root / f".complete-{runs}-{steps}"
    if done.exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    base = make_run(CACHE / f"base-{steps}", steps, 100)
    for i in range(runs):
        dst = root / f"run{i:04d}"
        shutil.copytree(base, dst, ignore=shutil.ignore_patterns(".complete"))
        meta = json.loads((dst / "run.json").read_text())
        meta["run_id"] = f"sweep{i:04d}"
        meta["config"] = {"lr": [1e-4, 3e-4, 1e-3, 3e-3][i % 4], "seed": i // 4}
        (dst / "run.json").write_text(json.dumps(meta))
    done.write_text("ok\n")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
    root = make_sweep(CACHE / f"sweep-{a.runs}-{a.steps}", a.runs, a.steps)
    runs = sorted(p for p in root.iterdir() if p.is_dir())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sample = [str(p) for p in runs[:5]]
    one = float(subprocess.run([sys.executable, "-c", _ONE, *sample], capture_output=True, text=True, env=env,
                               check=True).stdout.split()[0])
    reference = one * len(runs) / a.jobs
    with tempfile.TemporaryDirectory() as cache:
        env["DIFFAUDIT_CACHE"] = cache
        out = []
        for label in ("cold", "warm"):
            r = subprocess.run([sys.executable, "-c", _SWEEP, str(root), os.path.join(cache, "s.json"), str(a.jobs)],
                               capture_output=True, text=True, env=env, check=True)
            dt, rss = (float(x) for x in r.stdout.split())
            out.append((label, dt, rss))
            print(f"{label}: {dt:.1f} s, peak {rss / 2**30:.2f} GiB  ({r.stderr.strip()})", flush=True)
    cold, warm = out[0][1], out[1][1]
    print(f"\n{len(runs)} runs of {a.steps:,} steps, {a.jobs} jobs")
    print(f"one run in-process (load + analyze): {one:.3f} s; reference {len(runs)} x that / {a.jobs} cores = "
          f"{reference:.1f} s")
    print(f"cold / reference: {cold / reference:.2f} (target <= 1.3)")
    print(f"warm / cold: {warm / cold:.3f} (target <= 0.05)")
    print(f"peak memory: {max(r for _, _, r in out) / 2**30:.2f} GiB (target <= 1.5)")


if __name__ == "__main__":
    main()
