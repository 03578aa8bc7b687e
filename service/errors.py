"""The one place that turns every error into an HTTP answer.

Statuses come from the error classes themselves (:mod:`training.errors`); nothing here parses a
message.

Every error answer is JSON: ``{"error": {"type", "message", "record", "column", "details"}}``
where ``record`` (counted from 0) and ``column`` name the first bad value when there is one.
Client mistakes are 4xx; a 500 only ever means a bug, and carries no traceback.

The routes of other protocols answer the same status in their protocol's shape (see
:func:`shaped`): the Open Inference Protocol's ``{"error": "<message>"}`` under ``/v2``, and
MLflow's scoring server's ``{"error_code", "message"}`` (with the fields above under ``error``)
on ``/invocations`` and the MLflow probes.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from training.errors import AnomalyError, AuthError, DataError

log = logging.getLogger(__name__)


def error_body(type_: str, message: str, record: int | None = None, column: str | None = None,
               details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The JSON body of every error answer."""
    body: dict[str, Any] = {"type": type_, "message": message}
    if record is not None:
        body["record"] = record
    if column is not None:
        body["column"] = column
    if details:
        body["details"] = details
    return {"error": body}


# MLflow's error codes (``mlflow.protos.databricks_pb2``) for our statuses.
_MLFLOW_CODES = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                 404: "RESOURCE_DOES_NOT_EXIST", 413: "RESOURCE_EXHAUSTED",
                 415: "BAD_REQUEST", 422: "INVALID_PARAMETER_VALUE",
                 502: "TEMPORARILY_UNAVAILABLE", 503: "TEMPORARILY_UNAVAILABLE"}
MLFLOW_PATHS = ("/invocations", "/ping", "/health", "/version")


def shaped(path: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    """An :func:`error_body` in the error shape of the protocol that ``path`` belongs to."""
    if path == "/v2" or path.startswith("/v2/"):
        return {"error": body["error"]["message"]}
    if path in MLFLOW_PATHS or path.endswith("/invocations"):
        code = _MLFLOW_CODES.get(status, "INTERNAL_ERROR" if status >= 500 else "BAD_REQUEST")
        return {"error_code": code, "message": body["error"]["message"], **body}
    return body


def error_response(exc: Exception, path: str = "") -> JSONResponse:
    """Map any exception to its JSON answer (the single mapping of errors to statuses), in the
    shape of the protocol ``path`` belongs to."""
    headers = None
    if isinstance(exc, AnomalyError):
        record = getattr(exc, "record", None) if isinstance(exc, DataError) else None
        column = getattr(exc, "column", None) if isinstance(exc, DataError) else None
        status, body = exc.status, error_body(exc.type, str(exc), record, column, exc.details)
        if isinstance(exc, AuthError):
            headers = {"WWW-Authenticate": "ApiKey"}
    elif isinstance(exc, (RequestValidationError, ValidationError)):
        status, body = 422, validation_body(exc.errors())
    elif isinstance(exc, StarletteHTTPException):
        status, body = exc.status_code, error_body("http_error", str(exc.detail))
        headers = getattr(exc, "headers", None)
    else:
        log.error("unhandled error", exc_info=exc)
        status, body = 500, error_body("internal_error", "internal error; see the service log")
    return JSONResponse(shaped(path, status, body), status_code=status, headers=headers)


def describe_loc(loc: tuple[Any, ...]) -> tuple[int | None, str | None, str]:
    """(record, column, where) of a pydantic error location in a scoring request.

    ``("records", 3, "x")`` and ``("columns", "x", 3)`` both name record 3, column 'x'.
    """
    parts = [p for p in loc if p != "body"]
    record = column = None
    if parts[:1] == ["records"]:
        record = parts[1] if len(parts) > 1 and isinstance(parts[1], int) else None
        column = str(parts[2]) if len(parts) > 2 else None
    elif parts[:1] == ["columns"]:
        column = str(parts[1]) if len(parts) > 1 else None
        record = parts[2] if len(parts) > 2 and isinstance(parts[2], int) else None
    if record is not None and column is not None:
        where = f"record {record}, column '{column}'"
    elif record is not None:
        where = f"record {record}"
    elif column is not None:
        where = f"column '{column}'"
    else:
        where = ".".join(str(p) for p in parts) or "body"
    return record, column, where


def _detail(err: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """One pydantic error as a ``details`` item, and its reason without the location."""
    record, column, where = describe_loc(tuple(err.get("loc", ())))
    msg = err.get("msg", "invalid value")
    if err.get("type") == "missing" and column is not None:
        msg = "missing column"
    elif "Expected UploadFile" in str(msg):  # FastAPI's words for a text field
        msg = "expected files (multipart parts with a file name), got a text field"
    elif err.get("type") == "extra_forbidden":
        msg = ("column not in the model's schema (strict mode)" if column is not None
               else "unknown field")
    item: dict[str, Any] = {"message": f"{where}: {msg}"}
    if record is not None:
        item["record"] = record
    if column is not None:
        item["column"] = column
    if "input" in err and err.get("type") not in ("missing", "json_invalid"):
        text = repr(err["input"])
        item["value"] = text if len(text) <= 80 else text[:77] + "..."
    reason = msg if record is not None or column is not None else item["message"]
    return item, reason


def data_error(errors: list[dict[str, Any]], limit: int = 10) -> DataError:
    """Pydantic errors as one :class:`DataError`: the first names record and column, the
    first ``limit`` are its ``details``."""
    if not errors:
        return DataError("invalid request")
    items = [_detail(e) for e in errors[:limit]]
    first = items[0][0]
    extra = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return DataError(items[0][1] + extra, record=first.get("record"), column=first.get("column"),
                     details=[item for item, _ in items])


def validation_body(errors: list[dict[str, Any]], limit: int = 10) -> dict[str, Any]:
    """Error body for pydantic errors: the first names record and column, up to ``limit``."""
    e = data_error(errors, limit)
    return error_body(e.type, str(e), e.record, e.column, e.details)


def install(app: FastAPI) -> None:
    """Route every exception through :func:`error_response`."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, request.url.path)

    for cls in (AnomalyError, RequestValidationError, ValidationError,
                StarletteHTTPException, Exception):
        app.add_exception_handler(cls, handle)
