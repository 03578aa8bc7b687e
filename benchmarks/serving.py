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
    python benchmarks/serving.py --kind conv_ae conv_vae seq_ae seq_vae --load wrk
    python benchmarks/serving.py --load wrk --wrk-seconds 2 --rounds 3
    python benchmarks/serving.py --tracking-uri sqlite:///demo-run/mlflow.db \\
        --model models:/breast-cancer@champion

Every kind is trained on data that ships with scikit-learn or is made here: tables on the
breast-cancer table, images on its 8x8 digits drawn at 28x28, sequences on a synthetic series
of 8 channels (windows of ``SEQ_WINDOW`` steps). Each server gets its natural request format:
``{"records": [...]}`` (a record, or a window's records) and ``{"columns": {...}}`` (1,000
records) here, multipart uploads to ``score-images`` for images; ``{"dataframe_split": ...}``
for MLflow, images as base64 strings in its ``image`` column. A sequence model answers one
result per record, ``warm_up`` for the first ``window - 1`` of a request.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import math
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

from training.detector.image_params import IMAGE_KINDS
from training.detector.sequence_params import SEQUENCE_KINDS
from training.params import KINDS as TABLE_KINDS


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SEQ_WINDOW, SEQ_CHANNELS = 16, 8  # the benchmark's sequence models: 16 steps of 8 channels


@dataclass(frozen=True)
class Payload:
    """A request body and its content type."""

    body: bytes
    content_type: str = "application/json"


@dataclass
class Server:
    """A server process and the path it scores on."""

    label: str
    port: int
    path: str
    proc: subprocess.Popen

    def post(self, conn: http.client.HTTPConnection, payload: Payload) -> bytes:
        conn.request("POST", self.path, payload.body, {"Content-Type": payload.content_type})
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


def _serve(model: str, tracking_uri: str, workdir: Path, env: dict[str, str], label: str,
           route: str = "score") -> Server:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "serve", "--model", model, "--port", str(port),
         "--tracking-uri", tracking_uri, "--cache-dir", str(workdir / "cache")],
        stdout=open(workdir / f"{label.replace(' ', '-')}.log", "wb"),
        stderr=subprocess.STDOUT, env=env)
    wait_ready(port, "/readyz", proc)
    return Server(label, port, f"/v1/models/{model_name(model)}/{route}", proc)


def model_name(model: str) -> str:
    """The registered name in ``models:/NAME@alias`` or ``models:/NAME/3``."""
    return model.split("/", 1)[1].split("@")[0].split("/")[0]


def model_info(server: Server, model: str) -> dict:
    """``GET /v1/models/{name}`` of the running service: the model's kind, runtime..."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", f"/v1/models/{model_name(model)}")
    return json.loads(conn.getresponse().read())


def start_servers(model: str, tracking_uri: str, workdir: Path
                  ) -> tuple[str, list[Server]]:
    """The model's kind, and its servers: ``anomaly serve`` as it restarts on a warm cache
    (through the model's ONNX graph, which a first start writes), for a table model also with
    ``ANOMALY_GRAPH_RUNTIME=false`` (torch), and ``mlflow models serve --env-manager local``,
    last."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    first = _serve(model, tracking_uri, workdir, env, "first start")
    kind = model_info(first, model)["kind"]
    deadline = time.monotonic() + 300
    while not list((workdir / "cache").glob("*/v*/graph/graph.json")):
        if time.monotonic() > deadline or first.proc.poll() is not None:
            break  # no graph runtime here: the service uses torch
        time.sleep(0.5)
    first.proc.terminate()
    first.proc.wait(timeout=30)
    mlflow_port = free_port()
    theirs = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager",
         "local", "-h", "127.0.0.1", "-p", str(mlflow_port), "--workers", "1"],
        stdout=open(workdir / "mlflow-serve.log", "wb"), stderr=subprocess.STDOUT, env=env)
    servers = [_serve(model, tracking_uri, workdir, env, "service",
                      "score-images" if kind in IMAGE_KINDS else "score")]
    if kind in TABLE_KINDS:
        servers.append(_serve(model, tracking_uri, workdir,
                              {**env, "ANOMALY_GRAPH_RUNTIME": "false"}, "service (torch)"))
    wait_ready(mlflow_port, "/ping", theirs)
    return kind, servers + [Server("mlflow serve", mlflow_port, "/invocations", theirs)]


def payloads(items: pd.DataFrame | list[bytes]) -> dict[str, Payload]:
    """Request bodies per server label for the same records (a frame) or images (PNG bytes)."""
    if isinstance(items, list):
        boundary = "benchmark-boundary"
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
                 f'filename="{i}.png"\r\nContent-Type: image/png\r\n\r\n'.encode() + png
                 + b"\r\n" for i, png in enumerate(items)]
        ours = Payload(b"".join(parts) + f"--{boundary}--\r\n".encode(),
                       f"multipart/form-data; boundary={boundary}")
        theirs = {"columns": ["image"],
                  "data": [[base64.b64encode(png).decode()] for png in items]}
    else:
        ours = Payload(json.dumps({"records": items.to_dict(orient="records")}).encode()
                       if len(items) <= SEQ_WINDOW
                       else json.dumps({"columns": items.to_dict(orient="list")}).encode())
        theirs = {"columns": list(items.columns), "data": items.to_numpy().tolist()}
    return {"service": ours, "service (torch)": ours, "floor": ours,
            "mlflow serve": Payload(json.dumps({"dataframe_split": theirs}).encode())}


def run_load(server: Server, body: Payload, clients: int, per_client: int,
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
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE")
"""


def run_wrk(server: Server, body: Payload, clients: int, seconds: int, workdir: Path
            ) -> dict[str, float]:
    """p50/p99 latency (ms) and requests/s of ``wrk`` (one thread, ``clients`` connections)
    posting ``body`` for ``seconds``."""
    script, body_file = workdir / "post.lua", workdir / "body.json"
    script.write_text(_WRK_SCRIPT)
    body_file.write_bytes(body.body)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "300s", "--latency", "-s",
         str(script), f"http://127.0.0.1:{server.port}{server.path}"],
        capture_output=True, text=True, check=True, timeout=seconds + 360,
        env={**os.environ, "WRK_BODY": str(body_file),
             "WRK_CONTENT_TYPE": body.content_type}).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"{server.label}: wrk got errors:\n{out}")
    got = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "99%"):
            got["p50" if parts[0] == "50%" else "p99"] = _ms(parts[1])
        elif line.startswith("Requests/sec:"):
            got["rps"] = float(parts[1])
    if not got.get("rps") or "p50" not in got:
        raise RuntimeError(f"{server.label}: no request completed in {seconds}s:\n{out}")
    return got


def _ms(text: str) -> float:
    """wrk's latency ("512.00us", "1.20ms", "2.01s") in ms."""
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    raise ValueError(f"unknown latency {text!r}")


def compare_wrk(servers: list[Server], bodies_: dict[str, Payload], clients: int,
                seconds: int, rounds: int, workdir: Path) -> dict[str, dict[str, float]]:
    """:func:`compare` with ``wrk`` as the client: per server, the median over the rounds of
    p50, p99 and requests/s. Each run lasts ``seconds``, or longer for slow requests: about 5
    requests per connection at the slowest server's pace (timed once beforehand)."""
    got: dict[str, list[dict[str, float]]] = {s.label: [] for s in servers}
    slowest = max(_one_request_s(s, bodies_[s.label]) for s in servers)
    seconds = max(seconds, math.ceil(5 * clients * slowest))
    for _ in range(rounds):
        for server in servers:
            got[server.label].append(run_wrk(server, bodies_[server.label], clients, seconds,
                                             workdir))
    return {k: {m: float(np.median([r[m] for r in v])) for m in ("p50", "p99", "rps")}
            for k, v in got.items()}


def _one_request_s(server: Server, body: Payload) -> float:
    """Seconds of one request (after one to warm up)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    server.post(conn, body)
    t = time.perf_counter()
    server.post(conn, body)
    return time.perf_counter() - t


def compare(servers: list[Server], bodies_: dict[str, Payload], clients: int,
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


def check_same_scores(ours: Server, theirs: Server, items: pd.DataFrame | list[bytes]
                      ) -> float:
    """Largest relative difference of primary scores between the two servers (records a
    sequence model leaves without a score, its warm-up, must be the same on both)."""
    b = payloads(items)
    c1 = http.client.HTTPConnection("127.0.0.1", ours.port)
    c2 = http.client.HTTPConnection("127.0.0.1", theirs.port)
    a = np.array([r["score"] for r in json.loads(ours.post(c1, b["service"]))["results"]],
                 dtype=float)
    m = np.array([r["score"] for r in json.loads(theirs.post(c2, b["mlflow serve"]))
                  ["predictions"]], dtype=float)
    if a.shape != m.shape or not np.array_equal(np.isnan(a), np.isnan(m)):
        raise RuntimeError(f"different results: {a[:5]} against {m[:5]}")
    keep = ~np.isnan(a)
    return float(np.max(np.abs(a[keep] - m[keep]) / np.maximum(np.abs(m[keep]), 1e-12)))


def digit_pngs(side: int = 28) -> list[bytes]:
    """scikit-learn's 1,797 8x8 digits, drawn at ``side`` x ``side``, as grayscale PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    out = []
    for image in load_digits().images:
        buf = io.BytesIO()
        Image.fromarray(np.uint8(image * 255 / 16)).resize((side, side)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def sensor_series(n: int, seed: int = 0, t0: int = 0) -> pd.DataFrame:
    """``n`` steps of ``SEQ_CHANNELS`` noisy sinusoids of different periods and phases, with a
    time column ``t``."""
    rng = np.random.default_rng(seed)
    t = np.arange(t0, t0 + n)
    period = rng.uniform(10, 60, size=SEQ_CHANNELS)
    phase = rng.uniform(0, 2 * np.pi, size=SEQ_CHANNELS)
    values = np.sin(2 * np.pi * t[:, None] / period + phase) \
        + 0.05 * rng.normal(size=(n, SEQ_CHANNELS))
    return pd.DataFrame({"t": t, **{f"s{c}": values[:, c] for c in range(SEQ_CHANNELS)}})


def train_model(workdir: Path, kind: str) -> tuple[str, str]:
    """Train a small model of ``kind`` into a SQLite store; (tracking URI, model URI)."""
    from pipelines.demo.run import write_demo_data
    from pipelines.train.config import TrainConfig
    from pipelines.train.run import run_training

    model: dict = {"max_epochs": 20}
    extra: dict = {"label_column": "malignant", "id_column": "id"}
    if kind in IMAGE_KINDS:
        data = workdir / "digits"
        data.mkdir()
        for i, png in enumerate(digit_pngs()):
            (data / f"{i:04d}.png").write_bytes(png)
        model, extra = {"max_epochs": 5}, {}
    elif kind in SEQUENCE_KINDS:
        data = workdir / "series.csv"
        sensor_series(3000).to_csv(data, index=False)
        model, extra = {"max_epochs": 10, "time_column": "t", "window": SEQ_WINDOW}, {}
    else:
        data = write_demo_data(workdir)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    cfg = TrainConfig(data=str(data), name="bench", kind=kind, alias="champion",
                      experiment="bench", model=model, **extra)
    run_training(cfg, tracking_uri=uri)
    return uri, "models:/bench@champion"


def workload(kind: str, batch_size: int) -> tuple[tuple[str, object], tuple[str, object]]:
    """``(label, items)`` of the single request and of the batch request for ``kind``: records
    of the demo table, digit images, or a sensor series (one window; a longer stretch)."""
    if kind in IMAGE_KINDS:
        pngs = digit_pngs()
        return ("1 image", pngs[:1]), (f"{batch_size} images",
                                       (pngs * (batch_size // len(pngs) + 1))[:batch_size])
    if kind in SEQUENCE_KINDS:
        series = sensor_series(batch_size, seed=1)
        return (f"1 window ({SEQ_WINDOW} records)", series.head(SEQ_WINDOW)), \
            (f"{batch_size} records", series)
    from pipelines.demo.run import load_demo_frame

    features = load_demo_frame().drop(columns=["id", "malignant"])
    batch = pd.concat([features] * (batch_size // len(features) + 1)).head(batch_size)
    return ("1 record", features.head(1)), (f"{batch_size} records", batch)


def bench_model(model: str, uri: str, label: str, workdir: Path, args: argparse.Namespace
                ) -> list[dict]:
    """Table rows for one model: every server, every scenario and load generator, the ratios."""
    kind, servers = start_servers(model, uri, workdir)
    servers.append(start_floor(workdir))
    by_label = {s.label: s for s in servers}
    print(f"{label}: the service scores with "
          f"{model_info(by_label['service'], model)['runtime']}", flush=True)
    (single_label, single), (batch_label, batch) = workload(kind, args.batch_size)
    rows = []
    loads = ["python", "wrk"] if args.load == "both" else [args.load]
    try:
        check = batch[:50] if isinstance(batch, list) else batch.head(50)
        print(f"{label}: same scores from both servers (largest relative difference "
              f"{check_same_scores(by_label['service'], by_label['mlflow serve'], check):.1e})",
              flush=True)
        scenarios = [(single_label, single, 1, args.single_requests),
                     (single_label, single, args.clients, args.single_requests),
                     (batch_label, batch, args.clients, args.batch_requests)]
        for load in loads:
            for request, items, clients, per_client in scenarios:
                b = payloads(items)
                if load == "wrk":
                    result = compare_wrk(servers, b, clients, args.wrk_seconds, args.rounds,
                                         workdir)
                else:
                    result = compare(servers, b, clients, per_client, args.rounds)
                n = len(items)
                base = {"model": label, "load": load, "request": request, "clients": clients}
                for server in servers:
                    r = {**result[server.label],
                         "records/s": result[server.label]["rps"] * n}
                    rows.append({**base, "server": server.label,
                                 **{k: f"{v:,.2f}" for k, v in r.items()}})
                rows += ratio_rows(base, result)
                print(f"  {label}: {load}, {request}, {clients} client(s) done", flush=True)
    finally:
        for s in servers:
            s.proc.terminate()
            s.proc.wait(timeout=30)
    return rows


def ratio_rows(base: dict, result: dict[str, dict[str, float]]) -> list[dict]:
    """The service against MLflow, against itself on torch (table models), and the floor."""
    o, t, f = result["service"], result["mlflow serve"], result["floor"]
    rows = [{**base, "server": "mlflow / service", "p50": f"{t['p50'] / o['p50']:.1f}x lower",
             "p99": f"{t['p99'] / o['p99']:.1f}x lower", "rps": f"{o['rps'] / t['rps']:.1f}x more",
             "records/s": f"{o['rps'] / t['rps']:.1f}x more"}]
    if (g := result.get("service (torch)")) is not None:
        rows.append({**base, "server": "service (torch) / service",
                     "p50": f"{g['p50'] / o['p50']:.2f}x", "p99": f"{g['p99'] / o['p99']:.2f}x",
                     "rps": f"{o['rps'] / g['rps']:.2f}x more", "records/s": ""})
    rows.append({**base, "server": "service / floor", "p50": f"{o['p50'] / f['p50']:.2f}x",
                 "p99": f"{o['p99'] / f['p99']:.2f}x", "rps": f"{o['rps'] / f['rps']:.2f}x",
                 "records/s": ""})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tracking-uri", help="MLflow store holding --model")
    p.add_argument("--model", help="a table model URI taking the demo table's 30 columns "
                   "(default: train small ones in a temp store)")
    p.add_argument("--kind", nargs="+", default=["ae", "vae"],
                   choices=TABLE_KINDS + IMAGE_KINDS + SEQUENCE_KINDS,
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

    rows: list[dict] = []
    if args.model:
        uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        workdir = Path(tempfile.mkdtemp(prefix="serving-bench-"))
        rows += bench_model(args.model, uri, args.model, workdir, args)
    for kind in [] if args.model else args.kind:
        workdir = Path(tempfile.mkdtemp(prefix=f"serving-bench-{kind}-"))
        print(f"training a small {kind} in {workdir} ...", flush=True)
        uri, model = train_model(workdir, kind)
        rows += bench_model(model, uri, kind, workdir, args)
    print()
    print(format_table(rows, ["model", "load", "request", "clients", "server", "p50", "p99",
                              "rps", "records/s"]))
    print("(p50/p99 in ms; loopback; one worker each; same model, same machine, same run; "
          f"wrk: medians over the rounds; load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
