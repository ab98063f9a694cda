"""Start-up and throughput of the CLI as ratios to polars itself (issue 11: "the house").

    python benchmarks/bench_speed.py                   # 1e6 steps, median of 3, runs cached under /tmp
    python benchmarks/bench_speed.py --steps 100000 --repeat 5
    python benchmarks/bench_speed.py --check           # exit 1 if a ratio is over its target

What is measured, each as the wall time of a whole fresh process (subprocess),
so start-up, imports, reading and writing all count, as a user sees them:

  1. ``diffaudit --help``                     vs ``python -c "import polars"``       target <= 1.5x
  2. ``diffaudit summary RUN`` on a small run vs ``python -c "import polars"``       target <= 1.5x
     (sample_logs/healthy_seed0: 1,500 steps, so the process is nearly all start-up)
  3. ``diffaudit report RUN --json FILE``     vs a bare read: ``import polars;
     pl.scan_parquet(<steps parts>).collect(); pl.scan_parquet(<bins parts>).collect()``
     of the same RUN, a 1,000,000-step run                                          target <= 3x
  4. ``diffaudit compare BASE CAND --json FILE`` of two 1,000,000-step runs
     vs ``diffaudit report BASE --json FILE`` of one (the measurement of 3)         target <= 1.5x

And one reference ratio, no target: a process with compare's imports that only reads
(``load_run``) both runs, against one that reads one. It is what compare / report would
be if the findings analyses and the gate cost nothing: on two cores a read already keeps
both busy, so two reads take about twice one, and only the fixed start-up is shared.

How: the two runs are the synthetic ones ``benchmarks/bench_gate.py --keep DIR``
writes (logger format and defaults: a bins window of 100 steps, a part every
1,000 steps, 100 bins; the candidate has 3 bins 5% worse), made once with its
``write_run`` and cached under /tmp (or --keep-dir). One warm-up round reads
every file once, so the page cache is warm for all alike. Then --repeat rounds
each run every distinct command once, interleaved, the order rotated per round,
so the noise of a shared machine hits numerator and denominator alike; each
figure is the median of its rounds and each ratio the ratio of two medians. The
``diffaudit`` console script of this environment is run, with this checkout
first on PYTHONPATH, OMP_NUM_THREADS=1 unless set, and bytecode cached (under
/tmp/diffaudit-bench/pycache) as an installed package has it, even where
PYTHONDONTWRITEBYTECODE is set; the warm-up also runs report and compare on the
small run, so no measured process compiles anything.

Prints a table and exits 0 (a benchmark, not a test); --check exits 1 if any
ratio is over its target. A process that runs past --timeout (default 600 s) is
killed, counted as OVER and not run again. A command that fails (an unexpected
exit code) stops the benchmark with its stderr.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = Path("/tmp/diffaudit-bench")
SMALL_RUN = REPO / "sample_logs" / "healthy_seed0"
BINS = 100  # bench_gate's default: 100 noise bins


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("OMP_NUM_THREADS", "1")
    # bytecode cached as in an installed package (a source checkout with PYTHONDONTWRITEBYTECODE=1 would
    # compile every diffaudit module in every process), kept out of the tree
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", str(CACHE / "pycache"))
    return env


ENV = _env()


def _diffaudit() -> list[str]:
    """The console script next to this interpreter (what a user runs), else the same entry point through python."""
    script = Path(sys.executable).with_name("diffaudit")
    if script.exists():
        return [str(script)]
    found = shutil.which("diffaudit")
    if found:
        return [found]
    return [sys.executable, "-c", "from diffaudit.cli import run; run()"]


def make_runs(root: Path, steps: int, cached: bool) -> tuple[Path, Path]:
    """Two runs as `bench_gate.py --keep root` writes them (baseline, candidate); written once, then reused."""
    a, b = root / "baseline", root / "candidate"
    done = root / ".complete"
    if done.exists() or (not cached and (a / "run.json").exists() and (b / "run.json").exists()):
        return a, b
    for p in (a, b):
        shutil.rmtree(p, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    try:
        sys.path.insert(0, str(HERE))
        sys.path.insert(0, str(REPO))
        from bench_gate import write_run  # numpy, pyarrow and diffaudit: only imported when generating
    except ImportError:
        subprocess.run([sys.executable, str(HERE / "bench_gate.py"), "--steps", str(steps), "--keep", str(root),
                        "--repeat", "0"], env=ENV, check=True, stdout=subprocess.DEVNULL)
    else:
        write_run(a, steps, BINS, seed=1)
        write_run(b, steps, BINS, seed=2, raise_bins=(10, 11, 50), factor=1.05)
    done.write_text("ok\n")
    print(f"wrote two {steps:,}-step runs under {root} in {time.perf_counter() - t:.0f} s", flush=True)
    return a, b


def run_once(name: str, argv: list[str], ok_codes: tuple, timeout: float | None = None) -> float | None:
    """Wall seconds of one fresh process, or None if it ran past `timeout` (then it is killed)."""
    t = time.perf_counter()
    try:
        p = subprocess.run(argv, env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    dt = time.perf_counter() - t
    if p.returncode not in ok_codes:
        sys.exit(f"{name}: exit {p.returncode} from {' '.join(argv)}\n{p.stderr.decode(errors='replace')[-3000:]}")
    return dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=lambda s: int(float(s)), default=1_000_000, help="steps of the big runs (1e6)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds; each figure is their median")
    ap.add_argument("--keep-dir", type=Path, help="where the two big runs are (or are written): a bench_gate.py "
                    f"--keep folder (default {CACHE}/gate-STEPS-{BINS})")
    ap.add_argument("--summary-run", type=Path, default=SMALL_RUN, help="the small run for summary's start-up")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="seconds one process may run; past it, it is killed, counted as OVER and not run again")
    ap.add_argument("--check", action="store_true", help="exit 1 if any ratio is over its target")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")

    root = args.keep_dir or CACHE / f"gate-{args.steps}-{BINS}"
    base, cand = make_runs(root, args.steps, cached=args.keep_dir is None)
    out = CACHE / "speed-out"
    out.mkdir(parents=True, exist_ok=True)
    cli = _diffaudit()
    py = [sys.executable, "-c"]
    bare = ("import polars as pl, sys; pl.scan_parquet(sys.argv[1] + '/parts/steps-*.parquet').collect(); "
            "pl.scan_parquet(sys.argv[1] + '/parts/bins-*.parquet').collect()")
    cmp_argv = cli + ["compare", str(base), str(cand), "--json", str(out / "compare.json")]
    # reading alone, with compare's imports: the floor of compare / report if findings and the gate were free
    reads = ("import sys, diffaudit.cli.compare; from diffaudit.load import load_run\n"
             "for p in sys.argv[1:]: load_run(p)")

    # name -> (argv, accepted exit codes); compare exits 1 on a regression (the candidate has one), 3 inconclusive
    cmds = {
        "import polars": (py + ["import polars"], (0,)),
        "diffaudit --help": (cli + ["--help"], (0,)),
        "summary (small run)": (cli + ["summary", str(args.summary_run)], (0,)),
        "bare scan (1 run)": (py + [bare, str(base)], (0,)),
        "report --json": (cli + ["report", str(base), "--json", str(out / "report.json")], (0,)),
        "compare --json": (cmp_argv, (0, 1, 3)),
        "read 1 run": (py + [reads, str(base)], (0,)),
        "read 2 runs": (py + [reads, str(base), str(cand)], (0,)),
    }
    # (numerator, denominator, target)
    pairs = [("diffaudit --help", "import polars", 1.5), ("summary (small run)", "import polars", 1.5),
             ("report --json", "bare scan (1 run)", 3.0), ("compare --json", "report --json", 1.5)]

    # warm-up: the page cache holds both big runs and the small one; every import is compiled and cached
    for name in ("import polars", "diffaudit --help", "summary (small run)", "bare scan (1 run)"):
        run_once(name, *cmds[name])
    run_once("bare scan (candidate)", py + [bare, str(cand)], (0,))
    run_once("report (small run)", cli + ["report", str(args.summary_run), "--json", str(out / "small.json")], (0,))
    small = [str(args.summary_run)] * 2 + ["--json", str(out / "small-compare.json")]
    run_once("compare (small run)", cli + ["compare"] + small, (0, 1, 3))

    names = list(cmds)
    times = {n: [] for n in names}
    print(f"{args.repeat} interleaved rounds of {len(names)} processes ({args.steps:,}-step runs; "
          "every output to a file) ...", flush=True)
    slow = set()  # commands that ran past --timeout: a lower bound, not run again
    for r in range(args.repeat):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            if n in slow:
                continue
            dt = run_once(n, *cmds[n], timeout=args.timeout)
            if dt is None:
                slow.add(n)
                times[n] = [args.timeout]
                print(f"{n}: still running after {args.timeout:g} s, killed; counted as > {args.timeout:g} s", flush=True)
            else:
                times[n].append(dt)
    med = {n: statistics.median(v) for n, v in times.items()}

    w = max(len(n) for n in names)
    print(f"\n{'measurement':<{w}}  {'median s':>8}  {'min-max s':>13}")
    for n in names:
        if n in slow:
            print(f"{n:<{w}}  {'>' + format(args.timeout, 'g'):>8}  (killed at --timeout)")
        else:
            print(f"{n:<{w}}  {med[n]:8.3f}  {min(times[n]):6.3f}-{max(times[n]):.3f}")
    print(f"\n{'numerator / denominator':<{w + 3 + w}}  {'ratio':>6}  {'target':>7}")
    over = False
    for num, den, target in pairs:
        ratio = med[num] / med[den]
        lower = num in slow and den not in slow  # a lower bound; timed-out denominators make the ratio unknown
        unknown = den in slow
        bad = unknown or lower or ratio > target
        over |= bad
        shown = "?" if unknown else (">" if lower else "") + format(ratio, ".2f")
        print(f"{num:<{w}} / {den:<{w}}  {shown:>6}  {'<= ' + format(target, 'g'):>7}  {'OVER' if bad else 'ok'}")
    if not ({"read 1 run", "read 2 runs"} & slow):
        floor = med["read 2 runs"] / med["read 1 run"]
        print(f"{'read 2 runs':<{w}} / {'read 1 run':<{w}}  {floor:6.2f}  (reference: compare / report if the analyses "
              "and the gate cost nothing)")
    print(f"\n{'OVER a target' if over else 'all within targets'} ({sys.executable}, OMP_NUM_THREADS="
          f"{ENV['OMP_NUM_THREADS']}, {os.cpu_count()} CPUs)")
    return 1 if (args.check and over) else 0


if __name__ == "__main__":
    sys.exit(main())
