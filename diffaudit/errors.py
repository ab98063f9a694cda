"""The DiffauditError family.

Library code raises these; only ``diffaudit.cli`` turns them into a one-line
message and an exit code. Every message names the thing that is wrong (a file,
an option, a run) and what is wrong with it, in one line.
"""

from __future__ import annotations


class DiffauditError(Exception):
    """Base class: bad input or usage. The CLI prints ``error: <message>`` and exits 2."""

    exit_code = 2


class RunFormatError(DiffauditError):
    """A run directory or exported file is missing, empty, corrupt or from a newer format."""


class ScheduleError(DiffauditError):
    """A noise schedule or process description is invalid."""


class DataError(DiffauditError):
    """User data (training samples, arrays) cannot be used as given."""


class MismatchError(DiffauditError):
    """Two runs cannot be compared as given (different schedule, prediction, bins)."""


class InconclusiveError(DiffauditError):
    """Too little data or overlap to reach a verdict (the gate's exit code 3)."""

    exit_code = 3


class AllowanceError(DiffauditError):
    """A calibration (seed allowance) file is missing, corrupt, newer, or measured on other runs than these."""
