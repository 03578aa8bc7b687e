"""Service errors and the one place that maps every error to an HTTP status.

Every error answer is JSON: ``{"error": {"type", "message", "record", "column", "details"}}``
where ``record`` (counted from 0) and ``column`` name the first bad value when there is one.
Client mistakes are 4xx; a 500 only ever means a bug, and carries no traceback.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from training.errors import AnomalyError, ConfigError, DataError, ModelFormatError, NotFittedError

log = logging.getLogger(__name__)


class ServiceError(AnomalyError):
    """Base of the errors the service answers with a status of their own."""

    status = 400
    type = "bad_request"

    def __init__(self, message: str, record: int | None = None, column: str | None = None,
                 details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.record, self.column, self.details = record, column, details


class InputError(ServiceError):
    """A record or parameter does not match the model's schema."""

    status, type = 422, "invalid_input"


class UnknownModelError(ServiceError):
    """No model of that name is configured."""

    status, type = 404, "unknown_model"


class ModelNotReadyError(ServiceError):
    """The model is configured but could not be loaded (registry down, nothing cached)."""

    status, type = 503, "model_not_ready"


class TooLargeError(ServiceError):
    """Too many records or too many bytes in one request."""

    status, type = 413, "too_large"


class UnsupportedMediaError(ServiceError):
    """An upload that is neither CSV nor Parquet."""

    status, type = 415, "unsupported_media_type"


class AuthError(ServiceError):
    """No API key, or a key that is not configured."""

    status, type = 401, "unauthorized"


class ForbiddenError(ServiceError):
    """A valid key that may not do this (reload needs an admin key)."""

    status, type = 403, "forbidden"


class ReloadError(ServiceError):
    """The registry could not give a new version; the current one keeps serving."""

    status, type = 502, "reload_failed"


# Errors raised by the training library, by class (first match wins).
_LIBRARY_STATUS: list[tuple[type[Exception], int, str]] = [
    (DataError, 422, "invalid_input"),
    (ConfigError, 422, "invalid_input"),
    (ModelFormatError, 503, "model_not_ready"),
    (NotFittedError, 503, "model_not_ready"),
    (AnomalyError, 400, "bad_request"),
]
RECORD_COLUMN = re.compile(r"record (?P<record>\d+), column '(?P<column>[^']*)'")


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


def error_response(exc: Exception) -> JSONResponse:
    """Map any exception to its JSON answer (the single mapping of errors to statuses)."""
    headers = None
    if isinstance(exc, ServiceError):
        status, body = exc.status, error_body(exc.type, str(exc), exc.record, exc.column,
                                              exc.details)
        if isinstance(exc, AuthError):
            headers = {"WWW-Authenticate": "ApiKey"}
    elif isinstance(exc, AnomalyError):
        status, type_ = next((s, t) for cls, s, t in _LIBRARY_STATUS if isinstance(exc, cls))
        m = RECORD_COLUMN.search(str(exc))
        body = error_body(type_, str(exc), int(m["record"]) if m else None,
                          m["column"] if m else None)
    elif isinstance(exc, (RequestValidationError, ValidationError)):
        status, body = 422, validation_body(exc.errors())
    elif isinstance(exc, StarletteHTTPException):
        status, body = exc.status_code, error_body("http_error", str(exc.detail))
        headers = getattr(exc, "headers", None)
    else:
        log.error("unhandled error", exc_info=exc)
        status, body = 500, error_body("internal_error", "internal error; see the service log")
    return JSONResponse(body, status_code=status, headers=headers)


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


def validation_body(errors: list[dict[str, Any]], limit: int = 10) -> dict[str, Any]:
    """Error body for pydantic errors: the first names record and column, up to ``limit``."""
    details = []
    for err in errors[:limit]:
        record, column, where = describe_loc(tuple(err.get("loc", ())))
        msg = err.get("msg", "invalid value")
        if err.get("type") == "missing" and column is not None:
            msg = "missing column"
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
        details.append(item)
    if not details:
        details = [{"message": "invalid request"}]
    first = details[0]
    extra = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return error_body("invalid_input", first["message"] + extra, first.get("record"),
                      first.get("column"), details)


def install(app: FastAPI) -> None:
    """Route every exception through :func:`error_response`."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    for cls in (AnomalyError, RequestValidationError, ValidationError,
                StarletteHTTPException, Exception):
        app.add_exception_handler(cls, handle)
