"""Latency of the protocol routes against the native /v1 route, same service, same model.

One ``anomaly serve`` process; one client with a keep-alive connection sends the same records
as ``/v1/models/NAME/score`` (``records`` for one record, ``columns`` for a batch),
``/invocations`` (``dataframe_split``, as MLflow's client writes it) and
``/v2/models/NAME/infer`` (one FP64 tensor per column, as JSON and as binary tensor data,
tritonclient's default). The routes take turns for ``--rounds`` rounds so that load from
elsewhere hits them alike. Printed: p50 and p90 latency per route and request size, and each
route's p50 relative to /v1.

    python benchmarks/protocols.py            # trains a small VAE in a temporary store
    python benchmarks/protocols.py --tracking-uri sqlite:///demo-run/mlflow.db \\
        --model models:/breast-cancer@champion
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.serving import free_port, train_model, wait_ready


def bodies(name: str, df: pd.DataFrame) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    """Per route label: (path, body, headers) for the same records."""
    json_type = {"Content-Type": "application/json"}
    native = ({"records": df.to_dict(orient="records")} if len(df) == 1
              else {"columns": df.to_dict(orient="list")})
    split = {"dataframe_split": {"columns": list(df.columns), "data": df.to_numpy().tolist()}}
    tensors = [{"name": c, "shape": [len(df)], "datatype": "FP64",
                "data": df[c].to_numpy(np.float64).tolist()} for c in df.columns]
    raw = [df[c].to_numpy(np.float64).astype("<f8").tobytes() for c in df.columns]
    head = json.dumps({"inputs": [{"name": c, "shape": [len(df)], "datatype": "FP64",
                                   "parameters": {"binary_data_size": len(r)}}
                                  for c, r in zip(df.columns, raw)],
                       "parameters": {"binary_data_output": True}}).encode()
    return {
        "/v1 score": (f"/v1/models/{name}/score", json.dumps(native).encode(), json_type),
        "/invocations": ("/invocations", json.dumps(split).encode(), json_type),
        "/v2 infer (JSON)": (f"/v2/models/{name}/infer",
                             json.dumps({"inputs": tensors}).encode(), json_type),
        "/v2 infer (binary)": (f"/v2/models/{name}/infer", head + b"".join(raw),
                               {"Inference-Header-Content-Length": str(len(head))}),
    }


def timed(conn: http.client.HTTPConnection, request: tuple[str, bytes, dict[str, str]],
          n: int) -> list[float]:
    """Seconds each of ``n`` POSTs took."""
    path, body, headers = request
    out = []
    for _ in range(n):
        t = time.perf_counter()
        conn.request("POST", path, body, headers)
        resp = conn.getresponse()
        data = resp.read()
        out.append(time.perf_counter() - t)
        if resp.status != 200:
            raise RuntimeError(f"{path}: HTTP {resp.status}: {data[:300]!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tracking-uri", help="MLflow store holding --model")
    p.add_argument("--model", help="model URI (default: train a small VAE in a temp store)")
    p.add_argument("--single-requests", type=int, default=200, help="per route and round")
    p.add_argument("--batch-requests", type=int, default=20, help="per route and round")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from pipelines.cli.text import format_table
    from pipelines.demo.run import load_demo_frame

    workdir = Path(tempfile.mkdtemp(prefix="protocols-bench-"))
    if args.model:
        uri, model = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", ""), args.model
    else:
        print(f"training a small vae in {workdir} ...", flush=True)
        uri, model = train_model(workdir, "vae")
    name = model.split("/", 1)[1].split("@")[0].split("/")[0]
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "serve", "--model", model, "--port", str(port),
         "--tracking-uri", uri, "--cache-dir", str(workdir / "cache")],
        stdout=open(workdir / "service.log", "wb"), stderr=subprocess.STDOUT)
    features = load_demo_frame().drop(columns=["id", "malignant"])
    batch = pd.concat([features] * (args.batch_size // len(features) + 1)).head(args.batch_size)
    rows = []
    try:
        wait_ready(port, "/readyz", proc)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for label, df, n in (("1 record", features.head(1), args.single_requests),
                             (f"{len(batch)} records", batch, args.batch_requests)):
            requests = bodies(name, df)
            lat: dict[str, list[float]] = {k: [] for k in requests}
            for req in requests.values():  # warm-up
                timed(conn, req, 3)
            for _ in range(args.rounds):
                for k, req in requests.items():
                    lat[k] += timed(conn, req, n)
            base = float(np.median(lat["/v1 score"]))
            for k, v in lat.items():
                p50 = float(np.median(v))
                rows.append({"request": label, "route": k, "p50 ms": f"{p50 * 1e3:.2f}",
                             "p90 ms": f"{np.percentile(v, 90) * 1e3:.2f}",
                             "vs /v1": f"{(p50 / base - 1) * 100:+.0f}%"})
            print(f"  {label} done", flush=True)
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print()
    print(format_table(rows, ["request", "route", "p50 ms", "p90 ms", "vs /v1"]))
    print("(one client, keep-alive, loopback; p50 relative to /v1 score in the same run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
