#!/usr/bin/env bash
# The device checks, as one script for a lent GPU machine (torch, numpy, pyarrow there; no polars needed).
# Usage on the GPU box, from the repository root:  bash benchmarks/gpu_check.sh
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, numpy, pyarrow; print('torch', torch.__version__, 'numpy', numpy.__version__, 'pyarrow', pyarrow.__version__)"
echo "=== logger on CUDA ==="
timeout 300 python3 benchmarks/bench_logger.py --device cuda --steps 100 --rounds 8
echo "=== exact L* estimator on CUDA (N=50000, d=3072, 50 bins x 64) ==="
# (exact L* on CUDA measured in the first run; rerun with: python3 benchmarks/bench_optimum.py --device cuda --skip-digits)
