"""Batch scoring speed and memory: end to end (Parquet in -> Parquet out) vs the raw forward pass.

For each size, a Parquet file of breast-cancer-shaped rows is scored by ``anomaly score`` in a
child process (its peak RSS from ``getrusage(RUSAGE_CHILDREN)``, so it is the job's own
memory), and the same rows, already in memory as a float32 matrix, go through the network's
forward pass in another child (the ceiling: no I/O, no preprocessing, no p-values).

    nice python benchmarks/batch.py [--rows 100000 1000000] [--epochs 5] [--kind ae|vae]

For a VAE the forward pass is one reparameterised pass, while its scores take ``mc_samples``
decoder passes per record plus the ``agg_elbo`` prior term: the ratio shows that work too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger("benchmarks.batch")

_FORWARD = """
import json, resource, sys, time
import numpy as np, pyarrow.parquet as pq, torch
from pipelines.batch.model import load_batch_model
from pipelines.registry.tracking import use_tracking_uri
from pathlib import Path
import tempfile
uri = use_tracking_uri(sys.argv[1])
torch.set_num_threads(int(sys.argv[4]))
m = load_batch_model(sys.argv[2], Path(tempfile.mkdtemp()), tracking_uri=uri)
X, _ = m.detector.preprocessor_.transform(pq.read_table(sys.argv[3]).to_pandas())
x = torch.from_numpy(X)
net = m.detector.network_
with torch.no_grad():
    t = time.perf_counter()
    for i in range(0, len(x), 8192):
        net(x[i:i + 8192])
    s = time.perf_counter() - t
print(json.dumps({"seconds": s}))
"""


def _peak_child_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--kind", choices=["ae", "vae"], default="ae", help="model kind to score with")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in both children")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from pipelines.cli.text import format_table
    from pipelines.demo.run import load_demo_frame, write_demo_data

    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        folder = Path(tmp)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        csv = write_demo_data(folder)
        subprocess.run([sys.executable, "-m", "pipelines.cli", "train", "--data", str(csv),
                        "--kind", args.kind, "--name", "bench", "--id-column", "id",
                        "--label-column", "malignant", "--epochs", str(args.epochs),
                        "--tracking-uri", uri], check=True, capture_output=True, env=env)
        model = "models:/bench@challenger"
        base = load_demo_frame()
        rng = np.random.default_rng(0)
        for n in args.rows:
            src = folder / f"in-{n}.parquet"
            df = base.iloc[rng.integers(0, len(base), n)].reset_index(drop=True)
            df["id"] = np.arange(n)
            df.to_parquet(src, row_group_size=100_000)
            del df
            log.info("scoring %d rows ...", n)
            secs, mb, out = _child(
                [sys.executable, "-m", "pipelines.cli", "score", "--model", model,
                 "--input", str(src), "--output", str(folder / f"out-{n}.parquet"),
                 "--tracking-uri", uri], env)
            job_rate = float(out.strip().splitlines()[-1].split("(")[1].split()[0])
            fsecs, fmb, fout = _child([sys.executable, "-c", _FORWARD, uri, model, str(src),
                                       str(args.threads)], env)
            fwd = json.loads(fout.strip().splitlines()[-1])["seconds"]
            rows.append({
                "rows": f"{n:,}",
                "end-to-end rows/s": f"{n / secs:,.0f}",
                "scoring rows/s": f"{job_rate:,.0f}",
                "forward rows/s": f"{n / fwd:,.0f}",
                "e2e / forward": f"{(n / secs) / (n / fwd):.3f}",
                "scoring / forward": f"{job_rate / (n / fwd):.3f}",
                "e2e peak MB": f"{mb:,.0f}",
                "forward peak MB": f"{fmb:,.0f}",
            })
            (folder / f"out-{n}.parquet").unlink()
            src.unlink()
    print(format_table(rows, list(rows[0])))
    print("end-to-end: the whole `anomaly score` process (start-up, model download, MLflow run, "
          "read, score, write);\nscoring: rows/s the job reports over reading, scoring and "
          "writing; forward: the network alone on an in-memory float32 matrix (peak MB of "
          "that process holds the whole matrix).")


if __name__ == "__main__":
    main()
