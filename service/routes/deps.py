"""What every router shares: the app's store, settings and metrics as typed dependencies, the
JSON answer class, and where a request of a given size is scored."""

from __future__ import annotations

from typing import Annotated, Any

import pydantic_core
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from service.metrics import Metrics
from service.model import ServedModel
from service.scoring import images
from service.scoring.streams import StreamStates
from service.settings import Settings
from service.store import ModelStore

# Requests this small are scored on the event loop (fastest); larger ones in a worker thread
# so that health checks and small requests are not held up behind them.
INLINE_RECORDS = 256


async def get_store(request: Request) -> ModelStore:
    """Dependency: the app's model store (async: no threadpool hop)."""
    return request.app.state.store


async def get_settings(request: Request) -> Settings:
    """Dependency: the app's settings."""
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    """Dependency: the app's metrics."""
    return request.app.state.metrics


async def get_streams(request: Request) -> StreamStates:
    """Dependency: the sequence models' stream state."""
    return request.app.state.streams


StoreDep = Annotated[ModelStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
StreamsDep = Annotated[StreamStates, Depends(get_streams)]


class JSONBytes(Response):
    """A JSON answer serialised in one call (pydantic-core), without per-field validation.

    Non-finite numbers (a reconstruction overflowing float32) become null: valid JSON.
    """

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return pydantic_core.to_json(content, inf_nan_mode="null")


async def run_sized(model: ServedModel, n: int, fn, *args, networks: bool = False):
    """``fn(model, *args)`` inline for ``n`` <= ``INLINE_RECORDS`` records, else in a worker
    thread. ``networks``: ``fn`` needs the model's networks (explanations, codes), which a
    graph-served model loads on first need: that first call goes to a worker thread too, so
    that loading torch never stalls the event loop."""
    if n <= INLINE_RECORDS and (not networks or model.networks_loaded):
        return fn(model, *args)
    return await run_in_threadpool(fn, model, *args)


async def run_images(model: ServedModel, files: list[tuple[str, bytes]], fn, *args,
                     maps: bool = False):
    """``fn(model, files, *args)`` inline for a small image request
    (:func:`service.scoring.images.is_small`: a few small images and, with ``maps``, the
    networks at hand), else in a worker thread. Every image route decides alike, so an image
    gets the same score from each (torch's results can differ in the last bits between
    threads)."""
    if images.is_small(model, files, maps):
        return fn(model, files, *args)
    return await run_in_threadpool(fn, model, files, *args)
