"""Runs in object storage, against a real S3-compatible server (moto's server mode) started on localhost.

The logger writes to s3://bucket/run; a SIGKILL mid-run and a resume keep every step once; `report`,
`compare` and `summary` read straight from the bucket.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

import diffaudit
from diffaudit.logger import RunLogger
from diffaudit.noise import named_betas, schedule_from_betas

from _cli import run_cli

WORKER = str(Path(__file__).with_name("_worker.py"))
ALPHA_BAR = schedule_from_betas(named_betas("linear"))[0]


@pytest.fixture
def s3(tmp_path, monkeypatch):
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "DIFFAUDIT_CACHE": str(tmp_path / "cache")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3")
    client.create_bucket(Bucket="runs")
    yield client
    srv.stop()


def _keys(client, prefix):
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket="runs", Prefix=prefix).get("Contents", []))


def _train(url, steps, *, value=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    with RunLogger(url, alphas_cumprod=ALPHA_BAR, num_bins=10, flush_every=50, window=20, total_steps=steps,
                   data_var=0.5) as lg:
        for s in range(steps):
            t = torch.randint(0, 1000, (32,), generator=g)
            lg.log(s, timesteps=t, losses=value * (0.2 + torch.rand(32, generator=g) * (1 - t / 1000)),
                   grad_norm=torch.tensor(0.5), clip_threshold=1.0)
    return lg


def test_logger_writes_one_object_per_part_and_every_command_reads_the_bucket(s3, tmp_path):
    lg = _train("s3://runs/exp/a", 300)
    assert lg.errors == []
    keys = _keys(s3, "exp/a/")
    assert "exp/a/run.json" in keys and "exp/a/schedule.parquet" in keys
    assert "exp/a/segments/close-r00000-s0001.json" in keys
    assert sum(k.startswith("exp/a/parts/steps-") for k in keys) == 6 and not any(k.endswith(".tmp") for k in keys)
    run = diffaudit.load_run("s3://runs/exp/a")
    assert run.steps["step"].to_list() == list(range(300)) and run.problems == []
    assert run.closes["status"].to_list() == ["finished"] and run.name == "a"
    res = run_cli("report", "s3://runs/exp/a", "--json", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r.json").read_text())["lifecycle"]["state"] == "finished"
    _train("s3://runs/exp/b", 300, seed=1)
    _train("s3://runs/exp/worse", 300, value=1.5, seed=2)
    assert run_cli("compare", "s3://runs/exp/a", "s3://runs/exp/b").exit_code == 0
    bad = run_cli("compare", "s3://runs/exp/a", "s3://runs/exp/worse")
    assert bad.exit_code == 1, bad.output


def test_a_second_read_fetches_only_new_objects(s3, tmp_path):
    from diffaudit.store import sync_run

    _train("s3://runs/r", 100)
    dest = sync_run("s3://runs/r", tmp_path / "copy")
    stamp = {p: p.stat().st_mtime_ns for p in dest.rglob("*.parquet")}
    assert len(stamp) > 4
    _train("s3://runs/r", 100)  # a second segment (a restart) adds objects
    sync_run("s3://runs/r", dest)
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())  # nothing fetched twice
    assert len(list(dest.rglob("*.parquet"))) > len(stamp)


def test_sigkill_mid_run_and_resume_keep_every_step_once(s3):
    url = "s3://runs/killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, WORKER, url, "crash_at", "0", "730"], env=env, capture_output=True, timeout=180)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()[-2000:]
    before = diffaudit.load_run(url).steps["step"].to_list()
    assert before == list(range(len(before))) and len(before) % 50 == 0 and 500 <= len(before) <= 700
    p = subprocess.run([sys.executable, WORKER, url, "resume", "500", "1000"], env=env, capture_output=True, timeout=180)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    run = diffaudit.load_run(url)
    assert run.steps["step"].to_list() == list(range(1000))
    want = np.where(np.arange(1000) < 500, 1.0, 2.0) + np.arange(1000) / 1e4
    np.testing.assert_allclose(run.steps["loss"].to_numpy(), want, rtol=1e-6)
    assert run.segments.height == 2 and run.superseded_rows > 0


def test_a_missing_run_or_bucket_is_one_line(s3):
    res = run_cli("report", "s3://runs/nothing-here")
    assert res.exit_code == 2 and "no run here" in res.output
    res = run_cli("summary", "s3://no-such-bucket/x")
    assert res.exit_code == 2 and res.output.startswith("error: s3://no-such-bucket/x")


def test_sweep_reads_a_folder_of_runs_in_a_bucket_and_caches_them(s3, tmp_path):
    _train("s3://runs/sweep/a", 120)
    _train("s3://runs/sweep/b", 120, seed=1)
    res = run_cli("sweep", "s3://runs/sweep", "--json", tmp_path / "s.json", "-j", "1")
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "s.json").read_text())
    assert sorted(r["name"] for r in doc["runs"]) == ["a", "b"] and all(r["error"] is None for r in doc["runs"])
    assert all(r["lstar_ratio"] is not None for r in doc["runs"])
    res = run_cli("sweep", "s3://runs/sweep", "-j", "1")
    assert "2 from the cache" in res.output, res.output
    res = run_cli("sweep", "s3://runs/nothing-here")
    assert res.exit_code == 2 and "no run here" in res.output
