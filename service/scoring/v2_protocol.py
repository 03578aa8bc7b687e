"""The Open Inference Protocol (v2, REST: KServe, Triton, Seldon MLServer), on the one scoring path.

An inference request names its input tensors. Either one tensor per input column, named as the
column, of shape ``[n]`` or ``[n, 1]`` (numeric columns: ``FP64``, ``FP32`` or an integer type,
``NaN`` = missing as in a DataFrame; categorical columns: ``BYTES`` or ``BOOL``); or, when every
column is numeric, one ``FP64``/``FP32`` matrix of shape ``[n, n_columns]`` in the schema's
column order (``GET /v2/models/NAME`` lists it). The tensors are rearranged into
``{"columns": {...}}`` and checked by the model's :class:`~service.scoring.inputs.ModelInputs`,
so a bad value gets the same 4xx, naming the same record and column, as on ``/v1``.

The answer has one output tensor of shape ``[n]`` per pyfunc column: ``score``, ``p_value``
(``FP64``), ``is_anomaly`` (``BOOL``), ``score_<kind>`` and ``p_value_<kind>`` per score kind
(``FP64``), ``unknown_categories`` (``INT64``); ``outputs`` in the request picks some of them.
Tensor data travel as JSON, or in the binary tensor data extension (what ``tritonclient`` sends
by default): a JSON header of ``Inference-Header-Content-Length`` bytes, then each tensor's
raw little-endian bytes in order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydantic_core
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from service.errors import data_error
from service.model import ServedModel
from service.scoring.records import score_columns
from training.detector.scores import scored_primary
from training.errors import DataError, UnknownModelError, shown
from training.preprocessing.tabular import NUMERIC, ColumnSpec, Records

HEADER_LENGTH = "Inference-Header-Content-Length"
_DTYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
           "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
           "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
_NUMBERS = {k for k in _DTYPES if k != "BOOL"}
_MATRIX_TYPES = ("FP64", "FP32")


class _Tensor(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class _Output(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    parameters: dict[str, Any] | None = None


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[_Tensor] = Field(min_length=1)
    outputs: list[_Output] | None = None


@dataclass
class InferRequest:
    """A checked inference request: its records, and which outputs to send how."""

    records: Records
    id: str | None = None
    outputs: list[str] | None = None  # None: every output
    binary: set[str] = field(default_factory=set)  # outputs sent as binary data
    binary_all: bool = False  # every output as binary data (none were named)


@dataclass
class InferAnswer:
    """An inference answer: the body, its headers, and what metrics need from it."""

    body: bytes
    headers: dict[str, str]
    media_type: str
    primary: np.ndarray
    flagged: int


def check_version(model: ServedModel, version: str | None) -> None:
    """Raise unless ``version`` (from a ``/versions/{version}`` path) is the one served."""
    if version is not None and version != model.source.version:
        raise UnknownModelError(f"model {model.name!r} version {version!r} is not served; "
                                f"version {model.source.version} is")


def output_names(model: ServedModel) -> list[str]:
    """The output tensors of ``model``, in answer order."""
    kinds = list(model.scorer.calibrations_)
    # A sequence model's first answer column marks warm-up rows; a table model's last counts
    # each record's unknown categories (the columns of score_columns, in order).
    first, last = (["warm_up"], []) if model.data_kind == "sequences" else \
        ([], ["unknown_categories"])
    return (first + ["score", "p_value", "is_anomaly"]
            + [f"{p}_{k}" for k in kinds for p in ("score", "p_value")] + last)


def _output_type(name: str) -> str:
    return {"is_anomaly": "BOOL", "warm_up": "BOOL",
            "unknown_categories": "INT64"}.get(name, "FP64")


def tensor_type(spec: ColumnSpec) -> str:
    """The datatype of a column's input tensor as metadata gives it: FP64 for a numeric
    column, BOOL for a boolean one, BYTES for other categories."""
    if spec.kind == NUMERIC:
        return "FP64"
    return "BOOL" if spec.dtype == "bool" else "BYTES"


def metadata(model: ServedModel) -> dict[str, Any]:
    """The model metadata answer: inputs (one per column) and outputs, with types and shapes."""
    inputs = [{"name": s.name, "shape": [-1], "datatype": tensor_type(s)}
              for s in model.scorer.preprocessor_.columns_]
    outputs = [{"name": n, "datatype": _output_type(n), "shape": [-1]}
               for n in output_names(model)]
    return {"name": model.name, "versions": [model.source.version],
            "platform": f"ae-anomaly/{model.kind}",
            "inputs": inputs, "outputs": outputs}


def parse(model: ServedModel, raw: bytes, header_length: str | None,
          strict: bool = False) -> InferRequest:
    """An inference request body (JSON, or JSON header and binary tensors), checked.

    Args:
        raw: the body.
        header_length: the ``Inference-Header-Content-Length`` header, if sent.
        strict: reject tensors that are not columns of the model.

    Raises:
        DataError: a malformed request, a tensor whose shape does not fit its data, a bad
            value (record and column named), an unknown output.
        TooLargeError: more records than the service takes in one request.
    """
    head, blob = _split(raw, header_length)
    try:
        req = _Request.model_validate(pydantic_core.from_json(head, allow_inf_nan=True))
    except ValueError as e:
        if isinstance(e, PydanticValidationError):
            raise data_error(e.errors()) from None
        raise DataError(f"the request is not valid JSON ({e})") from None
    tensors, offset = {}, 0
    for t in req.inputs:
        if t.name in tensors:
            raise DataError("input tensor named twice", column=t.name)
        tensors[t.name], offset = _tensor_values(t, blob, offset)
    if offset != len(blob):
        raise DataError(f"{len(blob) - offset} bytes of binary data that no input's "
                        "binary_data_size accounts for")
    columns = _columns(model, req.inputs, tensors)
    records = model.inputs.validate({"columns": columns}, strict)
    known = output_names(model)
    wanted = [o.name for o in req.outputs] if req.outputs else None
    for name in wanted or []:
        if name not in known:
            raise DataError(f"no output named {name!r}; this model's outputs are {known}")
    # An output's own binary_data wins; binary_data_output is the default for the others.
    default = _flag(req.parameters, "binary_data_output", False)
    binary = {o.name for o in req.outputs or []
              if _flag(o.parameters, "binary_data", default, o.name)}
    return InferRequest(records=records, id=req.id, outputs=wanted, binary=binary,
                        binary_all=default and not req.outputs)


def _flag(parameters: dict[str, Any] | None, name: str, default: bool,
          output: str | None = None) -> bool:
    """A boolean request or output parameter (``true``/``false``; absent: ``default``)."""
    value = (parameters or {}).get(name, default)
    if not isinstance(value, bool):
        where = f" of output {output!r}" if output else ""
        raise DataError(f"parameter {name}{where}: expected true or false, got {shown(value)}")
    return value


def _split(raw: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return raw, memoryview(b"")
    digits = header_length.strip()
    # ASCII digits only (str.isdigit takes "²" too), and few enough for int() to read
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 18 \
            or int(digits) > len(raw):
        raise DataError(f"{HEADER_LENGTH} {header_length!r}: expected the JSON header's "
                        f"length in bytes, at most the body's {len(raw)}")
    n = int(digits)
    return raw[:n], memoryview(raw)[n:]


def _tensor_values(t: _Tensor, blob: memoryview, offset: int) -> tuple[Any, int]:
    """The flat values of one tensor: a numpy array (binary data) or a list (JSON data)."""
    if t.datatype not in _DTYPES and t.datatype != "BYTES":
        raise DataError(f"datatype {t.datatype!r}: expected one of "
                        f"{[*_DTYPES, 'BYTES']}", column=t.name)
    if any(d < 0 for d in t.shape):
        raise DataError(f"shape {t.shape}: dimensions must not be negative", column=t.name)
    size = math.prod(t.shape)
    nbytes = (t.parameters or {}).get("binary_data_size")
    if nbytes is not None:
        if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 0:
            raise DataError(f"binary_data_size {shown(nbytes)}: expected a whole number of "
                            "bytes", column=t.name)
        if offset + nbytes > len(blob):
            raise DataError(f"binary_data_size {nbytes!r} runs past the body's "
                            f"{len(blob)} bytes of binary data", column=t.name)
        values = _from_bytes(t, blob[offset:offset + nbytes])
        offset += nbytes
    else:
        if t.data is None:
            raise DataError("input tensor without data", column=t.name)
        try:
            values = _flatten(t.data, t.shape)
        except DataError as e:
            raise DataError(e.reason, column=t.name) from None
        values = _typed(t, values)
    if len(values) != size:
        raise DataError(f"shape {t.shape} holds {size} values; the data has {len(values)}",
                        column=t.name)
    return values, offset


_FLOAT64_MAX = float(np.finfo(np.float64).max)


def _typed(t: _Tensor, values: list[Any]) -> Any:
    """JSON data read as its tensor's datatype, as binary data is by its bytes: integers its
    type can hold, numbers as that float type rounds them (the same scores as the same values
    sent as binary data), booleans; ``null`` = missing. BYTES data is left as sent."""
    if t.datatype not in _DTYPES:
        return values
    dtype = _DTYPES[t.datatype]
    per_record = max(1, math.prod(t.shape[1:]))

    def refuse(i: int, v: Any) -> DataError:
        return DataError(f"{shown(v)} is not a {t.datatype} value", record=i // per_record,
                         column=t.name)

    if dtype is np.bool_:
        for i, v in enumerate(values):
            if v is not None and not isinstance(v, bool):
                raise refuse(i, v)
        return values
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        for i, v in enumerate(values):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)
                                  or not info.min <= v <= info.max):
                raise refuse(i, v)
        return values
    for i, v in enumerate(values):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)
                              or (isinstance(v, int) and not -_FLOAT64_MAX <= v <= _FLOAT64_MAX)):
            raise refuse(i, v)  # an integer past float64 has no float value either
    wide = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
    with np.errstate(over="ignore"):
        typed = wide.astype(dtype)
    overflow = np.isinf(typed) & np.isfinite(wide)
    if overflow.any():
        i = int(overflow.argmax())
        raise refuse(i, values[i])
    return typed


def _from_bytes(t: _Tensor, chunk: memoryview) -> Any:
    if t.datatype == "BYTES":  # each element: a 4-byte little-endian length, then the bytes
        out, i, raw = [], 0, bytes(chunk)
        while i < len(raw):
            if i + 4 > len(raw):
                raise DataError("BYTES data cut short", column=t.name)
            n = int.from_bytes(raw[i:i + 4], "little")
            if i + 4 + n > len(raw):
                raise DataError(f"BYTES element of {n} bytes cut short at {len(raw) - i - 4}",
                                record=len(out), column=t.name)
            try:
                out.append(raw[i + 4:i + 4 + n].decode("utf-8"))
            except UnicodeDecodeError:
                raise DataError("BYTES element is not UTF-8 text", record=len(out),
                                column=t.name) from None
            i += 4 + n
        return out
    dtype = np.dtype(_DTYPES[t.datatype]).newbyteorder("<")
    if len(chunk) % dtype.itemsize:
        raise DataError(f"{len(chunk)} bytes of {t.datatype} data is not a whole number of "
                        f"{dtype.itemsize}-byte values", column=t.name)
    return np.frombuffer(chunk, dtype=dtype)


def _flatten(data: Any, shape: list[int] | None = None) -> list[Any]:
    """Row-major nested lists (the protocol allows either) as one flat list; nested lists
    must have the tensor's ``shape`` (a ragged row is refused, not shifted into the next)."""
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(v, list) for v in data):
        return data  # flat: its count is checked against the shape by the caller
    if shape is not None and (len(shape) < 2 or len(data) != shape[0]):
        raise DataError(f"nested data does not have the tensor's shape {shape}")
    out: list[Any] = []
    for v in data:
        part = _flatten(v, shape[1:] if shape is not None else None)
        if shape is not None and len(part) != math.prod(shape[1:]):
            raise DataError(f"nested data does not have the tensor's shape {shape}: a row "
                            f"holds {len(part)} values")
        out.extend(part)
    return out


def _columns(model: ServedModel, inputs: list[_Tensor], tensors: dict[str, Any]
             ) -> dict[str, list[Any]]:
    """Column -> values (None = missing), from per-column tensors or one matrix."""
    schema = model.inputs.columns
    first = inputs[0]
    if len(inputs) == 1 and first.name not in schema and len(first.shape) == 2 \
            and first.shape[1] == len(schema):
        return _matrix_columns(model, first, tensors[first.name])
    cols = {}
    for t in inputs:
        if len(t.shape) == 2 and t.shape[1] != 1 or len(t.shape) not in (1, 2):
            hint = (f"; or send one {'/'.join(_MATRIX_TYPES)} tensor of shape "
                    f"[n, {len(schema)}] with the columns in schema order")
            raise DataError(f"shape {t.shape}: a column's tensor has shape [n] or [n, 1]"
                            + hint, column=t.name)
        cols[t.name] = _python_values(tensors[t.name], t.datatype)
    return cols


def _matrix_columns(model: ServedModel, t: _Tensor, values: Any) -> dict[str, list[Any]]:
    specs = model.scorer.preprocessor_.columns_
    categorical = [s.name for s in specs if s.kind != NUMERIC]
    if categorical:
        raise DataError(f"a matrix input needs every column numeric; columns {categorical} "
                        "are categorical: send one tensor per column", column=t.name)
    if t.datatype not in _MATRIX_TYPES:
        raise DataError(f"datatype {t.datatype}: a matrix input is FP64 or FP32",
                        column=t.name)
    arr = np.asarray(values, dtype=object if isinstance(values, list) else None)
    arr = arr.reshape(t.shape[0], t.shape[1])
    return {s.name: _python_values(arr[:, j], t.datatype) for j, s in enumerate(specs)}


def _python_values(values: Any, datatype: str) -> list[Any]:
    """A tensor's values as the schema checks them: Python numbers, strings or booleans;
    NaN as None (missing)."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        out = values.tolist()
        if values.dtype.kind == "f" and np.isnan(values).any():
            out = [None if m else v for v, m in zip(out, np.isnan(values).tolist())]
        return out
    out = values.tolist() if isinstance(values, np.ndarray) else list(values)
    if datatype in _NUMBERS:
        return [None if isinstance(v, float) and math.isnan(v) else v for v in out]
    return out


def infer(model: ServedModel, req: InferRequest) -> InferAnswer:
    """Score the request's records; the answer's output tensors, as JSON or binary data."""
    cols = score_columns(model, req.records)
    names = req.outputs or list(cols)
    outputs, blobs = [], []
    for name in names:
        values = np.asarray(cols[name])
        dtype = _output_type(name)
        tensor: dict[str, Any] = {"name": name, "datatype": dtype, "shape": [len(values)]}
        if req.binary_all or name in req.binary:
            data = values.astype(_DTYPES[dtype]).astype(
                np.dtype(_DTYPES[dtype]).newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            tensor["data"] = values.tolist()
        outputs.append(tensor)
    answer: dict[str, Any] = {"model_name": model.name, "model_version": model.source.version}
    if req.id is not None:
        answer["id"] = req.id
    answer["outputs"] = outputs
    head = pydantic_core.to_json(answer, inf_nan_mode="null")
    primary, flagged = scored_primary(cols), int(cols["is_anomaly"].sum())
    if not blobs:
        return InferAnswer(head, {}, "application/json", primary, flagged)
    return InferAnswer(head + b"".join(blobs), {HEADER_LENGTH: str(len(head))},
                       "application/octet-stream", primary, flagged)
