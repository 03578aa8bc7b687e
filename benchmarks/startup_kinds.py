"""Start-up of ``anomaly serve`` for every model kind: exec to the first scored request, on a
warm cache, through the model's ONNX graph and with torch (``ANOMALY_GRAPH_RUNTIME=false``).

Each kind is trained as ``benchmarks/serving.py`` trains it, served once to fill the cache and
write its graph, then started ``--rounds`` times each way, alternated; printed: median and
range in seconds, from exec to the first 200 of a scoring request (a record, a window of
16 records, or an image).

    python benchmarks/startup_kinds.py --kind ae seq_ae conv_ae --rounds 3
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.serving import (  # noqa: E402
    IMAGE_KINDS,
    SEQUENCE_KINDS,
    TABLE_KINDS,
    free_port,
    payloads,
    start_servers,
    train_model,
    workload,
)


def first_score_s(model: str, uri: str, workdir: Path, route: str, body, env: dict) -> float:
    """Seconds from exec of ``anomaly serve`` to its first 200 on ``route``."""
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "serve", "--model", model, "--port", str(port),
         "--tracking-uri", uri, "--cache-dir", str(workdir / "cache")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        while proc.poll() is None and time.perf_counter() - t0 < 120:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("POST", f"/v1/models/bench/{route}", body.body,
                             {"Content-Type": body.content_type})
                if conn.getresponse().status == 200:
                    return time.perf_counter() - t0
            except OSError:
                pass  # not listening yet: poll again (a 20 ms step, the timing's resolution)
            time.sleep(0.02)
        raise RuntimeError(f"no scored request from the service on port {port}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", nargs="+", default=["ae", "seq_ae", "conv_ae"],
                   choices=TABLE_KINDS + IMAGE_KINDS + SEQUENCE_KINDS)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for kind in args.kind:
        workdir = Path(tempfile.mkdtemp(prefix=f"startup-{kind}-"))
        uri, model = train_model(workdir, kind)
        _, servers = start_servers(model, uri, workdir)  # fills the cache, writes the graph
        for s in servers:
            s.proc.terminate()
            s.proc.wait(timeout=30)
        (_, single), _ = workload(kind, 1)
        body = payloads(single)["service"]
        route = "score-images" if kind in IMAGE_KINDS else "score"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        times: dict[str, list[float]] = {"graph": [], "torch": []}
        for _ in range(args.rounds):
            times["graph"].append(first_score_s(model, uri, workdir, route, body, env))
            times["torch"].append(first_score_s(model, uri, workdir, route, body,
                                                {**env, "ANOMALY_GRAPH_RUNTIME": "false"}))
        for runtime, xs in times.items():
            print(f"{kind:8s} {runtime:6s} exec to first scored request: median "
                  f"{statistics.median(xs):.2f} s (range {min(xs):.2f}-{max(xs):.2f})",
                  flush=True)
    print(f"(load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
