"""Service settings: one validated object, read once at start.

Sources, strongest first: keyword overrides (the ``anomaly serve`` flags), environment
variables prefixed ``ANOMALY_`` (``ANOMALY_MODELS=models:/a@champion,models:/b@champion``,
``ANOMALY_API_KEYS=k1,k2``), then an optional YAML file with the same keys. Unknown keys in the
file are errors naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipelines.registry.download import default_cache_dir
from training.errors import ConfigError

ENV_PREFIX = "ANOMALY_"


def _split_list(value: Any) -> Any:
    """Comma-separated text (how lists arrive from the environment) to a list."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class Settings(BaseSettings):
    """Everything the service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid",
                                      validate_default=True)

    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="model URIs to serve: models:/NAME@ALIAS or models:/NAME/VERSION")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, "
        "else sqlite:///mlflow.db in the working directory)")
    cache_dir: Path = Field(default_factory=default_cache_dir,
                            description="downloaded models, served when the registry is down")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="keys accepted in X-API-Key; none = open service")
    admin_api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="keys allowed to reload models (and to score)")
    max_records: int = Field(10_000, ge=1, description="records per JSON request")
    max_body_bytes: int = Field(32 * 2**20, ge=1024, description="JSON request body limit")
    max_upload_bytes: int = Field(4 * 2**30, ge=1024, description="score-file upload limit")
    file_chunk_rows: int = Field(50_000, ge=1, description="rows scored at a time in files")
    max_file_columns: int = Field(
        1_000, ge=0, description="columns a score-file upload may have besides the model's "
        "own, counted from the CSV header or the Parquet schema before anything is parsed")
    max_header_bytes: int = Field(
        2**20, ge=1024, description="bytes of a CSV upload's header line, or of a Parquet "
        "upload's footer (its schema)")
    max_image_pixels: int = Field(
        4096 * 4096, ge=1, description="pixels of one uploaded image, read from its header "
        "before it is decoded")
    max_request_pixels: int = Field(
        2**28, ge=1, description="pixels of all the images of one score-images request")
    request_timeout_s: float | None = Field(
        300.0, gt=0, description="seconds before a request that has not started its answer "
        "gets a 504 (None: no limit)")
    strict: bool = Field(False, description="reject records with columns the model lacks")
    explain_top_k: int = Field(5, ge=1, description="features listed per record by explain")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS; empty = CORS off")
    registry_timeout_s: float = Field(10.0, gt=0, description="per registry request")
    registry_retries: int = Field(1, ge=0, description="retries per registry request")
    torch_threads: int | None = Field(
        1, ge=1, description="torch (and onnxruntime) intra-op threads per request (None: "
        "torch's default). Large requests run in worker threads side by side, so one each "
        "uses the cores without threads contending for them")
    graph_runtime: bool = Field(
        True, description="score table models through their ONNX graph (onnxruntime, no "
        "torch import), written beside the cached model the first time it is served")
    start_from_cache: bool = Field(
        True, description="at start, serve the version last resolved for each model URI "
        "from the cache at once and confirm it with the registry in the background "
        "(false: resolve every URI before serving)")
    stream_max_keys: int = Field(
        10_000, ge=1, description="series a sequence model's /stream keeps state for (the "
        "least recently seen is dropped first)")
    stream_idle_s: float = Field(
        3600.0, gt=0, description="seconds after which an idle series' /stream state is "
        "dropped")
    log_level: str = "info"

    _split = field_validator("models", "api_keys", "admin_api_keys", "cors_origins",
                             mode="before")(_split_list)

    @property
    def auth_enabled(self) -> bool:
        """Whether scoring needs an API key."""
        return bool(self.api_keys or self.admin_api_keys)


def load_settings(file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read settings once: ``overrides`` > environment > YAML ``file``.

    Overrides that are ``None`` are ignored, so unset command-line flags fall through.

    Raises:
        ConfigError: an unknown key or invalid value, named.
    """
    from_file: dict[str, Any] = {}
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"{path}: settings file not found")
        from_file = yaml.safe_load(path.read_text()) or {}
        if not isinstance(from_file, dict):
            raise ConfigError(f"{path}: expected a mapping of setting names to values")
    given = {k: v for k, v in overrides.items() if v is not None and v != []}
    try:
        from_env = Settings()
        env_keys = {k: getattr(from_env, k) for k in from_env.model_fields_set}
        return Settings(**{**from_file, **env_keys, **given})
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "settings"
        source = f"{file}: " if file else ""
        raise ConfigError(f"{source}setting '{key}' ({ENV_PREFIX}{key.upper()}): "
                          f"{err['msg']}") from None
