"""MLflow's scoring-server routes: a client of ``mlflow models serve`` changes its base URL only.

``POST /invocations`` scores with the one model served (404 naming the per-model routes when
there are several); ``POST /v1/models/{name}/invocations`` with any. ``GET /ping`` and
``/health`` answer 200 once every model is loaded; ``GET /version`` the MLflow version whose
protocol is spoken. Formats and answers: :mod:`service.scoring.mlflow_protocol`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from service.auth import ScoreAccess
from service.metrics import Metrics
from service.model import ServedModel
from service.routes.deps import MetricsDep, SettingsDep, StoreDep, run_images, run_sized
from service.routes.direct import DirectRoute
from service.schemas import ErrorResponse
from service.scoring import images
from service.scoring import mlflow_protocol as protocol
from service.scoring.files import UploadLimits
from service.settings import Settings
from training.errors import ModelNotChosenError

_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (401, 404, 413, 415, 422, 503)}
_EXAMPLE = {"dataframe_split": {"columns": ["mean_radius", "mean_texture"],
                                "data": [[13.5, 18.2]]}}
_BODY = {"requestBody": {"required": True, "content": {
    protocol.JSON: {"schema": {"type": "object", "description": (
        "exactly one of dataframe_split, dataframe_records, instances or inputs; "
        "params is accepted and unused")}, "example": _EXAMPLE},
    protocol.CSV: {"schema": {"type": "string"}},
}}}
_ANSWER = {200: {"description": "one prediction per record: score, p_value, is_anomaly, "
                 "score_<kind>, p_value_<kind>, unknown_categories",
                 "content": {"application/json": {"example": {"predictions": [
                     {"score": 0.81, "p_value": 0.42, "is_anomaly": False,
                      "score_recon": 0.81, "p_value_recon": 0.42,
                      "unknown_categories": 0}]}}}}}

mlflow_probes = APIRouter(route_class=DirectRoute, tags=["mlflow protocol"])
single = APIRouter(route_class=DirectRoute, tags=["mlflow protocol"],
                   dependencies=[ScoreAccess], responses=_ERRORS)
per_model = APIRouter(route_class=DirectRoute, prefix="/v1", tags=["mlflow protocol"],
                      dependencies=[ScoreAccess], responses=_ERRORS)


@mlflow_probes.get("/ping", summary="200 once every model is loaded (MLflow's health check)")
@mlflow_probes.get("/health", summary="the same as /ping")
async def ping(store: StoreDep) -> Response:
    models = store.status()
    ready = bool(models) and all(m["loaded"] for m in models)
    return Response("\n", status_code=200 if ready else 503, media_type="application/json")


@mlflow_probes.get("/version", summary="the MLflow version whose scoring protocol is spoken")
async def version() -> Response:
    import mlflow

    return Response(mlflow.__version__, media_type="application/json")


@single.post("/invocations", openapi_extra=_BODY, responses=_ANSWER,
             summary="score with the one model served, in MLflow's scoring format")
async def invocations(request: Request, store: StoreDep, settings: SettingsDep,
                      metrics: MetricsDep) -> Response:
    names = list(store.slots)
    if len(names) != 1:
        raise ModelNotChosenError(
            f"this service serves {len(names)} models ({', '.join(sorted(names))}); "
            "POST to /v1/models/NAME/invocations to say which")
    return await _invoke(store.get(names[0]), request, settings, metrics)


@per_model.post("/models/{name}/invocations", openapi_extra=_BODY, responses=_ANSWER,
                summary="score with the named model, in MLflow's scoring format")
async def model_invocations(name: str, request: Request, store: StoreDep,
                            settings: SettingsDep, metrics: MetricsDep) -> Response:
    return await _invoke(store.get(name), request, settings, metrics)


async def _invoke(model: ServedModel, request: Request, settings: Settings,
                  metrics: Metrics) -> Response:
    body = await request.body()
    if images.is_image_model(model):
        files = protocol.parse_images(body, request.headers.get("content-type"))
        answer = await run_images(model, files, protocol.predict_images, settings.max_records,
                                  settings.max_image_pixels, settings.max_request_pixels)
    else:
        content_type = request.headers.get("content-type")
        args = (model, body, content_type, settings.strict, UploadLimits.of(settings))
        # a JSON body parses in microseconds; a CSV or Parquet one, in a worker thread
        records = protocol.parse(*args) if protocol.media_type(content_type) == protocol.JSON \
            else await run_in_threadpool(protocol.parse, *args)
        answer = await run_sized(model, protocol.count(records), protocol.predict, records)
    metrics.observe_scores(model, answer.primary, answer.flagged)
    return Response(answer.body, media_type="application/json")

