"""Evaluation helpers: the decision threshold chosen on validation (max F1), binary, multiclass and regression
metrics, and the plots logged with the run. The same code judges the Keras model and the MLlib baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def features_matrix(column: pd.Series, vector_size: int) -> np.ndarray:
    """A column of float arrays -> float32 matrix [rows, vector_size]; a wrong length is an error."""
    x = np.stack([np.asarray(v, dtype=np.float32) for v in column]) if len(column) else np.zeros((0, vector_size))
    if x.ndim != 2 or x.shape[1] != vector_size:
        raise ValueError(f"features: expected arrays of length {vector_size}, got shape {x.shape}")
    return x.astype(np.float32, copy=False)


def best_f1_threshold(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """The probability threshold with the highest F1 (on validation), and that F1."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    i = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    return (float(thresholds[i]), float(f1[i])) if len(thresholds) else (0.5, 0.0)


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """ROC AUC, PR AUC (average precision), log loss, and accuracy / F1 / precision / recall at `threshold`."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        log_loss,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    pred = (p >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    return {
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "log_loss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "accuracy": float(accuracy_score(y, pred)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "positive_rate": float(np.mean(y)),
        "rows": float(len(y)),
    }


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """ROC curves (name -> (labels, probabilities)) on one plot, AUC in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5, 4.6))
    for name, (y, p) in curves.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_history(history: list[dict[str, Any]], path: Path) -> Path:
    """Per-epoch training curves (loss and AUC, or accuracy for multiclass, RMSE for regression; train and
    validation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    second = next((m for m in ("auc", "accuracy", "rmse") if any(m in h for h in history)), "accuracy")
    for ax, metric in zip(axes, ("loss", second), strict=True):
        for key in (metric, f"val_{metric}"):
            if all(key in h for h in history):
                ax.plot(epochs, [h[key] for h in history], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def multiclass_metrics(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Accuracy, macro / weighted F1, log loss and per-class F1 of class probabilities [rows, classes]."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    labels = list(range(len(classes)))
    pred = proba.argmax(axis=1)
    per_class = f1_score(y, pred, labels=labels, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y, pred, labels=labels, average="weighted", zero_division=0)),
        "log_loss": float(log_loss(y, np.clip(proba, 1e-7, 1), labels=labels)),
        "rows": float(len(y)),
        **{f"f1.{c}": float(f) for c, f in zip(classes, per_class, strict=True)},
    }


def plot_confusion(y: np.ndarray, pred: np.ndarray, classes: list[str], path: Path, title: str) -> Path:
    """Confusion matrix of class indices `pred` against `y` as a PNG: row-normalised colour, counts written (and
    rates where there is room)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    k = len(classes)
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.2, 2.5 + 0.55 * k)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            text = f"{cm[i, j]:,}\n{rates[i, j]:.1%}" if k <= 4 else f"{cm[i, j]:,}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8 if k > 4 else 10,
                    color="white" if rates[i, j] > 0.5 else "black")
    short = [c if len(c) <= 12 else c[:11] + "…" for c in classes]
    ax.set_xticks(range(k), short, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), short)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R^2 of predicted values."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y, pred = np.asarray(y, dtype="float64"), np.asarray(pred, dtype="float64")
    return {
        "rmse": float(np.sqrt(mean_squared_error(y, pred))),
        "mae": float(mean_absolute_error(y, pred)),
        "r2": float(r2_score(y, pred)) if len(y) > 1 else float("nan"),
        "rows": float(len(y)),
    }


def plot_regression(series: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """Predicted against actual values (name -> (actual, predicted)) with the identity line, and the residuals'
    histograms, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 4))
    lo = min((float(np.min(np.r_[y, p])) for y, p in series.values() if len(y)), default=0.0)
    hi = max((float(np.max(np.r_[y, p])) for y, p in series.values() if len(y)), default=1.0)
    for name, (y, p) in series.items():
        ax1.scatter(y, p, s=6, alpha=0.5, label=name)
        ax2.hist(np.asarray(p) - np.asarray(y), bins=40, alpha=0.5, label=name)
    ax1.plot([lo, hi], [lo, hi], linestyle="--", color="grey", linewidth=1)
    ax1.set_xlabel("actual")
    ax1.set_ylabel("predicted")
    ax1.set_title(title, fontsize=10)
    ax1.legend(fontsize=8)
    ax2.set_xlabel("predicted - actual")
    ax2.set_title("Residuals", fontsize=10)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
