"""diffaudit: is my diffusion model training well, from its training logs alone.

The analyzer side (this package without ``diffaudit.logger`` and its ``diffaudit.accumulator``) never imports torch.
"""

from __future__ import annotations

from diffaudit._version import __version__  # a constant: no package-metadata lookup at start-up
from diffaudit.errors import DiffauditError


def load_run(path, *, strict: bool = False, allow_empty: bool = False):
    """Load a run directory or exported ``.parquet`` file into a :class:`diffaudit.load.Run`.

    Damaged parts are skipped and listed in ``run.problems`` (fatal with ``strict=True``);
    a run without any logged step raises unless ``allow_empty``.
    """
    from diffaudit.load import load_run as _load_run

    return _load_run(path, strict=strict, allow_empty=allow_empty)


def sweep(runs, *, jobs: int | None = None, cache: bool = True):
    """One row per run of a sweep (run folders, folders of runs, globs, URLs), as a polars DataFrame: state,
    verdict, worst findings, late loss per noise band in units of L*, clip rate, config. The configurations, the
    best set and the effects: :func:`diffaudit.sweeps.sweep`."""
    from diffaudit.sweeps import sweep as _sweep

    return _sweep(runs, jobs=jobs, cache=cache).runs


__all__ = ["DiffauditError", "__version__", "load_run", "sweep"]
