"""Run configs as the gate, ``calibrate`` and ``sweep`` read them: flattened keys, and which keys name or place a
run (its seed, its output folder) rather than configure it."""

from __future__ import annotations

import re

# config keys whose values may differ between seeds of one configuration: a key is ignored when one of its words
# (split at '_', '-', '.', and lower/upper case changes) is one of these
SEED_WORDS = frozenset({"seed", "seeds", "name", "id", "uuid", "dir", "path", "output", "outdir", "date", "time",
                        "timestamp", "host", "hostname", "tag", "tags", "notes", "wandb", "run"})


def _words(key: str) -> set[str]:
    parts = re.split(r"[_\-.\s/]+|(?<=[a-z0-9])(?=[A-Z])", str(key))
    return {p.lower() for p in parts if p}


def seed_like(key: str) -> bool:
    """True for config keys that name or place a run rather than configure it (seed, name, output_dir ...)."""
    return bool(_words(key) & SEED_WORDS)


def seed_values(cfg) -> dict:
    """The keys of a run's config (flattened) that hold a seed (``seed``, ``train.seed``, ``data_seed`` ...), with
    their values: two runs with the same non-empty dict are reruns of one seed."""
    return {k: v for k, v in flat_config(cfg).items() if _words(k) & {"seed", "seeds"}}


def flat_config(cfg, prefix: str = "") -> dict:
    """A run's free ``config`` as one level of dotted keys (``{"opt": {"lr": 1}}`` -> ``{"opt.lr": 1}``)."""
    out = {}
    if not isinstance(cfg, dict):
        return out
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, key + "."))
        else:
            out[key] = v
    return out


def varying_config(runs: list) -> dict[str, list]:
    """Config keys (flattened) whose values differ between the runs, seed-like keys left out: key -> values."""
    flats = [flat_config(r.meta.get("config") or {}) for r in runs]
    keys = sorted(set().union(*flats))
    out = {}
    for k in keys:
        if seed_like(k):
            continue
        vals = [f.get(k) for f in flats]
        if any(v != vals[0] for v in vals[1:]):
            out[k] = vals
    return out
