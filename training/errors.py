"""One place for the errors the library raises.

Every error a caller can fix is an :class:`AnomalyError`; its message names the file, record,
column or key at fault and, where there is one, the fix. Entry points map these to exit codes
(CLI) or HTTP statuses (service) in one place each.
"""

from __future__ import annotations


class AnomalyError(Exception):
    """Base of every error caused by the caller's input or configuration."""


class DataError(AnomalyError, ValueError):
    """The data does not match what is expected (missing column, wrong type, too few rows...)."""


class ConfigError(AnomalyError, ValueError):
    """A configuration value or key is wrong (unknown key, value out of range...)."""


class NotFittedError(AnomalyError, RuntimeError):
    """A method needing a fitted (or calibrated) detector was called too early."""


class ModelFormatError(AnomalyError):
    """A saved detector directory is missing files or holds an unsupported format."""
