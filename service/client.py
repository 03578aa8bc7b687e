"""A Python client of the scoring service: DataFrames in, DataFrames out.

Example:
    >>> from service.client import AnomalyClient
    >>> with AnomalyClient("http://127.0.0.1:8000", api_key="k1") as client:
    ...     scored = client.score(df)            # the model, when the service serves one
    ...     scored = client.score(df, model="breast-cancer")
    ...     client.score_file("new.csv")         # the file's rows with score columns appended
    ...     client.models(); client.reload("breast-cancer")

Every answer's scores arrive as columns of the pyfunc's names (``score``, ``p_value``,
``is_anomaly``, ``score_<kind>``, ``p_value_<kind>``, ``unknown_categories``), one row per
record in the order sent, on the index of the DataFrame sent; ``attrs["model"]`` says which
model version answered.

Failures are the project's own error classes (:mod:`training.errors`), rebuilt from the
service's error body: a 422 is a :class:`~training.errors.DataError` with the ``record`` and
``column`` the service named, a 404 an :class:`~training.errors.UnknownModelError`, and so on;
each carries ``status`` (the HTTP status), ``type``, ``details`` and ``body`` (the answer).
Connection failures and 503 answers (a model not loaded yet, a registry down) are retried with
exponential backoff; a service that stays unreachable is a
:class:`~training.errors.ServiceUnreachable`, one that does not answer in time a
:class:`~training.errors.ServiceTimeout`.

The client imports neither torch nor the service's internals: only httpx, pandas and the
error classes.
"""

from __future__ import annotations

import io
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pandas as pd

from training.errors import (
    AnomalyError,
    AuthError,
    DataError,
    ForbiddenError,
    ModelFormatError,
    ModelNotChosenError,
    ModelNotFoundError,
    ModelNotReadyError,
    RegistryUnavailable,
    ReloadError,
    ServiceError,
    ServiceTimeout,
    ServiceUnreachable,
    TooLargeError,
    UnknownModelError,
    UnsupportedMediaError,
)

log = logging.getLogger(__name__)

# The service's error ``type`` -> the class raised here (the first class of each type).
_BY_TYPE: dict[str, type[AnomalyError]] = {c.type: c for c in reversed([
    DataError, TooLargeError, UnsupportedMediaError, UnknownModelError, ModelNotChosenError,
    ModelNotFoundError, ModelFormatError, AuthError, ForbiddenError, ModelNotReadyError,
    RegistryUnavailable, ReloadError, ServiceError])}
_RETRIED_STATUS = 503
_FILE_TYPES = {".csv": "text/csv", ".parquet": "application/vnd.apache.parquet",
               ".pq": "application/vnd.apache.parquet"}

Input = pd.DataFrame | Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]


class AnomalyClient:
    """The scoring service at ``base_url``.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000``.
        api_key: sent as ``X-API-Key`` (an admin key to reload).
        timeout: seconds to wait for an answer (and to connect).
        retries: further tries after a connection failure or a 503 answer.
        backoff: seconds before the first retry; doubled for each next one (with up to 10%
            jitter), at most ``max_backoff``; a ``Retry-After`` header is honoured.
        max_backoff: the longest wait between two tries.
        batch_size: records per request; larger inputs are sent in several requests.
        transport: an httpx transport (tests).
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 30.0,
                 retries: int = 3, backoff: float = 0.5, max_backoff: float = 8.0,
                 batch_size: int = 5000, transport: httpx.BaseTransport | None = None):
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.batch_size = batch_size
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers,
                                  timeout=httpx.Timeout(timeout), transport=transport)
        self._only_model: str | None = None

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> AnomalyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- models ------------------------------------------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        """Every model loaded now: name, version, alias, kind, thresholds, input schema..."""
        return self._request("GET", "/v1/models").json()["models"]

    def model(self, name: str) -> dict[str, Any]:
        """One loaded model, as :meth:`models` describes it."""
        return self._request("GET", f"/v1/models/{quote(name, safe='')}").json()

    def ready(self) -> bool:
        """Whether every configured model is loaded (``/readyz``); never retried."""
        return self._request("GET", "/readyz", retry=False, ok=(200, 503)).status_code == 200

    def reload(self, name: str) -> dict[str, Any]:
        """Re-resolve the model's alias in the registry and serve what it points at.

        Returns:
            ``previous_version`` and ``model`` (the version served now).
        """
        return self._request("POST", f"/v1/models/{quote(name, safe='')}/reload").json()

    # -- scoring -----------------------------------------------------------------------------
    def score(self, data: Input, model: str | None = None, *, explain: bool = False,
              strict: bool | None = None) -> pd.DataFrame:
        """Score records.

        Args:
            data: a DataFrame (its index is kept), a list of records (column -> value) or
                columns (column -> list of values). Missing values (None, NaN) are sent as
                missing.
            model: the model's name; may be left out when the service serves one.
            explain: add ``explanation``: each record's largest contributions.
            strict: reject columns the model does not read (default: the service's setting).

        Returns:
            (n_records, ...) scores; ``attrs["model"]`` is the version that answered and
            ``attrs["ignored_columns"]`` the columns it did not read.
        """
        frame = _as_frame(data)
        name = quote(model or self._the_model(), safe="")
        params: dict[str, str] = {}
        if explain:
            params["explain"] = "true"
        if strict is not None:
            params["strict"] = str(strict).lower()
        parts, meta, ignored = [], {}, set()
        for start in range(0, max(len(frame), 1), self.batch_size):
            chunk = frame.iloc[start:start + self.batch_size]
            body = {"columns": {str(c): _json_values(chunk[c]) for c in chunk.columns}}
            answer = self._request("POST", f"/v1/models/{name}/score", json=body,
                                   params=params).json()
            parts.append(_results_frame(answer["results"]))
            meta = answer["model"]
            ignored.update(answer.get("ignored_columns", []))
        out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        out.index = frame.index
        out.attrs.update(model=meta, ignored_columns=sorted(ignored))
        return out

    def score_file(self, path: str | Path, model: str | None = None, *,
                   summary: bool = False, keep: list[str] | None = None
                   ) -> pd.DataFrame | dict[str, Any]:
        """Score a CSV or Parquet file on the service, which reads it a chunk at a time.

        Args:
            keep: the file's columns to carry into the answer (default: every column).

        Returns:
            the file's rows with the score columns appended; with ``summary``, the counts and
            score quantiles only.
        """
        path = Path(path)
        name = quote(model or self._the_model(), safe="")
        ctype = _FILE_TYPES.get(path.suffix.lower(), "application/octet-stream")

        def upload() -> dict[str, Any]:
            return {"files": {"file": (path.name, path.open("rb"), ctype)}}

        params = {"summary": "true"} if summary else {}
        if keep is not None:
            params["keep"] = ",".join(keep)
        r = self._request("POST", f"/v1/models/{name}/score-file", params=params or None,
                          build=upload)
        if summary:
            return r.json()
        if r.headers.get("content-type", "").startswith("text/csv"):
            return pd.read_csv(io.BytesIO(r.content))
        return pd.read_parquet(io.BytesIO(r.content))

    def _the_model(self) -> str:
        if self._only_model is None:
            names = [m["name"] for m in self.models()]
            if len(names) != 1:
                raise ModelNotChosenError(f"the service serves {len(names)} models "
                                          f"({', '.join(names)}); pass model=NAME")
            self._only_model = names[0]
        return self._only_model

    # -- transport ---------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, retry: bool = True,
                 ok: tuple[int, ...] = (200,), build: Callable[[], dict[str, Any]] | None = None,
                 **kwargs: Any) -> httpx.Response:
        """Send, retrying connection failures and 503s; raise the service's error."""
        tries = 1 + (self.retries if retry else 0)
        for attempt in range(tries):
            last = attempt == tries - 1
            try:
                response = self._http.request(method, path, **(build() if build else {}),
                                              **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as e:
                if last:
                    raise ServiceUnreachable(f"{self.base_url}{path}: {e or type(e).__name__} "
                                             f"(after {tries} tries)") from None
                self._wait(attempt, None, f"{type(e).__name__}: {e}")
                continue
            except httpx.TimeoutException:
                raise ServiceTimeout(f"{self.base_url}{path}: no answer within "
                                     f"{self._http.timeout.read}s") from None
            if response.status_code in ok:
                return response
            if response.status_code == _RETRIED_STATUS and not last:
                self._wait(attempt, response.headers.get("retry-after"), "503")
                continue
            raise error_from(response)
        raise AssertionError("unreachable")

    def _wait(self, attempt: int, retry_after: str | None, why: str) -> None:
        # Jitter: clients that failed together retry apart.
        delay = min(self.max_backoff, self.backoff * 2**attempt * (1 + random.uniform(0, 0.1)))
        if retry_after and retry_after.strip().isdigit():
            delay = min(self.max_backoff, float(retry_after))
        log.info("%s: %s; retrying in %.2fs", self.base_url, why, delay)
        time.sleep(delay)


def error_from(response: httpx.Response) -> AnomalyError:
    """The project's error for an error answer of the service, with its fields.

    Attributes set on the error: ``status`` (HTTP), ``type``, ``details``, ``body`` (the
    decoded answer), and for a :class:`DataError` ``record`` and ``column``.
    """
    try:
        body = response.json()
    except ValueError:
        body = {}
    err = body.get("error") if isinstance(body, dict) else None
    err = err if isinstance(err, dict) else {}
    type_ = err.get("type")
    message = err.get("message") or response.text.strip()[:300] or f"HTTP {response.status_code}"
    cls = _BY_TYPE.get(type_, ServiceError)
    exc = cls(message, details=err.get("details"))
    if isinstance(exc, DataError):  # the message already names them; keep it as sent
        exc.record, exc.column = err.get("record"), err.get("column")
    exc.status = response.status_code
    exc.type = type_ or cls.type
    exc.body = body
    return exc


def _as_frame(data: Input) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, Mapping):
        return pd.DataFrame(dict(data))
    return pd.DataFrame.from_records(list(data))


def _json_values(col: pd.Series) -> list[Any]:
    """A column as JSON values: missing (None, NaN, NaT) as None, numpy scalars as Python."""
    values = col.astype(object).where(col.notna(), None).tolist()
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def _results_frame(results: list[dict[str, Any]]) -> pd.DataFrame:
    """The ``results`` of a score answer as the pyfunc's columns."""
    rows = []
    for r in results:
        row = {"score": r["score"], "p_value": r["p_value"], "is_anomaly": r["is_anomaly"]}
        for kind, value in r["scores"].items():
            row[f"score_{kind}"] = value
            row[f"p_value_{kind}"] = r["p_values"][kind]
        row["unknown_categories"] = r["unknown_categories"]
        if "explanation" in r:
            row["explanation"] = r["explanation"]
        rows.append(row)
    return pd.DataFrame(rows)
