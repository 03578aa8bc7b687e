"""HTTP routes. Each one resolves the model, parses, calls a function of
:mod:`service.scoring`, and records metrics; nothing more."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Query, Request, Security, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.background import BackgroundTask

from service.auth import API_KEY_HEADER, AdminAccess, ScoreAccess, may_see_details
from service.model import ServedModel
from service.routes.deps import (
    JSONBytes,
    MetricsDep,
    SettingsDep,
    StoreDep,
    StreamsDep,
    run_images,
    run_sized,
)
from service.routes.direct import DirectRoute
from service.schemas import (
    EncodeResponse,
    ErrorResponse,
    FileSummary,
    ImageScoreResponse,
    ModelInfo,
    ModelList,
    ReadyResponse,
    ReconstructResponse,
    ReloadResponse,
    ScoreRequest,
    ScoreResponse,
)
from service.scoring import images, streams
from service.scoring import records as scoring
from service.scoring.files import MEDIA_TYPES, UploadLimits, file_format, score_file, scored_name
from service.scoring.inputs import require_json
from service.settings import Settings
from service.store import ModelStore
from training.errors import ReloadError
from training.preprocessing.tabular import Records

Strict = Annotated[bool | None, Query(description="reject columns the model does not read "
                                      "(default: the service's strict setting)")]
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (401, 404, 413, 415, 422, 503)}
_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": ScoreRequest.model_json_schema()}}}}


probes = APIRouter(route_class=DirectRoute, tags=["operations"])
v1 = APIRouter(route_class=DirectRoute, prefix="/v1", tags=["models"],
               dependencies=[ScoreAccess], responses=ERRORS)


@probes.get("/healthz", summary="the process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@probes.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}},
            summary="every configured model is loaded")
async def readyz(store: StoreDep, settings: SettingsDep,
                 key: Annotated[str | None, Security(API_KEY_HEADER)] = None) -> JSONResponse:
    """Without a valid key (on a service that needs one), the reasons behind a model's state
    (``note``, ``last_error``: registry URLs, cache folders) are left out."""
    models = store.status()
    if not may_see_details(settings, key):
        models = [{**m, "note": None, "last_error": None} for m in models]
    ready = bool(models) and all(m["loaded"] for m in models)
    degraded = any(m["origin"] == "cache" for m in models)
    return JSONResponse({"ready": ready, "degraded": degraded, "models": models},
                        status_code=200 if ready else 503)


@probes.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics_text(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


@v1.get("/models", response_model=ModelList, summary="the models loaded now")
async def list_models(store: StoreDep) -> JSONBytes:
    return JSONBytes({"models": [m.describe() for m in store.loaded()]})


@v1.get("/models/{name}", response_model=ModelInfo, summary="one loaded model")
async def get_model(name: str, store: StoreDep) -> JSONBytes:
    return JSONBytes(store.get(name).describe())


@v1.post("/models/{name}/score", response_model=ScoreResponse, openapi_extra=_BODY,
         summary="score records: scores, p-values and is_anomaly per record")
async def score(name: str, request: Request, store: StoreDep, settings: SettingsDep,
                metrics: MetricsDep, strict: Strict = None,
                explain: Annotated[bool, Query(description="add each record's top "
                                               "contributing columns")] = False) -> JSONBytes:
    model, batch = await _parsed(name, request, store, settings, strict)
    scored = await run_sized(model, batch.n, scoring.score_batch, batch, explain,
                             settings.explain_top_k,
                             networks=model.needs_networks(batch.n, explain))
    metrics.observe_scores(model, scored.primary, scored.flagged)
    return Response(scored.to_json(), media_type="application/json")


@v1.post("/models/{name}/stream", response_model=ScoreResponse, openapi_extra=_BODY,
         summary="sequence models: append records to their series (in time order) and score "
         "each once its window is full")
async def stream(name: str, request: Request, store: StoreDep, settings: SettingsDep,
                 metrics: MetricsDep, states: StreamsDep, strict: Strict = None,
                 explain: Annotated[bool, Query(description="add each record's top "
                                                "deviating channels")] = False) -> JSONBytes:
    """State is kept per series key (the model's series column) for the version served now:
    at most ``stream_max_keys`` series of ``window - 1`` records, each dropped after
    ``stream_idle_s`` seconds idle; a reload starts every series afresh."""
    model, batch = await _parsed(name, request, store, settings, strict)
    scored = await run_in_threadpool(streams.stream_batch, model, batch, states, explain,
                                     settings.explain_top_k)
    metrics.observe_scores(model, scored.primary, scored.flagged)
    return Response(scored.to_json(), media_type="application/json")


async def _parsed(name: str, request: Request, store: ModelStore, settings: Settings,
                  strict: bool | None) -> tuple[ServedModel, Records]:
    """The named model and the request's records, checked against its schema."""
    model = store.get(name)
    images.require_records(model)
    require_json(request.headers.get("content-type"))
    body = await request.body()
    return model, model.inputs.parse(body, settings.strict if strict is None else strict)


@v1.post("/models/{name}/encode", response_model=EncodeResponse, openapi_extra=_BODY,
         summary="latent codes of records (posterior means for a VAE)")
async def encode(name: str, request: Request, store: StoreDep, settings: SettingsDep,
                 strict: Strict = None) -> JSONBytes:
    return await _answer(scoring.encode_batch, name, request, store, settings, strict)


@v1.post("/models/{name}/reconstruct", response_model=ReconstructResponse, openapi_extra=_BODY,
         summary="reconstructions of records, in the input's own columns")
async def reconstruct(name: str, request: Request, store: StoreDep, settings: SettingsDep,
                      strict: Strict = None) -> JSONBytes:
    return await _answer(scoring.reconstruct_batch, name, request, store, settings, strict)


async def _answer(fn, name: str, request: Request, store: ModelStore, settings: Settings,
                  strict: bool | None) -> JSONBytes:
    """``fn(model, records)`` on the request's records, as JSON."""
    model, records = await _parsed(name, request, store, settings, strict)
    return JSONBytes(await run_sized(model, records.n, fn, records, networks=True))


@v1.post("/models/{name}/score-file", summary="score a CSV or Parquet file",
         response_class=Response,
         responses={200: {"model": FileSummary,
                          "content": {"text/csv": {}, "application/vnd.apache.parquet": {}},
                          "description": "the scored file in the upload's format (input "
                          "columns, then score columns), or a summary with ?summary=true"},
                    415: {"model": ErrorResponse}})
async def score_upload(name: str, store: StoreDep, settings: SettingsDep, metrics: MetricsDep,
                       file: Annotated[UploadFile, File(description=".csv or .parquet")],
                       summary: Annotated[bool, Query(description="answer with counts and "
                                                      "score quantiles only")] = False,
                       keep: Annotated[str | None, Query(
                           description="comma-separated columns of the upload to carry into "
                           "the scored file, in this order (default: every column)")] = None
                       ) -> Response:
    model = store.get(name)
    images.require_records(model)
    head = await file.read(4)
    await file.seek(0)
    fmt = file_format(file.filename, file.content_type, head)
    filename = file.filename or f"upload.{fmt}"
    result = await run_in_threadpool(
        score_file, model, file.file, filename, fmt, settings.file_chunk_rows, summary,
        None, lambda s, k: metrics.observe_scores(model, s, k), UploadLimits.of(settings),
        None if keep is None else list(dict.fromkeys(c for c in keep.split(",") if c)))
    if summary:
        return JSONBytes(result.summary(model, filename))
    return FileResponse(result.path, media_type=MEDIA_TYPES[fmt],
                        filename=scored_name(filename, fmt),
                        headers={"X-Model-Name": model.name,
                                 "X-Model-Version": model.source.version},
                        background=BackgroundTask(result.path.unlink, missing_ok=True))


@v1.post("/models/{name}/score-images", response_model=ImageScoreResponse,
         responses={413: {"model": ErrorResponse}},
         summary="score uploaded images (multipart): scores, p-values and is_anomaly per "
         "image, with ?maps=true each image's anomaly map as a base64 PNG")
async def score_images(name: str, store: StoreDep, settings: SettingsDep, metrics: MetricsDep,
                       files: Annotated[list[UploadFile], File(description="PNG or JPEG images")],
                       maps: Annotated[bool, Query(description="add each image's anomaly map "
                                                   "(base64 PNG)")] = False) -> JSONBytes:
    model = store.get(name)
    named = [(f.filename or f"file {i}", await f.read()) for i, f in enumerate(files)]
    scored = await run_images(model, named, images.score_images, maps, settings.max_records,
                              settings.max_image_pixels, settings.max_request_pixels, maps=maps)
    metrics.observe_scores(model, scored.primary, scored.flagged)
    return Response(scored.to_json(), media_type="application/json")


@v1.post("/models/{name}/reload", response_model=ReloadResponse, dependencies=[AdminAccess],
         responses={403: {"model": ErrorResponse}, 502: {"model": ErrorResponse}},
         summary="re-resolve the model's alias in the registry and swap versions atomically")
async def reload(name: str, store: StoreDep, metrics: MetricsDep) -> JSONBytes:
    try:
        previous, current = await run_in_threadpool(store.reload, name)
    except ReloadError:
        metrics.reloads.labels(name, "failed").inc()
        raise
    metrics.reloads.labels(name, "ok").inc()
    return JSONBytes({"previous_version": previous.source.version if previous else None,
                      "model": current.describe()})
