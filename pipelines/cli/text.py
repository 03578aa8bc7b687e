"""Plain-text output of the ``anomaly`` command: tables and result summaries.

Imports nothing from ``pipelines`` or ``service``, so the batch scheduler, the demo and the
benchmarks print their tables with it without importing the command line.
"""

from __future__ import annotations

import math
from typing import Any

from training.errors import listed


def format_table(rows: list[dict], columns: list[str]) -> str:
    """Plain-text table with a header line, one line per row, columns padded to fit."""
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines.append("  ".join("-" * widths[c] for c in columns))
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def format_training(result: Any) -> str:
    """What ``anomaly train`` prints: run, epochs, each score's threshold (and AUROC/AP when
    evaluated), the registered version. ``result`` is a ``TrainResult``."""
    m = result.metrics
    lines = [f"run {result.run_id}: {result.kind} trained for {int(m['fit/epochs'])} epochs "
             f"in {m['fit/seconds']:.1f}s"]
    if result.geometry == "direction":
        lines.append("  rows compared by their direction (geometry direction: each row divided "
                     "by its length; --geometry columns standardises each column instead)")
        if result.set_apart:
            lines.append(f"  set apart, in a larger unit than the rest (standardised on their "
                         f"own): {listed(result.set_apart)}")
    for kind, t in result.thresholds.items():
        line = f"  {kind:6s} threshold {t:.6g}"
        if f"eval/auroc_{kind}" in m:
            line += f"  AUROC {m[f'eval/auroc_{kind}']:.4f}  AP {m[f'eval/ap_{kind}']:.4f}"
        if kind == result.primary_score:
            line += "  (primary: decides is_anomaly)"
        lines.append(line)
    achievable, target = m.get("calibration/achievable_fpr"), m.get("calibration/target_fpr")
    if achievable is not None and target is not None and achievable > target * (1 + 1e-9):
        lines.append(f"WARNING: {int(m['calibration/n'])} calibration records cannot promise a "
                     f"false-positive rate of {target:g}: the threshold's rate is "
                     f"{achievable:.3g}; give more normal records (at least "
                     f"{math.ceil(1 / target) - 1} for calibration) or a larger "
                     "--target-fpr")
    if result.version:
        lines.append(f"registered models:/{result.name}/{result.version} as "
                     f"models:/{result.name}@{result.alias}")
    return "\n".join(lines)


def format_scoring(result: Any) -> str:
    """What ``anomaly score`` prints: one line per input, then the job's totals.
    ``result`` is a ``BatchResult``."""
    lines = []
    for r in result.inputs:
        if r.skipped:
            lines.append(f"{r.input}: skipped, {r.output} exists (--resume)")
        else:
            extra = f", {r.rejected} malformed rows -> {r.rejects_file}" if r.rejected else ""
            lines.append(f"{r.input} -> {r.output}: {r.rows} rows, {r.anomalies} anomalies{extra}")
    version = f" version {result.model_version}" if result.model_version else ""
    rate = result.anomalies / result.rows if result.rows else 0.0
    speed = result.rows / result.seconds if result.seconds > 0 else 0.0
    lines.append(f"scored {result.rows} rows with {result.model_name}{version} in "
                 f"{result.seconds:.1f}s ({speed:.0f} rows/s); anomaly rate {rate:.2%}; "
                 f"MLflow run {result.run_id}")
    if result.achievable_fpr is not None and \
            result.achievable_fpr > result.target_fpr * (1 + 1e-9):
        lines.append(f"WARNING: the model's threshold promises a false-positive rate of "
                     f"{result.achievable_fpr:.3g}, not its target {result.target_fpr:g} (it was "
                     "calibrated on too few records)")
    return "\n".join(lines)


MODEL_COLUMNS = ["name", "version", "aliases", "kind", "primary_score", "threshold", "auroc",
                 "run_id"]


def format_models(rows: list[dict]) -> str:
    """What ``anomaly models list`` prints: one line per registered version."""
    return format_table(rows, MODEL_COLUMNS) if rows else "no registered models"
