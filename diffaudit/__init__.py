"""diffaudit: is my diffusion model training well, from its training logs alone.

The analyzer side (this package without ``diffaudit.logger``) never imports torch.
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


__all__ = ["DiffauditError", "__version__", "load_run"]
