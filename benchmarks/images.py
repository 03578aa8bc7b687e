"""Batch scoring of image files: ``anomaly score`` on a folder of PNGs against the decode and
scoring ceilings of the same images.

A folder of ``--images`` PNGs (MNIST test digits, cycled and, with ``--side``, resized) is
scored by ``anomaly score`` in a child process, once per ``--decode-workers`` setting, in
alternated rounds; a start-up row times the same job on a folder of one image (process start,
imports, the registry, the MLflow run). Jobs score through the model's cached ONNX graph
(written after the first job) as ``anomaly score`` does by default; the same jobs with
``ANOMALY_GRAPH_RUNTIME=false`` (torch, the first ``--workers`` setting) run beside them.
Another child, with the model loaded, times the ceilings on the same files: decoding every file
alone (``pre.image``: read, decode, check, resize), the network's forward pass alone and the
detector's full scoring (every score, p-value and the result frame) on the decoded images in
memory, and decoding through the job's own reader
(:func:`pipelines.batch.engines.images.decoded_chunks`) with each thread count.

    python benchmarks/images.py [--images 10000] [--side 28] [--workers 0 1 2] [--rounds 3]

Needs ``../shared/datasets/mnist/t10k-images-idx3-ubyte.gz`` (or ``--mnist PATH``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("benchmarks.images")

_CEILINGS = """
import json, sys, time
from pathlib import Path
import tempfile
import numpy as np, torch
from pipelines.batch.engines.images import decoded_chunks
from pipelines.batch.model import load_batch_model
from pipelines.registry.tracking import use_tracking_uri
from training.data.images import image_files
uri = use_tracking_uri(sys.argv[1])
m = load_batch_model(sys.argv[2], Path(tempfile.mkdtemp()), tracking_uri=uri)
det, files = m.detector, image_files(Path(sys.argv[3]))
pre = det.preprocessor_
out = {}
t = time.perf_counter()
images = np.stack([pre.image(f, str(f)) for f in files])
out["decode"] = time.perf_counter() - t
for w in json.loads(sys.argv[4]):
    t = time.perf_counter()
    n = sum(len(chunk) for _, chunk in decoded_chunks(pre, files, w))
    out[f"decode, {w} threads"] = time.perf_counter() - t
x = torch.from_numpy(images.reshape(len(images), -1))  # the network reads flat rows
with torch.no_grad():
    t = time.perf_counter()
    for i in range(0, len(x), 256):
        det.network_(x[i:i + 256])
    out["forward"] = time.perf_counter() - t
t = time.perf_counter()
for i in range(0, len(images), 256):
    det.score(images[i:i + 256], source="memory")
out["score"] = time.perf_counter() - t
print(json.dumps(out))
"""


def write_pngs(folder: Path, n: int, mnist: Path, side: int, offset: int = 0) -> None:
    """``n`` PNGs of MNIST digits (cycled from ``offset``) into ``folder``, ``side`` pixels a
    side."""
    from PIL import Image

    from training.data.images import read_idx_images

    digits, _ = read_idx_images(mnist)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = Image.fromarray(digits[(offset + i) % len(digits)])
        if side != img.width:
            img = img.resize((side, side), Image.Resampling.BILINEAR)
        img.save(folder / f"{i:05d}.png")


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[:5]} failed: {p.stderr[-1500:]}")
    return time.perf_counter() - t, p.stdout


def _score(model: str, src: Path, out: Path, uri: str, workers: int) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "score", "--model", model, "--input",
            str(src), "--output", str(out), "--tracking-uri", uri, "--decode-workers",
            str(workers)]


def _wait_for_graph(graph: Path, timeout: float = 300) -> None:
    """Until the background export after the first job has written ``graph``."""
    from training.detector.graph_files import graph_ready

    deadline = time.monotonic() + timeout
    while not graph_ready(graph):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{graph}: no graph after {timeout:.0f} s")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    from pipelines.cli.text import format_table

    p = argparse.ArgumentParser(prog="python benchmarks/images.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--side", type=int, default=28, help="pixels a side of the PNGs")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                   help="--decode-workers settings to compare")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--mnist", type=Path,
                   default=Path("../shared/datasets/mnist/t10k-images-idx3-ubyte.gz"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "PYTHONPATH": str(root), "ANOMALY_CACHE_DIR": str(tmp / "cache"),
               "ANOMALY_GRAPH_RUNTIME": "true"}
        torch_env = {**env, "ANOMALY_GRAPH_RUNTIME": "false"}
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        log.info("writing %d + 1,000 PNGs of %d pixels a side", args.images, args.side)
        write_pngs(tmp / "train", 1000, args.mnist, args.side, offset=args.images)
        write_pngs(tmp / "images", args.images, args.mnist, args.side)
        write_pngs(tmp / "one", 1, args.mnist, args.side)
        log.info("training conv_ae for %d epochs", args.epochs)
        _run([sys.executable, "-m", "pipelines.cli", "train", "--data", str(tmp / "train"),
              "--kind", "conv_ae", "--name", "bench-images", "--epochs", str(args.epochs),
              "--tracking-uri", uri], env)
        model = "models:/bench-images@challenger"
        _run(_score(model, tmp / "one", tmp / "warm.parquet", uri, 0), env)  # fills the cache
        _wait_for_graph(tmp / "cache" / "bench-images" / "v1" / "graph")
        _, out = _run([sys.executable, "-c", _CEILINGS, uri, model, str(tmp / "images"),
                       json.dumps(args.workers)], env)
        ceil = json.loads(out.strip().splitlines()[-1])
        w0 = args.workers[0]
        times: dict[str, list[float]] = {"start-up (1 image)": [],
                                         "start-up (1 image), torch": []}
        times.update({f"anomaly score, --decode-workers {w}": [] for w in args.workers})
        times[f"anomaly score, --decode-workers {w0}, torch"] = []
        for r in range(args.rounds):
            log.info("round %d of %d", r + 1, args.rounds)
            for suffix, e in (("", env), (", torch", torch_env)):
                s, _ = _run(_score(model, tmp / "one", tmp / f"one{r}{suffix}.parquet", uri, 0), e)
                times[f"start-up (1 image){suffix}"].append(s)
            for w in args.workers:
                s, _ = _run(_score(model, tmp / "images", tmp / f"o{r}-{w}.parquet", uri, w), env)
                times[f"anomaly score, --decode-workers {w}"].append(s)
            s, _ = _run(_score(model, tmp / "images", tmp / f"o{r}-t.parquet", uri, w0), torch_env)
            times[f"anomaly score, --decode-workers {w0}, torch"].append(s)
    n = args.images
    serial = ceil["decode"] + ceil["score"]
    rows = [{"what": k, "seconds": f"{v:.2f}", "images/s": f"{n / v:,.0f}",
             "vs decode + score": f"{serial / v:.2f}"}
            for k, v in [("decode alone", ceil["decode"]), ("forward pass alone", ceil["forward"]),
                         ("scoring alone (every score, p-values, frame)", ceil["score"]),
                         ("ceiling: decode + score, one thread", serial)]]
    rows += [{"what": k.replace("decode, ", "job's reader, "), "seconds": f"{v:.2f}",
              "images/s": f"{n / v:,.0f}", "vs decode + score": "-"}
             for k, v in ceil.items() if k.startswith("decode, ")]
    for k, v in times.items():
        med = statistics.median(v)
        if k.startswith("start-up"):
            rows.append({"what": k, "seconds": f"{med:.2f}", "images/s": "-",
                         "vs decode + score": "-"})
            continue
        startup = statistics.median(times["start-up (1 image)" + (
            ", torch" if k.endswith(", torch") else "")])
        rows.append({"what": f"{k}, exec to exit", "seconds": f"{med:.2f}",
                     "images/s": f"{n / med:,.0f}", "vs decode + score": f"{serial / med:.2f}"})
        rows.append({"what": f"{k}, less start-up", "seconds": f"{med - startup:.2f}",
                     "images/s": f"{n / (med - startup):,.0f}",
                     "vs decode + score": f"{serial / (med - startup):.2f}"})
    print(f"\n{n:,} PNGs, {args.side}x{args.side}, conv_ae; medians of {args.rounds} rounds; "
          f"{os.cpu_count()} CPUs, torch's default threads\n")
    print(format_table(rows, list(rows[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
