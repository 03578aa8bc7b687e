"""Planning a batch job: the inputs a path or glob names, and where each one's scores go.
"""

from __future__ import annotations

import glob
import string
import tempfile
from datetime import datetime
from pathlib import Path

from pipelines.batch.options import ScoreOptions
from training.data.tables import table_format
from training.errors import ConfigError, DataError, OutputError, output_error, output_target
from training.preprocessing.images import IMAGE_SUFFIXES


# -- planning ----------------------------------------------------------------------------------
def is_image_input(pattern: str) -> bool:
    """A folder, or a glob / file naming image files (by suffix)."""
    p = Path(pattern)
    return p.is_dir() or pattern.lower().endswith(IMAGE_SUFFIXES)


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def expand_inputs(pattern: str) -> list[Path]:
    """The files a path or glob names, sorted; :class:`DataError` when there are none."""
    if not _is_glob(pattern):
        return [Path(pattern)]
    paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not paths:
        raise DataError(f"{pattern}: no files match")
    return paths


PLACEHOLDERS = ("stem", "name", "date", "time", "datetime")


def fill_template(template: str, values: dict[str, str], keep: tuple[str, ...] = ()) -> str:
    """``template`` with its placeholders replaced by ``values``: by name only (no attributes,
    indexes, conversions or specs), ``{{``/``}}`` for a literal brace. Placeholders named in
    ``keep`` stay as they are, and so do the escapes then (the result is a template again).

    Raises:
        ConfigError: an unknown placeholder or an unmatched brace.
    """
    hint = "use {stem}, {name}, {date}, {time} or {datetime}"
    try:
        pieces = list(string.Formatter().parse(template))
    except ValueError as e:  # an unmatched brace
        raise ConfigError(f"output {template!r}: {e}; {hint}, and {{{{ }}}} for a literal "
                          "brace") from None
    parts: list[str] = []
    for literal, field, spec, conversion in pieces:
        parts.append(literal.replace("{", "{{").replace("}", "}}") if keep else literal)
        if field is None:
            continue
        if field not in PLACEHOLDERS or spec or conversion:
            shown_field = "{" + field + (f"!{conversion}" if conversion else "") + \
                (f":{spec}" if spec else "") + "}"
            raise ConfigError(f"output {template!r}: unknown placeholder {shown_field}; {hint}")
        parts.append("{" + field + "}" if field in keep else values[field])
    return "".join(parts)


def per_input_template(template: str) -> bool:
    """Whether an output template names each input (``{stem}`` or ``{name}``, not escaped)."""
    try:
        return any(f in ("stem", "name") for _, f, _, _ in string.Formatter().parse(template))
    except ValueError:
        return False


def output_for(template: str, source: Path, when: datetime, many: bool) -> Path:
    """Where the scores of ``source`` go.

    ``template`` may hold ``{stem}`` (input name without suffix), ``{name}``, ``{date}``
    (YYYY-MM-DD), ``{time}`` (HHMMSS) and ``{datetime}``. Without ``{stem}``/``{name}``, several
    inputs (or a template ending in ``/`` or naming a folder) write ``FOLDER/<stem>.parquet``.
    """
    fields = {"stem": source.stem, "name": source.name, "date": when.strftime("%Y-%m-%d"),
              "time": when.strftime("%H%M%S"), "datetime": when.strftime("%Y-%m-%dT%H%M%S")}
    text = fill_template(template, fields)
    if not per_input_template(template) and (many or template.endswith(("/", "\\"))
                                             or Path(text).is_dir()):
        return Path(text) / f"{source.stem}.parquet"
    return Path(text)


def plan(opts: ScoreOptions) -> list[tuple[Path, Path]]:
    """Pairs (input, output) of a job; two inputs never share an output."""
    when = opts.run_time or datetime.now()
    if is_image_input(opts.input):  # images: the folder or glob is one input, one output table
        src = Path(opts.input)
        out = output_for(opts.output, src, when, False)
        table_format(out)
        return [(src, out)]
    inputs = expand_inputs(opts.input)
    many = _is_glob(opts.input)
    pairs = [(src, output_for(opts.output, src, when, many)) for src in inputs]
    seen: dict[Path, Path] = {}
    for src, out in pairs:
        table_format(out)
        if out.resolve() in seen:
            raise ConfigError(f"output {opts.output!r}: {seen[out.resolve()]} and {src} would "
                              f"both write {out}; give each input its own output with "
                              "{stem} or {name}")
        if out.resolve() == src.resolve():
            raise ConfigError(f"{out}: the output would overwrite its own input")
        seen[out.resolve()] = src
    return pairs


def writable_folder(folder: Path, head: str, fix: str) -> None:
    """Create ``folder`` and check that it takes a file, before anything is scored; else
    :func:`~training.errors.output_error` (``head (reason)fix``)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass  # created and removed: the folder takes files
    except OSError as e:
        raise output_error(e, head, fix) from None


def _prepare_output(out: Path) -> Path:
    """Create the output's folder and check it is writable, before anything is scored; the
    file to write (:func:`~training.errors.output_target`)."""
    out = output_target(out)
    writable_folder(out.parent, f"{out}: cannot write to {out.parent}",
                    "; choose a writable --output")
    if out.is_dir():
        raise OutputError(f"{out}: is a folder; give a file name ending .parquet or .csv")
    return out

