"""Options of a batch scoring job, kept free of heavy imports so the CLI starts fast."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pipelines.registry.uri import parse_model_uri
from training.errors import ConfigError

DEFAULT_CHUNK_ROWS = 50_000
DEFAULT_DECODE_WORKERS = 1  # image models: a thread decoding the next chunk while one is scored
ON_ERROR = ("fail", "skip")
ENGINES = ("local", "spark")


@dataclass
class ScoreOptions:
    """Everything one scoring job needs; validated by :meth:`check`."""

    model: str
    input: str
    output: str
    keep: list[str] | None = None
    on_error: str = "fail"
    resume: bool = False
    engine: str = "local"
    spark_master: str | None = None
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    tracking_uri: str | None = None
    cache_dir: str | None = None  # downloaded models (default: the service's model cache)
    maps_dir: str | None = None  # image models: write each image's anomaly map PNG here
    decode_workers: int = DEFAULT_DECODE_WORKERS  # image models: decoding threads (0: none)
    run_time: datetime | None = None  # fills {date}/{time} in the output; default now

    def check(self) -> ScoreOptions:
        """Raise :class:`ConfigError` naming the bad option."""
        if self.on_error not in ON_ERROR:
            raise ConfigError(f"on_error must be one of {list(ON_ERROR)}, got {self.on_error!r}")
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {list(ENGINES)}, got {self.engine!r}")
        if not isinstance(self.chunk_rows, int) or self.chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be a positive integer, got {self.chunk_rows!r}")
        if (isinstance(self.decode_workers, bool) or not isinstance(self.decode_workers, int)
                or self.decode_workers < 0):
            raise ConfigError("decode_workers must be an integer >= 0, got "
                              f"{self.decode_workers!r}")
        if self.model.strip().startswith(("models:", "runs:")):
            parse_model_uri(self.model)  # the form only: a folder may not exist yet
        if self.keep is not None and not self.keep:
            raise ConfigError("keep: name at least one column, or leave it out to keep all")
        if self.keep is not None and len(set(self.keep)) < len(self.keep):
            twice = next(c for i, c in enumerate(self.keep) if c in self.keep[:i])
            raise ConfigError(f"keep: column {twice!r} is named twice")
        if self.engine == "spark" and str(self.output).lower().rstrip("/").endswith(".csv"):
            raise ConfigError(f"output {self.output!r}: the spark engine writes a Parquet "
                              "dataset (a folder); name it without .csv, or use --engine local "
                              "for a CSV file")
        return self
