"""Metrics from one pass of predictions: confusion matrix, per-class table, calibration.

All functions take plain arrays (logits or probabilities (N, C), labels (N,)), so the same
numbers come out whether the predictions were just computed or read back from predictions.npz.
`softmax` and `calibration` (ECE) live in `infer.calibration`, which a run uses to calibrate
itself, and are re-exported here.
"""

from __future__ import annotations

import numpy as np

from cifarkit.infer.calibration import calibration, softmax

__all__ = ["balanced_accuracy", "calibration", "confusion_matrix", "most_confused", "per_class_table",
           "shot_accuracy", "softmax"]


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts; row = true class, column = predicted class."""
    return np.bincount(labels * num_classes + preds, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def per_class_table(cm: np.ndarray, classes: list[str]) -> list[dict]:
    """precision, recall, F1, accuracy (one-vs-rest), support per class + macro and weighted means."""
    tp = np.diag(cm).astype(float)
    support = cm.sum(1).astype(float)
    predicted = cm.sum(0).astype(float)
    total = cm.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    tn = total - support - predicted + tp
    accuracy = (tp + tn) / max(total, 1)
    rows = [{"class": c, "precision": precision[i], "recall": recall[i], "f1": f1[i], "accuracy": accuracy[i],
             "support": int(support[i])} for i, c in enumerate(classes)]
    w = support / max(support.sum(), 1)
    for name, weights in (("macro avg", np.full(len(classes), 1 / len(classes))), ("weighted avg", w)):
        rows.append({"class": name, "precision": float(precision @ weights), "recall": float(recall @ weights),
                     "f1": float(f1 @ weights), "accuracy": float(accuracy @ weights), "support": int(support.sum())})
    return rows


def most_confused(cm: np.ndarray, classes: list[str], k: int = 10) -> list[dict]:
    """The `k` largest off-diagonal cells of `cm` as dicts: true, predicted, count."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:k]
    out = []
    for flat in order:
        t, p = divmod(int(flat), cm.shape[0])
        if off[t, p] == 0:
            break
        out.append({"true": classes[t], "predicted": classes[p], "count": int(off[t, p]),
                    "fraction_of_true": float(off[t, p] / max(cm[t].sum(), 1))})
    return out


SHOTS = {"many": lambda n: n > 100, "medium": lambda n: (n >= 20) & (n <= 100), "few": lambda n: n < 20}
"""Shot groups by training images per class (the Liu et al. 2019 split)."""


def balanced_accuracy(cm: np.ndarray) -> float:
    """Mean per-class recall [%] over the classes present in `cm`'s rows (true classes)."""
    support = cm.sum(1)
    present = support > 0
    return float(100 * np.mean(np.diag(cm)[present] / support[present])) if present.any() else float("nan")


def shot_accuracy(cm: np.ndarray, train_counts: list[int] | None) -> dict[str, float | None]:
    """Accuracy [%] on the test images of many-shot (> 100 training images), medium-shot
    (20-100) and few-shot (< 20) classes; None for a group with no test image, or all None
    without the training counts."""
    if train_counts is None or len(train_counts) != len(cm):
        return dict.fromkeys(SHOTS)
    n = np.asarray(train_counts)
    out: dict[str, float | None] = {}
    for name, member in SHOTS.items():
        group = member(n)
        total = cm[group].sum()
        out[name] = float(100 * np.diag(cm)[group].sum() / total) if total else None
    return out
