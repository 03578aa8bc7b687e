"""Batch jobs as real processes: a job killed mid-way, and jobs on a seconds-level schedule."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import datetime

import pandas as pd
import pytest

from pipelines.cli.main import main
from tests.batch_support import anomaly, trained_store

BIG_ROWS = 400_000


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return trained_store(tmp_path_factory)


def test_killed_job_leaves_no_output_and_a_rerun_completes(store, tmp_path):
    src = tmp_path / "big.parquet"
    reps = BIG_ROWS // len(store.frame) + 1
    pd.concat([store.frame] * reps, ignore_index=True).iloc[:BIG_ROWS].to_parquet(src)
    out = tmp_path / "o.parquet"
    args = ["score", "--model", store.model_uri, "--tracking-uri", store.uri,
            "--input", str(src), "--output", str(out), "--chunk-rows", "5000"]
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not list(tmp_path.glob(".o.parquet.partial-*")):
            assert proc.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # a few chunks in
        assert proc.poll() is None, "the job ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()
    assert main(args) == 0  # the rerun removes the killed job's partial file
    assert len(pd.read_parquet(out, columns=["score"])) == BIG_ROWS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.parquet", "o.parquet"]


def test_schedule_runs_on_a_seconds_cron_without_overlap(store, tmp_path):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(f"""tracking_uri: {store.uri}
jobs:
  - name: every-2s
    cron: "*/2 * * * * *"
    model: {store.model_uri}
    input: {store.csv}
    output: "out/{{datetime}}.parquet"
    options: {{keep: [id]}}
""")
    started = time.monotonic()
    proc = anomaly("schedule", str(jobs), "--duration", "12", timeout=100)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert time.monotonic() - started < 90
    entry = json.loads((tmp_path / "jobs.status.json").read_text())["jobs"]["every-2s"]
    runs = entry["runs"]
    assert len(runs) >= 1 and all(r["result"] == "ok" for r in runs), runs
    # A run (a child process) takes longer than the 2 s interval: the fire times that came
    # while it ran were skipped, and no run started before the previous one ended.
    assert entry["overlaps_skipped"] >= 1
    assert entry["state"] == "stopped" and entry["last_result"] == "ok"
    for prev, nxt in zip(runs, runs[1:]):
        assert datetime.fromisoformat(nxt["start"]) >= datetime.fromisoformat(prev["end"])
    assert len(list((tmp_path / "out").glob("*.parquet"))) == len(runs)
    shown = anomaly("schedule", "status", str(jobs))
    assert shown.returncode == 0
    assert "every-2s" in shown.stdout and "ok" in shown.stdout
