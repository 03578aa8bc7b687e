"""Batch scoring speed and memory: end to end (Parquet in -> Parquet out) vs the same scores
computed in memory.

For each model kind and size, a Parquet file of breast-cancer-shaped rows (written row group by
row group, so 10M rows need no 10M-row frame) is scored by ``anomaly score`` in a child process
(its peak RSS from ``getrusage(RUSAGE_CHILDREN)``, so it is the job's own memory). Another
child holds the same rows as a float32 matrix and times the ceilings: the network's bare
forward pass, and the scoring arithmetic (``_raw_from_matrix``: every score kind, for a VAE its
Monte-Carlo draws and aggregate-prior term, without reading, preprocessing, p-values or
output). A start-up row times the job on a single record: the fixed cost (process start,
imports, the registry, the MLflow run) that large inputs spread over their rows. Each job runs
twice (``--runtimes``): through the cached model's ONNX graph, as every job after a model's
first does, and with torch (``ANOMALY_GRAPH_RUNTIME=false``); the ceilings are torch's.

    python benchmarks/batch.py [--kinds ae vae] [--rows 1000000 3000000 10000000] [--epochs 5]
    python benchmarks/batch.py --kinds vae --rows 1000000 --profile   # where the time goes

``--profile`` scores the largest size once more in a child that times each stage of the job
(start-up, read, preprocessing, scoring arithmetic, p-values per score kind, output encoding,
write, the MLflow run) and prints them as a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("benchmarks.batch")

_IN_MEMORY = """
import json, sys, time
import numpy as np, pyarrow.parquet as pq, torch
from pipelines.batch.model import load_batch_model
from pipelines.registry.tracking import use_tracking_uri
from pathlib import Path
import tempfile
uri = use_tracking_uri(sys.argv[1])
torch.set_num_threads(int(sys.argv[4]))
m = load_batch_model(sys.argv[2], Path(tempfile.mkdtemp()), tracking_uri=uri)
det = m.detector
parts = [det.preprocessor_.transform(b.to_pandas())[0]
         for b in pq.ParquetFile(sys.argv[3]).iter_batches(100_000)]
X = np.concatenate(parts)
del parts
x = torch.from_numpy(X)
net = det.network_
with torch.no_grad():
    t = time.perf_counter()
    for i in range(0, len(x), 8192):
        net(x[i:i + 8192])
    forward = time.perf_counter() - t
t = time.perf_counter()
det._raw_from_matrix(X)
scores = time.perf_counter() - t
print(json.dumps({"forward": forward, "scores": scores}))
"""

# Times each stage of one job in-process (wrapping the functions that do them) and prints them.
_PROFILE = """
import json, sys, time
T0 = time.perf_counter()
import numpy as np
from collections import defaultdict
spent = defaultdict(float)
def timed(owner, name, label):
    f = getattr(owner, name)
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            spent[label] += time.perf_counter() - t
    setattr(owner, name, wrapper)
from pipelines.batch import io
from pipelines.batch.engines import tables
from pipelines.cli.main import main
from training.calibration import ScoreCalibration
from training.detector.base import BaseDetector
first = []
chunks = io.TableReader.chunks
def timed_chunks(self, columns):
    it = chunks(self, columns)
    while True:
        t = time.perf_counter()
        first.append(t)
        try:
            chunk = next(it)
        except StopIteration:
            spent["read"] += time.perf_counter() - t
            return
        spent["read"] += time.perf_counter() - t
        yield chunk
io.TableReader.chunks = timed_chunks
timed(tables, "_scored_batch", "scoring, all stages")
timed(BaseDetector, "_raw_from_matrix", "scoring arithmetic")
from training.detector.graph import GraphScorer
timed(GraphScorer, "_raw_from_matrix", "scoring arithmetic")
kinds = {}
p_values = ScoreCalibration.p_values
def timed_p_values(self, scores):
    t = time.perf_counter()
    try:
        return p_values(self, scores)
    finally:
        spent[f"p-values {kinds.get(id(self), '?')}"] += time.perf_counter() - t
ScoreCalibration.p_values = timed_p_values
matrix = BaseDetector._matrix
def remember(self, *a, **k):
    for k_, c in getattr(self, "calibrations_", {}).items():
        kinds[id(c)] = k_
    return matrix(self, *a, **k)
BaseDetector._matrix = remember
timed(BaseDetector, "_matrix", "preprocessing (validate, encode)")
graph_matrix = GraphScorer._matrix
def graph_remember(self, *a, **k):
    for k_, c in self.calibrations_.items():
        kinds[id(c)] = k_
    return graph_matrix(self, *a, **k)
GraphScorer._matrix = graph_remember
timed(GraphScorer, "_matrix", "preprocessing (validate, encode)")
timed(io.AtomicTableWriter, "write", "write")
code = main(sys.argv[1:])
total = time.perf_counter() - T0
spent["start-up (imports, registry, model, checks, run start)"] = first[0] - T0 if first else 0.0
print(json.dumps({"total": total, "spent": spent, "code": code}))
"""


def _child(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and stdout of a child process.

    ``RUSAGE_CHILDREN`` reports the largest child so far, so each measurement runs in a fresh
    grandchild started from a small launcher whose only child it is.
    """
    launcher = ("import json,resource,subprocess,sys,time;t=time.perf_counter();"
                "p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
                "s=time.perf_counter()-t;"
                "r=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024;"
                "sys.stderr.write(p.stderr[-3000:]);"
                "print(json.dumps({'s':s,'mb':r,'rc':p.returncode,'out':p.stdout}))")
    p = subprocess.run([sys.executable, "-c", launcher, *cmd], capture_output=True, text=True,
                       env=env)
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise RuntimeError(f"{cmd[:4]} failed: {p.stderr[-1500:]}")
    return res["s"], res["mb"], res["out"]


def write_rows(path: Path, n: int, seed: int = 0, group: int = 100_000) -> None:
    """``n`` demo-shaped rows (the demo's rows resampled, ids 0..n-1) as Parquet, written one
    row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.demo.run import load_demo_frame

    base = load_demo_frame()
    rng = np.random.default_rng(seed)
    writer = None
    try:
        for start in range(0, n, group):
            m = min(group, n - start)
            df = base.iloc[rng.integers(0, len(base), m)].reset_index(drop=True)
            df["id"] = np.arange(start, start + m)
            table = pa.Table.from_pandas(df, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table, row_group_size=group)
    finally:
        if writer is not None:
            writer.close()


def _train(kind: str, csv: Path, uri: str, epochs: int, env: dict[str, str]) -> str:
    subprocess.run([sys.executable, "-m", "pipelines.cli", "train", "--data", str(csv),
                    "--kind", kind, "--name", f"bench-{kind}", "--id-column", "id",
                    "--label-column", "malignant", "--epochs", str(epochs),
                    "--tracking-uri", uri], check=True, capture_output=True, env=env)
    return f"models:/bench-{kind}@challenger"


def _score_cmd(model: str, src: Path, out: Path, uri: str) -> list[str]:
    return ["score", "--model", model, "--input", str(src), "--output", str(out),
            "--tracking-uri", uri]


def _wait_for_graph(folder: Path, timeout: float = 600.0) -> None:
    """Until a graph of the model cached in ``folder`` is complete."""
    deadline = time.monotonic() + timeout
    while not list(folder.glob("v*/graph/graph.json")):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no graph written in {folder}")
        time.sleep(0.5)


def profile_table(model: str, src: Path, out: Path, uri: str, env: dict[str, str],
                  n: int) -> list[dict[str, str]]:
    """Seconds per stage of one job on ``src`` (see ``_PROFILE``), largest first."""
    secs, _, stdout = _child([sys.executable, "-c", _PROFILE, *_score_cmd(model, src, out, uri)],
                             env)
    res = json.loads(stdout.strip().splitlines()[-1])
    spent = dict(res["spent"])
    inner = sum(v for k, v in spent.items()
                if k.startswith(("preprocessing", "scoring arithmetic", "p-values")))
    spent["output encoding (frames, Arrow arrays)"] = spent.pop("scoring, all stages") - inner
    spent["the rest (MLflow run end, rename, exit)"] = secs - sum(spent.values())
    rows = [{"stage": k, "seconds": f"{v:.2f}", "share": f"{v / secs:.1%}",
             "rows/s alone": f"{n / v:,.0f}" if v > 0 else "-"}
            for k, v in sorted(spent.items(), key=lambda kv: -kv[1])]
    rows.append({"stage": "total (exec to exit)", "seconds": f"{secs:.2f}", "share": "100%",
                 "rows/s alone": f"{n / secs:,.0f}"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--kinds", nargs="+", choices=["ae", "vae"], default=["ae", "vae"],
                    help="model kinds to score with (the VAE with its defaults)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every child")
    ap.add_argument("--runtimes", nargs="+", choices=["graph", "torch"],
                    default=["graph", "torch"],
                    help="score each size through the cached model's ONNX graph (the default "
                    "once the first job has written it) and/or with torch "
                    "(ANOMALY_GRAPH_RUNTIME=false)")
    ap.add_argument("--profile", action="store_true",
                    help="also time each stage of a job on the largest size")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from pipelines.cli.text import format_table
    from pipelines.demo.run import write_demo_data

    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    rows, profiles = [], {}
    anomaly = [sys.executable, "-m", "pipelines.cli"]
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        folder = Path(tmp)
        env["ANOMALY_CACHE_DIR"] = str(folder / "cache")
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        csv = write_demo_data(folder)
        models = {k: _train(k, csv, uri, args.epochs, env) for k in args.kinds}
        one = folder / "in-1.parquet"
        write_rows(one, 1)
        envs = {"graph": env, "torch": {**env, "ANOMALY_GRAPH_RUNTIME": "false"}}
        for kind, model in models.items():
            # The first job caches the model and writes its graph in the background.
            _child([*anomaly, *_score_cmd(model, one, folder / "o.parquet", uri)], env)
            _wait_for_graph(folder / "cache" / f"bench-{kind}")
            for runtime in args.runtimes:
                secs, mb, _ = _child(
                    [*anomaly, *_score_cmd(model, one, folder / "o.parquet", uri)],
                    envs[runtime])
                rows.append({"model": f"{kind} ({runtime})", "rows": "1 (start-up)",
                             "end-to-end rows/s": "-", "scoring rows/s": "-",
                             "in-memory scores rows/s": "-", "forward rows/s": "-",
                             "e2e / in-memory scores": "-", "e2e / forward": "-",
                             "e2e s": f"{secs:.1f}", "e2e peak MB": f"{mb:,.0f}",
                             "in-memory peak MB": "-"})
        for n in args.rows:
            src = folder / f"in-{n}.parquet"
            write_rows(src, n)
            for kind, model in models.items():
                out = folder / f"out-{n}.parquet"
                _, fmb, fout = _child([sys.executable, "-c", _IN_MEMORY, uri, model, str(src),
                                       str(args.threads)], env)
                mem = json.loads(fout.strip().splitlines()[-1])
                fwd, sc = n / mem["forward"], n / mem["scores"]
                for runtime in args.runtimes:
                    log.info("%s (%s): scoring %d rows ...", kind, runtime, n)
                    secs, mb, stdout = _child([*anomaly, *_score_cmd(model, src, out, uri)],
                                              envs[runtime])
                    job_rate = float(stdout.strip().splitlines()[-1].split("(")[1].split()[0])
                    e2e = n / secs
                    rows.append({
                        "model": f"{kind} ({runtime})", "rows": f"{n:,}",
                        "end-to-end rows/s": f"{e2e:,.0f}",
                        "scoring rows/s": f"{job_rate:,.0f}",
                        "in-memory scores rows/s": f"{sc:,.0f}",
                        "forward rows/s": f"{fwd:,.0f}",
                        "e2e / in-memory scores": f"{e2e / sc:.3f}",
                        "e2e / forward": f"{e2e / fwd:.3f}", "e2e s": f"{secs:.1f}",
                        "e2e peak MB": f"{mb:,.0f}", "in-memory peak MB": f"{fmb:,.0f}",
                    })
                    if args.profile and n == max(args.rows):
                        profiles[f"{kind} ({runtime})"] = profile_table(
                            model, src, out, uri, envs[runtime], n)
                    out.unlink()
            src.unlink()
    print(format_table(rows, list(rows[0])))
    print("end-to-end: the whole `anomaly score` process (start-up, registry, MLflow run, "
          "read, score, write);\nscoring: rows/s the job reports over reading, scoring and "
          "writing; in-memory scores: every score kind of the model on an in-memory float32 "
          "matrix;\nforward: the network's bare forward pass on it (that process holds the "
          "whole matrix), both with torch. graph: the job scores through the cached model's "
          "ONNX graph; torch: ANOMALY_GRAPH_RUNTIME=false.\n"
          f"{args.threads} thread(s); load average {os.getloadavg()[0]:.2f}.")
    for kind, table in profiles.items():
        print(f"\n{kind}, {max(args.rows):,} rows: where the time goes")
        print(format_table(table, list(table[0])))


if __name__ == "__main__":
    main()
