"""Figures for diffaudit.optimum: exact-estimator cost at CIFAR size, subsampled-estimator bias on digits.

    python benchmarks/bench_optimum.py                  # both parts, full size (a few minutes on 2 cores)
    python benchmarks/bench_optimum.py --quick          # small sizes, seconds
    python benchmarks/bench_optimum.py --device cuda    # the exact estimator with torch on a GPU
    python benchmarks/bench_optimum.py --skip-digits --estimator stratified --subset 4096

Part 1 times ``bin_empirical_optimal_loss`` on a random data set of N points of
dimension d (uniform in [-1, 1], stored as float32 like an image set), with a
1000-step linear schedule. Peak memory is reported three ways: the data itself,
the numpy allocations made during the call (tracemalloc: the estimator's working
set), and the process's peak resident size (getrusage), which includes Python,
numpy and the data.

Part 2 measures the bias of the subsampled estimators against the exact one on
sklearn's 8x8 digits (N = 1797, d = 64, pixels scaled to [-1, 1]) with common
random numbers: the same seed gives every estimator the same (t, x0, eps), so the
per-sample differences isolate the subsampling error.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
import tracemalloc

import numpy as np

from diffaudit import optimum as opt
from diffaudit.noise import Process, named_betas, schedule_from_betas


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _random_images(n: int, d: int, seed: int) -> np.ndarray:
    """(n, d) float32 uniform in [-1, 1], generated in pieces so no float64 copy ever exists."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), dtype=np.float32)
    step = max(1, (32 << 20) // (4 * d))
    for i in range(0, n, step):
        block = rng.random((min(step, n - i), d), dtype=np.float32)
        block *= 2
        block -= 1
        x[i : i + step] = block
    return x


def bench_cost(args) -> None:
    abar, one_minus = schedule_from_betas(named_betas("linear"))
    process = Process("vp", "epsilon", args.bins, alpha_bar=abar, one_minus_alpha_bar=one_minus)
    x = _random_images(args.n, args.d, seed=0)
    print(f"== exact-estimator cost: N={args.n}, d={args.d}, {args.bins} bins x {args.samples_per_bin} samples "
          f"= {args.bins * args.samples_per_bin} posteriors over N points")  # fmt: skip
    print(f"data: {x.nbytes / 2**20:.0f} MiB float32; process peak RSS before the call: {_maxrss_mb():.0f} MiB")
    kw = {}
    if args.estimator != "exact":
        kw = {"subset_size": args.subset}
        if args.estimator == "stratified":
            kw["neighbors"] = args.neighbors
    backend = "torch" if args.device else args.backend
    gpu = None
    if args.device and args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device here: skipping the GPU run")
            return
        gpu = torch.cuda
        gpu.reset_peak_memory_stats()
        print(f"device: {torch.cuda.get_device_name()}")
        # one small call first, so CUDA context creation and kernel loading are not timed
        opt.bin_empirical_optimal_loss(process, x[:1000], samples_per_bin=2, backend="torch", device=args.device)
        gpu.synchronize()
    tracemalloc.start()
    t0 = time.perf_counter()
    res = opt.bin_empirical_optimal_loss(
        process, x, samples_per_bin=args.samples_per_bin, estimator=args.estimator, backend=backend,
        device=args.device, memory_mb=args.memory_mb, **kw,
    )  # fmt: skip
    if gpu is not None:
        gpu.synchronize()
    wall = time.perf_counter() - t0
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"backend: {backend}{' on ' + args.device if args.device else ''}, estimator: {args.estimator}")
    print(f"time: {wall:.1f} s  ({wall / (args.bins * args.samples_per_bin) * 1e3:.1f} ms per posterior)")
    print(f"numpy working memory during the call (tracemalloc peak): {traced / 2**20:.0f} MiB")
    print(f"process peak RSS: {_maxrss_mb():.0f} MiB (data {x.nbytes / 2**20:.0f} MiB included)")
    if gpu is not None:
        print(f"GPU peak allocated: {gpu.max_memory_allocated() / 2**20:.0f} MiB")
    shown = np.unique(np.linspace(0, args.bins - 1, min(args.bins, 8)).astype(int))
    print("bin   L*_emp        stderr")
    for b in shown:
        print(f"{b:3d}   {res.loss_opt[b]:.4e}   {res.stderr[b]:.2e}")


def bench_bias(args) -> None:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("scikit-learn is not installed: skipping the digits bias table")
        return
    x = load_digits().data / 8.0 - 1.0
    abar, one_minus = schedule_from_betas(named_betas("linear"))
    process = Process("vp", args.prediction, args.digits_bins, alpha_bar=abar, one_minus_alpha_bar=one_minus)
    kw = {"samples_per_bin": args.digits_samples, "seed": 1, "backend": "numpy"}
    print(f"\n== subsampled-estimator bias on sklearn digits: N={x.shape[0]}, d={x.shape[1]}, "
          f"{args.prediction} target, {args.digits_bins} bins x {args.digits_samples} paired samples, "
          f"subset K={args.digits_subset}, stratified M={args.digits_neighbors}")  # fmt: skip
    t0 = time.perf_counter()
    exact = opt.bin_empirical_optimal_loss(process, x, **kw)
    times = {"exact": time.perf_counter() - t0}
    gauss = opt.bin_gaussian_optimal_loss(process, spectrum=opt.data_spectrum(x))
    runs = {}
    for name, est, extra in [
        ("dol", "dol", {}),
        ("cdol", "cdol", {}),
        ("stratified", "stratified", {"neighbors": args.digits_neighbors}),
        ("strat-raw", "stratified", {"neighbors": args.digits_neighbors, "bias_correction": False}),
    ]:
        t0 = time.perf_counter()
        runs[name] = opt.bin_empirical_optimal_loss(process, x, estimator=est, subset_size=args.digits_subset,
                                                    **extra, **kw)  # fmt: skip
        times[name] = time.perf_counter() - t0
    scale = np.where(exact.loss_opt > 0, exact.loss_opt, 1.0)
    n = args.digits_samples
    bias, se = {}, {}
    for name, r in runs.items():
        diff = r.values - exact.values
        bias[name], se[name] = 100 * diff.mean(axis=1) / scale, 100 * diff.std(axis=1, ddof=1) / math.sqrt(n) / scale
    print("relative bias in % of the exact L* (+- its standard error); strat-raw: stratified without the"
          " delta-method correction")  # fmt: skip
    head = f"{'bin':>3} {'abar':>8} {'Gaussian':>10} {'exact L*':>10} {'+-SE':>8}" + "".join(f" {k:>15}" for k in runs)
    print(head)
    for b in range(process.num_bins):
        nodes, _ = process.bin_nodes(b)
        row = f"{b:3d} {np.mean(abar[nodes]):8.4f} {gauss[b]:10.3e} {exact.loss_opt[b]:10.3e} {exact.stderr[b]:8.1e}"
        row += "".join(f" {bias[k][b]:+7.2f} +-{se[k][b]:5.2f}" for k in runs)
        print(row)
    print("max |bias| %:" + "".join(f"  {k} {np.max(np.abs(bias[k])):.2f}" for k in runs))
    print("time s:" + "".join(f"  {k} {t:.1f}" for k, t in times.items()))


def check_device(args) -> None:
    """Print how far the torch backend on ``args.device`` is from numpy, sample by sample."""
    abar, one_minus = schedule_from_betas(named_betas("linear"))
    x = _random_images(2000, 256, seed=1)
    x[1] = x[0] + 0.01  # a near-duplicate pair, where the posterior is hardest
    print(f"\n== numpy vs torch on {args.device}: N=2000, d=256, 10 bins x 16 samples")
    for prediction in ("epsilon", "v_prediction"):
        process = Process("vp", prediction, 10, alpha_bar=abar, one_minus_alpha_bar=one_minus)
        cases = [("exact", {}), ("stratified", {"subset_size": 256, "neighbors": 16}), ("dol", {"subset_size": 256})]
        for est, kw in cases:
            a = opt.bin_empirical_optimal_loss(process, x, samples_per_bin=16, estimator=est, backend="numpy", **kw)
            b = opt.bin_empirical_optimal_loss(process, x, samples_per_bin=16, estimator=est, backend="torch",
                                               device=args.device, **kw)  # fmt: skip
            rel = np.max(np.abs(a.values - b.values) / np.maximum(np.abs(a.values), 1e-12))
            print(f"{prediction:>12} {est:>10}: max relative difference {rel:.2e}")
    xt = x[:8] * 0.7 + 0.5
    a = opt.posterior_mean(x, xt, 0.7, 0.5, backend="numpy")
    b = opt.posterior_mean(x, xt, 0.7, 0.5, backend="torch", device=args.device)
    print(f"posterior_mean: max abs difference {np.max(np.abs(a - b)):.2e}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small sizes: N=5000, 10 bins x 16, digits 10 bins x 64")
    ap.add_argument("--n", type=int, default=50_000, help="data points of the cost run")
    ap.add_argument("--d", type=int, default=3072, help="dimension of the cost run (3072 = 32x32x3)")
    ap.add_argument("--bins", type=int, default=50)
    ap.add_argument("--samples-per-bin", type=int, default=64)
    ap.add_argument("--estimator", default="exact", choices=opt.ESTIMATORS)
    ap.add_argument("--subset", type=int, default=opt.DEFAULT_SUBSET, help="subset size of a subsampled estimator")
    ap.add_argument("--neighbors", type=int, default=opt.DEFAULT_NEIGHBORS)
    ap.add_argument("--backend", default="numpy", choices=opt.BACKENDS)
    ap.add_argument("--device", default=None, help="torch device, e.g. cuda (implies --backend torch)")
    ap.add_argument("--memory-mb", type=float, default=opt.MEMORY_MB)
    ap.add_argument("--prediction", default="epsilon", choices=("epsilon", "sample", "v_prediction"))
    ap.add_argument("--digits-bins", type=int, default=20)
    ap.add_argument("--digits-samples", type=int, default=256)
    ap.add_argument("--digits-subset", type=int, default=256)
    ap.add_argument("--digits-neighbors", type=int, default=32)
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--skip-digits", action="store_true")
    ap.add_argument("--check-device", action="store_true", help="compare torch on --device with numpy, then stop")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.bins, args.samples_per_bin = 5000, 10, 16
        args.digits_bins, args.digits_samples = 10, 64
    if args.check_device:
        check_device(args)
        return 0
    if not args.skip_digits:  # first: its small footprint does not mask the cost run's peak
        bench_bias(args)
    if not args.skip_cost:
        print()
        bench_cost(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
