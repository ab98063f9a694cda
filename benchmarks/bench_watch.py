"""CPU and memory of one `diffaudit watch` poll on a 1,000,000-step run.

    python benchmarks/bench_watch.py                    # 1e6 steps, 100 bins (the bench_report run)
    python benchmarks/bench_watch.py --steps 100000

Two polls matter: one that finds nothing new (the common case: it only lists the
run's files), and one after a new flush (it reads and analyzes the run again).
Each is timed in this process after a first poll; peak RSS is the process's
after all polls. Prints the figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import make_run  # noqa: E402  the synthetic run in the logger's exact format

from diffaudit.watch import Watcher  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--bins", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp) / "run", args.steps, args.bins)
        parts = sorted((run / "parts").glob("*.parquet"))
        held = Path(tmp) / "held"  # the last flush, added back between polls to stand for a new one
        held.mkdir()
        last = [p for p in parts if p.name.endswith(parts[-1].name[-15:])]
        for p in last:
            shutil.move(p, held / p.name)
        w = Watcher(run)
        w.poll()
        idle, changed = [], []
        for i in range(args.repeat):
            t0 = time.perf_counter()
            u = w.poll()
            idle.append(time.perf_counter() - t0)
            assert not u.changed
            for p in last:  # a new flush lands
                shutil.move(held / p.name, run / "parts" / p.name)
            t0 = time.perf_counter()
            u = w.poll()
            changed.append(time.perf_counter() - t0)
            assert u.changed
            for p in last:
                shutil.move(run / "parts" / p.name, held / p.name)
            w.poll()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"run: {args.steps:,} steps, {args.bins} bins, {len(parts)} parts")
    print(f"poll, nothing new:      {statistics.median(idle) * 1e3:8.1f} ms (median of {args.repeat})")
    print(f"poll after a new flush: {statistics.median(changed):8.2f} s  (median of {args.repeat}; read + analyze)")
    print(f"peak RSS of the watching process: {rss:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
