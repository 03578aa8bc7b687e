"""Assembles the FastAPI app: settings, model store (created in the lifespan), routes,
middleware, error mapping. ``serve`` runs it under uvicorn."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware

from pipelines.registry.tracking import default_tracking_uri
from service import docs, errors
from service.metrics import Metrics
from service.middleware import RequestGuard
from service.routes import mlflow, v2
from service.routes.v1 import probes, v1
from service.scoring.streams import StreamStates
from service.settings import Settings, load_settings
from service.store import ModelStore

log = logging.getLogger(__name__)


def _tracking_uri(settings: Settings) -> str:
    """The registry the service reads: its setting, else the project's default."""
    return settings.tracking_uri or default_tracking_uri()


def create_app(settings: Settings | None = None, store: ModelStore | None = None) -> FastAPI:
    """The service app. Models load when it starts (its lifespan), not at import.

    Args:
        settings: read from the environment when not given.
        store: an already started model store (``serve`` loads models before uvicorn starts,
            so a wrong model URI is a one-line error rather than a failed lifespan).
    """
    settings = settings or load_settings()
    ready_store = store

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            store = ready_store
            if store is None:
                store = ModelStore(settings, _tracking_uri(settings))
                await run_in_threadpool(store.start)
        except Exception as e:
            app.state.startup_error = e
            log.error("cannot start: %s", e)
            raise
        app.state.store = store
        if not settings.auth_enabled:
            log.warning("no API keys configured (ANOMALY_API_KEYS): the service is open to "
                        "anyone who can reach http://%s:%s", settings.host, settings.port)
        yield

    # One file more than a request may score: the image routes' own 413 names the limit
    # (Starlette's form parser would answer a 400 past its default of 1,000 files).
    app = FastAPI(title="ae-anomaly scoring service", version="1", lifespan=lifespan,
                  docs_url=None, redoc_url=None,
                  form_limits={"max_files": settings.max_records + 1},
                  description="Anomaly scores, p-values and flags from registered autoencoder "
                  "detectors. Higher scores are more abnormal. Also speaks MLflow's scoring "
                  "protocol (/invocations) and the Open Inference Protocol (/v2).")
    app.state.settings = settings
    app.state.streams = StreamStates(settings.stream_max_keys, settings.stream_idle_s)
    app.state.startup_error = None
    app.state.metrics = Metrics(lambda: app.state.store.loaded())
    errors.install(app)
    # Routers are tried in this order: the scoring routes first (no two routers share a path).
    app.include_router(v1)
    app.include_router(mlflow.per_model)
    app.include_router(mlflow.single)
    app.include_router(v2.models)
    app.include_router(probes)
    app.include_router(mlflow.mlflow_probes)
    app.include_router(v2.health)
    docs.install(app)
    app.add_middleware(RequestGuard, limit_for=lambda path: settings.max_upload_bytes
                       if path.endswith("/score-file") else settings.max_body_bytes,
                       seconds=settings.request_timeout_s, metrics=app.state.metrics,
                       known_model=lambda name: name in app.state.store.slots)
    if settings.cors_origins:  # outermost, so that the guard's 413 and 504 carry its headers
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST"], allow_headers=["X-API-Key",
                                                                         "Content-Type"])
    return app


def serve(settings: Settings) -> None:
    """Run the app under uvicorn until interrupted.

    Raises:
        the error that stopped the models from loading, if any (a ModelNotFoundError for a
        URI that names no model, a ModelFormatError for a version without a detector; the CLI
        answers with the error's exit code).
    """
    import uvicorn

    if not settings.models:
        from training.errors import ConfigError

        raise ConfigError("no models to serve: pass --model models:/NAME@champion or set "
                          "ANOMALY_MODELS")
    store = ModelStore(settings, _tracking_uri(settings))
    store.start()  # errors here reach the CLI as one line, before uvicorn prints anything
    app = create_app(settings, store)
    config = uvicorn.Config(app, host=settings.host, port=settings.port,
                            log_level=settings.log_level.lower(), access_log=False,
                            log_config=None, timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit:  # uvicorn exits when startup fails; report why instead
        if app.state.startup_error is None:
            raise
    if app.state.startup_error is not None:
        raise app.state.startup_error
