"""Metric functions against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from cifarkit.analysis.metrics import calibration, confusion_matrix, most_confused, per_class_table, topk_accuracy


def test_confusion_and_per_class():
    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 1, 1, 2, 2])
    cm = confusion_matrix(y, p, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    rows = per_class_table(cm, ["a", "b", "c"])
    a = rows[0]
    assert a["precision"] == 1.0 and a["recall"] == pytest.approx(2 / 3) and a["support"] == 3
    assert a["f1"] == pytest.approx(0.8)
    assert rows[-2]["class"] == "macro avg" and rows[-1]["class"] == "weighted avg"
    assert rows[-1]["recall"] == pytest.approx(4 / 6)  # weighted recall == accuracy
    pairs = most_confused(cm, ["a", "b", "c"])
    assert {(q["true"], q["predicted"]) for q in pairs} == {("a", "b"), ("b", "c")}


def test_ece_of_perfect_and_overconfident():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert calibration(probs, np.array([0, 1]))["ece"] == pytest.approx(0.0)
    over = np.array([[0.9, 0.1]] * 10)
    labels = np.array([0] * 5 + [1] * 5)  # 90% confident, 50% right
    assert calibration(over, labels)["ece"] == pytest.approx(0.4)


def test_topk_capped_at_classes():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    assert topk_accuracy(probs, np.array([2, 2]), 1) == 0
    assert topk_accuracy(probs, np.array([2, 2]), 2) == 50
    assert topk_accuracy(probs, np.array([2, 2]), 5) == 100
