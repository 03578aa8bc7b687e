"""Tabular preprocessing fitted on normal data only, saved as JSON beside the model.

Numeric columns are imputed with the training median and standardised; categorical columns
(strings, booleans, pandas categoricals) are one-hot encoded with the categories seen in training.
A category never seen in training encodes as all zeros and is counted per record: unknown
categories are themselves a sign of abnormality. Constant columns are dropped (they carry no
information and would divide by zero). An ID column and a label column are never features.

The encoded width is bounded whatever the input: a categorical column keeps at most
:data:`MAX_CATEGORIES` categories, the most frequent; the rarer ones share one extra column,
``(other)``, which also takes values never seen in training (in such a column a new value cannot
be told from a rare one, so it is not counted as unknown). A column most of whose rows hold a
value seen only once (an identifier, free text) has no category to learn and is refused, naming
it; so are date/time columns (Parquet timestamps, ISO 8601 text: every new record's time would
be a category never seen) and nested or binary values (lists, structs, maps, bytes). The matrix
is built in float32 directly, ``n_records x n_features x 4`` bytes, at most
``MAX_CATEGORIES + 1`` features per input column.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd

from training.errors import ConfigError, DataError, listed, shown
from training.params import GEOMETRIES

log = logging.getLogger(__name__)

NUMERIC = "numeric"
CATEGORICAL = "categorical"
_STD_FLOOR = 1e-6

MAX_CATEGORIES = 64
"""Categories kept per column (the most frequent); the rest are pooled as :data:`OTHER`."""

OTHER = "(other)"
"""Name of the pooled category (feature ``column=(other)``, and its reconstruction)."""

COLUMNS, DIRECTION = GEOMETRIES[1:]
"""How rows are compared (``geometry``). ``columns``: every numeric column standardised on its
own (mean 0, standard deviation 1), for tables whose columns are different quantities in
different units. ``direction``: each row divided by its length (Euclidean norm over the numeric
columns), then centred per column and divided by one scale shared by all columns, so distances
are those between the rows' directions (cosine geometry) and a column's spread keeps its weight;
for rows that are one vector: learned embeddings, pixels, spectra, 0/1 flags. A few columns in a
much larger unit beside the vector (sizes or counts beside flags: see
:data:`DIRECTION_MAX_SHARE`) are left out of the row's length and standardised on their own, as
in ``columns``. ``auto``: ``direction`` for a table of at least :data:`DIRECTION_MIN_COLUMNS`
numeric columns, no categorical one, and at most :data:`DIRECTION_MAX_APART` of them in such a
larger unit; ``columns`` otherwise."""

DIRECTION_MIN_COLUMNS = 256
"""Numeric columns from which ``auto`` reads a row as one vector. Tables of measured quantities
have tens of columns, vectors hundreds: embeddings (384-1,024), images (784 for 28x28)."""

DIRECTION_MAX_SHARE = 0.5
"""A row's length is spread over the vector's columns: the largest :data:`DIRECTION_TOP` of
them by mean square hold at most this share of their total mean square. A vector's columns
share a unit (the largest 2% of an embedding's hold at most 0.30 of it, of MNIST's pixels
0.13). Where the largest hold more, they are in a larger unit than the rest (an image's height
and width in pixels beside hundreds of 0/1 flags) and would make every row's direction theirs
alone: the largest column is set apart (standardised on its own) and the rule applied to the
rest, until it holds."""

DIRECTION_TOP = 0.02
"""Share of the numeric columns (at least one) whose part of the rows' length
:data:`DIRECTION_MAX_SHARE` bounds; the count is of all the numeric columns, so a group of
equal large columns is set apart whole."""

DIRECTION_MAX_APART = 0.05
"""Share of the numeric columns that may be set apart from the vector (at least one). A table
with more columns in larger units than this is not one vector: ``auto`` gives it ``columns``,
and ``direction`` asked for sets none apart."""

EMPTY_RECORD = ("every feature value is missing: nothing to score or learn from (imputed, it "
                "would be the typical normal record); drop the record or fill it in")
"""Why a record without a single feature value is refused, wherever it arrives."""

ONCE_SHARE = 0.5
"""A column with more than :data:`MAX_CATEGORIES` values is an identifier (or free text) when
more than this share of its rows hold a value seen only once in training."""

DATETIME_SHARE = 0.9
"""A text column is a date/time column when this share of its values read as ISO 8601."""

_ISO_DATETIME = (r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?)?"
                 r"(?:Z|[+-]\d{2}(?::?\d{2})?)?"
                 r"|T?\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?")
_DATETIME_HINT = ("a date or time is not a category (every new record's would be unseen) nor a "
                  "number the model can compare: drop the column, set it as the id column "
                  "(--id-column), or derive numeric features from it (hour, weekday, age)")
_NESTED = (list, tuple, dict, set, frozenset, np.ndarray, bytes, bytearray, memoryview)


@dataclass
class ColumnSpec:
    """What the model learned about one input column."""

    name: str
    kind: str  # "numeric" | "categorical"
    dtype: str  # pandas dtype seen in training, for humans and for signatures
    median: float | None = None
    mean: float | None = None
    std: float | None = None
    categories: list[str] = field(default_factory=list)
    dropped: bool = False  # constant in training: accepted as input, not a feature
    other: bool = False  # rarer categories (and unseen values) pooled in one more column
    apart: bool = False  # direction geometry: not in the row's length, standardised on its own

    @property
    def width(self) -> int:
        """Number of feature columns this input column expands to."""
        if self.dropped:
            return 0
        return 1 if self.kind == NUMERIC else len(self.categories) + int(self.other)

    @property
    def levels(self) -> list[str]:
        """The one-hot block's categories in order, :data:`OTHER` last when pooled."""
        return [*self.categories, OTHER] if self.other else list(self.categories)


_NUMBER_KINDS = ("integer", "floating", "mixed-integer-float", "decimal")


def _is_categorical(series: pd.Series) -> bool:
    """Text and booleans are categories; numbers are numbers, also when held as Python objects
    (a frame's ``astype(object)``, the ``values`` of a mixed table)."""
    if pd.api.types.is_bool_dtype(series):
        return True
    if pd.api.types.is_numeric_dtype(series):
        return False
    return not (series.dtype == object
                and pd.api.types.infer_dtype(series, skipna=True) in _NUMBER_KINDS)


# pandas reads a CSV's true/false as booleans, so such a column trains as 'True'/'False'; a
# reader that keeps the text (batch jobs, uploads, JSON strings) gives 'true', 'FALSE'...
_BOOLEAN_LEVELS = {"true": "True", "false": "False"}


def _as_trained_booleans(values: list[str | None]) -> list[str | None]:
    """Case-insensitive true/false text as the 'True'/'False' a boolean column trained with."""
    return [v if v is None else _BOOLEAN_LEVELS.get(v.lower(), v) for v in values]


def _as_category_strings(series: pd.Series) -> pd.Series:
    """Categories compared as strings so 'True', True and 1.0 in CSV/JSON agree."""
    out = series.astype("object").where(series.notna(), None)
    return out.map(lambda v: None if v is None else str(v))


def _reject_unusable(col: pd.Series, name: str, source: str) -> None:
    """Dates/times and nested or binary values are no categories: refuse them, naming why."""
    dtype = col.dtype
    if isinstance(dtype, pd.CategoricalDtype):  # judged by its categories' values
        dtype = dtype.categories.dtype
        col = col.astype(object)
    if (pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype)
            or isinstance(dtype, pd.PeriodDtype)):
        raise DataError(f"holds dates/times ({dtype}); {_DATETIME_HINT}", source=source,
                        column=name)
    dtype = col.dtype
    if not pd.api.types.is_object_dtype(dtype):
        return
    kind = pd.api.types.infer_dtype(col, skipna=True)
    if kind in ("datetime", "datetime64", "date", "time", "timedelta", "timedelta64", "period"):
        pos = _first_present(col)
        raise DataError(f"holds dates/times (e.g. {shown(str(col.iloc[pos]))}); {_DATETIME_HINT}",
                        source=source, column=name)
    _reject_nested(col, name, source)


def _is_boolean(v: Any) -> bool:
    """Whether a value is a boolean (which to_numeric would take as 0 or 1)."""
    return isinstance(v, (bool, np.bool_))


def _first_present(col: pd.Series) -> int:
    return int(np.flatnonzero(col.notna().to_numpy())[0])


def _plain(v: Any) -> Any:
    """A nested value as plain Python, for a message."""
    return v.tolist() if isinstance(v, np.ndarray) else v


def _reject_dates(counts: pd.Series, name: str, source: str) -> None:
    """Text that is (nearly) all ISO 8601 dates or times is a date/time column."""
    if counts.empty:
        return
    texts = pd.Series(counts.index, dtype=object)
    if not isinstance(texts.iloc[0], str):
        return
    iso = texts.str.fullmatch(_ISO_DATETIME, na=False).to_numpy()
    if iso.any() and counts.to_numpy()[iso].sum() >= DATETIME_SHARE * counts.sum():
        example = texts[iso].iloc[0]
        raise DataError(f"holds dates/times as text (e.g. {shown(example)}); {_DATETIME_HINT}",
                        source=source, column=name)


def _reject_identifier(counts: pd.Series, name: str, source: str) -> None:
    """Mostly values seen once: an identifier or free text, with no category to learn."""
    if len(counts) <= MAX_CATEGORIES:
        return
    rows, once = int(counts.sum()), int((counts == 1).sum())
    if once > ONCE_SHARE * rows:
        raise DataError(
            f"{len(counts)} distinct values in {rows} rows, {once} of them seen only once: an "
            "identifier or free text, not a category to learn from; set it as the id column "
            "(--id-column) or drop it", source=source, column=name)


def _kept_categories(counts: pd.Series, name: str) -> tuple[list[str], bool]:
    """The categories a column keeps (sorted) and whether the rest are pooled."""
    if len(counts) <= MAX_CATEGORIES:
        return sorted(counts.index.tolist()), False
    ranked = sorted(zip(counts.index.tolist(), counts.tolist(), strict=True),
                    key=lambda kv: (-kv[1], kv[0]))
    kept = ranked[:MAX_CATEGORIES]
    pooled = int(counts.sum()) - sum(c for _, c in kept)
    log.debug("column '%s': %d distinct values; the %d most frequent are kept, the other %d "
              "(%.1f%% of its rows) share the category %s", name, len(counts), MAX_CATEGORIES,
              len(counts) - MAX_CATEGORIES, 100.0 * pooled / int(counts.sum()), OTHER)
    return sorted(k for k, _ in kept), True


def _reject_numbers_with_text(col: pd.Series, name: str, source: str) -> None:
    """A text column that is almost all numbers is a numeric column with a typo in it."""
    if pd.api.types.is_bool_dtype(col):
        return
    present = col.dropna()
    if present.empty:
        return
    as_num = pd.to_numeric(present, errors="coerce")
    if as_num.notna().mean() >= 0.9 and as_num.isna().any():
        pos = int(np.flatnonzero(col.notna().to_numpy())[int(np.flatnonzero(as_num.isna())[0])])
        raise DataError(f"expected a number, got {shown(col.iloc[pos])}", source=source,
                        record=pos, column=name)


def _reject_duplicates(df: pd.DataFrame, source: str) -> None:
    """Two columns of the same name: which one is meant cannot be told."""
    dup = df.columns[df.columns.duplicated()]
    if len(dup):
        raise DataError("appears more than once in the header; rename or drop the copies",
                        source=source, column=str(dup[0]))


def _reject_nested(col: pd.Series, name: str, source: str) -> None:
    """A list, mapping or bytes value where the model reads one number or category."""
    kind = pd.api.types.infer_dtype(col, skipna=True)
    if kind in ("string", "boolean", "empty", "integer", "floating", "mixed-integer-float",
                "decimal"):
        return
    for pos, v in enumerate(col.tolist()):
        if isinstance(v, _NESTED):
            what = "bytes" if isinstance(v, (bytes, bytearray, memoryview)) else \
                f"a {'list' if isinstance(v, np.ndarray) else type(v).__name__}"
            raise DataError(f"holds {what} ({shown(_plain(v))}); a column takes one number, "
                            "text or boolean per record: flatten it into columns of its own, "
                            "or drop it", source=source, record=pos, column=name)


class TabularPreprocessor:
    """Turns a DataFrame into a float32 matrix the network reads.

    Args:
        id_column: column identifying records; kept out of the features.
        label_column: column holding ground-truth labels; kept out of the features.
    """

    def __init__(self, id_column: str | None = None, label_column: str | None = None,
                 geometry: str = "auto"):
        # names as text, as a frame's column names are read (training.detector.tabular)
        self.id_column = None if id_column is None else str(id_column)
        self.label_column = None if label_column is None else str(label_column)
        if geometry not in GEOMETRIES:
            raise ConfigError(f"geometry: expected one of {list(GEOMETRIES)}, got "
                              f"{shown(geometry)}")
        self.geometry = geometry
        # what fit chose; a model saved before there was a choice standardised its columns
        self.geometry_ = COLUMNS if geometry == "auto" else geometry

    # -- fitting -----------------------------------------------------------------------------
    def fit(self, df: pd.DataFrame, source: str = "data") -> TabularPreprocessor:
        """Learn the schema, imputation values, scales and categories from normal rows."""
        excluded = {c for c in (self.id_column, self.label_column) if c}
        _reject_duplicates(df, source)
        feature_cols = [c for c in df.columns if c not in excluded]
        if not feature_cols:
            raise DataError(f"{source}: no feature columns left after excluding {sorted(excluded)}")
        if len(df) == 0:
            raise DataError(f"{source}: no rows")
        specs: list[ColumnSpec] = []
        for name in feature_cols:
            col = df[name]
            if col.isna().all():
                raise DataError(
                    f"{source}: column '{name}' is entirely missing; drop it or fill it in"
                )
            if _is_categorical(col):
                _reject_unusable(col, name, source)
                _reject_numbers_with_text(col, name, source)
                counts = _as_category_strings(col).dropna().value_counts(sort=False)
                _reject_dates(counts, name, source)
                _reject_identifier(counts, name, source)
                cats, other = _kept_categories(counts, name)
                learned = {"kind": CATEGORICAL, "categories": cats, "other": other,
                           "dropped": len(cats) <= 1 and not other and not col.isna().any()}
            else:
                x = col.astype("float64")
                if not np.isfinite(x.dropna()).all():
                    row = int(np.flatnonzero(~np.isfinite(x.fillna(0.0).to_numpy()))[0])
                    raise DataError("infinite value", source=source, record=row, column=name)
                median = float(x.median())
                filled = x.fillna(median)
                with np.errstate(over="ignore", invalid="ignore"):
                    mean, std = float(filled.mean()), float(filled.std(ddof=0))
                if not (math.isfinite(mean) and math.isfinite(std)):  # squares past 1.8e308
                    row = int(np.argmax(np.abs(filled.to_numpy())))
                    raise DataError(f"{shown(x.iloc[row])} is too large to standardise (the "
                                    "column's spread overflows); rescale the column",
                                    source=source, record=row, column=name)
                learned = {"kind": NUMERIC, "median": median, "mean": mean,
                           "std": max(std, _STD_FLOOR), "dropped": std < _STD_FLOOR}
            specs.append(ColumnSpec(name=str(name), dtype=str(col.dtype), **learned))
        if all(s.dropped for s in specs):
            raise DataError(f"{source}: every feature column is constant; nothing to learn from")
        _reject_empty(_without_values(df, [c for c, s in zip(feature_cols, specs, strict=True)
                                           if not s.dropped]), source)
        self.columns_ = specs
        self.__dict__.pop("_plan_cache", None)
        self.geometry_ = self._geometry(specs)
        if self.geometry_ == DIRECTION:
            self._fit_direction(df)
        return self

    def _geometry(self, specs: list[ColumnSpec]) -> str:
        """The ``geometry`` this table gets (see :data:`GEOMETRIES`)."""
        numeric = sum(s.kind == NUMERIC and not s.dropped for s in specs)
        # a constant categorical column has no feature: it does not make a table mixed
        categorical = [s.name for s in specs if s.kind == CATEGORICAL and not s.dropped]
        if self.geometry == DIRECTION:
            if categorical:
                raise ConfigError("geometry 'direction' compares rows as vectors of numbers; "
                                  f"categorical column(s) {listed(categorical)}: use 'columns'")
            if numeric < 2:
                raise ConfigError("geometry 'direction' compares rows by their direction, which "
                                  f"{numeric} non-constant numeric column cannot have: use "
                                  "'columns'")
        if self.geometry == COLUMNS or (self.geometry == "auto" and (
                numeric < DIRECTION_MIN_COLUMNS or categorical)):
            return COLUMNS
        apart = _set_apart(specs)
        if apart is None and self.geometry == "auto":
            return COLUMNS
        for s in specs:
            s.apart = s.name in (apart or ())
        return DIRECTION

    def _fit_direction(self, df: pd.DataFrame) -> None:
        """Means and the one shared scale of the rows divided by their lengths (the columns set
        apart keep their own mean and standard deviation)."""
        vector = [s for s in self.columns_ if s.kind == NUMERIC and not s.dropped and not s.apart]
        for s in vector:
            s.mean, s.std = 0.0, 1.0
        self.__dict__.pop("_plan_cache", None)
        X, _ = self._encode(_FrameRecords(df))
        plan = self._plan()
        if plan.apart is not None:
            X = np.delete(X[:, plan.numeric_block], plan.apart, axis=1)
        means = X.mean(axis=0, dtype=np.float64)
        scale = float(np.sqrt(np.mean(X.var(axis=0, dtype=np.float64))))
        for s, mean in zip(vector, means, strict=True):
            s.mean, s.std = float(mean), max(scale, _STD_FLOOR)
        self.__dict__.pop("_plan_cache", None)

    # -- properties --------------------------------------------------------------------------
    @property
    def set_apart_(self) -> list[str]:
        """The numeric columns the ``direction`` geometry set apart from the row's vector
        (:data:`DIRECTION_MAX_SHARE`): standardised on their own, not in its length."""
        return [s.name for s in self.columns_ if s.apart]

    @property
    def n_features_(self) -> int:
        """Width of the matrix :meth:`transform` returns."""
        return self._plan().width

    @property
    def feature_names_(self) -> list[str]:
        """One name per matrix column: the column, or ``column=category`` for one-hots."""
        names: list[str] = []
        for s in self.columns_:
            if s.dropped:
                continue
            if s.kind == NUMERIC:
                names.append(s.name)
            else:
                names.extend(f"{s.name}={c}" for c in s.levels)
        return names

    @property
    def feature_columns_(self) -> list[str]:
        """The input column of each matrix column (a one-hot's: its categorical column)."""
        return [s.name for s in self.columns_ if not s.dropped
                for _ in (range(1) if s.kind == NUMERIC else s.levels)]

    @property
    def input_columns_(self) -> list[str]:
        """Columns a record must carry (constant ones included: they are part of the schema)."""
        return [s.name for s in self.columns_]

    # -- transforming ------------------------------------------------------------------------
    def validate(self, df: pd.DataFrame, source: str = "data") -> None:
        """Raise :class:`DataError` naming the record and column of the first bad value, or
        the first record without a single feature value."""
        self._check_values(df, source)
        _reject_empty(_without_values(df, [s.name for s in self.columns_ if not s.dropped]),
                      source)

    def _check_values(self, df: pd.DataFrame, source: str) -> None:
        """:meth:`validate` but for empty records, which :meth:`_encode` marks from the
        values it reads anyway."""
        _reject_duplicates(df, source)
        missing = [c for c in self.input_columns_ if c not in df.columns]
        if missing:
            raise DataError(
                f"{source}: missing column(s) {missing}; the model expects "
                f"{listed(self.input_columns_)}; the data has "
                f"{listed([str(c) for c in df.columns])}"
            )
        for s in self.columns_:
            col = df[s.name]
            if s.kind != NUMERIC:  # dates/times and bytes are no category (not "unknown" ones)
                if not pd.api.types.is_bool_dtype(col) and not pd.api.types.is_numeric_dtype(col):
                    _reject_unusable(col, s.name, source)
                continue
            if pd.api.types.is_object_dtype(col.dtype):
                _reject_nested(col, s.name, source)
            if (pd.api.types.is_datetime64_any_dtype(col.dtype)
                    or pd.api.types.is_timedelta64_dtype(col.dtype)
                    or isinstance(col.dtype, pd.PeriodDtype)):  # to_numeric would count ns
                raise DataError(f"holds dates/times ({col.dtype}) where the model reads "
                                "numbers", source=source, column=s.name)
            if pd.api.types.is_bool_dtype(col):  # refused as in an object column or JSON
                values, bad = None, col.notna().to_numpy()
            elif pd.api.types.is_numeric_dtype(col):
                values, bad = col.to_numpy(dtype="float64", na_value=np.nan), None
            else:
                values = pd.to_numeric(col, errors="coerce").to_numpy(dtype="float64")
                bad = (np.isnan(values) & col.notna().to_numpy()
                       | col.map(_is_boolean).to_numpy(dtype=bool))
            if bad is not None and bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataError(f"expected a number, got {shown(col.iloc[i])}",
                                source=source, record=i, column=s.name)
            inf = np.flatnonzero(np.isinf(values)) if values is not None else ()
            if len(inf):
                raise DataError("non-finite number", source=source, record=int(inf[0]),
                                column=s.name)

    def transform(self, data: pd.DataFrame | Records, source: str = "data"
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Encode records: the one way from input to the network's matrix.

        Args:
            data: a DataFrame with at least the input columns (others are ignored; it is
                checked with :meth:`validate` first), or :class:`Records` already checked
                against the schema (JSON requests).
            source: name used in error messages (a file name, "request"...).

        Returns:
            ``(X, extras)``: ``X`` of shape (n_records, n_features) float32, and
            ``extras["unknown_categories"]`` of shape (n_records,) counting categorical values
            never seen in training.

        Raises:
            DataError: a bad value (naming its record and column), or a record whose every
                feature value is missing (imputing them all would score it as the typical
                normal record).
        """
        if not isinstance(data, Records):
            self._check_values(data, source)
            data = _FrameRecords(data)
        X, extras = self._encode(data)
        _reject_empty(extras.pop("empty"), source)
        return X, extras

    def _encode(self, records: Records | _FrameRecords) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Numeric columns as one (n, k) block standardised in float64, one-hot blocks column
        by column, written straight into the float32 matrix (no float64 copy of it).
        ``extras["empty"]`` marks the records without a single feature value."""
        plan = self._plan()
        n = records.n
        X = np.zeros((n, plan.width), dtype=np.float32)
        unknown = np.zeros(n, dtype=np.int64)
        empty = np.ones(n, dtype=bool)
        if plan.numeric:
            M = records.numeric(plan.numeric)  # (n, k) float64
            missing = np.isnan(M)
            if missing.any():
                empty &= missing.all(axis=1)
                np.copyto(M, np.broadcast_to(plan.medians, M.shape), where=missing)
            else:
                empty[:] = False
            if self.geometry_ == DIRECTION:
                _to_unit_rows(M, plan.apart)
            M -= plan.means
            M /= plan.stds
            with np.errstate(over="ignore"):  # overflow: caught as a non-finite score
                X[:, plan.numeric_block] = M
            del M
        for name, start, categories, dropped, other in plan.categorical:
            values = records.categories(name)
            if name in plan.boolean:
                values = _as_trained_booleans(values)
            codes = pd.Categorical(values, categories=categories).codes
            present = np.fromiter((v is not None for v in values), dtype=bool, count=n)
            if not dropped:
                empty &= ~present
            outside = (codes < 0) & present
            if not other:
                unknown += outside.astype(np.int64)
            if not dropped:
                rows = np.flatnonzero(codes >= 0)
                X[rows, start + codes[rows]] = 1.0
                if other:
                    X[np.flatnonzero(outside), start + len(categories)] = 1.0
        return X, {"unknown_categories": unknown, "empty": empty}

    def _plan(self) -> _EncodingPlan:
        """Positions and statistics of every feature, computed once per fitted schema."""
        plan = self.__dict__.get("_plan_cache")
        if plan is None:
            plan = _EncodingPlan.of(self.columns_)
            self.__dict__["_plan_cache"] = plan
        return plan

    def row_lengths(self, data: pd.DataFrame | Records, source: str = "data"
                    ) -> np.ndarray | None:
        """(n,) each record's length (Euclidean norm of its numeric columns not set apart,
        missing values imputed) in the ``direction`` geometry, what :meth:`inverse_transform`
        multiplies a reconstructed direction by; None in the ``columns`` geometry."""
        if self.geometry_ != DIRECTION:
            return None
        if not isinstance(data, Records):
            self._check_values(data, source)
            data = _FrameRecords(data)
        plan = self._plan()
        M = data.numeric(plan.numeric)
        np.copyto(M, np.broadcast_to(plan.medians, M.shape), where=np.isnan(M))
        return _to_unit_rows(M, plan.apart)

    def inverse_transform(self, X: np.ndarray, lengths: np.ndarray | None = None
                          ) -> pd.DataFrame:
        """Map matrix rows back to the input's own columns (argmax for one-hot blocks). In the
        ``direction`` geometry numeric values come back as a direction (a row of length 1)
        unless ``lengths`` (n,) gives each row's (:meth:`row_lengths`)."""
        out: dict[str, Any] = {}
        length = 1.0 if lengths is None or self.geometry_ != DIRECTION else \
            np.asarray(lengths, dtype=np.float64)
        j = 0
        n = X.shape[0]
        for s in self.columns_:
            if s.dropped:
                out[s.name] = (
                    np.full(n, s.median) if s.kind == NUMERIC
                    else np.array([s.categories[0] if s.categories else None] * n, dtype=object)
                )
                continue
            if s.kind == NUMERIC:
                out[s.name] = (X[:, j].astype(np.float64) * s.std + s.mean) * \
                    (1.0 if s.apart else length)
                j += 1
            else:
                k = s.width
                idx = np.argmax(X[:, j : j + k], axis=1)
                out[s.name] = np.array(s.levels, dtype=object)[idx]
                j += k
        return pd.DataFrame(out)

    # -- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description of the fitted preprocessing (the model's input schema)."""
        return {
            "id_column": self.id_column,
            "label_column": self.label_column,
            "geometry": self.geometry_,
            # ``apart`` only where set: a model without it reads as before, by older code too
            "columns": [{k: v for k, v in asdict(s).items() if k != "apart" or v}
                        for s in self.columns_],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TabularPreprocessor:
        """Rebuild a fitted preprocessor from :meth:`to_dict` output."""
        geometry = data.get("geometry", COLUMNS)
        if geometry not in (COLUMNS, DIRECTION):
            raise ValueError(f"preprocessing: unknown geometry {geometry!r}")
        obj = cls(id_column=data.get("id_column"), label_column=data.get("label_column"),
                  geometry=geometry)
        obj.columns_ = [ColumnSpec(**c) for c in data["columns"]]
        for c in obj.columns_:
            for key in ("median", "mean", "std"):
                v = getattr(c, key)
                if v is not None and not math.isfinite(v):
                    raise ValueError(f"preprocessing: column '{c.name}' has non-finite {key}")
        return obj


def _without_values(df: pd.DataFrame, names: list) -> np.ndarray:
    """(len(df),) the records of ``df`` without a value in any of the columns ``names``."""
    empty = np.ones(len(df), dtype=bool)
    for name in names:
        empty &= df[name].isna().to_numpy()
    return empty


def _reject_empty(empty: np.ndarray, source: str) -> None:
    """Raise :data:`EMPTY_RECORD` naming the first record marked in ``empty``."""
    if empty.any():
        raise DataError(EMPTY_RECORD, source=source, record=int(np.flatnonzero(empty)[0]))


def _set_apart(specs: list[ColumnSpec]) -> set[str] | None:
    """Names of the numeric columns in a larger unit than the vector the others make
    (:data:`DIRECTION_MAX_SHARE`), from the fitted statistics (mean square = mean² +
    variance); None when more than :data:`DIRECTION_MAX_APART` of them would be."""
    numeric = [s for s in specs if s.kind == NUMERIC and not s.dropped]
    squares = np.array([s.mean * s.mean + s.std * s.std for s in numeric], dtype=np.float64)
    order = np.argsort(-squares, kind="stable")
    squares = squares[order]
    top = max(1, int(DIRECTION_TOP * len(numeric)))  # the count stays as columns are set apart
    most = max(1, int(DIRECTION_MAX_APART * len(numeric)))
    k = 0
    while k < len(squares) - 2:
        total = squares[k:].sum()
        if np.isfinite(total) and total > 0 and \
                squares[k:k + top].sum() <= DIRECTION_MAX_SHARE * total:
            break
        k += 1
        if k > most:
            return None
    return {numeric[i].name for i in order[:k]}


def _to_unit_rows(M: np.ndarray, apart: np.ndarray | None = None) -> np.ndarray:
    """Divide each row of M (n, k) float64 in place by its Euclidean length over its columns
    but those ``apart`` (left as they are), a row of zeros left as it is; returns the (n,)
    lengths. Each row is first divided by its largest magnitude, so values near float64's
    limit do not overflow the sum of squares."""
    if apart is not None:
        kept = M[:, apart]  # a few columns: put aside, out of the length, then back
        M[:, apart] = 0.0
        lengths = _to_unit_rows(M)
        M[:, apart] = kept
        return lengths
    peak = np.abs(M).max(axis=1, initial=0.0)[:, None]
    np.divide(M, peak, out=M, where=peak > 0)
    length = np.sqrt(np.einsum("ij,ij->i", M, M))[:, None]
    np.divide(M, length, out=M, where=length > 0)
    with np.errstate(over="ignore"):
        return (peak * length)[:, 0]


@dataclass
class _EncodingPlan:
    """Where each input column lands in the matrix, and the numeric statistics as arrays."""

    numeric: list[str]
    positions: np.ndarray
    medians: np.ndarray
    means: np.ndarray
    stds: np.ndarray
    # name, first position, categories, dropped, pooled (OTHER after the categories)
    categorical: list[tuple[str, int, list[str], bool, bool]]
    boolean: set[str]  # categorical columns that trained as booleans ('True'/'False' only)
    width: int  # the matrix's columns
    # indices into ``numeric`` of the columns the direction geometry set apart; None: none
    apart: np.ndarray | None = None

    @property
    def numeric_block(self) -> slice | np.ndarray:
        """Where the numeric block goes: a slice when its columns are adjacent (the common
        case: a copy, several times faster than scattering them one by one), else their
        positions."""
        p = self.positions
        adjacent = len(p) > 0 and int(p[-1]) - int(p[0]) + 1 == len(p)
        return slice(int(p[0]), int(p[-1]) + 1) if adjacent else p

    @classmethod
    def of(cls, specs: list[ColumnSpec]) -> _EncodingPlan:
        numeric, positions, medians, means, stds, categorical = [], [], [], [], [], []
        apart = []
        j = 0
        for s in specs:
            if s.kind == NUMERIC and not s.dropped:
                apart.append(s.apart)
                numeric.append(s.name)
                positions.append(j)
                medians.append(s.median)
                means.append(s.mean)
                stds.append(s.std)
            elif s.kind != NUMERIC:
                categorical.append((s.name, j, list(s.categories), s.dropped, s.other))
            j += s.width
        f64 = np.float64
        boolean = {name for name, _, levels, _, _ in categorical
                   if levels and set(levels) <= set(_BOOLEAN_LEVELS.values())}
        return cls(numeric, np.asarray(positions, dtype=np.intp), np.asarray(medians, dtype=f64),
                   np.asarray(means, dtype=f64), np.asarray(stds, dtype=f64), categorical,
                   boolean, j, np.flatnonzero(apart) if any(apart) else None)


@dataclass
class Records:
    """Records already checked against the schema (a JSON request), in one of two layouts.

    Attributes:
        n: number of records.
        records: list of n dicts (column -> value), else None.
        columns: column -> list of n values, else None.
        ignored: columns sent that the model does not read.

    Numeric values are finite floats/ints or None (missing); categorical values are strings,
    booleans or None.
    """

    n: int
    records: list[dict[str, Any]] | None = None
    columns: dict[str, list[Any]] | None = None
    ignored: list[str] = field(default_factory=list)

    def numeric(self, names: list[str]) -> np.ndarray:
        """(n, len(names)) float64 matrix of numeric columns; None becomes NaN."""
        if self.columns is not None:
            return np.array([self.columns[c] for c in names], dtype=np.float64).T.copy()
        rows = list(map(itemgetter(*names), self.records))
        if len(names) == 1:
            rows = [(v,) for v in rows]
        return np.array(rows, dtype=np.float64).reshape(self.n, len(names))

    def values(self, name: str) -> list[Any]:
        """The n values of one column, as sent."""
        if self.columns is not None:
            return self.columns[name]
        return [r[name] for r in self.records]

    def categories(self, name: str) -> list[str | None]:
        """The n values of a categorical column as category strings (None = missing)."""
        return [None if v is None else str(v) for v in self.values(name)]

    def frame(self, names: list[str]) -> pd.DataFrame:
        """The records as a DataFrame of the given columns."""
        if self.columns is not None:
            return pd.DataFrame({c: self.columns[c] for c in names})
        return pd.DataFrame.from_records(self.records, columns=names)


class _FrameRecords:
    """A validated DataFrame seen through the :class:`Records` interface."""

    def __init__(self, df: pd.DataFrame):
        self.df, self.n = df, len(df)

    def numeric(self, names: list[str]) -> np.ndarray:
        # filled a column at a time into column-major memory (each column one contiguous
        # copy), returned as the (n, k) view
        out = np.empty((len(names), self.n), dtype=np.float64)
        for j, c in enumerate(names):
            col = self.df[c]
            if not pd.api.types.is_numeric_dtype(col):  # validated: numbers as text
                col = pd.to_numeric(col, errors="coerce")
            out[j] = col.to_numpy(dtype="float64", na_value=np.nan)
        return out.T

    def categories(self, name: str) -> list[str | None]:
        values = _as_category_strings(self.df[name])
        present = values.notna().to_numpy()
        return [v if ok else None for v, ok in zip(values.tolist(), present, strict=True)]
