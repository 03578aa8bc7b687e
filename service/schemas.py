"""Typed request and response bodies, as documented in the OpenAPI schema at /docs.

Requests are checked against each model's own schema (see :mod:`service.scoring.inputs`);
:class:`ScoreRequest` is their model-independent shape. Every answer carries the model's
metadata (name, version, alias, kind, primary score, threshold) beside the data.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

Value = float | str | bool | None


class ScoreRequest(BaseModel):
    """Records to score: give ``records`` or ``columns``, not both."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"records": [{"mean_radius": 13.5, "mean_texture": 18.2}]},
        {"columns": {"mean_radius": [13.5, 21.0], "mean_texture": [18.2, 25.1]}},
    ]})

    records: list[dict[str, Value]] | None = Field(
        None, description="one object per record: column -> value (null = missing)")
    columns: dict[str, list[Value]] | None = Field(
        None, description="column -> one value per record; all lists of the same length")


class ModelMeta(BaseModel):
    """Which model version answered."""

    name: str
    version: str
    alias: str | None
    kind: str = Field(description="ae or vae (tables), conv_ae or conv_vae (images), seq_ae or "
                      "seq_vae (sequences)")
    primary_score: str = Field(description="the score kind that decides is_anomaly")
    threshold: float = Field(description="threshold of the primary score")


class Contribution(BaseModel):
    """One column's share of a record's reconstruction error."""

    column: str
    error: float = Field(description="scaled squared reconstruction error of the column")


class RecordResult(BaseModel):
    """The scores of one record (higher = more abnormal)."""

    score: float = Field(description="primary score")
    p_value: float = Field(description="conformal p-value of the primary score")
    is_anomaly: bool = Field(description="score > threshold")
    scores: dict[str, float] = Field(description="every score kind")
    p_values: dict[str, float] = Field(description="p-value of every score kind")
    unknown_categories: int = Field(description="categorical values never seen in training")
    explanation: list[Contribution] | None = Field(
        None, description="with ?explain=true: the columns contributing most, largest first")


class _Scored(BaseModel):
    """What every score answer starts with: the model that gave it, and the count flagged."""

    model: ModelMeta
    n_anomalies: int


class ScoreResponse(_Scored):
    """One result per record, in the order sent."""

    n_records: int
    ignored_columns: list[str] = Field(description="columns sent that the model does not read")
    results: list[RecordResult]


class EncodeResponse(BaseModel):
    """Latent codes (posterior means for a VAE), one row per record."""

    model: ModelMeta
    latent_dim: int
    latent: list[list[float]]


class ReconstructResponse(BaseModel):
    """Reconstructions in the input's own columns, one per record."""

    model: ModelMeta
    columns: list[str]
    records: list[dict[str, Value]]


class ColumnInfo(BaseModel):
    """One input column of a model's schema."""

    name: str
    kind: str = Field(description="numeric or categorical")
    dtype: str
    categories: list[str] | None = None
    used: bool = Field(description="false for columns constant in training (accepted, unused)")


class ModelInfo(ModelMeta):
    """A loaded model version in full."""

    uri: str
    run_id: str | None
    origin: str = Field(description="registry, or cache when the registry was unreachable")
    runtime: str = Field(description="onnxruntime (the model's ONNX graph) or torch (its "
                         "networks): what scores its records")
    thresholds: dict[str, float]
    target_fpr: float
    achievable_fpr: float = Field(description="the false-positive rate the threshold promises: "
                                  "the target, or more when calibration data were too few")
    score_kinds: list[str]
    latent_dim: int
    input_schema: list[ColumnInfo]
    loaded_at: str


class ModelList(BaseModel):
    """Every model loaded now."""

    models: list[ModelInfo]


class ModelStatus(BaseModel):
    """A configured model's state."""

    name: str
    uri: str
    loaded: bool
    version: str | None
    origin: str | None
    loaded_at: str | None
    note: str | None = Field(description="why it is degraded (served from cache)")
    last_error: str | None


class ReadyResponse(BaseModel):
    """Ready when every configured model is loaded."""

    ready: bool
    degraded: bool = Field(description="some model is served from the cache")
    models: list[ModelStatus]


class ReloadResponse(BaseModel):
    """The version now served after a reload."""

    previous_version: str | None
    model: ModelInfo


class FileSummary(BaseModel):
    """With ?summary=true: counts and score quantiles instead of the scored file."""

    model: ModelMeta
    filename: str
    n_records: int
    n_anomalies: int
    anomaly_rate: float
    score_quantiles: dict[str, float] = Field(description="min, p50, p90, p99, max")
    ignored_columns: list[str]


class ImageResult(BaseModel):
    """One uploaded image's scores, in upload order."""

    file: str = Field(description="the upload's file name")
    score: float = Field(description="primary score")
    p_value: float = Field(description="conformal p-value of the primary score")
    is_anomaly: bool = Field(description="score > threshold")
    scores: dict[str, float] = Field(description="every score kind")
    p_values: dict[str, float] = Field(description="p-value of every score kind")
    anomaly_map_png: str | None = Field(
        None, description="with ?maps=true: the anomaly map as a base64 8-bit grayscale PNG of "
        "the model's image size; white = anomaly_map_max")
    anomaly_map_max: float | None = Field(
        None, description="the map value drawn white (1 = a normal pixel's average error)")


class ImageScoreResponse(_Scored):
    """Scores for uploaded images, with the model that gave them."""

    n_images: int
    image_shape: list[int] = Field(description="(channels, height, width) images are resized to")
    results: list[ImageResult]


class ErrorDetail(BaseModel):
    """What was wrong, and where."""

    type: str
    message: str
    record: int | None = Field(None, description="index of the first bad record, from 0")
    column: str | None = None
    details: list[dict] | None = None


class ErrorResponse(BaseModel):
    """Every error answer."""

    error: ErrorDetail
