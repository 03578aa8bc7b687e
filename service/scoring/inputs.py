"""Request bodies checked against one model's input schema, straight from the JSON bytes.

Each served model gets its own validators, built once at load from the schema the model was
trained with: numeric columns take JSON numbers (finite) or null (missing: imputed with the
training median, as in training); categorical columns take strings, booleans or null. A bad
value is a :class:`~training.errors.DataError` naming the record (from 0) and the column.

Two layouts are accepted:
- ``{"records": [{"col": value, ...}, ...]}``: one object per record;
- ``{"columns": {"col": [value, ...], ...}}``: one list per column, all of the same length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import AllowInfNan, ConfigDict, Field, Strict, StrictBool, StrictStr, TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from typing_extensions import TypedDict

from service.errors import data_error
from training.errors import DataError, TooLargeError
from training.preprocessing.tabular import NUMERIC, ColumnSpec

NumberValue = Annotated[float, Strict(), AllowInfNan(False)] | None
CategoryValue = StrictStr | StrictBool | None
_LAYOUT_HINT = ("send either 'records' (a list of objects, column -> value) or 'columns' "
                "(an object, column -> list of values)")


@dataclass
class Batch:
    """Validated records of one request, in one of the two layouts.

    Attributes:
        n: number of records.
        records: list of n dicts (records layout), else None.
        columns: column -> list of n values (columns layout), else None.
        ignored: columns sent that the model does not read.
    """

    n: int
    records: list[dict[str, Any]] | None = None
    columns: dict[str, list[Any]] | None = None
    ignored: list[str] = field(default_factory=list)

    def numeric(self, names: list[str]) -> np.ndarray:
        """(n, len(names)) float64 matrix of numeric columns; null becomes NaN."""
        if self.columns is not None:
            return np.array([self.columns[c] for c in names], dtype=np.float64).T.copy()
        rows = list(map(itemgetter(*names), self.records))
        if len(names) == 1:
            rows = [(v,) for v in rows]
        return np.array(rows, dtype=np.float64).reshape(self.n, len(names))

    def values(self, name: str) -> list[Any]:
        """The n values of one column."""
        if self.columns is not None:
            return self.columns[name]
        return [r[name] for r in self.records]

    def frame(self, names: list[str]) -> pd.DataFrame:
        """The records as a DataFrame of the given columns (for the library's public API)."""
        if self.columns is not None:
            return pd.DataFrame({c: self.columns[c] for c in names})
        return pd.DataFrame.from_records(self.records, columns=names)


def _value_type(spec: ColumnSpec) -> Any:
    return NumberValue if spec.kind == NUMERIC else CategoryValue


class ModelInputs:
    """Parses request bodies for one model's schema.

    Args:
        model: registered model name (names the generated schemas).
        specs: the model's input columns, as recorded by its preprocessing.
        max_records: records allowed in one request.
    """

    def __init__(self, model: str, specs: list[ColumnSpec], max_records: int):
        self.columns = [s.name for s in specs]
        self.max_records = max_records
        self._expected = set(self.columns)
        self._adapters = {strict: self._adapter(model, specs, strict) for strict in (False, True)}

    def _adapter(self, model: str, specs: list[ColumnSpec], strict: bool) -> TypeAdapter:
        extra = "forbid" if strict else "allow"
        limit = Field(min_length=1, max_length=self.max_records)
        record = TypedDict(f"{model}Record", {s.name: _value_type(s) for s in specs})
        record.__pydantic_config__ = ConfigDict(extra=extra)
        cols = TypedDict(f"{model}Columns",
                         {s.name: Annotated[list[_value_type(s)], limit] for s in specs})
        cols.__pydantic_config__ = ConfigDict(extra=extra)
        body = TypedDict(f"{model}Body", {"records": Annotated[list[record], limit],  # noqa: UP013
                                          "columns": cols}, total=False)
        body.__pydantic_config__ = ConfigDict(extra="forbid")
        return TypeAdapter(body)

    def parse(self, raw: bytes, strict: bool = False) -> Batch:
        """Validate a JSON body and return its records.

        Raises:
            DataError: malformed JSON, wrong layout, missing column, wrong type, non-finite
                number, empty records; the message names the record and column.
            TooLargeError: more than ``max_records`` records.
        """
        try:
            body = self._adapters[strict].validate_json(raw)
        except PydanticValidationError as e:
            raise self._error(e.errors()) from None
        if ("records" in body) == ("columns" in body):
            raise DataError(_LAYOUT_HINT)
        if "records" in body:
            records = body["records"]
            ignored = set().union(*records) - self._expected
            return Batch(n=len(records), records=records, ignored=sorted(ignored))
        cols = body["columns"]
        lengths = {c: len(cols[c]) for c in self.columns}
        n = lengths[self.columns[0]]
        for c, length in lengths.items():
            if length != n:
                raise DataError(f"{length} values, but column '{self.columns[0]}' has {n}; "
                                "every column needs one value per record", column=c)
        return Batch(n=n, columns=cols, ignored=sorted(set(cols) - self._expected))

    def _error(self, errors: list[dict[str, Any]]) -> Exception:
        for err in errors:
            if err["type"] == "too_long":
                return TooLargeError(f"more than {self.max_records} records in one request; "
                                     "split it, or use score-file for large inputs "
                                     "(limit: ANOMALY_MAX_RECORDS)")
        if errors[0]["type"] == "too_short":
            return DataError("no records to score; " + _LAYOUT_HINT)
        if errors[0]["type"] in ("dict_type", "model_type", "typed_dict_type") and \
                len(errors[0]["loc"]) == 0:
            return DataError("the body must be a JSON object; " + _LAYOUT_HINT)
        return data_error(errors)


def check_frame(model_columns: list[str], validate: Any, df: pd.DataFrame, offset: int,
                source: str) -> list[str]:
    """Check a chunk of an uploaded table; returns the columns the model ignores.

    Args:
        model_columns: input columns of the model.
        validate: the preprocessing's ``validate(df, source)``.
        df: rows ``offset`` .. ``offset + len(df) - 1`` of the upload.
        offset: index of the chunk's first row in the whole file.
        source: the upload's file name, for messages.

    Raises:
        DataError: naming the record (counted over the whole file) and column.
    """
    try:
        validate(df, source)
    except DataError as e:
        raise e.located(source=source, offset=offset) from None
    return sorted(set(map(str, df.columns)) - set(model_columns))
