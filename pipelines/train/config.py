"""Training configuration: a YAML file and/or CLI flags, validated once into a typed object.

File format (every key optional except ``data`` and ``name``; CLI flags override the file)::

    data: normal.csv            # CSV or Parquet of normal records (may hold labelled anomalies),
                                # or images: a folder (MVTec layout too), an .npz or IDX file
    name: my-model              # registered model name
    kind: vae                   # ae | vae (tables), conv_ae | conv_vae (images)
    label_column: null          # 1/true = anomaly; such rows are kept for evaluation only
    id_column: null             # excluded from features
    eval_data: null             # a separate labelled file for evaluation (needs label_column)
    target_fpr: 0.01            # false-positive rate the thresholds aim at
    alias: challenger           # registry alias set on the new version
    experiment: anomaly-detection
    calibration_fraction: 0.2   # share of normal rows held out for thresholds and p-values
    eval_fraction: 0.2          # share of normal rows held out for evaluation (labelled data only)
    seed: 0
    register: true              # false: log the run but do not register a version
    normal_class: null          # images labelled by class (IDX, .npz): the normal class
    model:                      # detector hyperparameters (training.params.DetectorParams)
      hidden_sizes: null        # e.g. [64, 32]; null = chosen from the data's width
      latent_dim: null
      ...
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from training.detector.image_params import IMAGE_KINDS
from training.detector.registry import DETECTORS, detector_class
from training.errors import ConfigError, shown
from training.params import MAX_SEED, DetectorParams

DEFAULT_EXPERIMENT = "anomaly-detection"



@dataclass
class TrainConfig:
    """One training job, fully validated."""

    data: str
    name: str
    kind: str = "vae"
    label_column: str | None = None
    id_column: str | None = None
    eval_data: str | None = None
    target_fpr: float = 0.01
    alias: str = "challenger"
    experiment: str = DEFAULT_EXPERIMENT
    calibration_fraction: float = 0.2
    eval_fraction: float = 0.2
    seed: int = 0
    register: bool = True
    normal_class: int | str | None = None
    model: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("data", "name"):
            if not getattr(self, key):
                raise ConfigError(f"{key}: required (give --{key} or '{key}:' in the config file)")
        for key in ("data", "eval_data"):  # a path given from Python is a path
            if isinstance(getattr(self, key), os.PathLike):
                setattr(self, key, os.fspath(getattr(self, key)))
        for key in ("data", "kind", "alias", "experiment", "label_column", "id_column",
                    "eval_data"):
            v = getattr(self, key)
            if v is not None and not isinstance(v, str):
                raise ConfigError(f"{key}: expected text, got {shown(v)}")
        if not isinstance(self.register, bool):
            raise ConfigError(f"register: expected true or false, got {shown(self.register)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) \
                or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed: expected a whole number from 0 to {MAX_SEED}, got "
                              f"{shown(self.seed)}")
        self.seed = int(self.seed)
        if self.normal_class is not None and (isinstance(self.normal_class, bool) or
                                              not isinstance(self.normal_class, (int, str))):
            raise ConfigError(f"normal_class: expected a class name or number, got "
                              f"{shown(self.normal_class)}")
        if self.label_column is not None and self.label_column == self.id_column:
            raise ConfigError(f"label_column and id_column both name {self.label_column!r}: "
                              "the labels and the record ids are two columns")
        check_model_name(self.name)
        check_alias(self.alias)
        if not (self.experiment or "").strip():
            raise ConfigError("experiment: required, and not blank")
        for key in ("calibration_fraction", "eval_fraction"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 0.9:
                raise ConfigError(f"{key}: expected a number in (0, 0.9), got {shown(v)}")
        if self.kind in IMAGE_KINDS and (self.label_column or self.id_column):
            raise ConfigError("label_column and id_column apply to tables; images are labelled "
                              "by folder (good/, <defect>/), by .npz labels or normal_class")
        if self.kind not in IMAGE_KINDS and self.normal_class is not None:
            raise ConfigError("normal_class applies to images; tables use label_column")
        if self.eval_data and not self.label_column and self.kind not in IMAGE_KINDS:
            raise ConfigError("eval_data needs label_column: name the column holding the labels")
        if not isinstance(self.model, dict):
            raise ConfigError(f"model: expected a mapping of hyperparameters, got {self.model!r}")
        # Validate the hyperparameters now, so a typo fails before any data is read.
        self.detector_params()

    def detector_params(self) -> DetectorParams:
        """The detector's hyperparameters, with kind, target FPR and seed from the top level."""
        merged = {**self.model, "kind": self.kind, "target_fpr": self.target_fpr}
        merged.setdefault("seed", self.seed)
        try:
            detector = detector_class(self.kind)
            if detector is None:
                raise ConfigError(f"kind: expected one of {sorted(DETECTORS)}, got "
                                  f"{self.kind!r}")
            return detector.params_class.from_dict(merged)
        except ConfigError as e:
            raise ConfigError(f"model.{e}") from None

    @classmethod
    def from_sources(cls, config_file: str | None, overrides: dict[str, Any]) -> TrainConfig:
        """Merge a YAML file (if any) with overrides (CLI flags; ``None`` means not given)."""
        data: dict[str, Any] = {}
        if config_file:
            data = load_yaml(config_file)
        model = data.pop("model", None) or {}
        if not isinstance(model, dict):
            raise ConfigError(f"model: expected a mapping of hyperparameters, got {shown(model)}")
        model = dict(model)
        for k, v in overrides.pop("model", {}).items():
            if v is not None:
                model[k] = v
        data.update({k: v for k, v in overrides.items() if v is not None})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            where = f"{config_file}: " if config_file else ""
            raise ConfigError(
                f"{where}unknown config key(s) {unknown}; known keys: {sorted(names)}"
            )
        data["model"] = model
        data.setdefault("data", None)
        data.setdefault("name", None)
        return cls(**data)


def check_model_name(name: Any) -> None:
    """Raise :class:`ConfigError` unless MLflow accepts ``name`` as a registered model name
    (text, not blank, no '/' or ':', not '.' or starting with '..')."""
    if not isinstance(name, str):
        raise ConfigError(f"name: expected text, got {name!r} (quote it in the config file)")
    if not name.strip():
        raise ConfigError("name: required, and not blank")
    bad = [c for c in ("/", ":") if c in name]
    if bad or name == "." or name.startswith(".."):
        why = f"contains {bad[0]!r}" if bad else "reads as a folder"
        raise ConfigError(f"name: {name!r} is not a valid registered model name ({why}); "
                          "use letters, digits, '-', '_' and '.', without '/' or ':'")


def check_alias(alias: str) -> None:
    """Raise :class:`ConfigError` unless MLflow accepts ``alias`` as a registered model's
    alias (letters, digits, '_' and '-'; not 'latest' nor a version such as 'v3')."""
    if not alias or not re.fullmatch(r"[\w\-]{1,255}", alias):
        raise ConfigError(f"alias: {alias!r} is not a valid alias; use letters, digits, '_' "
                          "and '-' (e.g. champion, challenger)")
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise ConfigError(f"alias: {alias!r} is reserved by MLflow (the latest version, or a "
                          "version number); choose another name")


class _DuplicateKey(Exception):
    """A YAML mapping that names a key twice (its message names the key and line)."""


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names a key twice (the safe loader keeps
    the last value silently, so a doubled ``data:`` would train on the other file)."""

    def construct_mapping(self, node, deep=False):
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise _DuplicateKey(f"key {key!r} appears twice (line "
                                    f"{key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for missing or malformed files."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeys) or {}
    except _DuplicateKey as e:
        raise ConfigError(f"{path}: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x}); save "
                          "the file as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data
