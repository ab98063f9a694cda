"""Follow a run while it trains: what changed since the last look.

A :class:`Watcher` polls one run. Parts are immutable and only ever added, so a
poll first lists the run's files (names, sizes and the close markers); when
nothing was added since the last poll it does no other work. When something
was, it decodes only the parts it has not seen (parts are immutable; the decoded
ones are kept), checks and assembles the run, analyzes it again, and returns an
:class:`Update`: the
lifecycle, the verdict, and the findings that appeared, changed severity or
cleared since the previous update. The CLI (``diffaudit watch``) prints updates,
rewrites the HTML report (through :mod:`diffaudit.present`) and picks the exit
code; nothing here prints or renders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from diffaudit.analysis import analyze
from diffaudit.findings import GATE_SEVERITIES, at_or_above
from diffaudit.load import load_run

DEFAULT_INTERVAL = 30.0  # seconds between polls
FAIL_ON = (*reversed(GATE_SEVERITIES), "never")  # the levels that stop a watch, most severe first; never: none
DEFAULT_FAIL_ON = "fail"  # stop when training is broken, not when it merely costs quality


@dataclass(frozen=True)
class Change:
    """One finding that appeared, changed severity, or cleared."""

    kind: str  # "appeared", "changed" or "cleared"
    id: str
    severity: str | None  # now (None when cleared)
    before: str | None  # at the previous update (None when it appeared)
    message: str = ""
    provisional: bool = False


@dataclass(frozen=True)
class Update:
    """What one poll found."""

    changed: bool  # False: no new file since the last poll, nothing else was done
    state: str = ""  # lifecycle state (finished, failed, in_progress, ended, unknown)
    lifecycle: str = ""  # the lifecycle in words
    verdict: str = ""
    last_step: int | None = None
    changes: tuple[Change, ...] = ()
    findings: tuple = ()
    analysis: object = None
    run: object = None
    problems: tuple[str, ...] = ()


def _fingerprint(path: Path) -> tuple:
    """Names and sizes of the files a run is made of: a poll that sees the same fingerprint has nothing to read."""
    out = []
    for sub in ("", "parts", "segments"):
        d = path / sub if sub else path
        try:
            with os.scandir(d) as it:
                for e in it:
                    if e.is_file(follow_symlinks=False):
                        out.append((sub, e.name, e.stat(follow_symlinks=False).st_size))
        except OSError:
            continue
    return tuple(sorted(out))


def stopping(findings, fail_on: str = DEFAULT_FAIL_ON) -> list:
    """The findings that stop a watch at level ``fail_on`` (one of :data:`FAIL_ON`): those at or above it, except
    provisional ones (early in a run, a finding that needs a converged loss never counts); none for ``never``."""
    if fail_on == "never":
        return []
    return [f for f in at_or_above(findings, fail_on) if not f.provisional]


@dataclass
class Watcher:
    """Poll a run directory (or an exported file) for new data; each :meth:`poll` returns an :class:`Update`."""

    path: Path
    strict: bool = False
    _print: tuple = field(default=(), repr=False)
    _severity: dict = field(default_factory=dict, repr=False)
    _parts: dict = field(default_factory=dict, repr=False)  # decoded parts, by (file, size, mtime): read once

    def __post_init__(self):
        self.path = Path(self.path)

    def poll(self, *, now: float | None = None) -> Update:
        if not self.path.exists() or (self.path.is_dir() and not (self.path / "run.json").exists()):
            return Update(changed=False, state="waiting", lifecycle="waiting for the run to start")
        fp = _fingerprint(self.path) if self.path.is_dir() else (self.path.stat().st_size, self.path.stat().st_mtime)
        if fp == self._print:
            return Update(changed=False)
        run = load_run(self.path, strict=self.strict, allow_empty=True, cache=self._parts)
        # one thread: a watch holds the decoded parts between polls, so its analysis peaks one after the other
        a = analyze(run, now=now, threads=1)
        self._print = fp
        now_sev = {f.id: f for f in a.findings}
        changes = []
        for fid, f in now_sev.items():
            before = self._severity.get(fid)
            if before is None:
                changes.append(Change("appeared", fid, f.severity, None, f.message, bool(f.provisional)))
            elif before != f.severity:
                changes.append(Change("changed", fid, f.severity, before, f.message, bool(f.provisional)))
        for fid, before in self._severity.items():
            if fid not in now_sev:
                changes.append(Change("cleared", fid, None, before))
        self._severity = {fid: f.severity for fid, f in now_sev.items()}
        lc = a.lifecycle
        return Update(changed=True, state=lc.state, lifecycle=lc.words, verdict=a.verdict, last_step=lc.last_step,
                      changes=tuple(changes), findings=a.findings, analysis=a, run=run,
                      problems=tuple(str(p) for p in run.problems))
