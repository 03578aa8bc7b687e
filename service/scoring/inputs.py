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

from typing import Annotated, Any

from pydantic import AllowInfNan, ConfigDict, Field, Strict, StrictBool, StrictStr, TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from typing_extensions import TypedDict

from service.errors import data_error
from training.errors import DataError, TooLargeError, UnsupportedMediaError
from training.preprocessing.tabular import NUMERIC, ColumnSpec, Records

MAX_IGNORED_COLUMNS = 1_000
"""Columns a request may send besides the model's own (listed back in ``ignored_columns``)."""

NumberValue = Annotated[float, Strict(), AllowInfNan(False)] | None
CategoryValue = StrictStr | StrictBool | None
_LAYOUT_HINT = ("send either 'records' (a list of objects, column -> value) or 'columns' "
                "(an object, column -> list of values)")


def require_json(content_type: str | None) -> None:
    """Refuse a body declared as anything but JSON (415): its bytes would be read as JSON
    whatever they are. No Content-Type at all is taken as JSON."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media and media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaError(f"Content-Type {media}: send the records as JSON with "
                                    "Content-Type: application/json (files: score-file)")


def _value_type(spec: ColumnSpec) -> Any:
    return NumberValue if spec.kind == NUMERIC else CategoryValue


def _listed(ignored: set[str]) -> list[str]:
    """The ignored columns, sorted; too many of them is a 413 (the answer lists them all)."""
    if len(ignored) > MAX_IGNORED_COLUMNS:
        raise TooLargeError(f"{len(ignored)} columns the model does not read; at most "
                            f"{MAX_IGNORED_COLUMNS}: send only the model's columns")
    return sorted(ignored)


class ModelInputs:
    """Parses request bodies for one model's schema.

    Args:
        model: registered model name (names the generated schemas).
        specs: the model's input columns, as recorded by its preprocessing.
        max_records: records allowed in one request.
    """

    def __init__(self, model: str, specs: list[ColumnSpec], max_records: int):
        self.columns = [s.name for s in specs]
        # read as text from a CSV whatever they hold: categories, text keys and times
        self.text_columns = [s.name for s in specs if s.kind != NUMERIC]
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

    def parse(self, raw: bytes, strict: bool = False) -> Records:
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
        return self._records(body)

    def validate(self, body: dict[str, Any], strict: bool = False) -> Records:
        """:meth:`parse` for a body already decoded (another protocol's payload rearranged
        into ``{"records": [...]}`` or ``{"columns": {...}}``): the same checks and errors."""
        try:
            body = self._adapters[strict].validate_python(body)
        except PydanticValidationError as e:
            raise self._error(e.errors()) from None
        return self._records(body)

    def _records(self, body: dict[str, Any]) -> Records:
        if ("records" in body) == ("columns" in body):
            raise DataError(_LAYOUT_HINT)
        if "records" in body:
            records = body["records"]
            ignored = set().union(*records) - self._expected
            return Records(n=len(records), records=records, ignored=_listed(ignored))
        cols = body["columns"]
        lengths = {c: len(cols[c]) for c in self.columns}
        n = lengths[self.columns[0]]
        for c, length in lengths.items():
            if length != n:
                raise DataError(f"{length} values, but column '{self.columns[0]}' has {n}; "
                                "every column needs one value per record", column=c)
        return Records(n=n, columns=cols, ignored=_listed(set(cols) - self._expected))

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
