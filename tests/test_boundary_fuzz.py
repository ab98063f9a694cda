"""Property-based tests of the run boundary: random damage to a small valid run, through the real CLI.

The promise, for any damage: exit 0 or 1 with every certain damage named (or exit 2 with
exactly one ``error:`` line), never exit 4, never a traceback, never a hang, and never a
changed input file. Each test draws a bounded number of examples so the whole file runs in
well under a minute.
"""

import contextlib
import json
import os
import shutil
import signal
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _cli import run_cli
from _runs import snapshot, write_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

from diffaudit import runformat as rf

# DIFFAUDIT_FUZZ_EXAMPLES=500 runs a longer, randomised campaign; CI runs the same 25 examples each time
_CAMPAIGN = os.environ.get("DIFFAUDIT_FUZZ_EXAMPLES")
FUZZ = settings(max_examples=int(_CAMPAIGN or 25), deadline=None, derandomize=not _CAMPAIGN, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
HANG_S = 30  # one CLI call on a 40-step run takes well under a second


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("fuzz") / "good", steps=30)


@pytest.fixture(scope="module")
def good_export(good, tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz_export") / "good.parquet"
    assert run_cli("export", good, "-o", out).exit_code == 0
    return out


class Hang(Exception):
    pass


@contextlib.contextmanager
def no_hang(seconds=HANG_S):
    def alarm(signum, frame):
        raise Hang(f"a CLI call took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def check_promise(args, inputs):
    """Run ``diffaudit ARGS``; assert the boundary's promise (exit 0/1/2, one line for 2, inputs unchanged)."""
    before = [snapshot(p) if Path(p).is_dir() else Path(p).read_bytes() for p in inputs]
    with no_hang():
        res = run_cli(*args)
    after = [snapshot(p) if Path(p).is_dir() else Path(p).read_bytes() for p in inputs]
    assert after == before, f"diffaudit {' '.join(map(str, args))} changed its input"
    out = res.output
    assert res.exit_code in (0, 1, 2, 3), (res.exit_code, out)
    assert "internal error" not in out and "Traceback" not in out, out
    if res.exit_code == 2:
        lines = [ln for ln in out.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), out
    return res


# ----------------------------------------------------------------------------
# Damage to parts


def _truncate(data: bytes, draw) -> bytes:
    return data[: draw(st.integers(0, len(data) - 1))]


def _garble(data: bytes, draw) -> bytes:
    i = draw(st.integers(0, len(data) - 1))
    junk = draw(st.binary(min_size=1, max_size=64))
    return data[:i] + junk + data[i + len(junk):]


NUMBERS = st.one_of(st.integers(-(2**40), 2**40), st.floats(allow_nan=True, allow_infinity=True), st.none())
WRONG_TYPES = [pa.string(), pa.float64(), pa.int8(), pa.bool_(), pa.list_(pa.int64())]


def _column_damage(table: pa.Table, draw) -> tuple[pa.Table, bool]:
    """(damaged table, whether the damage is certain to break the format)."""
    name = draw(st.sampled_from(table.column_names))
    what = draw(st.sampled_from(["drop", "retype", "value", "invariant", "extra"]))
    if what == "drop":
        return table.drop_columns([name]), name in rf.SCHEMAS["steps"].names + rf.SCHEMAS["bins"].names
    if what == "retype":
        typ = draw(st.sampled_from(WRONG_TYPES))
        n = table.num_rows
        col = pa.array([[1]] * n, typ) if pa.types.is_list(typ) else (
            pa.array(["x"] * n, typ) if pa.types.is_string(typ) else pa.array([1.5] * n, pa.float64()).cast(typ, safe=False))
        known = {f.name: f.type for s in rf.SCHEMAS.values() for f in s}
        want = known.get(name)  # a float column may hold integers, an integer column any integer width
        certain = want is not None and want != typ and not (
            pa.types.is_floating(want) and (pa.types.is_floating(typ) or pa.types.is_integer(typ))) and not (
            pa.types.is_integer(want) and pa.types.is_integer(typ))
        return table.set_column(table.column_names.index(name), name, col), certain
    if what == "extra":
        extra = draw(st.sampled_from(["bin", "step_lo", "table", "_part", "lr2", "split", "n_ranks"]))
        if extra in table.column_names:
            return table, False
        return table.append_column(extra, pa.array(np.full(table.num_rows, 2.0))), False
    row = draw(st.integers(0, table.num_rows - 1))
    values = table.column(name).to_pylist()
    typ = table.schema.field(name).type
    if what == "invariant":  # a value the format forbids in this column, where there is one
        bad = {"count": -3, "bin": 10_000, "mean": float("nan"), "m2": -1.0, "split": "test", "nonfinite": -1,
               "step": None, "rank": 99, "segment": 99}
        if name not in bad or (name == "mean" and (table.column("count")[row].as_py() or 0) <= 0):
            return table, False
        if name == "m2" and (table.column("count")[row].as_py() or 0) <= 0:
            return table, False
        values[row] = bad[name]
        return table.set_column(table.column_names.index(name), name, pa.array(values, typ)), True
    v = draw(NUMBERS)
    try:
        values[row] = v if not pa.types.is_string(typ) else (None if v is None else str(v))
        arr = pa.array(values, typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        return table, False
    return table.set_column(table.column_names.index(name), name, arr), False


@FUZZ
@given(data=st.data())
def test_damaged_parts_are_named_or_refused_never_a_crash(good, data):
    draw = data.draw
    with tempfile.TemporaryDirectory() as d:
        run = Path(shutil.copytree(good, Path(d) / "run"))
        files = sorted((run / "parts").iterdir())
        certain = set()
        for _ in range(draw(st.integers(1, 3))):
            f = draw(st.sampled_from(files))
            how = draw(st.sampled_from(["truncate", "garble", "zero", "random", "columns", "columns", "columns"]))
            raw = f.read_bytes()
            if not raw and how in ("truncate", "garble"):
                continue
            if how == "truncate":
                f.write_bytes(_truncate(raw, draw))
                certain.add(f)
            elif how == "garble":
                f.write_bytes(_garble(raw, draw))
            elif how == "zero":
                f.write_bytes(b"")
                certain.add(f)
            elif how == "random":
                f.write_bytes(draw(st.binary(min_size=0, max_size=3000)))
                certain.add(f)
            else:
                try:
                    table = pq.read_table(f)
                except Exception:
                    continue  # already damaged by an earlier draw
                damaged, sure = _column_damage(table, draw)
                pq.write_table(damaged, f)
                if sure:
                    certain.add(f)
        res = check_promise(["summary", run], [run])
        if res.exit_code == 0:
            for f in certain:
                assert str(f) in res.output, f"damage to {f} not named:\n{res.output}"
        else:  # every part damaged: the run has nothing left, said in one line
            assert "the run has no logged steps yet" in res.output or any(str(f) in res.output for f in files), res.output
        res = check_promise(["report", run, "--json", "-"], [run])
        if res.exit_code == 0:
            json.loads(res.stdout)  # with --json -, stdout holds the JSON alone (the text goes to stderr)
        xml = Path(d) / "g.xml"
        res = check_promise(["compare", good, run, "--junit", xml, "--markdown", Path(d) / "g.md"], [run, good])
        if res.exit_code in (0, 1, 3):
            ET.parse(xml)
        strict = check_promise(["summary", run, "--strict"], [run])
        if certain:
            assert strict.exit_code == 2, strict.output


# ----------------------------------------------------------------------------
# Odd run.json


def _nested(children):
    return st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=4), children, max_size=3))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=True) | st.text(max_size=8),
    _nested, max_leaves=6,
)
FIELDS = ["format_version", "process", "prediction", "num_bins", "num_timesteps", "window", "flush_every", "data_var",
          "data_spectrum", "data_dim", "probe_every", "probe_bins", "config", "total_steps", "sigma_min", "sigma_data",
          "run_id", "format", "world_size"]


@FUZZ
@given(data=st.data())
def test_odd_run_json_is_one_line_or_a_clean_load(good, data):
    draw = data.draw
    with tempfile.TemporaryDirectory() as d:
        run = Path(shutil.copytree(good, Path(d) / "run"))
        meta = json.loads((run / "run.json").read_text())
        kind = draw(st.sampled_from(["set", "set", "delete", "text", "deep"]))
        if kind == "set":
            meta[draw(st.sampled_from(FIELDS))] = draw(JSON_VALUES)
            text = json.dumps(meta)
        elif kind == "delete":
            meta.pop(draw(st.sampled_from(FIELDS)), None)
            text = json.dumps(meta)
        elif kind == "deep":
            depth = draw(st.integers(50, 20_000))
            meta[draw(st.sampled_from(FIELDS))] = "__DEEP__"
            text = json.dumps(meta).replace('"__DEEP__"', "[" * depth + "]" * depth)
        else:
            text = draw(st.text(max_size=200))
        (run / "run.json").write_text(text)
        for args in (["summary", run], ["report", run, "--json", "-"],
                     ["export", run, "-o", Path(d) / "out.parquet"]):
            res = check_promise(args, [run])
            if res.exit_code == 2:
                assert "run.json" in res.output or str(run) in res.output, res.output


# ----------------------------------------------------------------------------
# Damaged exports


@FUZZ
@given(data=st.data())
def test_damaged_exports_are_named_or_refused_never_a_crash(good_export, data):
    draw = data.draw
    with tempfile.TemporaryDirectory() as d:
        exp = Path(d) / "e.parquet"
        shutil.copy(good_export, exp)
        how = draw(st.sampled_from(["truncate", "garble", "metadata", "metadata", "columns", "columns", "table"]))
        raw = exp.read_bytes()
        if how == "truncate":
            exp.write_bytes(_truncate(raw, draw))
        elif how == "garble":
            exp.write_bytes(_garble(raw, draw))
        else:
            t = pq.read_table(exp)
            if how == "metadata":
                md = dict(t.schema.metadata)
                key = draw(st.sampled_from(sorted(md)))
                md[key] = json.dumps(draw(JSON_VALUES)) if draw(st.booleans()) else draw(st.binary(max_size=40))
                t = t.replace_schema_metadata(md)
            elif how == "table":
                vals = t.column("table").to_pylist()
                for i in draw(st.lists(st.integers(0, t.num_rows - 1), min_size=1, max_size=20)):
                    vals[i] = draw(st.sampled_from(["steps", "bins", "probes", "optimum", "x", None]))
                t = t.set_column(t.column_names.index("table"), "table", pa.array(vals, pa.string()))
            else:
                md = t.schema.metadata
                t, _ = _column_damage(t, draw)
                t = t.replace_schema_metadata(md)
            pq.write_table(t, exp)
        check_promise(["summary", exp], [exp])
        check_promise(["report", exp, "--json", "-"], [exp])
