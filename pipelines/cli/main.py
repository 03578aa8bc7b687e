"""The ``anomaly`` command line: the group, logging, and the one map from errors to exit codes.

Exit codes:

====  ==========================================================================================
0     success
1     the environment failed: registry or tracking server unreachable, disk, permissions,
      memory (an ``AnomalyError`` whose ``exit_code`` is 1, ``MlflowException``, ``OSError``...)
2     the caller's input or configuration is wrong: bad flags, files, columns, values, an
      unknown model (an ``AnomalyError`` whose ``exit_code`` is 2, a command-line usage error)
70    internal error: an exception nobody raised on purpose, i.e. a bug (EX_SOFTWARE)
130   interrupted (Ctrl-C)
====  ==========================================================================================

Failures print one line, ``error: ...``, last on stderr; ``-v`` adds the traceback above it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
import warnings

import click

from pipelines.cli import batch, demo, export, models, serve, train, ui
from pipelines.cli.options import Globals, Group
from training.errors import AnomalyError

EXIT_OK, EXIT_ENV, EXIT_USER, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 70, 130
_NoArgsIsHelp = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2

# Failures of what a command depends on, neither of its input nor of this code. Named by
# module so that classifying an error imports nothing: a class never imported was not raised.
_ENVIRONMENT_ERRORS = (
    ("mlflow.exceptions", "MlflowException", "registry/tracking error"),
    ("sqlalchemy.exc", "OperationalError", None),  # database locked or unreachable
    ("py4j.protocol", "Py4JNetworkError", None),  # Spark gateway gone
)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"],
                                          "show_default": True, "max_content_width": 100})
def cli() -> None:
    """Anomaly detection with autoencoders: train, calibrate, register, score.

    -v/--verbose and --tracking-uri may be given before or after the command.
    """


for _command in (train.train, models.models, ui.ui, serve.serve, batch.score, batch.schedule,
                 export.export, demo.demo):
    cli.add_command(_command)


def setup_logging(verbose: bool) -> None:
    """Log to stderr: INFO (DEBUG with ``verbose``), libraries' chatter at WARNING."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib", "PIL", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not verbose else logging.INFO)
    # MLflow sets its own loggers' level (and format) when it is imported, later than this:
    # it reads the level from the environment.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not verbose:
        # MLflow's hints (integer columns, type hints, dataset sources) are for library
        # authors, not for someone running a training job.
        warnings.filterwarnings("ignore", category=UserWarning)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``anomaly`` console script; returns the exit code."""
    previous = _interrupt_on_sigterm()
    try:
        return _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    state = Globals(on_start=setup_logging)
    try:
        code = cli.main(args=argv, prog_name="anomaly", standalone_mode=False, obj=state)
    except (click.exceptions.Abort, KeyboardInterrupt):  # Abort: click's KeyboardInterrupt
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _NoArgsIsHelp as e:  # a group without its command: its help, as an error
        click.echo(e.format_message(), err=True)
        return EXIT_USER
    except click.UsageError as e:
        if e.ctx is not None:
            click.echo(e.ctx.get_usage(), err=True)
            click.echo(f"Try '{e.ctx.command_path} --help' for help.", err=True)
        return _fail(e.format_message(), EXIT_USER)
    except click.ClickException as e:
        return _fail(e.format_message(), e.exit_code)
    except AnomalyError as e:
        return _fail(str(e), e.exit_code, e if state.verbose else None)
    except Exception as e:
        shown = e if state.verbose else None
        hint = "" if state.verbose else " (rerun with -v for details)"
        kind = _environment_failure(e)
        if kind is not None:
            return _fail(f"{kind}: {_first_line(e)}{hint}", EXIT_ENV, shown)
        hint = "" if state.verbose else " (a bug; rerun with -v for the traceback)"
        return _fail(f"internal error: {type(e).__name__}: {_first_line(e)}{hint}",
                     EXIT_INTERNAL, shown)
    return code if isinstance(code, int) else EXIT_OK


def _interrupt_on_sigterm():
    """Make SIGTERM (a service manager stopping the command, ``kill``) interrupt the command as
    Ctrl-C does, so that what it was doing is undone or closed (a half-registered model taken
    back, the MLflow run ended, temporary files removed) before it exits with 130. Returns the
    handler it replaced, or None where none can be set (not the main thread)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # signals can only be handled in the main thread
        return None


def _fail(message: str, code: int, exc: BaseException | None = None) -> int:
    """Print the traceback of ``exc`` (if given), then ``error: message``; return ``code``."""
    if exc is not None:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"error: {message}", file=sys.stderr)
    return code


def _environment_failure(e: Exception) -> str | None:
    """How an environment failure is named in its message; None for anything else (a bug)."""
    if isinstance(e, (OSError, MemoryError)):
        return type(e).__name__
    database_error = getattr(sys.modules.get("sqlalchemy.exc"), "DatabaseError", None)
    if database_error is not None and isinstance(e, database_error) \
            and "file is not a database" in str(e):  # the tracking URI names another file
        return "tracking store error"
    for module, name, label in _ENVIRONMENT_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(e, cls):
            return label or type(e).__name__
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


if __name__ == "__main__":
    sys.exit(main())
