"""Start-up: how long ``anomaly score`` and ``anomaly serve`` take from exec to ready, next to
the imports they cannot do without.

Trains a small model of ``--kind`` on the demo table into a temporary registry, scores it once
(so that the model cache holds it and, written in the background after that job, its ONNX
graph), then times, in alternated rounds (so outside load hits every row alike):

- ``python -c pass`` and the import floors: what a batch job scored with torch needs (torch,
  pandas and pyarrow, and MLflow with its SQL store: the job logs a run), what a job on a
  cached graph imports itself (pandas, pyarrow, onnxruntime) and what its MLflow helper
  process imports (MLflow and its SQL store), and what the service needs for a table model on
  a warm cache (FastAPI, uvicorn, pandas, onnxruntime);
- ``anomaly --help`` (the command group alone);
- ``anomaly score`` of one record, exec to exit and exec to its first scoring (the model
  loaded, the input checked), by default (the cached graph, the run kept by the helper) and
  with ``ANOMALY_GRAPH_RUNTIME=false`` (resolved in the registry, scored with torch, the run
  kept in process: what every job did before), and by default against an ``mlflow server`` on
  loopback (the run kept through its REST API, no helper process);
- ``anomaly serve`` from exec to the first scored record (a 200 from ``/v1/models/NAME/score``):
  by default (served from the cache through the graph, the registry confirming the alias
  behind it), and with ``ANOMALY_START_FROM_CACHE=false ANOMALY_GRAPH_RUNTIME=false`` (the
  alias resolved in the registry first, the model scored with torch: what every start did
  before).

    python benchmarks/startup.py [--kind vae] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

FLOOR = ("import torch, pandas, pyarrow.parquet, mlflow; "
         "from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore; "
         "from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore")
SERVICE_FLOOR = "import fastapi, uvicorn, pandas, onnxruntime"
GRAPH_JOB_FLOOR = "import pandas, pyarrow.parquet, onnxruntime"
HELPER_FLOOR = ("import mlflow; "
                "from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore; "
                "from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore")
BATCH_FLOOR = "import floor, batch (torch, pandas, pyarrow, mlflow + SQL store)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t


def _serve_ready(cmd: list[str], env: dict[str, str], body: bytes, timeout: float = 120.0
                 ) -> float:
    """Seconds from exec to the first 200 answer to a one-record score request."""
    port = _free_port()
    t = time.perf_counter()
    p = subprocess.Popen([*cmd, "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/bench/score",
                                     data=body, headers={"Content-Type": "application/json"})
    try:
        while time.perf_counter() - t < timeout:
            if p.poll() is not None:
                raise RuntimeError(f"anomaly serve exited with {p.returncode}")
            try:
                with urllib.request.urlopen(request, timeout=5) as r:
                    if r.status == 200:
                        return time.perf_counter() - t
            except urllib.error.HTTPError as e:
                if e.code != 503:  # 503: not loaded yet
                    raise RuntimeError(f"the score request answered {e.code}") from None
                time.sleep(0.01)
            except OSError:
                time.sleep(0.01)
        raise RuntimeError("anomaly serve was not ready in time")
    finally:
        p.terminate()
        p.wait()


def _score_times(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Seconds from exec to the job's first scoring (its "scoring ... with" log line: the
    model loaded, every input checked) and to its exit."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    ready = None
    for line in p.stderr:
        if ready is None and ": scoring " in line and " input(s) with " in line:
            ready = time.perf_counter() - t
    if p.wait() != 0 or ready is None:
        raise RuntimeError(f"anomaly score failed ({p.returncode}) or logged no start")
    return ready, time.perf_counter() - t


def _wait_for_graph(cache: Path, name: str = "bench", timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not list(cache.glob(f"{name}/v*/graph/graph.json")):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no graph written in {cache}")
        time.sleep(0.5)


def _mlflow_server(folder: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on loopback with a SQLite store and proxied artifacts in ``folder``."""
    port = _free_port()
    folder.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination",
         str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers",
         "1"], cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("mlflow server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=["ae", "vae"], default="vae")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import pandas as pd

    from pipelines.cli.text import format_table
    from pipelines.demo.run import write_demo_data

    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        folder = Path(tmp)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        env = {**os.environ, "ANOMALY_CACHE_DIR": str(folder / "cache"),
               "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
        csv = write_demo_data(folder)
        anomaly = [sys.executable, "-m", "pipelines.cli"]
        subprocess.run([*anomaly, "train", "--data", str(csv), "--kind", args.kind, "--name",
                        "bench", "--id-column", "id", "--label-column", "malignant",
                        "--epochs", "2", "--tracking-uri", uri],
                       check=True, capture_output=True, env=env)
        one = folder / "one.parquet"
        pd.read_csv(csv).head(1).to_parquet(one)
        score = [*anomaly, "score", "--model", "models:/bench@challenger", "--input", str(one),
                 "--output", str(folder / "out.parquet"), "--tracking-uri", uri]
        serve = [*anomaly, "serve", "--model", "models:/bench@challenger",
                 "--tracking-uri", uri]
        _timed(score, env)  # fills the model cache and writes the graph beside it
        body = json.dumps({"records": pd.read_csv(csv).drop(columns=["id", "malignant"])
                           .head(1).to_dict(orient="records")}).encode()
        _wait_for_graph(folder / "cache")
        # The same against an MLflow tracking server: the job keeps its run through the
        # server's REST API, with no helper process.
        server, http = _mlflow_server(folder / "server", env)
        subprocess.run([*anomaly, "train", "--data", str(csv), "--kind", args.kind, "--name",
                        "bench-http", "--id-column", "id", "--label-column", "malignant",
                        "--epochs", "2", "--tracking-uri", http],
                       check=True, capture_output=True, env=env)
        score_http = [*anomaly, "score", "--model", "models:/bench-http@challenger", "--input",
                      str(one), "--output", str(folder / "out.parquet"), "--tracking-uri", http]
        _timed(score_http, env)
        _wait_for_graph(folder / "cache", "bench-http")
        before = {**env, "ANOMALY_START_FROM_CACHE": "false", "ANOMALY_GRAPH_RUNTIME": "false"}
        last: dict[str, float] = {}

        def score_case(environ: dict[str, str], what: str, cmd: list[str] = score) -> float:
            ready, done = _score_times(cmd, environ)
            last[what] = ready
            return done

        cases = {
            "python -c pass": lambda: _timed([sys.executable, "-c", "pass"], env),
            BATCH_FLOOR: lambda: _timed([sys.executable, "-c", FLOOR], env),
            "import floor, batch job on a cached graph (pandas, pyarrow, onnxruntime)":
                lambda: _timed([sys.executable, "-c", GRAPH_JOB_FLOOR], env),
            "import floor, its MLflow helper (mlflow + SQL store)":
                lambda: _timed([sys.executable, "-c", HELPER_FLOOR], env),
            "import floor, service (fastapi, uvicorn, pandas, onnxruntime)":
                lambda: _timed([sys.executable, "-c", SERVICE_FLOOR], env),
            "anomaly --help": lambda: _timed([*anomaly, "--help"], env),
            "anomaly score, 1 record, default (exec to exit)":
                lambda: score_case(env, "default"),
            "anomaly score, 1 record, default (exec to scoring)":
                lambda: last["default"],
            "anomaly score, 1 record, default, tracking server (exec to exit)":
                lambda: score_case(env, "http", score_http),
            "anomaly score, 1 record, default, tracking server (exec to scoring)":
                lambda: last["http"],
            "anomaly score, 1 record, ANOMALY_GRAPH_RUNTIME=false (exec to exit)":
                lambda: score_case(before, "torch"),
            "anomaly score, 1 record, ANOMALY_GRAPH_RUNTIME=false (exec to scoring)":
                lambda: last["torch"],
            "anomaly serve, default (exec to a scored record)":
                lambda: _serve_ready(serve, env, body),
            "anomaly serve, registry first + torch (exec to a scored record)":
                lambda: _serve_ready(serve, before, body),
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        try:
            for _ in range(args.rounds):
                for name, run in cases.items():
                    times[name].append(run())
        finally:
            server.terminate()
            server.wait()
    floor = statistics.median(times[BATCH_FLOOR])
    rows = [{"what": k, "median s": f"{statistics.median(v):.2f}",
             "range s": f"{min(v):.2f}-{max(v):.2f}",
             "vs import floor": f"{statistics.median(v) / floor:.2f}"}
            for k, v in times.items()]
    print(format_table(rows, list(rows[0])))
    print(f"{args.kind} model from the model cache; {args.rounds} alternated rounds; "
          f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
