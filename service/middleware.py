"""ASGI middleware: request-body limits, a request timeout and per-request metrics, in one layer.

One plain ASGI layer (no BaseHTTPMiddleware, one wrapper of ``send`` and one of ``receive``):
the three duties of every request cost microseconds, not a task or three stacked wrappers.
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


class RequestGuard:
    """Every HTTP request's limits and metrics.

    - **Body limit:** answer 413 once a request body passes its limit, whether announced
      (``Content-Length``) or streamed.
    - **Encoded bodies:** answer 415 to a ``Content-Encoding`` other than ``identity`` (a
      gzip body would otherwise be parsed as the bytes it is).
    - **Timeout:** answer 504 when a request has not started its answer within ``seconds``.
      Work already running in a worker thread cannot be interrupted, so it finishes in the
      background and its answer is dropped (a scored file's temporary output is still
      deleted). An answer that has started (a file streaming back) is never cut.
    - **Metrics:** time every request and count it by route template, model and status,
      the 413s and 504s above included.

    Args:
        app: the wrapped ASGI app.
        limit_for: path -> body byte limit.
        seconds: the timeout; None = no limit.
        metrics: a :class:`service.metrics.Metrics`.
        known_model: name -> whether it is configured (unknown names are not labels, so
            random paths cannot grow the metric set without bound).
    """

    def __init__(self, app: Any, limit_for: Callable[[str], int], seconds: float | None,
                 metrics: Any, known_model: Callable[[str], bool]):
        self.app = app
        self.limit_for = limit_for
        self.seconds = seconds
        self.metrics = metrics
        self.known_model = known_model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        # status: of the answer sent; answered: a 413 or 504 of ours went out, drop the app's
        state: dict[str, Any] = {"status": 500, "started": False, "answered": False}
        try:
            await self._guarded(scope, receive, send, state)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            name = (scope.get("path_params") or {}).get("name", "")
            model = name if name and self.known_model(name) else ""
            self.metrics.observe_request(path, model, state["status"],
                                         time.perf_counter() - start)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send,
                       state: dict[str, Any]) -> None:
        limit = self.limit_for(scope["path"])
        for header, value in scope.get("headers") or ():
            if header == b"content-length":
                if value.isdigit() and int(value) > limit:
                    state["status"] = 413
                    return await _too_large(send, limit, scope["path"])
            elif header == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
                state["status"] = 415  # its bytes would otherwise be read as they came
                return await _encoded(send, value, scope["path"])
        seen = 0
        answers: list[asyncio.Task] = []

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    if not state["started"] and not state["answered"]:
                        state["answered"], state["status"] = True, 413
                        await _too_large(send, limit, scope["path"])
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if state["answered"]:
                return  # our 413 or 504 went out already; the app's own answer is dropped
            if message["type"] == "http.response.start":
                state["started"], state["status"] = True, message["status"]
            await send(message)

        def expire() -> None:
            if not state["started"] and not state["answered"]:
                state["answered"], state["status"] = True, 504
                answers.append(loop.create_task(_timed_out(send, self.seconds)))

        timer = None
        if self.seconds:
            loop = asyncio.get_running_loop()
            # A timer, not a watcher task: arming and cancelling it costs microseconds.
            timer = loop.call_later(self.seconds, expire)
        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["answered"]:
                raise
        finally:
            if timer is not None:
                timer.cancel()
            if answers:
                await answers[0]


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


async def _encoded(send: Send, encoding: bytes, path: str) -> None:
    body = json.dumps(shaped(path, 415, error_body(
        "unsupported_media_type", f"Content-Encoding {encoding.decode('latin-1').strip()}: "
        "bodies are read as sent; send them without a Content-Encoding"))).encode()
    await send({"type": "http.response.start", "status": 415,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _timed_out(send: Send, seconds: float) -> None:
    body = json.dumps(error_body(
        "timeout", f"no answer within {seconds:g} seconds; send less per request or raise the "
        "limit (ANOMALY_REQUEST_TIMEOUT_S)")).encode()
    await send({"type": "http.response.start", "status": 504,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
