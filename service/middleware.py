"""ASGI middleware: request-body limits, a request timeout and per-request metrics.

All are plain ASGI (no BaseHTTPMiddleware), so they add microseconds, not a task per request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from service.errors import error_body, shaped

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


class BodyLimit:
    """Answer 413 once a request body passes its limit, whether announced or streamed.

    Args:
        app: the wrapped ASGI app.
        limit_for: path -> byte limit.
    """

    def __init__(self, app: Any, limit_for: Callable[[str], int]):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope["path"])
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _too_large(send, limit, scope["path"])
        state = {"seen": 0, "answered": False, "started": False}

        async def limited_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > limit:
                    if not state["started"]:
                        state["answered"] = True
                        await _too_large(send, limit, scope["path"])
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if state["answered"]:
                return  # the 413 went out already; the app's own answer is dropped
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["answered"]:
                raise


async def _too_large(send: Send, limit: int, path: str) -> None:
    body = json.dumps(shaped(path, 413, error_body(
        "too_large", f"request body larger than {limit} bytes; send fewer records per request "
        "or raise the limit (ANOMALY_MAX_BODY_BYTES, ANOMALY_MAX_UPLOAD_BYTES for files)"
    ))).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class RequestTimeout:
    """Answer 504 when a request has not started its answer within ``seconds``.

    The caller gets the 504 at the deadline; work already running in a worker thread cannot be
    interrupted, so it finishes in the background and its answer is dropped (a scored file's
    temporary output is still deleted). An answer that has started (a file streaming back) is
    never cut.

    Args:
        app: the wrapped ASGI app.
        seconds: the limit; None = no limit.
    """

    def __init__(self, app: Any, seconds: float | None):
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.seconds:
            return await self.app(scope, receive, send)
        state = {"started": False, "timed_out": False}
        loop = asyncio.get_running_loop()
        answer: list[asyncio.Task] = []

        async def guarded_send(message: dict[str, Any]) -> None:
            if state["timed_out"]:
                return  # the 504 went out already
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        def expire() -> None:
            if not state["started"]:
                state["timed_out"] = True
                answer.append(loop.create_task(_timed_out(send, self.seconds)))

        # A timer, not a watcher task: arming and cancelling it costs microseconds per request.
        timer = loop.call_later(self.seconds, expire)
        try:
            await self.app(scope, receive, guarded_send)
        except Exception:
            if not state["timed_out"]:
                raise
        finally:
            timer.cancel()
            if answer:
                await answer[0]


async def _timed_out(send: Send, seconds: float) -> None:
    body = json.dumps(error_body(
        "timeout", f"no answer within {seconds:g} seconds; send less per request or raise the "
        "limit (ANOMALY_REQUEST_TIMEOUT_S)")).encode()
    await send({"type": "http.response.start", "status": 504,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class RequestMetrics:
    """Time every HTTP request and count it by route template, model and status.

    Args:
        app: the wrapped ASGI app.
        metrics: a :class:`service.metrics.Metrics`.
        known_model: name -> whether it is configured (unknown names are not labels, so
            random paths cannot grow the metric set without bound).
    """

    def __init__(self, app: Any, metrics: Any, known_model: Callable[[str], bool]):
        self.app = app
        self.metrics = metrics
        self.known_model = known_model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            name = (scope.get("path_params") or {}).get("name", "")
            model = name if name and self.known_model(name) else ""
            self.metrics.observe_request(path, model, status["code"],
                                         time.perf_counter() - start)
