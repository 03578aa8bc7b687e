"""Open Inference Protocol (v2, REST) routes: KServe, Triton and MLServer clients score unchanged.

Health and server metadata need no key (like ``/healthz``); model metadata and inference do.
Errors answer ``{"error": "<message>"}`` with the service's statuses (see
:func:`service.errors.shaped`). Tensors and outputs: :mod:`service.scoring.v2_protocol`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.auth import ScoreAccess
from service.metrics import Metrics
from service.routes.deps import JSONBytes, MetricsDep, SettingsDep, StoreDep, run_sized
from service.routes.direct import DirectRoute
from service.scoring import images
from service.scoring import v2_protocol as protocol
from service.settings import Settings
from service.store import ModelStore
from training.errors import ModelNotReadyError

_ERROR = {"content": {"application/json": {"example": {"error": "record 2, column "
                                                       "'mean_texture': Input should be a "
                                                       "valid number"}}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {**_ERROR, "description": d} for s, d in (
        (401, "no or unknown API key"), (404, "no such model or version"),
        (413, "too many records or bytes"), (422, "invalid request or input"),
        (503, "model not loaded"))}
_TENSOR = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
    "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
    "datatype": {"type": "string"}, "parameters": {"type": "object"}, "data": {}}}
_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": _TENSOR},
        "outputs": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "parameters": {"type": "object"}}}}}},
    "example": {"inputs": [{"name": "mean_radius", "shape": [1], "datatype": "FP64",
                            "data": [13.5]}]}}}}}

health = APIRouter(route_class=DirectRoute, prefix="/v2", tags=["open inference protocol"])
models = APIRouter(route_class=DirectRoute, prefix="/v2", tags=["open inference protocol"],
                   dependencies=[ScoreAccess], responses=_ERRORS)


@health.get("", summary="server metadata")
async def server_metadata() -> JSONBytes:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("ae-anomaly")
    except PackageNotFoundError:
        ours = "unknown"
    return JSONBytes({"name": "ae-anomaly", "version": ours,
                      "extensions": ["binary_tensor_data"]})


@health.get("/health/live", summary="the process is alive")
async def live() -> JSONBytes:
    return JSONBytes({"live": True})


@health.get("/health/ready", summary="every configured model is loaded (503 until then)")
async def ready(store: StoreDep) -> JSONBytes:
    models_ = store.status()
    ok = bool(models_) and all(m["loaded"] for m in models_)
    return JSONBytes({"ready": ok}, status_code=200 if ok else 503)


@health.get("/models/{name}/ready", summary="the model is loaded (503 until then)")
async def model_ready(name: str, store: StoreDep) -> JSONBytes:
    return _ready(name, None, store)


@health.get("/models/{name}/versions/{version}/ready", include_in_schema=False)
async def version_ready(name: str, version: str, store: StoreDep) -> JSONBytes:
    return _ready(name, version, store)


def _ready(name: str, version: str | None, store: ModelStore) -> JSONBytes:
    try:
        model = store.get(name)
    except ModelNotReadyError:
        return JSONBytes({"name": name, "ready": False}, status_code=503)
    protocol.check_version(model, version)
    return JSONBytes({"name": name, "ready": True})


@models.get("/models/{name}", summary="model metadata: input and output tensors")
async def model_metadata(name: str, store: StoreDep) -> JSONBytes:
    return _metadata(name, None, store)


@models.get("/models/{name}/versions/{version}", include_in_schema=False)
async def version_metadata(name: str, version: str, store: StoreDep) -> JSONBytes:
    return _metadata(name, version, store)


def _metadata(name: str, version: str | None, store: ModelStore) -> JSONBytes:
    model = store.get(name)
    protocol.check_version(model, version)
    images.require_records(model)
    return JSONBytes(protocol.metadata(model))


@models.post("/models/{name}/infer", openapi_extra=_BODY,
             summary="score records sent as input tensors (one per column, or one matrix)")
async def infer(name: str, request: Request, store: StoreDep, settings: SettingsDep,
                metrics: MetricsDep) -> Response:
    return await _infer(name, None, request, store, settings, metrics)


@models.post("/models/{name}/versions/{version}/infer", include_in_schema=False)
async def version_infer(name: str, version: str, request: Request, store: StoreDep,
                        settings: SettingsDep, metrics: MetricsDep) -> Response:
    return await _infer(name, version, request, store, settings, metrics)


async def _infer(name: str, version: str | None, request: Request, store: ModelStore,
                 settings: Settings, metrics: Metrics) -> Response:
    model = store.get(name)
    protocol.check_version(model, version)
    images.require_records(model)
    req = protocol.parse(model, await request.body(),
                         request.headers.get(protocol.HEADER_LENGTH), settings.strict)
    answer = await run_sized(model, req.records.n, protocol.infer, req)
    metrics.observe_scores(model, answer.primary, answer.flagged)
    return Response(answer.body, media_type=answer.media_type, headers=answer.headers)
