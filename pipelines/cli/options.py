"""What every ``anomaly`` command shares: the global options and the types of list flags.

``-v/--verbose`` and ``--tracking-uri`` are global: the root group and every command accept
them, so ``anomaly -v train ...`` and ``anomaly train ... -v`` mean the same. Each occurrence
writes into one :class:`Globals` shared by the whole command line; the last one given wins
(a command's own over the group's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

TRACKING_URI_DEFAULT = "$MLFLOW_TRACKING_URI, else ./mlflow.db"


@dataclass
class Globals:
    """The global options, merged over every level of the command line.

    ``on_start`` is called with ``verbose`` once the command line is parsed, right before the
    command runs (``main`` sets up logging with it).
    """

    verbose: bool = False
    tracking_uri: str | None = None
    on_start: Callable[[bool], None] | None = None


def _set_verbose(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Globals).verbose = True


def _set_tracking_uri(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(Globals).tracking_uri = value


def global_options(tracking_uri: bool = True) -> list[click.Option]:
    """Fresh ``-v/--verbose`` (and ``--tracking-uri``) options for one command or group."""
    params = [click.Option(["-v", "--verbose"], is_flag=True, expose_value=False,
                           callback=_set_verbose,
                           help="Debug logging; on failure, also print the traceback.")]
    if tracking_uri:
        params.append(click.Option(["--tracking-uri"], metavar="URI", expose_value=False,
                                   callback=_set_tracking_uri, show_default=TRACKING_URI_DEFAULT,
                                   help="MLflow tracking and registry URI."))
    return params


class Command(click.Command):
    """A command that accepts the global options too.

    Args:
        uses_store: False for a command that keeps its own MLflow store; it gets no
            ``--tracking-uri`` and refuses one given to the group.
    """

    def __init__(self, *args: Any, uses_store: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.uses_store = uses_store
        self.params.extend(global_options(uses_store))

    def invoke(self, ctx: click.Context) -> Any:
        state = ctx.ensure_object(Globals)
        if not self.uses_store and state.tracking_uri is not None:
            raise click.UsageError(f"{ctx.command_path} keeps its own MLflow store; "
                                   "--tracking-uri does not apply", ctx)
        if state.on_start is not None:
            state.on_start(state.verbose)
        return super().invoke(ctx)


class Group(click.Group):
    """A group that accepts the global options and whose commands and sub-groups do too."""

    command_class = Command
    group_class = type  # sub-groups are of this same class

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.params.extend(global_options())


class _CommaList(click.ParamType):
    """Comma-separated values as a list: integers (``64,32``) or names (``id,amount``)."""

    def __init__(self, name: str, item: type, what: str):
        self.name, self.item, self.what = name, item, what

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> list[Any]:
        if isinstance(value, list):
            return value
        try:
            return [self.item(x.strip()) for x in str(value).split(",") if x.strip()]
        except ValueError:
            self.fail(f"expected comma-separated {self.what}, got {value!r}", param, ctx)


def IntList() -> _CommaList:  # noqa: N802 (used like a type)
    """Comma-separated integers (``64,32``) as a list."""
    return _CommaList("INTS", int, "integers (e.g. 64,32)")


def NameList() -> _CommaList:  # noqa: N802
    """Comma-separated names (``id,amount``) as a list; blanks dropped."""
    return _CommaList("COLUMNS", str, "names (e.g. id,amount)")
