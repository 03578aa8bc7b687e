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

import errno
import os
import stat
from pathlib import Path
from typing import Any


class AnomalyError(Exception):
    """Base of every error the project raises on purpose."""

    exit_code = 2
    status = 400
    type = "bad_request"

    def __init_subclass__(cls, status: int | None = None, type: str | None = None,
                          exit_code: int | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in (("status", status), ("type", type), ("exit_code", exit_code)):
            if value is not None:
                setattr(cls, name, value)

    def __init__(self, message: str = "", *, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.details = details


def first_line(e: BaseException, limit: int = 300) -> str:
    """An exception's first non-empty line (at most ``limit`` characters), or its class name:
    what a one-line message quotes of an error from a library."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0].strip()[:limit] if lines else type(e).__name__


def shown(value: Any) -> str:
    """A value as a message quotes it: plain Python (``2``, ``inf``, ``'x'``), not a numpy repr."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, TypeError):
            pass
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def listed(names: list[str], most: int = 5) -> str:
    """Up to ``most`` names quoted, then how many more."""
    shown_names = ", ".join(repr(n) for n in names[:most])
    return shown_names + (f" and {len(names) - most} more" if len(names) > most else "")


class DataError(AnomalyError, ValueError, status=422, type="invalid_input"):
    """The data does not match what is expected (missing column, wrong type, too few rows...).

    Args:
        message: what is wrong (and the fix), without the location.
        source: file or input name ("request", "breast_cancer.csv").
        record: 0-based record number in that source, header excluded.
        column: the column at fault.
    """

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


# Each class says once what every entry point answers: HTTP ``status`` and ``type``, and the CLI's
# ``exit_code`` where it is not 2 (1: the environment failed, not the caller).
class ModelFormatError(AnomalyError, status=422, type="invalid_model"):
    """A saved detector (or a registered model) is missing files or holds another format."""


class ModelNotFoundError(AnomalyError, status=404, type="model_not_found"):
    """The registry has no such model, version or alias."""


class RegistryUnavailable(AnomalyError, exit_code=1, status=503, type="registry_unavailable"):
    """The registry or its artifact store could not be reached: the environment's fault."""


class TooLargeError(AnomalyError, status=413, type="too_large"):
    """Too many records, bytes, columns or pixels in one request."""


class UnsupportedMediaError(AnomalyError, status=415, type="unsupported_media_type"):
    """An upload that is neither CSV nor Parquet."""


class ConfigError(AnomalyError, ValueError, status=422, type="invalid_input"):
    """A configuration value or key is wrong (unknown key, value out of range...)."""


class UnknownModelError(AnomalyError, status=404, type="unknown_model"):
    """No model of that name is served."""


class ModelNotChosenError(AnomalyError, status=404, type="model_not_chosen"):
    """A route for the only model served, on a service that serves several: name the model."""


class AuthError(AnomalyError, status=401, type="unauthorized"):
    """No API key, or a key that is not configured."""


class OutputError(AnomalyError):
    """An output cannot be written where the caller asked (permissions, a folder...)."""


def output_error(e: OSError, head: str, fix: str = "") -> OutputError:
    """The caller's error for a write that failed with ``e``: ``head (reason)fix``. A full disk,
    an exceeded quota or an I/O error is the environment's fault, not the caller's: ``e``
    itself is raised then."""
    if e.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT):
        raise e
    return OutputError(f"{head} ({e.strerror or type(e).__name__}){fix}")


def output_target(path: Path) -> Path:
    """The file an output at ``path`` replaces: ``path``, or the file a symbolic link there
    points to (written through, as a shell's redirection writes); an existing device, pipe or
    socket is an :class:`OutputError` (replacing it would swap a special file for a plain
    one). A folder is left to the caller to name."""
    target = path.resolve() if path.is_symlink() else path
    try:
        mode = os.stat(target).st_mode
    except OSError:  # nothing there yet (or unreadable: the write itself will say)
        return target
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise OutputError(f"{path}: exists and is not a regular file (a device, a pipe or a "
                          "socket); choose a file to write")
    return target


class ModelNotReadyError(AnomalyError, exit_code=1, status=503, type="model_not_ready"):
    """The model is configured but could not be loaded (registry down, nothing cached)."""


class NotFittedError(AnomalyError, RuntimeError, status=503, type="model_not_ready"):
    """A method needing a fitted (or calibrated) detector was called too early."""


class ReloadError(AnomalyError, exit_code=1, status=502, type="reload_failed"):
    """The registry could not give a new version; the current one keeps serving."""


class ForbiddenError(AnomalyError, status=403, type="forbidden"):
    """A valid key that may not do this (reload needs an admin key)."""


class ServiceError(AnomalyError, exit_code=1, status=500, type="internal_error"):
    """The scoring service answered with an error no other class stands for (a 500, an unknown
    route); the Python client raises it with the answer's status, type and message."""


class ServiceUnreachable(AnomalyError, exit_code=1, status=503, type="service_unreachable"):
    """The scoring service could not be reached (connection refused or dropped) after the
    client's retries: check its address and that it runs."""


class ServiceTimeout(ServiceUnreachable, status=504, type="timeout"):
    """The scoring service did not answer within the client's timeout: raise the timeout, or
    send fewer records per request."""
