"""Model URIs: the one parser every entry point uses.

Accepted forms:

- ``models:/NAME@ALIAS``: the version the alias points at when resolved (resolved once, then
  pinned for the whole job or served version);
- ``models:/NAME/VERSION``: one registered version;
- ``runs:/RUN_ID/PATH``: a model logged by a run, not registered (batch scoring only);
- a local model folder, or an artifact URI with a scheme (``file://``, ``s3://``...), batch only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from training.errors import ConfigError

REGISTERED, RUN, PATH = "registered", "run", "path"

_REGISTERED = re.compile(
    r"^models:/(?P<name>[^/@\s]+)(?:@(?P<alias>[^/@\s]+)|/(?P<version>[1-9]\d*))$")
_RUN = re.compile(r"^runs:/(?P<run_id>[^/\s]+)/(?P<path>\S+)$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")

REGISTERED_FORMS = "models:/NAME@ALIAS (e.g. models:/my-model@champion) or models:/NAME/VERSION"
ALL_FORMS = f"{REGISTERED_FORMS}, runs:/RUN_ID/PATH or a local model folder"


@dataclass(frozen=True)
class ModelURI:
    """A parsed model URI.

    Attributes:
        uri: the URI as given (stripped).
        kind: ``"registered"`` (``models:/``), ``"run"`` (``runs:/``) or ``"path"`` (a folder
            or an artifact URI with a scheme).
        name: registered model name; for other kinds the URI stands in for it.
        alias: alias of a ``models:/NAME@ALIAS`` URI.
        version: version of a ``models:/NAME/VERSION`` URI.
        run_id: run of a ``runs:/`` URI.
    """

    uri: str
    kind: str
    name: str
    alias: str | None = None
    version: str | None = None
    run_id: str | None = None

    @property
    def registered(self) -> bool:
        """Whether the URI names a model in the registry (``models:/``)."""
        return self.kind == REGISTERED


def parse_model_uri(uri: str, *, registered_only: bool = False) -> ModelURI:
    """Parse a model URI.

    Args:
        uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/PATH``, a local
            model folder or an artifact URI.
        registered_only: accept only the two ``models:/`` forms (the service serves
            registered models only).

    Returns:
        the parsed URI.

    Raises:
        ConfigError: a malformed URI, naming the accepted forms.
    """
    text = str(uri).strip()
    m = _REGISTERED.match(text)
    if m:
        return ModelURI(text, REGISTERED, m["name"], alias=m["alias"], version=m["version"])
    forms = REGISTERED_FORMS if registered_only else ALL_FORMS
    if registered_only or text.startswith("models:"):
        raise ConfigError(f"model URI {text!r}: expected {forms}")
    m = _RUN.match(text)
    if m:
        return ModelURI(text, RUN, text, run_id=m["run_id"])
    if text.startswith("runs:"):
        raise ConfigError(f"model URI {text!r}: expected {forms}")
    is_uri = bool(_SCHEME.match(text)) and "://" in text and not Path(text).exists()
    if is_uri or (text and Path(text).is_dir()):
        return ModelURI(text, PATH, text)
    raise ConfigError(f"model URI {text!r}: no such model folder; expected {forms}")
