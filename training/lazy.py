"""Module attributes that import their home module on first use (PEP 562), so a package's
light parts import without its heavy dependencies."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_attributes(package: str, homes: dict[str, str], namespace: dict[str, Any]
                    ) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: attribute ``name`` is ``homes[name]``'s
    attribute of that name, imported when first asked for and then kept in ``namespace``."""
    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(homes[name]), name)
        namespace[name] = value
        return value
    return __getattr__
