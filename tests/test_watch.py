"""`diffaudit watch` on runs that grow while it watches (parts copied in the order the logger wrote them)."""

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import diffaudit.cli.watch  # noqa: F401  (registers the command)
from diffaudit.cli import main
from diffaudit.watch import Watcher

LOGS = Path(__file__).resolve().parents[1] / "sample_logs"


def _grow(src: Path, dest: Path, *, upto: int | None = None, delay: float = 0.0, close: bool = True):
    """Copy a run the way it was written: run.json and markers first, then the parts in order, then the close."""
    dest.mkdir(parents=True)
    if (src / "schedule.parquet").exists():
        shutil.copy2(src / "schedule.parquet", dest / "schedule.parquet")
    meta = json.loads((src / "run.json").read_text())
    meta["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")  # a live run: it started now
    (dest / "run.json").write_text(json.dumps(meta))
    (dest / "segments").mkdir()
    for m in sorted((src / "segments").glob("r*.json")):
        shutil.copy2(m, dest / "segments" / m.name)
    (dest / "parts").mkdir()
    seqs = sorted({p.name.rsplit("-", 1)[1] for p in (src / "parts").glob("*.parquet")})
    for seq in seqs[:upto]:
        for kind in ("bins", "probes", "steps"):  # the logger's own order: bins before steps
            for p in sorted((src / "parts").glob(f"{kind}-*-{seq}")):
                if kind == "steps":  # as if written now: the steps' wall times end at this moment
                    t = pq.read_table(p)
                    wall = t["time"].to_numpy()
                    t = t.set_column(t.schema.get_field_index("time"), "time", pa.array(wall - wall.max() + time.time()))
                    pq.write_table(t, dest / f".{p.name}.tmp")  # complete before it gets its name, as the logger does
                    os.replace(dest / f".{p.name}.tmp", dest / "parts" / p.name)
                else:
                    shutil.copy2(p, dest / "parts" / p.name)
        time.sleep(delay)
    if close and upto is None:
        for m in sorted((src / "segments").glob("close-*.json")):
            shutil.copy2(m, dest / "segments" / m.name)


def test_poll_reads_only_when_something_was_added(tmp_path):
    run = tmp_path / "r"
    _grow(LOGS / "corpus" / "lr_high", run, upto=1)
    w = Watcher(run)
    first = w.poll()
    assert first.changed and first.state in ("in_progress", "ended") and first.last_step == 299
    assert first.changes and {c.kind for c in first.changes} == {"appeared"}
    assert "loss.exploding" in {c.id for c in first.changes}  # lr 50x blows up within the first 300 steps
    assert not w.poll().changed  # nothing new: no read, no analysis
    for p in sorted((LOGS / "corpus" / "lr_high" / "parts").glob("*-000001.parquet")):
        shutil.copy2(p, run / "parts" / p.name)
    second = w.poll()
    assert second.changed and second.last_step == 599
    assert second.changes and "loss.exploding" not in {c.id for c in second.changes}  # only what changed


def test_waits_for_a_run_that_has_not_started(tmp_path):
    u = Watcher(tmp_path / "not_yet").poll()
    assert not u.changed and u.state == "waiting"


def _watch_while_growing(src, tmp_path, *args):
    run = tmp_path / "r"
    t = threading.Thread(target=_grow, args=(src, run), kwargs={"delay": 0.3})
    t.start()
    try:
        res = CliRunner().invoke(main, ["watch", str(run), "--interval", "0.1", "--timeout", "60", *args])
    finally:
        t.join()
    return res


def test_broken_training_stops_the_watch_at_once(tmp_path):
    res = _watch_while_growing(LOGS / "corpus" / "lr_high", tmp_path, "-o", str(tmp_path / "live.html"))
    assert res.exit_code == 1, res.output
    # lr 50x: the loss explodes and the dead network stops using t; whichever part lands first names it
    broken = res.output.split("training is broken: ")[1]
    assert "loss.exploding" in broken or "time_conditioning.unused" in broken
    assert "the run finished" not in res.output  # it stopped before the last part arrived
    assert (tmp_path / "live.html").read_text().startswith("<!DOCTYPE html>")
    assert not list(tmp_path.glob(".live.html.*"))  # written through a temporary file and a rename


def test_a_healthy_run_watched_to_its_end_exits_0(tmp_path):
    res = _watch_while_growing(LOGS / "corpus" / "healthy_s00", tmp_path)
    assert res.exit_code == 0, res.output
    assert "the run finished" in res.output and "[FAIL]" not in res.output


def test_a_poll_decodes_only_the_parts_it_has_not_seen(tmp_path, monkeypatch):
    import diffaudit.load as load

    run = tmp_path / "r"
    _grow(LOGS / "corpus" / "healthy_s01", run, upto=2)
    read = []
    real = load._read_part
    monkeypatch.setattr(load, "_read_part", lambda kind, f, limit: read.append(f.name) or real(kind, f, limit))
    w = Watcher(run)
    w.poll()
    first = len(read)
    assert first == len(list((run / "parts").glob("*.parquet")))
    new = sorted((LOGS / "corpus" / "healthy_s01" / "parts").glob("*-000002.parquet"))
    for p in new:
        shutil.copy2(p, run / "parts" / p.name)
    u = w.poll()
    assert u.changed and u.last_step == 899
    assert sorted(read[first:]) == sorted(p.name for p in new)  # the earlier parts were not decoded again


def test_a_run_with_no_step_written_yet_is_in_progress_not_ended(tmp_path, linear_alpha_bar):
    """Between the logger's start and its first flush there are only run.json and markers: that is a start."""
    torch = pytest.importorskip("torch")
    from diffaudit.logger import RunLogger

    lg = RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=4, total_steps=100)
    try:
        lg.log(0, timesteps=torch.tensor([1, 500]), losses=torch.tensor([1.0, 0.5]))  # buffered, not written
        u = Watcher(tmp_path / "r").poll()
        assert u.changed and u.state == "in_progress", u.lifecycle
        assert "no step written yet of 100 planned" in u.lifecycle and "started" in u.lifecycle
    finally:
        lg.close()
