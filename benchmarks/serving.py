"""Serving speed: this service against ``mlflow models serve``, same model, same machine.

Both servers run the same registered model as separate processes on loopback (one worker
each); ours twice, as a restart on a warm cache runs it (a table model through its ONNX graph,
which a first start writes) and with ``ANOMALY_GRAPH_RUNTIME=false`` (torch). Beside them runs
the floor: a bare FastAPI route on the same uvicorn that reads the
body and answers a fixed JSON. Load comes from Python clients (threads with keep-alive
connections) and from ``wrk`` (an outside load generator, when it is on the PATH), each sending
single-record and 1,000-record requests to every server in alternated rounds. Printed: p50/p99
latency, requests/s and records/s per server, and the ratios (mlflow / service for latency,
service / mlflow for throughput, service / floor for latency).

    python benchmarks/serving.py       # trains a small AE and VAE in temporary stores
    python benchmarks/serving.py --load wrk --wrk-seconds 2 --rounds 3
    python benchmarks/serving.py --tracking-uri sqlite:///demo-run/mlflow.db \\
        --model models:/breast-cancer@champion

Each server gets its natural request format: ``{"records": [...]}`` (single) and
``{"columns": {...}}`` (1,000 records) here, ``{"dataframe_split": ...}`` for MLflow.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A server process, the path it scores on, and how it wants its body."""

    label: str
    port: int
    path: str
    proc: subprocess.Popen

    def post(self, conn: http.client.HTTPConnection, body: bytes) -> bytes:
        conn.request("POST", self.path, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{self.label}: HTTP {resp.status}: {data[:300]!r}")
        return data


def wait_ready(port: int, path: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Poll GET ``path`` until 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with code {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"port {port} not ready after {timeout}s")


# The framework's floor: what uvicorn and FastAPI cost a request that does no work of its own.
_FLOOR_APP = """
import sys, uvicorn
from fastapi import FastAPI, Request, Response
app = FastAPI()
@app.get("/readyz")
async def ready():
    return {"ready": True}
@app.post("/score")
async def score(request: Request):
    await request.body()
    return Response(b'{"results": []}', media_type="application/json")
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False, log_config=None)
"""


def start_floor(workdir: Path) -> Server:
    """The bare FastAPI route (``_FLOOR_APP``) on its own uvicorn process."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", _FLOOR_APP, str(port)],
                            stdout=open(workdir / "floor.log", "wb"), stderr=subprocess.STDOUT)
    wait_ready(port, "/readyz", proc)
    return Server("floor", port, "/score", proc)


def _serve(model: str, tracking_uri: str, workdir: Path, env: dict[str, str], label: str
           ) -> Server:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "serve", "--model", model, "--port", str(port),
         "--tracking-uri", tracking_uri, "--cache-dir", str(workdir / "cache")],
        stdout=open(workdir / f"{label.replace(' ', '-')}.log", "wb"),
        stderr=subprocess.STDOUT, env=env)
    name = model.split("/", 1)[1].split("@")[0].split("/")[0]
    wait_ready(port, "/readyz", proc)
    return Server(label, port, f"/v1/models/{name}/score", proc)


def start_servers(model: str, tracking_uri: str, workdir: Path
                  ) -> tuple[Server, Server, Server]:
    """``anomaly serve`` twice (as it restarts on a warm cache: a table model through its ONNX
    graph; and with ``ANOMALY_GRAPH_RUNTIME=false``: torch) and ``mlflow models serve
    --env-manager local`` for ``model``."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    first = _serve(model, tracking_uri, workdir, env, "first start")  # writes the graph
    deadline = time.monotonic() + 300
    while not list((workdir / "cache").glob("*/v*/graph/graph.json")):
        if time.monotonic() > deadline or first.proc.poll() is not None:
            break  # not a table model, or no graph runtime: both servers use torch
        time.sleep(0.5)
    first.proc.terminate()
    first.proc.wait(timeout=30)
    mlflow_port = free_port()
    theirs = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager",
         "local", "-h", "127.0.0.1", "-p", str(mlflow_port), "--workers", "1"],
        stdout=open(workdir / "mlflow-serve.log", "wb"), stderr=subprocess.STDOUT, env=env)
    ours = _serve(model, tracking_uri, workdir, env, "service")
    torch_ = _serve(model, tracking_uri, workdir, {**env, "ANOMALY_GRAPH_RUNTIME": "false"},
                    "service (torch)")
    wait_ready(mlflow_port, "/ping", theirs)
    return ours, torch_, Server("mlflow serve", mlflow_port, "/invocations", theirs)


def bodies(df: pd.DataFrame) -> dict[str, dict[str, bytes]]:
    """Request bodies per server label for the same records."""
    ours = (json.dumps({"records": df.to_dict(orient="records")}).encode() if len(df) == 1
            else json.dumps({"columns": df.to_dict(orient="list")}).encode())
    return {
        "service": {"records": ours},
        "service (torch)": {"records": ours},
        "floor": {"records": ours},
        "mlflow serve": {"records": json.dumps({"dataframe_split": {
            "columns": list(df.columns), "data": df.to_numpy().tolist()}}).encode()},
    }


def run_load(server: Server, body: bytes, clients: int, per_client: int,
             warmup: int = 3) -> tuple[list[float], float]:
    """Latencies (s) of ``clients`` x ``per_client`` requests, and the wall time."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        for _ in range(warmup):
            server.post(conn, body)
        barrier.wait()
        for _ in range(per_client):
            t = time.perf_counter()
            server.post(conn, body)
            latencies[i].append(time.perf_counter() - t)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return [x for lat in latencies for x in lat], time.perf_counter() - start


_WRK_SCRIPT = """
local f = io.open(os.getenv("WRK_BODY"), "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
"""


def run_wrk(server: Server, body: bytes, clients: int, seconds: int, workdir: Path
            ) -> dict[str, float]:
    """p50/p99 latency (ms) and requests/s of ``wrk`` (one thread, ``clients`` connections)
    posting ``body`` for ``seconds``."""
    script, body_file = workdir / "post.lua", workdir / "body.json"
    script.write_text(_WRK_SCRIPT)
    body_file.write_bytes(body)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{server.port}{server.path}"],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
        env={**os.environ, "WRK_BODY": str(body_file)}).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"{server.label}: wrk got errors:\n{out}")
    got = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "99%"):
            got["p50" if parts[0] == "50%" else "p99"] = _ms(parts[1])
        elif line.startswith("Requests/sec:"):
            got["rps"] = float(parts[1])
    return got


def _ms(text: str) -> float:
    """wrk's latency ("512.00us", "1.20ms", "2.01s") in ms."""
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    raise ValueError(f"unknown latency {text!r}")


def compare_wrk(servers: tuple[Server, ...], bodies_: dict[str, bytes], clients: int,
                seconds: int, rounds: int, workdir: Path) -> dict[str, dict[str, float]]:
    """:func:`compare` with ``wrk`` as the client: per server, the median over the rounds of
    p50, p99 and requests/s."""
    got: dict[str, list[dict[str, float]]] = {s.label: [] for s in servers}
    for _ in range(rounds):
        for server in servers:
            got[server.label].append(run_wrk(server, bodies_[server.label], clients, seconds,
                                             workdir))
    return {k: {m: float(np.median([r[m] for r in v])) for m in ("p50", "p99", "rps")}
            for k, v in got.items()}


def compare(servers: tuple[Server, ...], bodies_: dict[str, bytes], clients: int,
            per_client: int, rounds: int) -> dict[str, dict[str, float]]:
    """Alternate the servers for ``rounds`` rounds, so load from elsewhere hits both alike.

    Returns:
        per server label: p50 and p99 latency (ms), requests/s, over all rounds.
    """
    lat: dict[str, list[float]] = {s.label: [] for s in servers}
    wall = dict.fromkeys(lat, 0.0)
    for _ in range(rounds):
        for server in servers:
            got, seconds = run_load(server, bodies_[server.label], clients,
                                    max(1, per_client // rounds))
            lat[server.label] += got
            wall[server.label] += seconds
    return {k: {"p50": float(np.percentile(v, 50)) * 1e3,
                "p99": float(np.percentile(v, 99)) * 1e3, "rps": len(v) / wall[k]}
            for k, v in lat.items()}


def check_same_scores(ours: Server, theirs: Server, df: pd.DataFrame) -> float:
    """Largest relative difference of primary scores between the two servers."""
    b = bodies(df)
    c1 = http.client.HTTPConnection("127.0.0.1", ours.port)
    c2 = http.client.HTTPConnection("127.0.0.1", theirs.port)
    a = [r["score"] for r in json.loads(ours.post(c1, b["service"]["records"]))["results"]]
    m = [r["score"] for r in json.loads(theirs.post(c2, b["mlflow serve"]["records"]))
         ["predictions"]]
    return float(np.max(np.abs(np.subtract(a, m)) / np.maximum(np.abs(m), 1e-12)))


def train_model(workdir: Path, kind: str) -> tuple[str, str]:
    """Train a small model on the demo table into a SQLite store; (tracking URI, model URI)."""
    from pipelines.demo.run import write_demo_data
    from pipelines.train.config import TrainConfig
    from pipelines.train.run import run_training

    data = write_demo_data(workdir)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    cfg = TrainConfig(data=str(data), name="bench", kind=kind, label_column="malignant",
                      id_column="id", alias="champion", experiment="bench",
                      model={"max_epochs": 20})
    run_training(cfg, tracking_uri=uri)
    return uri, "models:/bench@champion"


def bench_model(model: str, uri: str, label: str, workdir: Path, features: pd.DataFrame,
                args: argparse.Namespace) -> list[dict]:
    """Table rows for one model: every server, every scenario and load generator, the ratios."""
    batch = pd.concat([features] * (args.batch_size // len(features) + 1)).head(args.batch_size)
    ours, ours_torch, theirs = start_servers(model, uri, workdir)
    floor = start_floor(workdir)
    rows = []
    loads = ["python", "wrk"] if args.load == "both" else [args.load]
    try:
        print(f"{label}: same scores from both servers (largest relative difference "
              f"{check_same_scores(ours, theirs, features.head(50)):.1e})", flush=True)
        scenarios = [("1 record", features.head(1), 1, args.single_requests),
                     ("1 record", features.head(1), args.clients, args.single_requests),
                     (f"{args.batch_size} records", batch, args.clients, args.batch_requests)]
        for load in loads:
            for request, df, clients, per_client in scenarios:
                b = {k: v["records"] for k, v in bodies(df).items()}
                servers = (theirs, ours, ours_torch, floor)
                if load == "wrk":
                    result = compare_wrk(servers, b, clients, args.wrk_seconds, args.rounds,
                                         workdir)
                else:
                    result = compare(servers, b, clients, per_client, args.rounds)
                base = {"model": label, "load": load, "request": request, "clients": clients}
                for server in servers:
                    r = {**result[server.label],
                         "records/s": result[server.label]["rps"] * len(df)}
                    rows.append({**base, "server": server.label,
                                 **{k: f"{v:,.2f}" for k, v in r.items()}})
                o, t, f = result["service"], result["mlflow serve"], result["floor"]
                g = result["service (torch)"]
                rows.append({**base, "server": "mlflow / service",
                             "p50": f"{t['p50'] / o['p50']:.1f}x lower",
                             "p99": f"{t['p99'] / o['p99']:.1f}x lower",
                             "rps": f"{o['rps'] / t['rps']:.1f}x more",
                             "records/s": f"{o['rps'] / t['rps']:.1f}x more"})
                rows.append({**base, "server": "service (torch) / service",
                             "p50": f"{g['p50'] / o['p50']:.2f}x",
                             "p99": f"{g['p99'] / o['p99']:.2f}x",
                             "rps": f"{o['rps'] / g['rps']:.2f}x more", "records/s": ""})
                rows.append({**base, "server": "service / floor",
                             "p50": f"{o['p50'] / f['p50']:.2f}x",
                             "p99": f"{o['p99'] / f['p99']:.2f}x",
                             "rps": f"{o['rps'] / f['rps']:.2f}x", "records/s": ""})
                print(f"  {label}: {load}, {request}, {clients} client(s) done", flush=True)
    finally:
        for s in (ours, ours_torch, theirs, floor):
            s.proc.terminate()
            s.proc.wait(timeout=30)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tracking-uri", help="MLflow store holding --model")
    p.add_argument("--model", help="model URI (default: train small ones in a temp store)")
    p.add_argument("--kind", nargs="+", default=["ae", "vae"], choices=["ae", "vae"],
                   help="kinds to train and compare when no --model is given")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients")
    p.add_argument("--single-requests", type=int, default=250, help="per client")
    p.add_argument("--batch-requests", type=int, default=15, help="per client")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5, help="alternations between the servers")
    p.add_argument("--load", choices=["python", "wrk", "both"],
                   default="both" if shutil.which("wrk") else "python",
                   help="load generator: Python client threads, wrk, or both")
    p.add_argument("--wrk-seconds", type=int, default=3,
                   help="seconds of each wrk run (one per server, scenario and round)")
    args = p.parse_args(argv)

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from pipelines.cli.text import format_table
    from pipelines.demo.run import load_demo_frame

    features = load_demo_frame().drop(columns=["id", "malignant"])
    rows: list[dict] = []
    if args.model:
        uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        workdir = Path(tempfile.mkdtemp(prefix="serving-bench-"))
        rows += bench_model(args.model, uri, args.model, workdir, features, args)
    for kind in [] if args.model else args.kind:
        workdir = Path(tempfile.mkdtemp(prefix=f"serving-bench-{kind}-"))
        print(f"training a small {kind} in {workdir} ...", flush=True)
        uri, model = train_model(workdir, kind)
        rows += bench_model(model, uri, kind, workdir, features, args)
    print()
    print(format_table(rows, ["model", "load", "request", "clients", "server", "p50", "p99",
                              "rps", "records/s"]))
    print("(p50/p99 in ms; loopback; one worker each; same model, same machine, same run; "
          f"wrk: medians over the rounds; load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
