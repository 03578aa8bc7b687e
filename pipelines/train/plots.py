"""Figures logged with every training run (matplotlib, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402


def loss_curves(history: list[dict[str, float]], title: str, objective: str = "loss"):
    """Per epoch: the kind's own objective on the training and validation rows (left), and the
    reconstruction error of the validation rows that every kind shares (right)."""
    fig, (ax, ax_recon) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label=f"train_{objective}")
    ax.plot(epochs, [h["val_loss"] for h in history], label=f"val_{objective}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(objective)
    ax.set_title("training objective")
    ax.legend()
    if all("val_recon_mse" in h for h in history):
        ax_recon.plot(epochs, [h["val_recon_mse"] for h in history], color="C2",
                      label="val_recon_mse")
        ax_recon.legend()
    ax_recon.set_xlabel("epoch")
    ax_recon.set_ylabel("mean squared error per feature")
    ax_recon.set_title("validation reconstruction error")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def score_histogram(kind: str, normal: np.ndarray, anomalous: np.ndarray | None, threshold: float):
    """Histogram of held-out normal scores (and anomalies when known) with the threshold."""
    fig, ax = plt.subplots(figsize=(6, 4))
    parts = [normal] + ([anomalous] if anomalous is not None and len(anomalous) else [])
    lo = min(float(np.min(p)) for p in parts)
    hi = max(float(np.max(p)) for p in parts)
    use_log = lo > 0 and hi / lo > 100
    bins = np.geomspace(lo, hi, 40) if use_log else np.linspace(lo, hi, 40)
    ax.hist(normal, bins=bins, alpha=0.6, label="normal (held out)", density=True)
    if len(parts) > 1:
        ax.hist(anomalous, bins=bins, alpha=0.6, label="anomalous", density=True)
    if use_log:
        ax.set_xscale("log")
    ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set_xlabel(f"score_{kind}")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    return fig


def roc_pr_curves(labels: np.ndarray, scores: dict[str, np.ndarray]):
    """ROC and precision-recall curves, one line per score kind."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, s in scores.items():
        fpr, tpr, _ = roc_curve(labels, s)
        a.plot(fpr, tpr, label=kind)
        prec, rec, _ = precision_recall_curve(labels, s)
        b.plot(rec, prec, label=kind)
    a.plot([0, 1], [0, 1], color="grey", linestyle=":")
    a.set_xlabel("false positive rate")
    a.set_ylabel("true positive rate")
    a.set_title("ROC")
    b.set_xlabel("recall")
    b.set_ylabel("precision")
    b.set_title("precision-recall")
    a.legend()
    b.legend()
    fig.tight_layout()
    return fig


def close(fig) -> None:
    """Free a figure's memory."""
    plt.close(fig)
