"""Peak memory and time of `diffaudit watch` following long runs, against the run's bytes on disk.

    python benchmarks/bench_watch.py                    # 1,000,000 and 4,000,000 steps, 100 bins (bench_report's runs)
    python benchmarks/bench_watch.py --steps 100000     # one smaller run

Each run is watched by a fresh Python process of its own that polls it as
``diffaudit watch`` does (the CLI's loop, allocator settings included; no HTML),
on a copy of the cached run (hard links) without its last flush:

* the first poll reads every part (the careful reader, each part once, as watch
  always reads) and analyzes the run;
* polls that find nothing new only list the run's files (the common case);
* then the last flush lands (its parts are moved in) and a poll reads the new
  parts alone, stacks them with the cached ones and analyzes the whole run again.

The previous update is let go before each poll, as the CLI does. The process's
peak RSS (ru_maxrss, from wait4) covers all of it. A process that only imports
what watch imports (pyarrow's Parquet reader included) gives the floor.

Target (issue 24): the watching process's peak at most 8x the run's bytes on disk
at 1,000,000 and 4,000,000 steps, its time linear in steps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import CACHE, MEMORY_TARGET, cached_run, child, disk_bytes, process  # noqa: E402

_IMPORTS = """
import resource, time
t0 = time.perf_counter()
import diffaudit.cli, diffaudit.cli.watch, pyarrow.parquet  # what `diffaudit watch` imports before it reads a run
print(time.perf_counter() - t0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""

_WATCH = """
import json, os, sys, time
from pathlib import Path
sys.argv[1:1] = ["watch"]  # read by the CLI's allocator settings below, as `diffaudit watch RUN` has them
import diffaudit.cli  # noqa: F401, E402
del sys.argv[1]
from diffaudit.watch import Watcher
run, held, idle_polls = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
w = Watcher(run)
t = time.perf_counter(); u = w.poll(); first = time.perf_counter() - t
assert u.changed
idle = []
for _ in range(idle_polls):
    u = None  # as the CLI: the previous update is let go before the next poll
    t = time.perf_counter(); u = w.poll(); idle.append(time.perf_counter() - t)
    assert not u.changed
for p in sorted(held.iterdir()):  # the last flush lands
    os.rename(p, run / "parts" / p.name)
u = None
t = time.perf_counter(); u = w.poll(); changed = time.perf_counter() - t
assert u.changed
print(json.dumps({"first": first, "idle": sorted(idle)[len(idle) // 2], "changed": changed}))
"""


def working_copy(run: Path, where: Path) -> tuple[Path, Path]:
    """A copy of the run (parts hard-linked where the file system allows) with its last flush held aside."""
    copy, held = where / "run", where / "held"
    (copy / "parts").mkdir(parents=True)
    held.mkdir()
    for f in run.iterdir():
        if f.is_file() and f.name != ".complete":
            shutil.copy2(f, copy / f.name)
    parts = sorted((run / "parts").iterdir())
    last = parts[-1].name.rsplit("-", 1)[1]  # the sequence number of the last flush: its steps and bins parts
    for p in parts:
        dest = (held if p.name.endswith("-" + last) else copy / "parts") / p.name
        try:
            os.link(p, dest)
        except OSError:
            shutil.copy2(p, dest)
    return copy, held


def measure(steps: int, bins: int, repeat: int, idle_polls: int) -> dict:
    run = cached_run(steps, bins)
    got = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            copy, held = working_copy(run, Path(tmp))
            wall, peak, out = process(["-c", _WATCH, str(copy), str(held), str(idle_polls)])
            got.append((peak, json.loads(out.strip().splitlines()[-1])))
    return {"steps": steps, "disk": disk_bytes(run), "peak": max(g[0] for g in got),
            **{k: min(g[1][k] for g in got) for k in ("first", "idle", "changed")}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[1_000_000, 4_000_000])
    ap.add_argument("--bins", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=2, help="watching processes per run: best time, highest peak")
    ap.add_argument("--idle-polls", type=int, default=5, help="polls that find nothing new, between the two reads")
    args = ap.parse_args()
    MiB = 2**20
    imports = [child(_IMPORTS) for _ in range(args.repeat)]
    imp_t, imp_m = min(float(i[2]) for i in imports), max(i[1] for i in imports)
    rows = [measure(n, args.bins, args.repeat, args.idle_polls) for n in args.steps]
    print(f"diffaudit watch (the CLI's poll loop, no HTML), {args.bins} bins, whole processes; {os.cpu_count()} CPUs, "
          f"best time / highest peak of {args.repeat}")
    print(f"imports alone: {imp_m / MiB:.0f} MiB peak, {imp_t:.2f} s (those of report, and pyarrow's Parquet reader): "
          "in every figure below")
    print(f"{'steps':>10} {'disk MB':>8} {'peak MiB':>9} {'x disk':>7} {'<= 8x':>6} {'first poll s':>12} "
          f"{'s/1M steps':>10} {'idle poll ms':>12} {'new flush s':>11} {'s/1M steps':>10}")
    ok = True
    for r in rows:
        ratio = r["peak"] / r["disk"]
        ok &= ratio <= MEMORY_TARGET
        m = r["steps"] / 1e6
        print(f"{r['steps']:>10,} {r['disk'] / 1e6:>8.1f} {r['peak'] / MiB:>9.0f} {ratio:>7.2f} "
              f"{'yes' if ratio <= MEMORY_TARGET else 'NO':>6} {r['first']:>12.2f} {r['first'] / m:>10.2f} "
              f"{r['idle'] * 1e3:>12.1f} {r['changed']:>11.2f} {r['changed'] / m:>10.2f}")
    print("first poll: reads and analyzes the whole run; new flush: a poll after one flush lands (reads it, "
          "analyzes the run again)")
    print(f"memory target (<= {MEMORY_TARGET:g}x the bytes on disk): {'met' if ok else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
