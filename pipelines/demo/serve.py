"""The demo's last step: start the scoring service for a moment and score a few records."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _wait_ready(base: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with code {proc.returncode}")
        try:
            if _call(f"{base}/readyz", timeout=2.0)[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"the service did not become ready within {timeout:.0f}s")


def show_service(tracking_uri: str, name: str, data: Path, workdir: Path,
                 label_column: str = "malignant", id_column: str = "id", n: int = 3) -> None:
    """Run ``anomaly serve`` on a free loopback port, score ``n`` normal and ``n`` anomalous
    records of ``data`` with ``models:/NAME@champion``, print the answers, stop the service."""
    df = pd.read_csv(data)
    sample = pd.concat([df[df[label_column] == 0].head(n), df[df[label_column] == 1].head(n)])
    records = sample.drop(columns=[label_column]).to_dict(orient="records")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = workdir / "serve.log"
    cmd = [sys.executable, "-m", "pipelines.cli", "serve", "--model", f"models:/{name}@champion",
           "--port", str(port), "--tracking-uri", tracking_uri,
           "--cache-dir", str(workdir / "model-cache")]
    print(f"\nstarting the scoring service on {base} (log: {log_path}) ...", flush=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(base, proc)
            status, answer = _call(f"{base}/v1/models/{name}/score?explain=true",
                                   {"records": records})
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    if status != 200:
        print(f"the service answered {status}: {answer}")
        return
    meta = answer["model"]
    print(f"POST /v1/models/{name}/score?explain=true -> {meta['name']} version {meta['version']}"
          f" ({meta['kind']}, {meta['primary_score']} threshold {meta['threshold']:.4g});"
          f" ignored columns: {answer['ignored_columns']}")
    from pipelines.cli.text import format_table

    rows = [{id_column: rec.get(id_column), "truth": "anomaly" if truth else "normal",
             "score": f"{r['score']:.4g}", "p_value": f"{r['p_value']:.3g}",
             "is_anomaly": r["is_anomaly"],
             "top column": r["explanation"][0]["column"] if r.get("explanation") else ""}
            for rec, truth, r in zip(records, sample[label_column], answer["results"],
                                     strict=True)]
    print(format_table(rows, list(rows[0])))
    print(f"\nServe it yourself: anomaly serve --model models:/{name}@champion "
          f"--tracking-uri {tracking_uri}   (API docs at http://127.0.0.1:8000/docs)")
