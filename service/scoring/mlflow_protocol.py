"""MLflow's scoring protocol (``mlflow models serve``'s ``/invocations``), on the one scoring path.

A body in any format MLflow's scoring server accepts is rearranged into this service's own
layouts and checked by the model's :class:`~service.scoring.inputs.ModelInputs`, so a bad value
gets the same 4xx, naming the same record and column, as on ``/v1``:

- ``application/json`` with exactly one of
  ``{"dataframe_split": {"columns": [...], "data": [[...], ...]}}`` (``index`` ignored),
  ``{"dataframe_records": [{column: value}, ...]}``,
  ``{"instances": [...]}`` or ``{"inputs": ...}``: a list of objects, a list of rows in the
  schema's column order, or (``inputs``) an object of columns; ``params`` is accepted and unused.
  ``NaN`` means missing, as in the pandas DataFrame MLflow would build; ``Infinity`` is an error.
- ``text/csv`` (a header line, then one record per line) and
  ``application/vnd.apache.parquet``: read into a DataFrame, checked by the model's
  preprocessing.

An image model reads JSON in the same formats with one image per record, base64 in the column
``image`` (PNG or JPEG bytes; a ``data:...;base64,`` prefix is dropped), as its pyfunc reads
it; other columns are ignored, and ``path`` (a file on the client's side) is refused.

The answer is ``{"predictions": [...]}``, one object per record with the pyfunc's columns:
``score``, ``p_value``, ``is_anomaly``, ``score_<kind>`` and ``p_value_<kind>`` per score kind,
``unknown_categories`` (tables).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pydantic_core

from service.model import ServedModel
from service.scoring.files import UploadLimits, check_upload
from service.scoring.images import image_columns
from service.scoring.records import score_columns
from service.scoring.render import render_results
from training.data.tables import read_csv
from training.detector.scores import scored_primary
from training.errors import DataError, TooLargeError, UnsupportedMediaError
from training.preprocessing.images import decode_base64
from training.preprocessing.tabular import Records

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
JSON, CSV, PARQUET = "application/json", "text/csv", "application/vnd.apache.parquet"
_HINT = ("send a JSON object with exactly one of 'dataframe_split' ({\"columns\": [...], "
         "\"data\": [[...]]}), 'dataframe_records' (a list of objects), 'instances' or "
         "'inputs'; or a text/csv body with a header line")


@dataclass
class Predictions:
    """An ``/invocations`` answer and what metrics need from it."""

    body: bytes
    primary: np.ndarray
    flagged: int


def media_type(content_type: str | None) -> str:
    """'application/json', 'text/csv' or the Parquet type, from a Content-Type header.

    Raises:
        UnsupportedMediaError: any other type, or a charset other than UTF-8.
    """
    parts = [p.strip() for p in (content_type or JSON).split(";")]
    mime = parts[0].lower() or JSON
    for param in parts[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() != "utf-8":
            raise UnsupportedMediaError("the body must be UTF-8")
    if mime not in (JSON, CSV, PARQUET):
        raise UnsupportedMediaError(f"content type {mime!r}: send {JSON}, {CSV} or {PARQUET}")
    return mime


def parse(model: ServedModel, raw: bytes, content_type: str | None,
          strict: bool = False, limits: UploadLimits | None = None) -> Records | pd.DataFrame:
    """The records of an ``/invocations`` body, checked against the model's schema.

    Raises:
        DataError: not one of MLflow's formats, or a bad value (record and column named).
        TooLargeError: more records than the service takes in one request.
        UnsupportedMediaError: a content type other than JSON, CSV or Parquet.

    A CSV or Parquet body's header is held to ``limits`` (its length, its columns) before the
    body is parsed, and a Parquet body's record count to ``max_records``, as uploads are.
    """
    mime = media_type(content_type)
    if mime != JSON:
        return _frame(model, raw, mime, strict, limits or UploadLimits())
    key, value = _payload(raw)
    layout = _layout(model.inputs.columns, key, value)
    if b"NaN" in raw:  # pandas' missing value, as MLflow's clients write it
        layout = _nan_as_missing(layout)
    return model.inputs.validate(layout, strict)


def _payload(raw: bytes) -> tuple[str, Any]:
    """The one format key of a JSON body and its value."""
    try:
        body = pydantic_core.from_json(raw, allow_inf_nan=True)
    except ValueError as e:
        raise DataError(f"the body is not valid JSON ({e}); {_HINT}") from None
    if not isinstance(body, dict):
        raise DataError(f"the body must be a JSON object; {_HINT}")
    found = [k for k in FORMATS if k in body]
    unknown = sorted(set(body) - {*FORMATS, "params"})
    if len(found) != 1 or unknown:
        got = f"got keys {sorted(body)}" if body else "got an empty object"
        raise DataError(f"{_HINT}; {got}")
    if "params" in body and not isinstance(body["params"], dict | None):
        raise DataError("'params' must be an object")
    return found[0], body[found[0]]


def parse_images(raw: bytes, content_type: str | None) -> list[tuple[str, bytes]]:
    """An image model's ``/invocations`` body: per record, ``("record i", image bytes)``.

    Raises:
        DataError: not JSON in one of MLflow's formats, a record without an ``image`` or with
            one that is not a base64 string (record and column named).
        UnsupportedMediaError: a content type other than JSON.
    """
    if media_type(content_type) != JSON:
        raise UnsupportedMediaError(f"an image model reads {JSON}: one record per image, "
                                    "base64 in the column 'image'")
    layout = _layout(["image"], *_payload(raw))
    if "columns" in layout:
        columns = layout["columns"]
        values = columns.get("image") if isinstance(columns, dict) else None
        if not isinstance(values, list):
            _no_image(columns)
    else:
        records = layout["records"]
        if not all(isinstance(r, dict) for r in records):
            raise DataError("expected one object per record, with the column 'image'")
        for r in records:
            if "image" not in r:
                _no_image(r)
        values = [r["image"] for r in records]
    if not values:
        raise DataError("no records to score")
    files = []
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise DataError("expected the image as a base64 string", record=i, column="image")
        files.append((f"record {i}", decode_base64(v, f"record {i}")))
    return files


def _no_image(given: Any) -> None:
    """Refuse a body without the column ``image``."""
    hint = " (a path names a file on your side: send its bytes)" \
        if isinstance(given, dict) and "path" in given else ""
    raise DataError(f"no column 'image'{hint}: send each image as a base64 string in the "
                    "column 'image'")


def _layout(columns: list[str], key: str, value: Any) -> dict[str, Any]:
    """MLflow's payload as ``{"records": [...]}`` or ``{"columns": {...}}`` (rows given without
    names are in the order of ``columns``)."""
    if key == "dataframe_split":
        if not isinstance(value, dict) or not isinstance(value.get("columns"), list):
            raise DataError("'dataframe_split' needs 'columns' (a list of names) and 'data' "
                            "(a list of rows), as pandas' to_dict(orient='split') writes them")
        return _rows(value["columns"], value.get("data"), "dataframe_split.data")
    if key == "inputs" and isinstance(value, dict):
        return {"columns": value}
    if not isinstance(value, list):
        raise DataError(f"'{key}' must be a list of records"
                        + (" or an object of columns" if key == "inputs" else ""))
    if value and all(isinstance(v, list) for v in value):
        return _rows(columns, value, key)
    return {"records": value}


def _rows(columns: list[Any], data: Any, where: str) -> dict[str, Any]:
    """Rows (lists of values in ``columns`` order) as ``{"columns": {...}}``."""
    if not isinstance(data, list):
        raise DataError(f"'{where}' must be a list of rows")
    names = [str(c) for c in columns]
    if len(set(names)) != len(names):
        dup = next(c for c in names if names.count(c) > 1)
        raise DataError("the column is named twice", column=dup)
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(names):
            size = len(row) if isinstance(row, list) else "not a list"
            raise DataError(f"expected a row of {len(names)} values, one per column "
                            f"{names[:3] + ['...'] if len(names) > 3 else names}, got {size}",
                            record=i)
    return {"columns": {c: [row[j] for row in data] for j, c in enumerate(names)}}


def _nan_as_missing(layout: dict[str, Any]) -> dict[str, Any]:
    """NaN values as None (missing); infinities stay, and are rejected by the schema."""
    def fix(v: Any) -> Any:
        return None if isinstance(v, float) and math.isnan(v) else v

    if "columns" in layout and isinstance(layout["columns"], dict):
        return {"columns": {c: [fix(v) for v in vs] if isinstance(vs, list) else vs
                            for c, vs in layout["columns"].items()}}
    if isinstance(layout.get("records"), list):
        return {"records": [{k: fix(v) for k, v in r.items()} if isinstance(r, dict) else r
                            for r in layout["records"]]}
    return layout


def _frame(model: ServedModel, raw: bytes, mime: str, strict: bool, limits: UploadLimits
           ) -> pd.DataFrame:
    """A CSV or Parquet body as a DataFrame of at most ``max_records`` records."""
    f = io.BytesIO(raw)
    try:
        if mime == CSV:
            if not raw.strip():
                raise pd.errors.EmptyDataError
            check_upload(model, f, "the body", "csv", limits)
            df = read_csv(f, "the body", text_columns=model.inputs.text_columns)
        else:
            check_upload(model, f, "the body", "parquet", limits)
            if pq.ParquetFile(f).metadata.num_rows > model.inputs.max_records:
                raise _too_many(model)
            df = pd.read_parquet(f)
    except pd.errors.EmptyDataError:
        raise DataError("the body is empty; send a header line, then one record per line"
                        ) from None
    except (DataError, TooLargeError):
        raise
    except Exception as e:  # pandas' and pyarrow's parse errors have no common base
        kind = "CSV" if mime == CSV else "Parquet"
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise DataError(f"cannot read the body as {kind}: {first}") from None
    df.columns = [str(c) for c in df.columns]
    if len(df) == 0:
        raise DataError("no records to score (only a header?)")
    if len(df) > model.inputs.max_records:
        raise _too_many(model)
    extra = sorted(set(df.columns) - set(model.inputs.columns))
    if strict and extra:
        raise DataError("column not in the model's schema (strict mode)", column=extra[0])
    return df


def _too_many(model: ServedModel) -> TooLargeError:
    return TooLargeError(f"more than {model.inputs.max_records} records in one request; split "
                         "it, or use score-file for large inputs (limit: ANOMALY_MAX_RECORDS)")


def count(records: Records | pd.DataFrame) -> int:
    """How many records :func:`parse` gave."""
    return len(records) if isinstance(records, pd.DataFrame) else records.n


def predict(model: ServedModel, records: Records | pd.DataFrame) -> Predictions:
    """Score ``records`` (from :func:`parse`) and render MLflow's ``{"predictions": [...]}``."""
    cols = score_columns(model, records)
    rows = render_results(cols, grouped=False)
    return Predictions(body=b'{"predictions":' + rows + b"}", primary=scored_primary(cols),
                       flagged=int(cols["is_anomaly"].sum()))


def predict_images(model: ServedModel, files: list[tuple[str, bytes]], max_images: int,
                   max_image_pixels: int, max_request_pixels: int) -> Predictions:
    """Score an image model's records (from :func:`parse_images`) into MLflow's answer."""
    cols, _ = image_columns(model, files, False, max_images, max_image_pixels,
                            max_request_pixels)
    rows = render_results(cols, grouped=False)
    return Predictions(body=b'{"predictions":' + rows + b"}", primary=scored_primary(cols),
                       flagged=int(cols["is_anomaly"].sum()))
