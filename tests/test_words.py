"""The shared vocabulary: every output says a number, a change, a p-value and a bin range through it."""

import json
import math

import numpy as np
import polars as pl
import pytest

from diffaudit import words
from diffaudit.noise import Process, named_betas, schedule_from_betas


@pytest.mark.parametrize("v, digits, text", [
    (None, 4, "-"), (float("nan"), 4, "-"), (np.float32("nan"), 4, "-"),
    (0.0, 4, "0"), (12345, 4, "12,345"), (np.int64(12345), 4, "12,345"), (True, 4, "yes"),
    (0.021346, 4, "0.02135"), (0.021346, 3, "0.0213"), (12345.6, 4, "12,346"), (1234.56, 4, "1235"),
    (1.5e-5, 4, "1.5e-5"), (-2.5e7, 3, "-2.5e7"), (float("inf"), 4, "inf"), (-math.inf, 4, "-inf"),
])
def test_num(v, digits, text):
    assert words.num(v, digits) == text


@pytest.mark.parametrize("v, text", [
    (0.0213, "2.13%"), (1.5, "150%"), (0.0, "0%"), (-0.05, "-5%"), (1e-6, "1e-4%"), (None, "-"), (math.inf, "inf%"),
])
def test_pct(v, text):
    assert words.pct(v) == text


def test_changes_and_p_values():
    assert words.signed_pct(0.031) == "+3.1%" and words.signed_pct(-0.5) == "-50%" and words.signed_pct(0) == "0%"
    assert words.signed(0.0123) == "+0.0123" and words.signed(-4.0) == "-4" and words.signed(math.inf) == "+inf"
    assert words.change_text(0.02, True) == "+2%" and words.change_text(0.02, False) == "+0.02"
    assert words.p_value(0.04321) == "0.043" and words.p_value(3e-7) == "3.0e-07" and words.p_value(None) == "-"
    assert words.num(None, missing="—") == "—" and words.pct(math.nan, missing="—") == "—"


def test_jsonable_makes_every_value_plain_json():
    doc = words.jsonable({
        "a": np.float32(1.5), "b": np.int64(3), "c": np.bool_(True), "d": np.array([1.0, np.nan, np.inf]),
        "e": (1, float("-inf")), 7: pl.Series([1, None]), "f": {"g": np.float64("nan")}, "h": "text",
    })
    assert doc == {"a": 1.5, "b": 3, "c": True, "d": [1.0, None, None], "e": [1, None], "7": [1, None],
                   "f": {"g": None}, "h": "text"}
    assert type(doc["b"]) is int and type(doc["c"]) is bool
    json.dumps(doc, allow_nan=False)
    assert words.json_float(np.float64("inf")) is None and words.json_float(2) == 2.0


def test_bin_ranges():
    assert words.bin_ranges([9, 0, 1, 2, 3, 7, 10, 11, 3]) == "0-3, 7, 9-11"
    assert words.runs_of([]) == [] and words.bin_ranges([5]) == "5"


def _vp(num_bins=20):
    return Process("vp", "epsilon", num_bins, alpha_bar=schedule_from_betas(named_betas("linear", 1000))[0])


def test_noise_levels_in_each_process_unit():
    vp = _vp()  # 20 bins of 50 integer timesteps: the upper edge excluded
    e = vp.bin_edges()
    assert words.bin_span("vp", e, 0) == "t 0-49"
    assert words.describe_bins("vp", e, [0, 1, 2, 3, 7]) == "bins 0-3, 7 (t 0-199, 350-399)"
    assert words.describe_bins("vp", e, range(20)) == "all 20 bins (t 0-999)"
    assert words.describe_bins("vp", e, [25, -1]) == "no bins"  # outside the process: ignored
    many = words.describe_bins("vp", e, range(0, 20, 2))  # 10 separate runs: the count and the hull
    assert many == "10 bins: 0, 2, 4, 6, 8, 10, 12, 14, 16, 18 (within t 0-949)"
    edm = Process("edm", "edm", 4, sigma_min=0.002, sigma_max=80.0, sigma_data=0.5)
    text = words.describe_bins("edm", edm.bin_edges(), [1])
    lo, hi = edm.bin_edges()[1:3]
    assert text == f"bin 1 (sigma {lo:.4g}-{hi:.4g})"
    flow = Process("flow", "flow", 10)
    assert words.describe_bins("flow", flow.bin_edges(), [0, 1]) == "bins 0-1 (t 0-0.2)"
    assert words.process_words(vp) == "vp/epsilon, 20 bins"


def test_a_p_value_in_a_sentence_keeps_its_relation():
    assert words.p_is("q", 0.0432) == "q = 0.043"
    assert words.p_is("p", 0.0) == "p < 1e-300" and words.p_value(0.0) == "<1e-300"
    assert words.p_is("q", None) == "q = -"


def test_plus_minus_rounds_both_to_the_half_width_and_clipped_marks_the_cut():
    from diffaudit.words import MISSING, clipped, plus_minus

    assert plus_minus(0.70251, 0.00076) == "0.7025 ± 0.0015"  # 1.96 x 0.00076 = 0.00149
    assert plus_minus(23.2, 0.39) == "23.20 ± 0.76"
    assert plus_minus(1.5, None) == "1.5" and plus_minus(None, 0.1) == MISSING
    assert clipped("abcdef", 4) == "abc…" and clipped("abc", 4) == "abc"
