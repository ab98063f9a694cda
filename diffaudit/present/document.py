"""The JSON documents: ``report --json``, ``compare --json`` and ``optimum --json``.

Both are plain JSON types only (NaN and infinities become ``null``, NumPy values
plain numbers), written with ``allow_nan=False`` so a consumer never meets a
token JSON does not have. Keys are only ever added; each document says its
schema (``schema_version`` for the report, ``schema`` for the verdict).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from diffaudit import __version__
from diffaudit.words import json_float, jsonable

if TYPE_CHECKING:  # documents read the engines' results; importing this module costs no analysis
    from diffaudit.analysis import Analysis
    from diffaudit.gate import Verdict

REPORT_SCHEMA_VERSION = 1
VERDICT_SCHEMA = "diffaudit.compare/1"


def dumps(doc: dict, *, indent: int | None = 1) -> str:
    """A document as JSON text, newline-terminated; refuses NaN (documents are cleaned first)."""
    return json.dumps(doc, indent=indent, allow_nan=False) + "\n"


def report_document(a: "Analysis") -> dict:
    """The report as plain JSON types (NaN/inf become None): the documented ``--json`` schema.

    Top-level keys (``schema_version`` 1; keys are only ever added):

    * ``diffaudit_version``, ``schema_version``
    * ``run``: :class:`RunInfo` (name, path, run_id, process, prediction, num_bins, steps, windows, ...)
    * ``verdict``: ``"healthy"``, ``"warnings"`` or ``"failing"``
    * ``findings``: most severe first, each ``{id, severity, title, message, recommendation,
      evidence: {name: number | list | dict}, bins: [int]}``; ids are stable (findings.DETECTORS, the README's table)
    * ``bins``: one object per noise bin with the columns of :data:`BIN_COLUMNS`
    * ``phases``, ``loss``, ``profile``, ``spikes``, ``clip``, ``nonfinite``, ``schedule``,
      ``probes`` (with its per-probe-bin rows under ``bins``), ``eval`` (held-out data, live weights),
      ``ema`` (EMA weights against live, held-out data), ``timesteps``, ``grad_flow``: the summaries the rules read
    * ``lifecycle``: ``{state, words, last_step, planned_steps, progress, since_write, ...}``; ``state`` is
      ``finished``, ``failed``, ``in_progress``, ``ended`` (no close, no write for long) or ``unknown``
    * ``provisional``: null, or why findings that need a converged loss are provisional (``info``) on this
      reading; those findings carry ``"provisional": true`` and ``evidence.final_severity``
    * ``settings``: the phase fractions and every threshold used
    """
    def dc(obj, skip=()):
        return {k: jsonable(getattr(obj, k)) for k in obj.__dataclass_fields__ if k not in skip}

    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "diffaudit_version": __version__,
        "run": dc(a.run),
        "verdict": a.verdict,
        "findings": [f.as_dict() for f in a.findings],
        "bins": [jsonable(r) for r in a.bins.iter_rows(named=True)],
        "phases": dc(a.phases),
        "loss": dc(a.loss),
        "profile": dc(a.profile),
        "spikes": dc(a.spikes),
        "clip": dc(a.clip),
        "nonfinite": dc(a.nonfinite),
        "schedule": dc(a.schedule),
        "probes": {**dc(a.probes, skip=("table",)),
                   "bins": [jsonable(r) for r in a.probes.table.iter_rows(named=True)]},
        "eval": dc(a.eval),
        "ema": dc(a.ema) if a.ema is not None else None,
        "timesteps": dc(a.timesteps) if a.timesteps is not None else None,
        "grad_flow": dc(a.grad_flow) if a.grad_flow is not None else None,
        "lifecycle": jsonable(a.lifecycle.as_dict()) if a.lifecycle is not None else None,
        "time_probe": ({**dc(a.time_probe), "ignores_t": a.time_probe.ignores_t}
                       if a.time_probe is not None and a.time_probe.probed else None),
        "provisional": a.early,
        "settings": jsonable(a.settings),
    }



def verdict_document(v: "Verdict") -> dict:
    """The gate's verdict as the ``compare --json`` document (the per-step curves stay out)."""
    return jsonable({
        "schema": VERDICT_SCHEMA,
        "status": v.status,
        "summary": v.summary,
        "noise_model": v.noise_model,
        "baseline": {**asdict(v.baseline), "n_runs": v.baseline.n_runs},
        "candidate": {**asdict(v.candidate), "n_runs": v.candidate.n_runs},
        "matched_steps": list(v.matched) if v.matched else None,
        "window": list(v.window) if v.window else None,
        "window_blocks": v.window_blocks,
        "lag": v.lag,
        "detectable": v.detectable,
        "projection": v.projection,
        "weak": v.weak,
        "allowance": v.allowance,
        "lstar": v.lstar_kind,
        "settings": v.settings,
        "notes": list(v.notes),
        "regressions": [c.name for c in v.regressions],
        "checks": [asdict(c) for c in v.checks],
    })


def optimum_document(run, info: dict, process, result, bound, part) -> dict:
    """``optimum --json``: the inputs and settings (``info``), the part written, and per bin L*_emp with its
    standard error, sample count and the Gaussian L* (``bins`` is empty for the plan of a ``--dry-run``)."""
    e = process.bin_edges()
    bins = []
    if result is not None:
        for b in range(process.num_bins):
            bins.append({
                "bin": b, "t_lo": float(e[b]), "t_hi": float(e[b + 1]),
                "loss_opt": json_float(result.loss_opt[b]), "stderr": json_float(result.stderr[b]), "n": int(result.n[b]),
                "lstar_gauss": None if bound is None else json_float(bound[b]),
            })  # fmt: skip
    return {"diffaudit_version": __version__, "run": str(run.path), **info, "part": part, "bins": bins}


SWEEP_SCHEMA = "diffaudit.sweep/1"


def sweep_document(s) -> dict:
    """``sweep --json``: one object per run, one per configuration (with its runs), the best sets and the effects."""
    return jsonable({
        "schema": SWEEP_SCHEMA,
        "diffaudit_version": __version__,
        "metric": s.metric,
        "varying": list(s.varying),
        "notes": list(s.notes),
        "seed_spread": s.spread,
        "cached_runs": s.cached,
        "runs": s.runs.to_dicts(),
        "groups": s.groups.to_dicts() if s.groups.height else [],
        "best_set": s.best,
        "effects": s.effects,
    })
