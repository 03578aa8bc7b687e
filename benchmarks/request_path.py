"""Where a single-record request's time goes, in process: the service's stages one by one, and
the whole app against a bare FastAPI route, both called as ASGI apps in the same event loop.

No network and no server: this isolates what the service adds to a request from what uvicorn
and the loopback cost, which ``benchmarks/serving.py`` measures end to end (there the floor is
the same bare route on its own uvicorn). Each kind is fitted on the demo table, its ONNX graph
written, and served by the real app and model store, as a restart on a warm cache serves it.

    python benchmarks/request_path.py                  # AE and VAE, 3 rounds of 2,000 calls
    python benchmarks/request_path.py --kind vae --calls 5000 --rounds 5

Printed per kind: median microseconds per call of each stage (best round), and of the app and
the floor (median over alternated rounds), with the app's share above the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
from fastapi import FastAPI, Request, Response  # noqa: E402


def _served(workdir: Path, kind: str, frame: pd.DataFrame):
    """The demo model of ``kind`` fitted, calibrated, saved, its graph written, and a store
    and app serving it (a restart on a warm cache)."""
    from pipelines.export.onnx import write_graph_folder
    from pipelines.registry.download import ModelSource
    from service.app import create_app
    from service.model import ServedModel
    from service.settings import load_settings
    from service.store import ModelStore
    from training.detector import Detector

    det = Detector(kind=kind, max_epochs=20, seed=0).fit(frame.iloc[:400])
    det.calibrate(frame.iloc[400:])
    path = det.save(workdir / kind / "detector")
    graph = write_graph_folder(path, workdir / kind / "graph")
    settings = load_settings(models=[f"models:/bench-{kind}@champion"], cache_dir=workdir)
    store = ModelStore(settings, f"sqlite:///{workdir}/unused.db")
    source = ModelSource(uri=f"models:/bench-{kind}@champion", name=f"bench-{kind}",
                         version="1", alias="champion", run_id="r1")
    model = ServedModel.load(source, Path(path), settings.max_records, graph_dir=graph)
    store.slots[source.name].current = model
    assert model.runtime == "onnxruntime", model.runtime
    return model, create_app(settings, store)


def _floor():
    """The bare route of ``benchmarks/serving.py``: read the body, answer a fixed JSON."""
    app = FastAPI()

    @app.post("/score")
    async def score(request: Request) -> Response:
        await request.body()
        return Response(b'{"results": []}', media_type="application/json")

    return app


async def _call(app, path: str, body: bytes) -> bytes:
    """One POST through ``app`` as uvicorn would send it; the answer's body."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000),
             "server": ("127.0.0.1", 8000), "state": {},
             "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    out: list[dict] = []

    async def receive() -> dict:
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        out.append(message)

    await app(scope, receive, send)
    assert out[0]["status"] == 200, out
    return b"".join(m.get("body", b"") for m in out[1:])


async def _time_apps(pairs, body: bytes, calls: int, rounds: int) -> dict[str, float]:
    """Median over rounds of the median microseconds per call of each (label, app, path)."""
    per_round: dict[str, list[float]] = {label: [] for label, _, _ in pairs}
    for _ in range(rounds):
        for label, app, path in pairs:
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                await _call(app, path, body)
                times.append(time.perf_counter() - t0)
            per_round[label].append(statistics.median(times) * 1e6)
    return {label: statistics.median(v) for label, v in per_round.items()}


def _stages(model, body: bytes, calls: int, rounds: int) -> list[tuple[str, float]]:
    """Microseconds per call of each stage of scoring one request (best round)."""
    from service.metrics import Metrics
    from service.scoring import records as scoring
    from service.scoring.render import render_results

    scorer = model.scorer
    records = model.inputs.parse(body, False)
    X, _ = scorer._matrix(records, "request")
    cols = scorer.score_columns(records)
    scored = scoring.score_batch(model, records)
    metrics = Metrics(lambda: [model])

    def best(fn) -> float:
        return min(timeit.repeat(fn, number=calls, repeat=rounds)) / calls * 1e6

    stages = [
        ("parse and check the JSON body", best(lambda: model.inputs.parse(body, False))),
        ("encode the input matrix", best(lambda: scorer._matrix(records, "request"))),
        ("the graph's pass (every score kind)", best(lambda: scorer._raw_from_matrix(X))),
        ("score columns (encode + pass + p-values)", best(lambda: scorer.score_columns(records))),
        ("render the results", best(lambda: render_results(cols, model.explained_columns))),
        ("score_batch (columns + checks + render)",
         best(lambda: scoring.score_batch(model, records))),
        ("metrics (request and scores)", best(lambda: (
            metrics.observe_scores(model, scored.primary, scored.flagged),
            metrics.observe_request("/v1/models/{name}/score", model.name, 200, 0.001)))),
    ]
    return stages


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", nargs="+", default=["ae", "vae"], choices=["ae", "vae"])
    p.add_argument("--calls", type=int, default=2000, help="calls per round")
    p.add_argument("--rounds", type=int, default=3, help="alternated rounds")
    args = p.parse_args(argv)

    from pipelines.demo.run import load_demo_frame

    frame = load_demo_frame().drop(columns=["id", "malignant"])
    body = json.dumps({"records": frame.head(1).to_dict(orient="records")}).encode()
    floor = _floor()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kind:
            model, app = _served(Path(tmp), kind, frame)
            rows = _stages(model, body, args.calls, args.rounds)
            path = f"/v1/models/{model.name}/score"
            apps = asyncio.run(_lifespan_then(app, _time_apps(
                [("service app", app, path), ("floor app", floor, "/score")], body,
                args.calls, args.rounds)))
            print(f"\n{kind}: one record of {frame.shape[1]} columns, in process")
            print(f"{'stage':<44} {'us/call':>9}")
            for label, us in rows:
                print(f"{label:<44} {us:>9.1f}")
            print(f"{'whole request, service app (median)':<44} {apps['service app']:>9.1f}")
            print(f"{'whole request, bare FastAPI route (median)':<44} {apps['floor app']:>9.1f}")
            print(f"{'service app above the floor':<44} "
                  f"{apps['service app'] - apps['floor app']:>9.1f}")
    return 0


async def _lifespan_then(app, work):
    async with app.router.lifespan_context(app):
        return await work


if __name__ == "__main__":
    sys.exit(main())
