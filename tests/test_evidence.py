"""Every figure a finding's message quotes is in its evidence: the JSON says what the sentence says.

The messages of every finding fired on the bundled runs (every defect of every family, one healthy
seed each) are cut into numbers; each must be one of the evidence's numbers (to the precision it is
printed with, a percentage as its fraction, "16x" as 1 + the excess), or appear in one of its texts.
Bin ranges and their noise levels ("bins 0-1 (t 0-99)") are the finding's ``bins``, not evidence
numbers, and are left out; so are units such as "per 10k steps".
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from diffaudit.analysis import analyze
from diffaudit.findings import DETECTORS
from diffaudit.load import load_run

REPO = Path(__file__).resolve().parents[1]
LOGS = REPO / "sample_logs"
BIN_PHRASE = re.compile(r"\b(?:noise )?bins? \d[\d, \-]*(?:\s*\((?:t|σ|sigma|log-SNR)[^)]*\))?")
NOISE_WORDS = re.compile(r"\((?:t|σ|sigma) [^)]*\)")
# a number, with its percent sign or its "x" (a multiple), and not a part of a word ("10k", "t2")
NUMBER = re.compile(r"(?<![\w.%])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?[%x]?(?![\w.]\w)(?![\w])")


def _runs() -> list[Path]:
    out = []
    for labels in [LOGS / "corpus" / "labels.json"]:
        if labels.is_file():
            out += [LOGS / "corpus" / n for n, lab in json.loads(labels.read_text()).items()
                    if lab.get("defect") != "none" or n == "healthy_s00"]
    fam = LOGS / "families" / "labels.json"
    if fam.is_file():
        for name, f in json.loads(fam.read_text())["families"].items():
            out += [LOGS / "families" / name / r for r, lab in f["runs"].items()
                    if lab.get("kind") != "healthy" or r == "healthy_s00"]
    out += [LOGS / "lr_high", LOGS / "resumed"]
    return [p for p in out if (p / "run.json").is_file()]


def _flat(v, nums, texts):
    if isinstance(v, dict):
        for x in v.values():
            _flat(x, nums, texts)
    elif isinstance(v, (list, tuple)):
        for x in v:
            _flat(x, nums, texts)
    elif isinstance(v, bool) or v is None:
        pass
    elif isinstance(v, (int, float)):
        if math.isfinite(v):
            nums.append(float(v))
    elif isinstance(v, str):
        texts.append(v)


def _numbers(message: str) -> list[str]:
    m = NOISE_WORDS.sub(" ", BIN_PHRASE.sub(" ", message))
    out = []
    for hit in NUMBER.finditer(m):
        tok = hit.group().removesuffix("x")
        if tok.startswith("-") and hit.start() and (m[hit.start() - 1].isdigit() or m[hit.start() - 1] == "%"):
            tok = tok[1:]  # "25.7%-41.1%": a range, not a sign
        out.append(tok)
    return out


def _in(tok: str, nums: list[float], texts: list[str]) -> bool:
    if any(tok in t for t in texts):
        return True
    pct = tok.endswith("%")
    body = tok.rstrip("%").replace(",", "")
    x = float(body) / (100 if pct else 1)
    digits = len(body.lstrip("-").split("e")[0].replace(".", "").lstrip("0")) or 1
    tol = 0.51 * 10 ** (1 - digits) * abs(x) + 1e-12  # half a unit of the last digit printed
    return any(abs(v - x) <= tol or (pct and abs(abs(v) - abs(x)) <= tol) for v in nums)


@pytest.fixture(scope="module")
def fired():
    found = []
    for run in _runs():
        a = analyze(load_run(run), plots=False)
        found += [(run.name, f) for f in a.findings]
    return found


def test_the_runs_fire_most_finding_ids(fired):
    ids = {f.id for _, f in fired}
    assert len(ids) >= 15, sorted(ids)  # a check over a handful of ids would prove little
    assert ids <= {d.id for d in DETECTORS}


def test_every_number_a_message_quotes_is_in_its_evidence(fired):
    missing = []
    for name, f in fired:
        nums, texts = [], []
        _flat(f.evidence, nums, texts)
        lost = [t for t in _numbers(f.message) if not _in(t, nums, texts)]
        if lost:
            missing.append(f"{f.id} on {name}: {lost} not in the evidence of {f.message!r}")
    assert not missing, "\n".join(missing[:10])


def test_the_checker_catches_a_number_the_evidence_lacks():
    nums, texts = [], []
    _flat({"steps": 1500, "ratio": 1.239e6, "share": 0.0575}, nums, texts)
    assert all(_in(t, nums, texts) for t in _numbers("one spike in 1,500 steps: 1.239e6x, 5.75% of the loss"))
    assert not _in("200", nums, texts) and not _in("6.1%", nums, texts)  # 5.8% would be 5.75% to two digits
    assert _numbers("bins 0-1 (t 0-99) at 25.7%-41.1% per 10k steps") == ["25.7%", "41.1%"]
