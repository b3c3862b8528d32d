"""Classification metrics for DR grading: accuracy, quadratic weighted kappa (the APTOS metric),
per-class recall and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def quadratic_weighted_kappa(matrix: np.ndarray) -> float:
    """Cohen's kappa with quadratic weights, from a confusion matrix.

    Returns 0.0 when the expected disagreement is zero (e.g. one class only), where kappa is undefined.
    """
    n = matrix.shape[0]
    total = matrix.sum()
    if total == 0 or n < 2:
        return 0.0
    idx = np.arange(n)
    weights = (idx[:, None] - idx[None, :]) ** 2 / (n - 1) ** 2
    expected = np.outer(matrix.sum(axis=1), matrix.sum(axis=0)) / total
    denominator = float((weights * expected).sum())
    if denominator == 0.0:
        return 0.0
    return 1.0 - float((weights * matrix).sum()) / denominator


def compute_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> dict:
    """Accuracy, quadratic weighted kappa, per-class recall (None for absent classes), confusion matrix."""
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    total = int(matrix.sum())
    support = matrix.sum(axis=1)
    recall = [float(matrix[i, i] / support[i]) if support[i] else None for i in range(num_classes)]
    return {
        "accuracy": float(np.trace(matrix) / total) if total else 0.0,
        "kappa": quadratic_weighted_kappa(matrix),
        "per_class_recall": recall,
        "confusion_matrix": matrix.tolist(),
        "num_examples": total,
    }


def majority_baseline(labels: Sequence[int]) -> float:
    """Accuracy of always predicting the most frequent class."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    return float(counts.max() / counts.sum()) if counts.size else 0.0
