"""The project's one error hierarchy.

Every error raised on purpose is an :class:`AnomalyError`. Each class carries, once, what every
entry point answers with: ``exit_code`` for the CLI (2: the caller's input or configuration is
wrong; 1: the environment failed), ``status`` and ``type`` for HTTP. The CLI and the service read
these attributes in one place each and never parse messages.

A :class:`DataError` carries where the bad value is as fields (``source`` file, ``record``
counted from 0 without the header, ``column``); its message is rendered from them, so every
entry point shows the same one line and can report the fields as they are.
"""

from __future__ import annotations

from typing import Any


class AnomalyError(Exception):
    """Base of every error the project raises on purpose."""

    exit_code = 2
    status = 400
    type = "bad_request"

    def __init__(self, message: str = "", *, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.details = details


def shown(value: Any) -> str:
    """A value as a message quotes it: plain Python (``2``, ``inf``, ``'x'``), not a numpy repr."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, TypeError):
            pass
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- the caller's input or configuration ------------------------------------------------------
class DataError(AnomalyError, ValueError):
    """The data does not match what is expected (missing column, wrong type, too few rows...).

    Args:
        message: what is wrong (and the fix), without the location.
        source: file or input name ("request", "breast_cancer.csv").
        record: 0-based record number in that source, header excluded.
        column: the column at fault.
    """

    status, type = 422, "invalid_input"

    def __init__(self, message: str, *, source: str | None = None, record: int | None = None,
                 column: str | None = None, details: list[dict[str, Any]] | None = None):
        self.reason = message
        self.source = None if source is None else str(source)
        self.record = None if record is None else int(record)
        self.column = None if column is None else str(column)
        super().__init__(self._render(), details=details)

    def _render(self) -> str:
        where = []
        if self.record is not None:
            where.append(f"record {self.record}")
        if self.column is not None:
            where.append(f"column '{self.column}'")
        head = ", ".join(where)
        if self.source:
            head = f"{self.source}: {head}" if head else self.source
        return f"{head}: {self.reason}" if head else self.reason

    def located(self, *, source: str | None = None, offset: int = 0) -> DataError:
        """The same error in a larger input: ``record`` shifted by ``offset`` (a chunk's first
        record), ``source`` replaced when given."""
        out = type(self).__new__(type(self))
        DataError.__init__(out, self.reason, source=source or self.source,
                           record=None if self.record is None else self.record + offset,
                           column=self.column, details=self.details)
        return out


class ConfigError(AnomalyError, ValueError):
    """A configuration value or key is wrong (unknown key, value out of range...)."""

    status, type = 422, "invalid_input"


class NotFittedError(AnomalyError, RuntimeError):
    """A method needing a fitted (or calibrated) detector was called too early."""

    status, type = 503, "model_not_ready"


class ModelFormatError(AnomalyError):
    """A saved detector (or a registered model) is missing files or holds another format."""

    status, type = 422, "invalid_model"


class ModelNotFoundError(AnomalyError):
    """The registry has no such model, version or alias."""

    status, type = 404, "model_not_found"


class OutputError(AnomalyError):
    """An output cannot be written where the caller asked (permissions, a folder...)."""


# -- the environment ---------------------------------------------------------------------------
class RegistryUnavailable(AnomalyError):
    """The registry or its artifact store could not be reached: the environment's fault."""

    exit_code, status, type = 1, 503, "registry_unavailable"


# -- requests to the scoring service -----------------------------------------------------------
class TooLargeError(AnomalyError):
    """Too many records, bytes, columns or pixels in one request."""

    status, type = 413, "too_large"


class UnsupportedMediaError(AnomalyError):
    """An upload that is neither CSV nor Parquet."""

    status, type = 415, "unsupported_media_type"


class UnknownModelError(AnomalyError):
    """No model of that name is served."""

    status, type = 404, "unknown_model"


class ModelNotReadyError(AnomalyError):
    """The model is configured but could not be loaded (registry down, nothing cached)."""

    exit_code, status, type = 1, 503, "model_not_ready"


class AuthError(AnomalyError):
    """No API key, or a key that is not configured."""

    status, type = 401, "unauthorized"


class ForbiddenError(AnomalyError):
    """A valid key that may not do this (reload needs an admin key)."""

    status, type = 403, "forbidden"


class ReloadError(AnomalyError):
    """The registry could not give a new version; the current one keeps serving."""

    exit_code, status, type = 1, 502, "reload_failed"
