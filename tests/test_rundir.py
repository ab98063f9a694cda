"""The logger's run directory on its own (no torch): create, join, claim segments, write parts and the close marker."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from diffaudit import runformat as rf
from diffaudit.errors import DataError, RunFormatError
from diffaudit.logsetup import Cadence, check_scalars, resolve_process, run_meta
from diffaudit.noise import named_betas, schedule_from_betas
from diffaudit.rundir import RunDir


def _meta(process, schedule, **config):
    cad = Cadence.of(window=10, flush_every=100, probe_every=0, time_probe_every=0, probe_bins=99, buffer_size=8,
                     num_bins=process.num_bins)
    assert cad.probe_bins == process.num_bins and "buffer_size" not in cad.meta()
    return run_meta(process, schedule, {}, cad, world_size=1, total_steps=None, config=config, torch_version="none")


def test_a_second_logger_joins_the_run_and_claims_the_next_segment(tmp_path):
    ab, _ = schedule_from_betas(named_betas("linear"))
    proc, sched = resolve_process(None, None, 20, ab, None, 0.002, 80.0, None)
    first, seg1 = RunDir(tmp_path / "r").open(_meta(proc, sched, lr=1), proc, rank=0, total_steps=None)
    again, seg2 = RunDir(tmp_path / "r").open(_meta(proc, sched, lr=2), proc, rank=0, total_steps=50)
    other, seg_r1 = RunDir(tmp_path / "r").open(_meta(proc, sched), proc, rank=1, total_steps=None)
    assert (seg1, seg2, seg_r1) == (1, 2, 1)
    assert again["run_id"] == first["run_id"] and again["config"] == {"lr": 1}  # the run's own meta, not the joiner's
    marker = json.loads((tmp_path / "r" / rf.SEGMENTS_DIR / rf.segment_marker_name(0, 2)).read_text())
    assert marker["total_steps"] == 50
    sched_t = pa.parquet.read_table(tmp_path / "r" / rf.SCHEDULE_FILE)
    np.testing.assert_allclose(sched_t["alpha_bar"].to_numpy(), ab)


def test_joining_a_run_of_another_schedule_or_bins_is_refused_naming_the_field(tmp_path):
    ab, _ = schedule_from_betas(named_betas("linear"))
    proc, sched = resolve_process(None, None, 20, ab, None, 0.002, 80.0, None)
    RunDir(tmp_path / "r").open(_meta(proc, sched), proc, rank=0, total_steps=None)
    proc2, sched2 = resolve_process(None, None, 30, ab, None, 0.002, 80.0, None)
    with pytest.raises(RunFormatError, match="num_bins=20 but this logger has num_bins=30"):
        RunDir(tmp_path / "r").open(_meta(proc2, sched2), proc2, rank=0, total_steps=None)
    cos, _ = schedule_from_betas(named_betas("squaredcos_cap_v2"))
    proc3, sched3 = resolve_process(None, None, 20, cos, None, 0.002, 80.0, None)
    with pytest.raises(RunFormatError, match="schedule_sha"):
        RunDir(tmp_path / "r").open(_meta(proc3, sched3), proc3, rank=0, total_steps=None)
    assert sorted(p.name for p in (tmp_path / "r" / rf.SEGMENTS_DIR).iterdir()) == ["r00000-s0001.json"]


def test_parts_and_the_close_marker_land_under_their_names(tmp_path):
    proc, sched = resolve_process("flow", None, 8, None, None, 0.002, 80.0, None)
    rd = RunDir(tmp_path / "r")
    _, seg = rd.open(_meta(proc, sched), proc, rank=2, total_steps=None)
    table = pa.table({"x": [1, 2]})
    rd.write_parts({"steps": table, "bins": table}, rank=2, segment=seg, seq=4)
    assert sorted(p.name for p in (tmp_path / "r" / rf.PARTS_DIR).iterdir()) == [
        rf.part_name("bins", 2, seg, 4), rf.part_name("steps", 2, seg, 4)]
    rd.write_close_marker({"rank": 2, "segment": seg, "status": "finished"})
    assert json.loads((tmp_path / "r" / rf.SEGMENTS_DIR / rf.close_marker_name(2, seg)).read_text())["status"] == "finished"
    assert not (tmp_path / "r" / rf.SCHEDULE_FILE).exists()  # a flow process has no discrete schedule


@pytest.mark.parametrize("split,scalars,match", [
    ("eval", {"lr": 1.0}, "only be logged with split='train'"),
    ("train", {"loss": 1.0}, "reserved"),
    ("train", {"2x": 1.0}, "use a letter"),
])
def test_scalar_names_are_checked_before_anything_is_logged(split, scalars, match):
    with pytest.raises(DataError, match=match):
        check_scalars(split, scalars)
