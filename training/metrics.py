"""Detection metrics on labelled data (1 = anomaly), for every score kind."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def detection_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """AUROC, average precision, and precision/recall/F1/FPR of ``score > threshold``.

    Args:
        labels: (n,) 0/1, 1 = anomaly.
        scores: (n,) higher = more abnormal.
        threshold: the calibrated threshold.
    """
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    flagged = s > threshold
    tp = int(np.sum(flagged & (y == 1)))
    fp = int(np.sum(flagged & (y == 0)))
    fn = int(np.sum(~flagged & (y == 1)))
    n_neg = int(np.sum(y == 0))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    out = {
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "fpr": fp / n_neg if n_neg else float("nan"),
    }
    both = 0 < y.sum() < len(y)
    out["auroc"] = float(roc_auc_score(y, s)) if both else float("nan")
    out["ap"] = float(average_precision_score(y, s)) if both else float("nan")
    return out
