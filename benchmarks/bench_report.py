"""Peak memory and time of `diffaudit report` on long runs, against the run's bytes on disk.

    python benchmarks/bench_report.py                    # 1,000,000 and 4,000,000 steps, 100 bins (cached under /tmp)
    python benchmarks/bench_report.py --steps 100000     # one smaller run
    python benchmarks/bench_report.py --html             # also render the HTML report (the renderer's cost)

The runs are synthetic but in the logger's exact format, at its default settings
(window=100, flush_every=1000): one ``steps`` part (1,000 rows) and one ``bins``
part (10 windows x 100 bins) per 1,000 steps, written with pyarrow and the
schemas of :mod:`diffaudit.runformat` (no torch needed). Losses decay towards
the Gaussian L* of each bin with per-sample Gamma noise; a few spikes and
clipped steps are planted so every detector does real work.

Each measurement is a fresh Python process of its own, with this checkout's
diffaudit first on its path, so its peak RSS (``ru_maxrss``) is its alone:

* imports: a process that only imports what ``diffaudit report`` imports (Python,
  click, numpy, polars, scipy.special, diffaudit): the floor every report pays;
* report: ``diffaudit report RUN --json FILE`` as the CLI runs it (``diffaudit.cli.main``
  through click), the whole process; timed from its start to its exit, and inside
  it from the end of its imports to the end of the command;
* phases: ``load_run`` and ``analyze`` timed inside a process (after the imports);
* bare: ``polars.scan_parquet(<parts>).collect()`` of the steps and bins parts.

Targets. Issue 24: the report's peak at most 8x the run's bytes on disk (every
file of the run) at 1,000,000 and 4,000,000 steps, its time linear in steps.
Issue 4, at 1,000,000 steps: <= 30 s, <= 2 GiB, <= 3x the bare scan's time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
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
ROOT = Path(__file__).resolve().parent.parent  # the checkout whose diffaudit the children import
MEMORY_TARGET = 8.0  # issue 24: peak RSS / bytes on disk


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


def cached_run(steps: int, bins: int) -> Path:
    """The cached synthetic run of `steps` steps and `bins` bins, made on first use."""
    run = CACHE / f"run-{steps}-{bins}"
    if not (run / ".complete").exists():
        t0 = time.perf_counter()
        make_run(run, steps, bins)
        print(f"generated {run} in {time.perf_counter() - t0:.1f} s", flush=True)
    return run


def disk_bytes(run: Path) -> int:
    """Bytes of every file of the run (run.json, schedule, parts, markers), as stored."""
    return sum(f.stat().st_size for f in run.rglob("*") if f.is_file() and f.name != ".complete")


def child_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def process(args: list[str]) -> tuple[float, int, str]:
    """Run ``python *args`` as a fresh process from the checkout's root: (wall s, its peak RSS in bytes, stdout).
    The peak is the kernel's for that process alone (wait4), whatever the process prints."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=child_env(), stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if p.returncode:
            sys.exit(f"benchmark process failed ({' '.join(args[:3])} ...):\n{err.read()[-3000:]}")
        return wall, usage.ru_maxrss * 1024, out.read()


def child(code: str, *args) -> tuple[float, int, str]:
    """Run ``code`` in a fresh process; it reports its own peak (ru_maxrss) as the last line of its output."""
    wall, _, out = process(["-c", textwrap.dedent(code), *map(str, args)])
    *lines, last = out.strip().splitlines()
    return wall, int(last), "\n".join(lines)


_IMPORTS = """
import resource, time
t0 = time.perf_counter()
import diffaudit.cli, diffaudit.cli.report  # what `diffaudit report` imports before it reads a run
print(time.perf_counter() - t0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""

_REPORT = """
import sys, time
t0 = time.perf_counter()
from click.testing import CliRunner
from diffaudit.cli import main
import diffaudit.cli.report  # noqa: F401  the command's own imports (the CLI imports a command when it runs)
t1 = time.perf_counter()
res = CliRunner().invoke(main, ["report", *sys.argv[1:]], catch_exceptions=False)
t2 = time.perf_counter()
assert res.exit_code == 0, res.output
print(res.output)
print(t2 - t1)
"""

_PHASES = """
import resource, sys, time
import diffaudit.cli  # noqa: F401  the allocator settings of the CLI
from diffaudit.analysis import analyze
from diffaudit.load import load_run
t1 = time.perf_counter(); r = load_run(sys.argv[1])
t2 = time.perf_counter(); a = analyze(r)
t3 = time.perf_counter()
print(t2 - t1, t3 - t2)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""

_BARE = """
import resource, sys, time, polars as pl
t0 = time.perf_counter()
s = pl.scan_parquet(sys.argv[1] + "/parts/steps-*.parquet").collect()
b = pl.scan_parquet(sys.argv[1] + "/parts/bins-*.parquet").collect()
print(time.perf_counter() - t0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def import_baseline(repeat: int) -> tuple[float, int]:
    got = [child(_IMPORTS) for _ in range(repeat)]
    return min(float(g[2]) for g in got), max(g[1] for g in got)


def measure(steps: int, bins: int, repeat: int, html: bool) -> dict:
    run = cached_run(steps, bins)
    js, page = CACHE / "report.json", CACHE / "report.html"
    cmd = ["-c", textwrap.dedent(_REPORT), str(run), "--json", str(js)] + (["-o", str(page)] if html else [])
    reports = [process(cmd) for _ in range(repeat)]
    phases = [child(_PHASES, run) for _ in range(repeat)]
    bare = [child(_BARE, run) for _ in range(repeat)]
    return {
        "steps": steps, "disk": disk_bytes(run), "parts": len(list((run / rf.PARTS_DIR).iterdir())),
        "wall": min(r[0] for r in reports), "peak": max(r[1] for r in reports),
        "command": min(float(r[2].strip().splitlines()[-1]) for r in reports),
        "output": "\n".join(reports[0][2].strip().splitlines()[:-1]),
        "load": min(float(p[2].split()[0]) for p in phases), "analyze": min(float(p[2].split()[1]) for p in phases),
        "bare": min(float(b[2]) for b in bare), "bare_peak": max(b[1] for b in bare),
        "json": js.stat().st_size, "html": page.stat().st_size if html else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[1_000_000, 4_000_000])
    ap.add_argument("--bins", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each measurement: best time, highest peak")
    ap.add_argument("--html", action="store_true", help="also render the HTML report (the renderer's cost)")
    args = ap.parse_args()
    MiB = 2**20
    imp_t, imp_m = import_baseline(args.repeat)
    rows = [measure(n, args.bins, args.repeat, args.html) for n in args.steps]
    print(f"diffaudit report{' -o HTML' if args.html else ''}, {args.bins} bins, whole processes; "
          f"{os.cpu_count()} CPUs, best time / highest peak of {args.repeat}")
    print(f"imports alone: {imp_m / MiB:.0f} MiB peak, {imp_t:.2f} s (python, click, numpy, polars, scipy.special, "
          "diffaudit): in every figure below")
    head = (f"{'steps':>10} {'disk MB':>8} {'peak MiB':>9} {'x disk':>7} {'<= 8x':>6} {'process s':>9} "
            f"{'command s':>9} {'s/1M steps':>10} {'load s':>7} {'analyze s':>9} {'bare scan s':>11} {'bare MiB':>8}")
    print(head)
    ok = True
    for r in rows:
        ratio = r["peak"] / r["disk"]
        ok &= ratio <= MEMORY_TARGET
        print(f"{r['steps']:>10,} {r['disk'] / 1e6:>8.1f} {r['peak'] / MiB:>9.0f} {ratio:>7.2f} "
              f"{'yes' if ratio <= MEMORY_TARGET else 'NO':>6} {r['wall']:>9.2f} {r['command']:>9.2f} "
              f"{r['command'] / r['steps'] * 1e6:>10.2f} {r['load']:>7.2f} {r['analyze']:>9.2f} {r['bare']:>11.2f} "
              f"{r['bare_peak'] / MiB:>8.0f}")
    print("process s: the whole process, start to exit; command s: the command after the imports "
          "(s/1M steps: linear when about equal across rows)")
    for r in rows:
        if r["steps"] == 1_000_000:
            ratio_bare = r["command"] / r["bare"]
            ok4 = r["wall"] <= 30 and r["peak"] <= 2 * 2**30 and ratio_bare <= 3
            print(f"issue 4 at 1,000,000 steps: {r['wall']:.2f} s (<= 30), {r['peak'] / MiB:.0f} MiB (<= 2048), "
                  f"command {ratio_bare:.2f}x the bare scan (<= 3): {'met' if ok4 else 'NOT MET'}")
    last = rows[-1]
    print(f"JSON {last['json'] / 1e3:.0f} kB" + (f", HTML {last['html'] / 1e6:.2f} MB" if last["html"] else ""))
    print("report output:\n" + textwrap.indent(last["output"].strip(), "  "))
    print(f"memory target (<= {MEMORY_TARGET:g}x the bytes on disk): {'met' if ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
