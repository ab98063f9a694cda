"""The training data's second moments, stated so that they cannot be misread.

The Gaussian L* bound needs the covariance of the data: its eigenvalues
(``data_spectrum``) or, coarser, their mean (``data_var``). ``data_var`` is
exactly ``trace(Cov) / d``: the mean over elements of each element's variance
about *its own* mean. It is not ``x.var()`` over all elements of a batch,
which also counts the spread of the per-element means (for 8x8 digits scaled
to [-1, 1]: 0.566 against the right 0.293) and makes the bound up to twice too
loose, so that a defect at high noise goes unflagged.

:func:`data_statistics` computes all three numbers from a sample of the
training set, in float64, with numpy only (no torch needed; a torch tensor is
accepted and copied to the host once)::

    from diffaudit.datastats import data_statistics
    stats = data_statistics(train_images[:5000])      # N x ... array
    RunLogger("runs/exp1", ..., **stats)               # data_var, data_spectrum, data_dim
"""

from __future__ import annotations

import numpy as np

from diffaudit.errors import DataError
from diffaudit.optimum import check_data, data_spectrum

__all__ = ["MAX_SPECTRUM_DIM", "data_spectrum", "data_statistics", "data_var"]

# Spectra of data with more dimensions than this are not stored in run.json (it would grow by
# megabytes); data_var still gives a valid, looser bound. 4,096 covers 64x64 grey images.
MAX_SPECTRUM_DIM = 4096


def data_var(samples) -> float:
    """trace(Cov)/d of ``samples`` (N x ...): the mean over elements of each element's variance about its own mean."""
    x = check_data(samples, name="samples")
    if x.shape[0] < 2:
        raise DataError(f"samples: need at least 2 examples to estimate a variance, got {x.shape[0]}")
    return float(x.astype(np.float64).var(axis=0).mean())


def data_statistics(samples, *, spectrum: bool | None = None) -> dict:
    """``{"data_var", "data_spectrum", "data_dim"}`` of a sample of the training set, for ``RunLogger(**...)``.

    ``spectrum``: store the covariance eigenvalues too (default: when d <= MAX_SPECTRUM_DIM).
    With a spectrum, ``data_var`` is its mean (both are trace(Cov)/d), so the two never disagree.
    """
    x = check_data(samples, name="samples")
    if x.shape[0] < 2:
        raise DataError(f"samples: need at least 2 examples to estimate a variance, got {x.shape[0]}")
    d = x.shape[1]
    if spectrum is None:
        spectrum = d <= MAX_SPECTRUM_DIM
    out = {"data_var": None, "data_spectrum": None, "data_dim": int(d)}
    if spectrum:
        ev = data_spectrum(x)
        out["data_spectrum"] = [float(v) for v in ev]
        out["data_var"] = float(ev.mean())
    else:
        out["data_var"] = data_var(x)
    if not out["data_var"] > 0:
        raise DataError("samples: every element is constant (variance 0); the L* bound needs data that vary")
    return out
