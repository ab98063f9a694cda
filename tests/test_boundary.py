"""Issue 10, case by case: damaged, hostile or odd input never gives a traceback, a hang, a wrong verdict or a changed run.

Each test is named for the numbered case of the issue it holds (case1_ ... case9_).
"""

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _cli import one_line_error, run_cli
from _runs import cli_subprocess, copy_run, edit_meta, parts, rewrite_part, set_column, snapshot, write_run

pytest.importorskip("torch")

import diffaudit
from diffaudit import sides
from diffaudit import runformat as rf
from diffaudit.load import EXPORT_META_KEY, EXPORT_SCHEDULE_KEY


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("base") / "good")


@pytest.fixture(scope="module")
def worse(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("worse") / "worse", loss=1.5, seed=1)


@pytest.fixture
def run(base, tmp_path):
    return copy_run(base, tmp_path / "run")


def _warnings(res):
    return [ln for ln in res.output.splitlines() if ln.startswith("warning: ")]


def _steps_line(res):
    return next(ln for ln in res.output.splitlines() if ln.startswith("steps "))


# ----------------------------------------------------------------------------
# 1. Glob characters in a run path are read literally


def test_case1_bracket_in_a_run_path_reads_that_run_not_its_glob_match(tmp_path):
    write_run(tmp_path / "exp1", steps=40, seed=1)
    write_run(tmp_path / "exp[1]", steps=20, loss=3.0, seed=2)
    res = run_cli("summary", tmp_path / "exp[1]")
    assert res.exit_code == 0, res.output
    assert _steps_line(res) == "steps 0..19: 20 logged"
    plain = copy_run(tmp_path / "exp[1]", tmp_path / "plain")  # the same run at a path without [ ]
    a, b = diffaudit.load_run(tmp_path / "exp[1]"), diffaudit.load_run(plain)
    assert a.steps.equals(b.steps) and a.bins.equals(b.bins)
    assert not a.steps.equals(diffaudit.load_run(tmp_path / "exp1").steps.head(20))


def test_case1_star_in_a_run_path_does_not_merge_the_runs_it_matches(tmp_path):
    for name, steps in (("lr_a", 30), ("lr_b", 50), ("lr*", 20)):
        write_run(tmp_path / name, steps=steps)
    run = diffaudit.load_run(tmp_path / "lr*")
    assert run.steps["step"].to_list() == list(range(20))
    assert run.train_bins["count"].sum() == 20 * 16
    # compare: an existing path is one run, never a pattern
    assert sides.resolve_side(str(tmp_path / "lr*")) == [tmp_path / "lr*"]
    out = tmp_path / "lr?.parquet"
    assert run_cli("export", tmp_path / "lr*", "-o", out).exit_code == 0
    assert diffaudit.load_run(out).steps.height == 20


# ----------------------------------------------------------------------------
# 2. Outputs never overwrite (or land in) an input run


def _part_name(run, kind="bins"):
    return parts(run, kind)[0]


@pytest.mark.parametrize("make_args", [
    lambda r, o: ("compare", r, o, "--junit", r / "run.json"),
    lambda r, o: ("compare", r, o, "--markdown", _part_name(r)),
    lambda r, o: ("compare", o, r, "--html", r / "segments" / "new.html"),
    lambda r, o: ("report", r, "-o", _part_name(r, "steps")),
    lambda r, o: ("report", r, "--json", r / "schedule.parquet"),
    lambda r, o: ("report", r, "-o", r / "report.html"),
    lambda r, o: ("export", r, "-o", _part_name(r, "steps")),
    lambda r, o: ("export", r, "-o", r / "run.json"),
], ids=["compare-junit-run.json", "compare-markdown-part", "compare-html-new-file-in-run", "report-html-part",
        "report-json-schedule", "report-html-new-file-in-run", "export-part", "export-run.json"])
def test_case2_an_output_inside_an_input_run_is_refused_and_the_run_is_unchanged(run, worse, make_args):
    before = snapshot(run)
    args = make_args(run, worse)
    line = one_line_error(run_cli(*args), "diffaudit never writes into its inputs")
    assert str(run) in line
    assert snapshot(run) == before


def test_case2_an_output_that_is_a_link_to_a_run_file_is_refused(run, worse, tmp_path):
    before = snapshot(run)
    (tmp_path / "sym.xml").symlink_to(run / "run.json")
    os.link(_part_name(run), tmp_path / "hard.md")
    one_line_error(run_cli("compare", run, worse, "--junit", tmp_path / "sym.xml"), "lies inside the input run")
    one_line_error(run_cli("compare", run, worse, "--markdown", tmp_path / "hard.md"), "lies inside the input run")
    assert snapshot(run) == before


def test_case2_export_onto_the_exported_file_itself_is_refused(run, tmp_path):
    exp = tmp_path / "e.parquet"
    assert run_cli("export", run, "-o", exp).exit_code == 0
    digest = snapshot(tmp_path)["e.parquet"]
    one_line_error(run_cli("export", exp, "-o", exp), "is the input")
    one_line_error(run_cli("report", exp, "--json", exp), "is the input")
    assert snapshot(tmp_path)["e.parquet"] == digest


def test_case2_outputs_next_to_the_run_are_fine(run, worse, tmp_path):
    res = run_cli("compare", run, worse, "--junit", tmp_path / "g.xml", "--markdown", tmp_path / "g.md")
    assert res.exit_code in (0, 1, 3) and (tmp_path / "g.xml").exists()


# ----------------------------------------------------------------------------
# 3. Decompression bomb: row counts beyond what the run can produce are refused before they are read


def _bomb(path, template, rows, chunk=250_000):
    block = template.take(np.zeros(chunk, dtype=np.int64))
    with pq.ParquetWriter(path, template.schema, compression="zstd") as w:
        for _ in range(rows // chunk):
            w.write_table(block)


_PEAK_RSS = """
import sys
try:  # the peak RSS a forked child inherits is its parent's: reset it (Linux >= 4.0) before measuring
    open("/proc/self/clear_refs", "w").write("5")
except OSError:
    print("-1 0 0"); sys.exit()
import diffaudit
r = diffaudit.load_run(sys.argv[1])
peak = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
print(peak // 1024, r.bins.height, len(r.problems))
"""


def test_case3_a_bins_part_with_millions_of_rows_is_skipped_unread(run, monkeypatch):
    last = parts(run, "bins")[-1]
    bomb = run / "parts" / rf.part_name("bins", 0, 1, 999)
    _bomb(bomb, pq.read_table(last), 4_000_000)
    assert bomb.stat().st_size < 2_000_000
    before = snapshot(run)
    # the careful reader never reads the bomb's pages; the fast reader, which reads all parts in one scan, stops
    # after as many rows as the parts could hold at their limit, then sends the kind to the careful reader
    seen, capped = [], []
    real_read, real_scan = pq.ParquetFile.read, __import__("polars").scan_parquet
    monkeypatch.setattr(pq.ParquetFile, "read", lambda self, *a, **k: seen.append(self.metadata.num_rows) or real_read(self, *a, **k))
    monkeypatch.setattr("polars.scan_parquet",
                        lambda src, **k: isinstance(src, list) and capped.append((len(src), k.get("n_rows")))
                        or real_scan(src, **k))
    loaded = diffaudit.load_run(run)
    assert 4_000_000 not in seen and len(seen) >= 1
    n_bins = len(parts(run, "bins"))
    assert (n_bins, 65_536 * n_bins + 1) in capped and 65_536 * n_bins + 1 < 4_000_000
    monkeypatch.undo()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(run)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    rss_mb, bin_rows, n_problems = map(int, out.stdout.split())
    if rss_mb >= 0:  # 4M materialised rows of 14 columns alone would take ~450 MB more than a normal load (~130 MB)
        assert rss_mb < 400 and n_problems == 1 and bin_rows == loaded.bins.height
    res = run_cli("summary", run)
    assert res.exit_code == 0
    assert _warnings(res) == [f"warning: {bomb}: damaged part skipped: 4,000,000 rows, more than a bins part of "
                              f"this run can hold (65,536); not read"]
    one_line_error(run_cli("summary", run, "--strict"), str(bomb), "4,000,000 rows")
    assert snapshot(run) == before


def test_case3_an_export_whose_footer_claims_far_more_rows_than_its_size_is_refused(run, tmp_path):
    exp = tmp_path / "e.parquet"
    run_cli("export", run, "-o", exp)
    t = pq.read_table(exp)
    _bomb(tmp_path / "bomb.parquet", t, 4_000_000)
    one_line_error(run_cli("summary", tmp_path / "bomb.parquet"), "far more than a", "not read")


def test_case3_a_part_of_many_row_groups_is_read_on_the_fast_path(run, monkeypatch):
    """A part written in many row groups (a long footer: one entry per group) is read whole by the fast reader,
    neither sent to the careful reader nor misread."""
    from diffaudit import load

    before = diffaudit.load_run(run)
    f = parts(run, "bins")[0]
    pq.write_table(pq.read_table(f), f, row_group_size=1)  # one row group per row
    assert pq.read_metadata(f).num_row_groups == pq.read_metadata(f).num_rows > 1
    monkeypatch.setattr(load, "_read_part_by_part", lambda *a, **k: pytest.fail("left the fast path"))
    after = diffaudit.load_run(run)
    assert after.bins.equals(before.bins) and after.steps.equals(before.steps) and not after.problems


def test_case3_a_part_with_no_rows_is_read_on_the_fast_path_and_counts_for_nothing(run, monkeypatch):
    """A part may hold no rows; the fast reader numbers each row by its part (its file's path), and an empty
    part must shift no row to another part (the copy check and the file-name check read that number)."""
    from diffaudit import load

    before = diffaudit.load_run(run)
    bins = parts(run, "bins")
    for i, f in reversed(list(enumerate(bins))):  # sequence numbers 0, 2, 4, ...: room for a part between two
        f.rename(run / "parts" / rf.part_name("bins", 0, 1, 2 * i))
    empty = run / "parts" / rf.part_name("bins", 0, 1, 3)
    pq.write_table(pq.read_table(run / "parts" / rf.part_name("bins", 0, 1, 0)).slice(0, 0), empty)
    assert parts(run, "bins").index(empty) == 2 and len(bins) >= 3
    files = parts(run, "bins")
    limit = load.max_part_rows("bins", load._read_meta(run))
    df, _ = load._read_all_at_once("bins", files, load._first_part("bins", files), limit)
    assert df["_part"].to_list() == [i for i, f in enumerate(files) for _ in range(pq.read_metadata(f).num_rows)]
    monkeypatch.setattr(load, "_read_part_by_part", lambda *a, **k: pytest.fail("left the fast path"))
    after = diffaudit.load_run(run)
    assert after.bins.equals(before.bins) and not after.problems


def test_case3_parts_whose_arrow_types_differ_are_read_as_the_format_says(run):
    """Two parts with one Parquet schema but different Arrow types (a string column stored as large_string):
    whichever reader takes them, the column comes out in the format's type and the rows are the same."""
    before = diffaudit.load_run(run)
    f = parts(run, "bins")[0]
    t = pq.read_table(f)
    pq.write_table(t.cast(pa.schema([fld.with_type(pa.large_string()) if fld.name == "split" else fld
                                     for fld in t.schema])), f)
    after = diffaudit.load_run(run)
    assert after.bins.equals(before.bins) and not after.problems


@pytest.mark.parametrize("change", ["extra column", "missing column", "other type"])
def test_case3_a_part_with_another_schema_than_the_first_goes_to_the_careful_reader(run, monkeypatch, change):
    """The fast reader holds every part to the first one's schema; a part with another (a user scalar logged
    from some step on, or only until some step; a column of another type) sends the kind to the careful
    reader, which reads each part with its own columns."""
    from diffaudit import load

    steps = parts(run, "steps")
    f = steps[0] if change == "missing column" else steps[-1]  # a scalar only the first part has
    t = pq.read_table(f)
    if change == "other type":
        t = t.set_column(t.schema.get_field_index("lr"), "lr", t["lr"].cast(pa.float32()))
    else:
        t = t.append_column("ema_loss", pa.array(np.linspace(1.0, 2.0, t.num_rows)))
    pq.write_table(t, f)
    careful = []
    real = load._read_part_by_part
    monkeypatch.setattr(load, "_read_part_by_part", lambda kind, *a, **k: careful.append(kind) or real(kind, *a, **k))
    got = diffaudit.load_run(run)
    assert careful == ["steps"] and not got.problems
    mine = got.steps.filter(pl.col("step").is_in(t["step"].to_pylist()))
    assert mine.height == t.num_rows and got.steps.height == sum(pq.read_metadata(p).num_rows for p in steps)
    if change == "other type":
        assert mine["lr"].dtype == pl.Float64 and mine["lr"].to_list() == pytest.approx(t["lr"].to_pylist())
    else:
        assert mine["ema_loss"].to_list() == pytest.approx(np.linspace(1.0, 2.0, t.num_rows).tolist())
        assert got.steps["ema_loss"].null_count() == got.steps.height - t.num_rows


@pytest.mark.parametrize("damage,needle", [
    ("not parquet", "cannot be read ("),
    ("too many rows", "10,000,001 rows, more timesteps than any schedule has (10,000,000)"),
    ("no column", "schedule has no column 'one_minus_alpha_bar'"),
    ("strings", "schedule column 'alpha_bar' has type string, expected float64"),
])
def test_case3_a_damaged_schedule_is_one_line_naming_it(run, damage, needle):
    """The schedule of a vp run is read by polars, its row count from the footer before any page: every way it
    can be damaged is one line naming the file, exit 2, and the run is left as it was."""
    sf = run / "schedule.parquet"
    t = pq.read_table(sf)
    if damage == "not parquet":
        sf.write_bytes(sf.read_bytes()[: sf.stat().st_size // 2])
    elif damage == "too many rows":  # zeros compress to almost nothing: a bomb of a schedule
        n = 10_000_001
        pq.write_table(pa.table({c: pa.array(np.zeros(n)) for c in ("alpha_bar", "one_minus_alpha_bar")}), sf,
                       row_group_size=n, compression="zstd")
        assert sf.stat().st_size < 1_000_000
    elif damage == "no column":
        pq.write_table(t.drop_columns(["one_minus_alpha_bar"]), sf)
    else:
        pq.write_table(t.set_column(t.schema.get_field_index("alpha_bar"), "alpha_bar",
                                    pa.array([str(v) for v in t["alpha_bar"].to_pylist()])), sf)
    before = snapshot(run)
    one_line_error(run_cli("summary", run), str(sf), needle)
    assert snapshot(run) == before


# ----------------------------------------------------------------------------
# 4. FIFOs never hang a command


@pytest.mark.parametrize("what", ["run.json", "schedule.parquet", "part", "segment-marker"])
def test_case4_a_fifo_in_the_run_does_not_hang(run, what):
    target = {"run.json": run / "run.json", "schedule.parquet": run / "schedule.parquet",
              "part": parts(run, "steps")[0], "segment-marker": run / "segments" / "r00000-s0001.json"}[what]
    target.unlink()
    os.mkfifo(target)
    code, out, err = cli_subprocess("summary", run, timeout=60)
    if what in ("run.json", "schedule.parquet"):
        assert code == 2 and err.strip() == f"error: {target}: not a regular file (a FIFO); not read", err
    else:
        assert code == 0, err
        assert f"warning: {target}:" in err and ("a FIFO" in err)
    code, out, err = cli_subprocess("summary", target, timeout=60)
    assert code == 2 and "a FIFO" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------
# 5. Values that break the format's invariants make the part damaged (no wrong verdict)


def _bins_damage(col, value):
    def fn(t):
        v = t.column(col).to_pylist()
        v[-1] = value
        return set_column(t, col, pa.array(v, t.schema.field(col).type))
    return fn


@pytest.mark.parametrize("col,value,words", [
    ("count", -50, "count < 0"),
    ("mean", float("nan"), "mean is not finite where count > 0"),
    ("mean", float("inf"), "mean is not finite where count > 0"),
    ("bin", 1000, "bin outside 0..9"),
    ("bin", -5, "bin outside 0..9"),
    ("m2", -1.0, "m2 is negative or not finite where count > 0"),
    ("step_lo", 10**6, "step_lo > step_hi"),
    ("split", "test", "split is not one of train, eval, ema, probe_t, probe_true"),
    ("mean", 2.68e154, "mean beyond the float32 range of a logged loss"),  # a garbled page the fuzz tests found
    ("mean", 100.0, "mean outside [min, max]"),
    ("m2", 1e6, "m2 larger than count * (max - min)^2 allows"),
], ids=["negative-count", "nan-mean", "inf-mean", "bin-1000", "bin-minus-5", "negative-m2", "step_lo-after-step_hi",
        "unknown-split", "huge-mean", "mean-above-max", "m2-beyond-range"])
def test_case5_an_invariant_breaking_bins_part_is_skipped_and_named(run, col, value, words):
    last = parts(run, "bins")[-1]
    clean = copy_run(run, run.parent / "clean")
    (clean / "parts" / last.name).unlink()
    rewrite_part(last, _bins_damage(col, value))
    res = run_cli("report", run)
    assert res.exit_code == 0
    assert _warnings(res) == [f"warning: {last}: damaged part skipped: 1 row(s) break the format: {words}"]
    ref = run_cli("report", clean)
    strip = lambda r: [ln.replace(str(clean), "").replace(str(run), "") for ln in r.output.splitlines()  # noqa: E731
                       if not ln.startswith("warning: ") and not ln.startswith("run ")]
    assert strip(res) == strip(ref)  # the verdict is the one without the damaged part
    one_line_error(run_cli("report", run, "--strict"), str(last), words)


def _rising_run(path):
    """A run whose loss rises over its steps: `report --fail-on warn` must exit 1 on it."""
    import torch

    from diffaudit.logger import RunLogger
    from diffaudit.noise import named_betas, schedule_from_betas

    g = torch.Generator().manual_seed(0)
    a = schedule_from_betas(named_betas("linear"))[0]
    with RunLogger(path, alphas_cumprod=a, num_bins=10, flush_every=50, window=10) as lg:
        for s in range(400):
            t = torch.randint(0, 1000, (32,), generator=g)
            lg.log(s, timesteps=t, losses=(1 + s / 100) * (0.5 + torch.rand(32, generator=g)))
    return path


@pytest.mark.parametrize("col,value", [("count", -(10**9)), ("mean", float("nan")), ("mean", float("-inf"))],
                         ids=["negative-count", "nan-mean", "minus-inf-mean"])
def test_case5_damage_in_the_last_bins_part_no_longer_lets_fail_on_warn_pass(tmp_path, col, value):
    run = _rising_run(tmp_path / "rising")
    assert run_cli("report", run, "--fail-on", "warn").exit_code == 1
    last = parts(run, "bins")[-1]
    rewrite_part(last, lambda t: set_column(t, col, pa.array([value] * t.num_rows, t.schema.field(col).type)))
    res = run_cli("report", run, "--fail-on", "warn")
    assert res.exit_code == 1, res.output
    assert _warnings(res)[0].startswith(f"warning: {last}: damaged part skipped: ")
    assert "loss.increasing" in res.output


def test_case5_an_export_whose_rows_have_an_unknown_table_is_not_healthy(run, tmp_path):
    exp = tmp_path / "e.parquet"
    run_cli("export", run, "-o", exp)
    t = pq.read_table(exp)
    t = set_column(t, "table", pa.array(["mystery"] * t.num_rows))
    pq.write_table(t, tmp_path / "odd.parquet")
    for cmd in ("report", "summary"):
        one_line_error(run_cli(cmd, tmp_path / "odd.parquet"), "holds no usable rows",
                       f"{t.num_rows} row(s) with an unknown table value ('mystery')")


def test_case5_part_rows_with_steps_outside_their_segment_are_damaged(run):
    first = parts(run, "steps")[0]
    rewrite_part(first, lambda t: set_column(t, "segment", pa.array([7] * t.num_rows, pa.int32())))
    res = run_cli("summary", run)
    assert res.exit_code == 0
    assert _warnings(res) == [f"warning: {first}: damaged part skipped: 10 row(s) break the format: rows of another "
                              f"rank or segment than the file name says (a part of another run, or a renamed file)"]


# ----------------------------------------------------------------------------
# 6. CI outputs: JUnit well-formed, Markdown inert, whatever the run is called


HOSTILE = "x\x01y\r# Heading ![x](https:evil.png) [l](u) <img src=x> `c` *e* | www.a.b @who"


def test_case6_junit_is_well_formed_with_control_characters_in_names(worse, tmp_path):
    odd = copy_run(worse, tmp_path / "run\x01\x1b[31m")
    res = run_cli("compare", odd, worse, "--junit", tmp_path / "g.xml")
    assert res.exit_code in (0, 1, 3), res.output
    root = ET.parse(tmp_path / "g.xml").getroot()
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert "run\\x01\\x1b[31m" in props["baseline"]


def test_case6_markdown_cannot_be_injected_through_a_run_name(worse, tmp_path):
    odd = copy_run(worse, tmp_path / HOSTILE)
    res = run_cli("compare", odd, worse, "--markdown", tmp_path / "g.md")
    assert res.exit_code in (0, 1, 3), res.output
    md = (tmp_path / "g.md").read_text()
    headings = [ln for ln in md.splitlines() if ln.lstrip().startswith("#")]
    assert headings == [ln for ln in md.splitlines() if ln.startswith("## diffaudit compare")]
    for bad in ("![", "<img", "\r", "`c`", "*e*", "www.a", " @who"):
        assert bad not in md, bad
    assert not re.search(r"(?<!\\)\]\(", md)  # no link or image syntax left unescaped
    line = next(ln for ln in md.splitlines() if ln.startswith("- baseline: "))
    assert line == ("- baseline: x y \\# Heading \\!\\[x\\](https:evil.png) \\[l\\](u) &lt;img src=x&gt; \\`c\\` "
                    "\\*e\\* \\| www\\.a.b \\@who")


# ----------------------------------------------------------------------------
# 7. Bad input that used to exit 4: one line, exit 2 (or a named damaged part, exit 0)


@pytest.mark.parametrize("changes,words", [
    ({"config": "lr=1"}, "config must be a JSON object, got \"lr=1\""),
    ({"config": [1, 2]}, "config must be a JSON object, got [1, 2]"),
    ({"num_bins": "abc"}, "num_bins must be an integer from 1 to 4096, got \"abc\""),
    ({"process": ["vp"]}, "unknown process [\"vp\"]"),
    ({"window": "abc"}, "window must be a positive integer, got \"abc\""),
    ({"data_var": "abc"}, "data_var must be a positive finite number or null, got \"abc\""),
    ({"data_var": -1.0}, "data_var must be a positive finite number or null, got -1.0"),
    ({"flush_every": 0}, "flush_every must be a positive integer, got 0"),
    ({"format_version": True}, "format_version must be a positive integer, got true"),
], ids=["config-str", "config-list", "num_bins-str", "process-list", "window-str", "data_var-str", "data_var-negative",
        "flush_every-0", "format_version-true"])
def test_case7_bad_run_json_fields_are_one_line_exit_2(run, changes, words):
    edit_meta(run, **changes)
    for cmd in (("summary", run), ("report", run), ("export", run, "-o", run.parent / "x.parquet")):
        one_line_error(run_cli(*cmd), f"{run / 'run.json'}: {words}")


def test_case7_num_bins_1e400_is_one_line_exit_2(run):
    text = (run / "run.json").read_text()
    (run / "run.json").write_text(re.sub(r'"num_bins": \d+', '"num_bins": 1e400', text))
    one_line_error(run_cli("summary", run), "num_bins must be an integer from 1 to 4096, got inf")


DEEP = "[" * 100_000 + "]" * 100_000


def test_case7_deep_nesting_in_run_json_is_one_line_exit_2(run):
    text = (run / "run.json").read_text()
    (run / "run.json").write_text(text.replace('"config": {}', f'"config": {{"x": {DEEP}}}'))
    one_line_error(run_cli("summary", run), "run.json: JSON nested deeper than 100 levels")


def test_case7_deep_nesting_in_a_segment_marker_is_named_and_skipped(run):
    marker = run / "segments" / "r00000-s0001.json"
    marker.write_text(DEEP)
    res = run_cli("summary", run)
    assert res.exit_code == 0
    assert f"warning: {marker}: segment marker unreadable (JSON nested deeper than 100 levels), ignored" in res.output


def _export(run, tmp_path):
    exp = tmp_path / "e.parquet"
    assert run_cli("export", run, "-o", exp).exit_code == 0
    return exp


def _with_metadata(src, dst, md):
    t = pq.read_table(src)
    meta = dict(t.schema.metadata)
    meta.update(md)
    pq.write_table(t.replace_schema_metadata(meta), dst)
    return dst


@pytest.mark.parametrize("key,value,words", [
    (EXPORT_META_KEY, DEEP, "(run metadata): JSON nested deeper than 100 levels"),
    (EXPORT_SCHEDULE_KEY, "{not json", "(schedule metadata): not valid JSON"),
    (EXPORT_SCHEDULE_KEY, "[1, 2]", "the exported schedule is not usable (a JSON object expected, got list)"),
    (EXPORT_SCHEDULE_KEY, '{"alpha_bar": [0.5]}', "the exported schedule has no 'one_minus_alpha_bar'"),
    (EXPORT_SCHEDULE_KEY, DEEP, "(schedule metadata): JSON nested deeper than 100 levels"),
], ids=["meta-deep", "schedule-not-json", "schedule-list", "schedule-missing-key", "schedule-deep"])
def test_case7_bad_export_metadata_is_one_line_exit_2(run, tmp_path, key, value, words):
    bad = _with_metadata(_export(run, tmp_path), tmp_path / "bad.parquet", {key: value})
    one_line_error(run_cli("summary", bad), str(bad), words)


def test_case7_an_export_without_a_table_column_is_one_line_exit_2(run, tmp_path):
    exp = _export(run, tmp_path)
    t = pq.read_table(exp)
    pq.write_table(t.drop_columns(["table"]), tmp_path / "bad.parquet")
    one_line_error(run_cli("report", tmp_path / "bad.parquet"), "needs a string column 'table'")


@pytest.mark.parametrize("col,typ,words", [
    ("step", pa.float64(), "column 'step' has type float64, expected int64"),
    ("count", pa.string(), "column 'count' has type string, expected int32"),
], ids=["step-float64", "count-string"])
def test_case7_part_columns_of_the_wrong_type_make_the_part_damaged(run, col, typ, words):
    first = parts(run, "steps")[0]
    rewrite_part(first, lambda t: set_column(t, col, t.column(col).cast(typ)))
    res = run_cli("summary", run)
    assert res.exit_code == 0
    assert _warnings(res) == [f"warning: {first}: damaged part skipped: {words}"]
    assert _steps_line(res) == "steps 10..39: 30 logged"
    one_line_error(run_cli("summary", run, "--strict"), str(first), words)


def test_case7_optimum_parts_with_a_bin_beyond_num_bins_on_both_sides_of_compare(run, worse, tmp_path):
    other = copy_run(worse, tmp_path / "other")
    bad = pa.table({"bin": pa.array([0, 12], pa.int32()), "loss_opt": [0.1, 0.2], "stderr": [0.01, 0.01],
                    "n": pa.array([5, 5], pa.int64())})
    for r in (run, other):
        pq.write_table(bad, r / "parts" / rf.part_name("optimum", 0, 0, 0))
    res = run_cli("compare", run, other)
    assert res.exit_code in (0, 1, 3), res.output
    w = _warnings(res)
    assert len(w) == 2 and all("damaged part skipped: 1 row(s) break the format: bin outside 0..9" in x for x in w)


@pytest.mark.parametrize("name", ["bin", "step_lo"])
def test_case7_a_user_scalar_with_a_reserved_name_survives_export(run, tmp_path, name):
    for p in parts(run, "steps"):
        rewrite_part(p, lambda t: t.append_column(name, pa.array(np.full(t.num_rows, 3.0))))
    res = run_cli("summary", run)
    assert res.exit_code == 0
    assert f"logged scalar(s) {name} have names reserved for the format's own columns; ignored" in res.output
    exp = tmp_path / "e.parquet"
    assert run_cli("export", run, "-o", exp).exit_code == 0
    res = run_cli("report", exp)
    assert res.exit_code == 0 and not _warnings(res), res.output
    a, b = diffaudit.load_run(run).bins, diffaudit.load_run(exp).bins
    assert b.select(a.columns).equals(a)


def test_case7_an_unreadable_parts_directory_is_one_line_exit_2(run, monkeypatch):
    real = os.listdir

    def listdir(p="."):
        if str(p) == str(run / "parts"):
            raise PermissionError(13, "Permission denied")
        return real(p)

    monkeypatch.setattr(os, "listdir", listdir)
    one_line_error(run_cli("summary", run), f"{run / 'parts'}: cannot be listed (Permission denied)")


def test_case7_summary_into_a_closed_pipe_is_not_a_traceback(run):
    code = "from diffaudit.cli import run; run()"
    p = subprocess.Popen([sys.executable, "-c", code, "summary", str(run), "--rows", "10"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    p.stdout.close()  # the reader (`head -1`) is gone before anything is written
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141, err
    assert err == ""


def test_case7_summary_piped_into_head_in_a_shell(run):
    cmd = f"{sys.executable} -c 'from diffaudit.cli import run; run()' summary '{run}' | head -1"
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=60)
    assert p.stdout.startswith("run run ") and "Traceback" not in p.stderr and "Exception" not in p.stderr


# ----------------------------------------------------------------------------
# 8. Size: absurd num_bins refused with a clear error


def test_case8_num_bins_beyond_max_bins_is_refused_by_the_loader(run):
    edit_meta(run, num_bins=100_000)
    one_line_error(run_cli("report", run, "-o", run.parent / "r.html"),
                   "num_bins must be an integer from 1 to 4096, got 100000")
    assert not (run.parent / "r.html").exists()


# ----------------------------------------------------------------------------
# 9. Minor cases


def test_case9_no_numpy_or_matplotlib_warnings_on_stderr(worse, tmp_path):
    odd = copy_run(worse, tmp_path / "odd\x01name")
    code, out, err = cli_subprocess("report", odd, "-o", tmp_path / "r.html", "--json", tmp_path / "r.json",
                                    timeout=300)
    assert code == 0, err
    assert [ln for ln in err.splitlines() if not ln.startswith("wrote ")] == [], err
    code, out, err = cli_subprocess("compare", odd, worse, "--html", tmp_path / "c.html", timeout=300)
    assert code in (0, 1, 3) and err == "", err


def test_case9_a_duplicated_part_is_named_as_a_copy(run):
    first = parts(run, "steps")[0]
    copy = run / "parts" / rf.part_name("steps", 0, 1, 77)
    copy.write_bytes(first.read_bytes())
    res = run_cli("summary", run)
    assert _warnings(res) == [f"warning: {copy}: damaged part skipped: repeats 10 row(s) of {first.name} "
                              f"(a copied or duplicated part)"]
    assert _steps_line(res) == "steps 0..39: 40 logged"


def test_case9_a_copy_of_a_middle_part_is_named_whatever_lies_between(run):
    """The copy check looks only at parts whose steps overlap within a rank and segment: a copy of the second of
    four parts, written last, overlaps it (not its neighbour in the file order) and is still named; bins too."""
    for kind in ("steps", "bins"):
        src = parts(run, kind)[1]
        copy = run / "parts" / rf.part_name(kind, 0, 1, 90)
        copy.write_bytes(src.read_bytes())
    res = run_cli("summary", run)
    named = sorted(w.split(": damaged part skipped: ")[0] for w in _warnings(res))
    assert named == sorted(f"warning: {run / 'parts' / rf.part_name(k, 0, 1, 90)}" for k in ("steps", "bins"))
    assert all(f"of {parts(run, 'steps')[1].name}" in w or f"of {parts(run, 'bins')[1].name}" in w
               for w in _warnings(res))
    assert _steps_line(res) == "steps 0..39: 40 logged"


def test_case9_backward_steps_are_named_as_an_epoch_local_counter(tmp_path, linear_alpha_bar):
    import torch

    from diffaudit.logger import RunLogger

    with pytest.warns(UserWarning, match="went backwards"):
        with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=4, flush_every=5) as lg:
            for epoch in range(2):
                for s in range(10):  # an epoch-local counter: 0..9 twice
                    lg.log(s, timesteps=torch.tensor([10, 500]), losses=torch.rand(2))
    res = run_cli("summary", tmp_path / "r")
    w = _warnings(res)
    assert len(w) == 1 and "the step counter went backwards: 10 step number(s) of rank 0 segment 1" in w[0]
    assert "epoch-local counter" in w[0] and "flush in the middle" not in res.output


def test_case9_a_mid_step_flush_is_still_named_as_such(tmp_path, linear_alpha_bar):
    import torch

    from diffaudit.logger import RunLogger

    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=4) as lg:
        lg.log(0, timesteps=torch.tensor([1, 2]), losses=torch.tensor([1.0, 1.0]))
        lg.flush()
        lg.log(0, timesteps=torch.tensor([1, 2]), losses=torch.tensor([3.0, 3.0]))
    w = _warnings(run_cli("summary", tmp_path / "r"))
    assert w == [f"warning: {tmp_path / 'r'}: 1 step(s) were written in two or more parts (a flush in the middle of "
                 f"a step); their rows were merged"]


def test_case9_a_symlinked_part_outside_the_run_is_not_followed(run, worse):
    foreign = parts(worse, "steps")[-1]
    link = run / "parts" / rf.part_name("steps", 0, 1, 55)
    link.symlink_to(foreign)
    res = run_cli("summary", run)
    assert _warnings(res) == [f"warning: {link}: damaged part skipped: a symbolic link to {os.path.realpath(foreign)}, outside the run; "
                              f"not followed"]
    assert _steps_line(res) == "steps 0..39: 40 logged"


def test_case9_report_json_and_html_to_one_file_is_a_usage_error(run, tmp_path):
    f = tmp_path / "out"
    one_line_error(run_cli("report", run, "--json", f, "-o", f), "-o/--html and --json name the same file")
    assert not f.exists()


def test_case9_format_version_true_is_not_version_1(run):
    edit_meta(run, format_version=True)
    one_line_error(run_cli("summary", run), "format_version must be a positive integer, got true")


def test_case2_optimum_json_never_lands_in_the_run_or_on_the_data(run, tmp_path):
    data = tmp_path / "train.npy"
    np.save(data, np.zeros((8, 64), np.float32))
    before, data_bytes = snapshot(run), data.read_bytes()
    one_line_error(run_cli("optimum", data, "--run", run, "--dry-run", "--json", run / "parts" / "x.json"),
                   "lies inside the input run")
    one_line_error(run_cli("optimum", data, "--run", run, "--dry-run", "--json", data), "is the input")
    assert snapshot(run) == before and data.read_bytes() == data_bytes


def test_case4_compare_with_a_fifo_run_json_is_one_line(run, worse):
    (run / "run.json").unlink()
    os.mkfifo(run / "run.json")
    code, out, err = cli_subprocess("compare", run, worse, timeout=60)
    assert code == 2 and err.strip() == f"error: {run / 'run.json'}: not a regular file (a FIFO); not read", err


def test_case7_an_integer_column_beyond_its_type_makes_the_part_damaged(run):
    first = parts(run, "steps")[0]
    rewrite_part(first, lambda t: set_column(t, "count", pa.array([2**40] * t.num_rows, pa.int64())))
    res = run_cli("summary", run)
    assert res.exit_code == 0
    assert _warnings(res) == [f"warning: {first}: damaged part skipped: column 'count' does not fit int32 (Integer "
                              f"value 1099511627776 not in range: -2147483648 to 2147483647)"]


def test_case9_an_unserialisable_config_leaves_no_temporary_file(tmp_path, linear_alpha_bar):
    from diffaudit.errors import DataError
    from diffaudit.logger import RunLogger

    cfg = {"lr": 1e-4}
    cfg["self"] = cfg  # a cycle: JSON cannot hold it
    with pytest.raises(DataError, match="config cannot be stored in run.json"):
        RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, config=cfg)
    assert [p.name for p in tmp_path.rglob("*")] == []  # no run directory, no .run.json.*.tmp


def test_case9_impossible_timesteps_are_refused_not_clamped(tmp_path, linear_alpha_bar):
    import torch

    from diffaudit.errors import DataError
    from diffaudit.logger import RunLogger

    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=4) as lg:
        with pytest.raises(DataError, match="1 of 2 value"):
            lg.log(0, timesteps=torch.tensor([5, 1000]), losses=torch.tensor([1.0, 1.0]))
        lg.log(0, timesteps=torch.tensor([5, 999]), losses=torch.tensor([1.0, 1.0]))
    assert diffaudit.load_run(tmp_path / "r").train_bins["bin"].to_list() == [0, 3]


def test_case2_relative_outputs_are_resolved_against_the_run(run, monkeypatch):
    before = snapshot(run)
    monkeypatch.chdir(run / "parts")
    one_line_error(run_cli("export", "..", "-o", "./-"), "-o/--output ./-: lies inside the input run ..")
    one_line_error(run_cli("report", "..", "--json", "../run.json"), "--json ../run.json: lies inside the input run")
    assert snapshot(run) == before


def test_stderr_survives_kinds_read_side_by_side(capfd):
    """Each kind's bulk read silences fd 2 (polars may print a panic from Rust); two kinds read at once must
    not leave it silenced (the second reader once saved the first one's /dev/null and 'restored' it)."""
    from diffaudit.load import load_run

    for i in range(30):
        load_run(os.path.join(os.path.dirname(__file__), "..", "sample_logs", "healthy_seed0"))
        os.write(2, f"still here {i}\n".encode())
    err = capfd.readouterr().err
    assert all(f"still here {i}" in err for i in range(30)), err


def test_repeated_step_keys_are_found_in_order_or_not():
    """The loader's O(n) test for a (rank, segment, step) seen twice, against counting distinct keys."""
    import numpy as np
    import polars as pl

    from diffaudit.load import _has_repeated_keys

    rng = np.random.default_rng(0)
    keys = ["rank", "segment", "step"]
    seen = set()
    for _ in range(2000):
        n = int(rng.integers(1, 12))
        df = pl.DataFrame({"rank": rng.integers(0, 2, n), "segment": rng.integers(1, 3, n), "step": rng.integers(0, 5, n)})
        if rng.random() < 0.3:
            df = df.unique(keys)
        if rng.random() < 0.6:
            df = df.sort(keys)
        want = df.select(keys).n_unique() != df.height
        assert _has_repeated_keys(df, keys) == want, df
        seen.add(want)
    assert seen == {True, False}
