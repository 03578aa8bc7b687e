"""The one renderer of per-record results, for records and images, explanations included.

A detector's ``score_columns`` gives columns; every answer's ``results`` array is built from
them here. Each column becomes a key of every result in column order, except that the per-kind
``score_<kind>`` / ``p_value_<kind>`` columns are grouped into ``scores`` and ``p_values``, and
an ``explanation`` matrix becomes each record's largest contributions, largest first. Each
column is turned into JSON text in one call and the records are assembled from those texts
with a template, so no dict is built per record.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import pydantic_core

_SCALARS = (np.bool_, np.integer, np.floating)


def _texts(values: Any) -> list[str]:
    """One JSON text per value (non-finite numbers as null)."""
    arr = np.asarray(values) if not isinstance(values, list) else None
    if arr is not None and arr.ndim == 1 and issubclass(arr.dtype.type, _SCALARS):
        text = pydantic_core.to_json(arr.tolist(), inf_nan_mode="null").decode()[1:-1]
        return text.split(",") if text else []
    return [pydantic_core.to_json(v, inf_nan_mode="null").decode() for v in
            (values.tolist() if isinstance(values, np.ndarray) else values)]


def _explanations(matrix: np.ndarray, names: Sequence[str], top_k: int) -> list[str]:
    """Per record, the ``top_k`` largest entries of ``matrix`` (n, len(names)) as JSON."""
    k = min(top_k, matrix.shape[1])
    top = np.argsort(-matrix, axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis(matrix, top, axis=1).tolist()
    chosen = np.asarray(names, dtype=object)[top].tolist()
    return [pydantic_core.to_json([{"column": c, "error": e} for c, e in zip(cs, es, strict=True)],
                                  inf_nan_mode="null").decode()
            for cs, es in zip(chosen, picked, strict=True)]


def render_results(cols: dict[str, Any], explanation_names: Sequence[str] | None = None,
                   top_k: int = 5, grouped: bool = True) -> bytes:
    """The ``results`` JSON array for ``cols`` (each of length n).

    Args:
        cols: output columns in answer order, e.g. ``score``, ``p_value``, ``is_anomaly``,
            ``score_<kind>``, ``p_value_<kind>``, ``unknown_categories``; and optionally
            ``explanation`` (n, len(explanation_names)).
        explanation_names: what the explanation's columns are (input column names).
        top_k: entries listed per record in ``explanation``.
        grouped: gather the per-kind columns into ``scores`` and ``p_values``; without it every
            column is a key of its own, as in the pyfunc's DataFrame (MLflow's predictions).
    """
    template, sources = _layout(tuple(cols), grouped)
    texts = [_explanations(np.asarray(cols[c]), explanation_names or [], top_k)
             if c == "explanation" else _texts(cols[c]) for c in sources]
    return ("[" + ",".join([template % t for t in zip(*texts, strict=True)]) + "]").encode()


@lru_cache(maxsize=256)
def _layout(names: tuple[str, ...], grouped: bool) -> tuple[str, tuple[str, ...]]:
    """A result's ``%``-template for columns ``names`` and the column behind each ``%s``."""
    kinds = [c[len("score_"):] for c in names if c.startswith("score_")] if grouped else []
    keys: list[str] = []
    sources: list[str] = []
    for c in names:
        if kinds and c.startswith("p_value_"):
            continue
        if kinds and c.startswith("score_"):
            if c != f"score_{kinds[0]}":
                continue
            for group, prefix in (("scores", "score_"), ("p_values", "p_value_")):
                keys.append(f'"{group}":{{' + ",".join(
                    pydantic_core.to_json(k).decode().replace("%", "%%") + ":%s"
                    for k in kinds) + "}")
                sources.extend(prefix + k for k in kinds)
            continue
        keys.append(pydantic_core.to_json(c).decode().replace("%", "%%") + ":%s")
        sources.append(c)
    return "{" + ",".join(keys) + "}", tuple(sources)
