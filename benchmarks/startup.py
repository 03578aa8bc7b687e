"""Start-up: how long ``anomaly score`` and ``anomaly serve`` take from exec to ready, next to
the imports they cannot do without.

Trains a small model of ``--kind`` on the demo table into a temporary registry, scores it once
so that the model cache holds it, then times, in alternated rounds (so outside load hits every
row alike):

- ``python -c pass`` and the import floor: torch, pandas and pyarrow, and MLflow with its SQL
  store (a cached model's alias is still resolved in the registry, and a batch job logs a run);
- ``anomaly --help`` (the command group alone);
- ``anomaly score`` of one record, exec to exit;
- ``anomaly serve`` from exec to the first 200 of ``GET /readyz``.

    python benchmarks/startup.py [--kind vae] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

FLOOR = ("import torch, pandas, pyarrow.parquet, mlflow; "
         "from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore; "
         "from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t


def _serve_ready(cmd: list[str], env: dict[str, str], timeout: float = 120.0) -> float:
    port = _free_port()
    t = time.perf_counter()
    p = subprocess.Popen([*cmd, "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - t < timeout:
            if p.poll() is not None:
                raise RuntimeError(f"anomaly serve exited with {p.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - t
            except OSError:
                time.sleep(0.01)
        raise RuntimeError("anomaly serve was not ready in time")
    finally:
        p.terminate()
        p.wait()


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
        _timed(score, env)  # fills the model cache
        cases = {
            "python -c pass": lambda: _timed([sys.executable, "-c", "pass"], env),
            "import floor (torch, pandas, pyarrow, mlflow + SQL store)":
                lambda: _timed([sys.executable, "-c", FLOOR], env),
            "anomaly --help": lambda: _timed([*anomaly, "--help"], env),
            "anomaly score, 1 record (exec to exit)": lambda: _timed(score, env),
            "anomaly serve (exec to /readyz 200)": lambda: _serve_ready(serve, env),
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.rounds):
            for name, run in cases.items():
                times[name].append(run())
    floor = statistics.median(times["import floor (torch, pandas, pyarrow, mlflow + SQL store)"])
    rows = [{"what": k, "median s": f"{statistics.median(v):.2f}",
             "range s": f"{min(v):.2f}-{max(v):.2f}",
             "vs import floor": f"{statistics.median(v) / floor:.2f}"}
            for k, v in times.items()]
    print(format_table(rows, list(rows[0])))
    print(f"{args.kind} model from the model cache; {args.rounds} alternated rounds; "
          f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
