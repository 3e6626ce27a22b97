"""Metric functions against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cifarkit.analysis.metrics import calibration, confusion_matrix, most_confused, per_class_table
from cifarkit.infer.evaluate import metrics_from_logits, ranked


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
    logits = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]]).log()
    labels = torch.tensor([2, 2])
    m = metrics_from_logits(logits, labels)  # 3 classes: top-5 is top-3
    assert m["top1"] == 0 and m["top5"] == 100 and m["predicted"] == [1, 0]


def test_ties_go_to_the_lowest_class_id_everywhere():
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 5.0, 5.0]])
    assert ranked(logits, 2).tolist() == [[1, 2], [0, 1], [2, 3]]
    assert metrics_from_logits(logits, torch.tensor([2, 0, 3]))["predicted"] == [1, 0, 2]
    # the predicted ids given to calibration win over the probabilities' own argmax
    probs = np.array([[0.5, 0.5]])
    assert calibration(probs, np.array([1]), preds=np.array([1]))["bins"][7]["accuracy"] == 1.0
    assert calibration(probs, np.array([1]))["bins"][7]["accuracy"] == 0.0
