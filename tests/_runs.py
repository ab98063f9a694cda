"""Runs for the tests: small ones written once by the real logger, copied and damaged per test; loaded runs with
every logged loss raised (a model that trains worse at every noise level)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from dataclasses import replace

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq


def write_run(path, *, steps=40, loss=1.0, num_bins=10, flush_every=10, window=5, eval_every=10, seed=0):
    """A vp run with train and eval bins and grad norms; ``loss`` scales every logged loss."""
    import torch

    from diffaudit.logger import RunLogger
    from diffaudit.noise import named_betas, schedule_from_betas

    g = torch.Generator().manual_seed(seed)
    a = schedule_from_betas(named_betas("linear"))[0]
    with RunLogger(path, alphas_cumprod=a, num_bins=num_bins, flush_every=flush_every, window=window) as lg:
        for s in range(steps):
            t = torch.randint(0, 1000, (16,), generator=g)
            lg.log(s, timesteps=t, losses=loss * (0.5 + torch.rand(16, generator=g)) * (1 + t / 1000),
                   grad_norm=torch.tensor(0.5), clip_threshold=1.0)
            if eval_every and s % eval_every == eval_every - 1:
                lg.log(s, timesteps=t, losses=loss * (0.6 + torch.rand(16, generator=g)), split="eval")
    return Path(path)


def copy_run(src, dst) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return Path(dst)


def snapshot(path) -> dict:
    """relative path -> sha256 (or link target / kind) of everything under ``path``: to prove nothing changed."""
    out = {}
    root = Path(path)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(filenames + dirnames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif not p.is_dir():
                out[rel] = "special"
    return out


def parts(run, kind):
    return sorted((Path(run) / "parts").glob(f"{kind}-*.parquet"))


def edit_meta(run, **changes):
    f = Path(run) / "run.json"
    meta = json.loads(f.read_text())
    meta.update(changes)
    f.write_text(json.dumps(meta))


def rewrite_part(path, fn):
    """Replace a part by fn(its pyarrow table), keeping its name."""
    table = pq.read_table(path)
    pq.write_table(fn(table), path)


def set_column(table: pa.Table, name: str, array) -> pa.Table:
    i = table.column_names.index(name)
    return table.set_column(i, name, array if isinstance(array, (pa.Array, pa.ChunkedArray)) else pa.array(array))


def cli_subprocess(*args, timeout=60, stdin=None):
    """Run the real ``diffaudit`` entry point in a child process, with a timeout (a hang fails the test)."""
    code = "from diffaudit.cli import run; run()"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DIFFAUDIT_DEBUG", None)
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=env, stdin=subprocess.DEVNULL if stdin is None else stdin)
    return p.returncode, p.stdout, p.stderr


def raised(run, factor: float):
    """A loaded run with every logged training loss x factor (mean, min and max x factor, m2 x factor^2): what a
    model that is worse by that much at every noise level logs."""
    hit = pl.col("split") == "train"
    bins = run.bins.with_columns(
        *[pl.when(hit).then(pl.col(c) * factor).otherwise(pl.col(c)).alias(c) for c in ("mean", "min", "max")],
        pl.when(hit).then(pl.col("m2") * factor**2).otherwise(pl.col("m2")).alias("m2"))
    return replace(run, bins=bins, steps=run.steps.with_columns(pl.col("loss") * factor),
                   path=run.path.with_name(run.path.name + f"x{factor:g}"))
