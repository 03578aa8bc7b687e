"""The scoring core: plain functions from a served model and validated records to answers.

No web framework here: routes call these, tests call them directly. Every request's records
are scored together in one vectorised pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pydantic_core

from service.model import ServedModel
from service.scoring.render import render_results
from training.detector.scores import scored_primary
from training.errors import DataError
from training.preprocessing.tabular import Records


@dataclass
class Scored:
    """A score answer and what metrics need from it.

    Attributes:
        body: the JSON-ready answer (see ``schemas.ScoreResponse``); without ``results``
            when ``rendered_results`` holds them.
        primary: (n,) primary scores.
        flagged: how many records are anomalies.
        rendered_results: the ``results`` array already as JSON text, or None.
    """

    body: dict[str, Any]
    primary: np.ndarray
    flagged: int
    rendered_results: bytes | None = None

    def to_json(self) -> bytes:
        """The whole answer as JSON (non-finite numbers as null)."""
        head = pydantic_core.to_json(self.body, inf_nan_mode="null")
        if self.rendered_results is None:
            return head
        return head[:-1] + b',"results":' + self.rendered_results + b"}"

    def answer(self) -> dict[str, Any]:
        """The whole answer as Python objects."""
        return json.loads(self.to_json())


def _check_finite(model: ServedModel, records: Records | pd.DataFrame,
                  scores: np.ndarray) -> None:
    """Raise naming the first record whose score (or any value of its row of a 2-D answer:
    latent codes, reconstructions) overflowed, and its most extreme column."""
    finite = np.isfinite(scores)
    bad = np.flatnonzero(~(finite if finite.ndim == 1 else finite.all(axis=1)))
    if not bad.size:
        return
    i = int(bad[0])
    if model.data_kind == "sequences":  # a window's score, not a row's
        raise DataError("values too far outside the training data to score (the "
                        "reconstruction of the window ending here overflows); check the units",
                        record=i)
    frame = records if isinstance(records, pd.DataFrame) else records.frame(model.inputs.columns)
    row = frame.iloc[[i]]
    X, _ = model.scorer.preprocessor_.transform(row, source="request")
    columns = model.scorer.preprocessor_.feature_columns_
    column = columns[int(np.nanargmax(np.abs(X[0].astype(np.float64))))]
    raise DataError("value too far outside the training data to score (the reconstruction "
                    "overflows); check its units", record=i, column=column)


def score_columns(model: ServedModel, records: Records | pd.DataFrame,
                  explain: bool = False) -> dict[str, np.ndarray]:
    """``model.score``: the columns of ``Detector.score_columns``, each (n,).

    Args:
        records: validated request records; or a DataFrame (a CSV body), which the model's
            preprocessing checks on the way in, naming the record and column of a bad value.

    Raises:
        DataError: a record whose score overflows (its most extreme column named, by
            ``score_columns`` itself).
    """
    return model.score(records, explain=explain)


def score_batch(model: ServedModel, records: Records, explain: bool = False,
                top_k: int = 5) -> Scored:
    """Score every record with ``model``: one pass through ``Detector.score_columns``.

    Returns:
        the answer: ``model`` metadata, ``n_records``, ``n_anomalies``, ``ignored_columns``
        and one result per record in order (with ``explanation``, the ``top_k`` columns of
        largest reconstruction error, when ``explain``).
    """
    cols = score_columns(model, records, explain)
    flagged = int(cols["is_anomaly"].sum())
    body = {"model": model.metadata(), "n_records": records.n, "n_anomalies": flagged,
            "ignored_columns": records.ignored}
    rendered = render_results(cols, model.explained_columns, top_k)
    return Scored(body=body, primary=scored_primary(cols), flagged=flagged,
                  rendered_results=rendered)


def encode_batch(model: ServedModel, records: Records) -> dict[str, Any]:
    """Latent codes: ``latent`` (n, latent_dim), posterior means for a VAE, one per record
    (table models: a sequence model codes windows, not records)."""
    if model.data_kind == "sequences":
        raise DataError(f"model '{model.name}' codes windows of a series, not records; this "
                        "route answers one code per record (table models). A window's code: "
                        "SequenceDetector.encode in Python")
    z = model.detector.encode(records, source="request")
    _check_finite(model, records, z)
    return {"model": model.metadata(), "latent_dim": int(z.shape[1]), "latent": z.tolist()}


def reconstruct_batch(model: ServedModel, records: Records) -> dict[str, Any]:
    """Reconstructions in the input's own columns, one record per input record (table
    models: a sequence model reconstructs windows, not records)."""
    if model.data_kind == "sequences":
        raise DataError(f"model '{model.name}' reconstructs windows of a series, not records: "
                        f"each channel's error is in POST /v1/models/{model.name}/score"
                        "?explain=true")
    rec = model.detector.reconstruct(records, source="request")
    _check_finite(model, records, rec.select_dtypes("number").to_numpy(dtype=np.float64))
    rec = rec.astype(object).where(rec.notna(), None)
    return {"model": model.metadata(), "columns": list(rec.columns),
            "records": rec.to_dict(orient="records")}
