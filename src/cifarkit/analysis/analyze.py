"""`cifarkit analyze`: everything about a checkpoint on a dataset, from one pass of predictions.

Writes into OUT: predictions.npz (logits, labels, dataset index), confusion_matrix.png/.csv,
per_class.csv, misclassified.png (highest-loss errors), reliability.png and metrics.json
(top1, top5, loss, ece, per-class, most-confused pairs).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarkit.analysis.calibration_plot import draw_reliability
from cifarkit.analysis.metrics import (
    balanced_accuracy,
    calibration,
    confusion_matrix,
    most_confused,
    per_class_table,
    shot_accuracy,
    softmax,
)
from cifarkit.infer.evaluate import metrics_from_logits, ranked
from cifarkit.infer.inference import InferOptions, eval_data
from cifarkit.plotting import pyplot, save
from cifarkit.safecsv import csv_dict, csv_row
from cifarkit.safepath import claim_outputs, output_dir, write_text_atomic

FILES = ("predictions.npz", "metrics.json", "confusion_matrix.csv", "confusion_matrix.png", "per_class.csv",
         "misclassified.png", "reliability.png")  # what analyze writes in its --out


def predictions_for(ckpt: str | Path, *, data: str | None = None, split: str | None = None, device: str = "auto",
                    tta: str | None = None, logit_adjust: float | None = None, precision: str | None = None
                    ) -> dict[str, Any]:
    """One pass through the one inference path (`infer.inference`, as `cifarkit eval` and
    `predict`): logits (N, C), labels, predicted ids, the uint8 images (for galleries), class names."""
    inf = InferOptions(data=data, split=split, tta=tta, precision=precision, device=device,
                       logit_adjust=logit_adjust).load(ckpt)
    images, labels, name = eval_data(inf, data, split)
    logits = inf.logits(images)
    return {"logits": logits.numpy(), "labels": labels.numpy(), "predicted": ranked(logits, 1)[:, 0].numpy(),
            "images": images, "classes": inf.classes, "split": name, "model": inf.config.model.name,
            "class_counts": inf.meta.get("class_counts"), "epoch": inf.meta.get("epoch"),
            **inf.settings()}


def analyze(ckpt: str | Path, out: str | Path, *, data: str | None = None, split: str | None = None,
            device: str = "auto", n_errors: int = 24, tta: str | None = None, overwrite: bool = True,
            logit_adjust: float | None = None, precision: str | None = None) -> dict[str, Any]:
    """Confusion matrix, per-class metrics, calibration and the worst errors of a checkpoint.

    One pass of predictions through the one inference path, so top1/top5/loss are exactly what
    `cifarkit eval` reports (same logits, same tie-break). Writes into `out`: predictions.npz,
    confusion_matrix.png/.csv, per_class.csv, misclassified.png, reliability.png and metrics.json.

    Args:
        ckpt: a checkpoint (.pt) written by `fit`.
        out: the output folder.
        data: a dataset path to evaluate on (default: the run's own `data.root`).
        split: the split of `data` (default: the run's evaluation split).
        device: "auto", "cpu", "cuda", ...
        n_errors: how many highest-loss errors `misclassified.png` shows.
        tta: none | flip | flip_translate (default: the checkpoint's `eval.tta`).
        overwrite: False refuses a non-empty `out`; True replaces only files an earlier analyze
            wrote there (`safepath.OUTPUTS_RECORD`), never anyone else's of the same name.
        logit_adjust: post-hoc logit adjustment tau (default: the checkpoint's `eval.logit_adjust`).
        precision: auto (default: what this machine is fast at) | fp32 | bf16 | fp16.

    Returns:
        metrics.json's dict: checkpoint, split, n, tta, precision, logit_adjust, top1 and top5 [%], loss,
        balanced_accuracy [%] (mean per-class recall), shot_accuracy (many > 100, medium 20-100,
        few < 20 training images per class [%]; None without the checkpoint's class counts),
        train_class_counts, ece
        [0..1], per_class rows, most_confused pairs, calibration_bins and misclassified_index.

    Raises:
        CheckpointError: the checkpoint cannot be used.
        DataError: the data is missing or malformed.
        CifarkitError: `out` is not empty without `overwrite`, holds a same-named file analyze did
            not write, overlaps `data` or cannot be written.
    """
    out = output_dir(out, overwrite, inputs=[data], writes=FILES)  # replaces only an earlier analyze's files
    claim_outputs(out, FILES, "analyze")
    p = predictions_for(ckpt, data=data, split=split, device=device, tta=tta, logit_adjust=logit_adjust,
                        precision=precision)
    logits, labels, classes, preds = p["logits"], p["labels"], p["classes"], p["predicted"]
    m = metrics_from_logits(torch.from_numpy(logits), torch.from_numpy(labels))
    np.savez_compressed(out / "predictions.npz", logits=logits, labels=labels, index=np.arange(len(labels)),
                        classes=np.array(classes))
    probs = softmax(logits.astype(np.float64))
    c = len(classes)
    cm = confusion_matrix(labels, preds, c)
    table = per_class_table(cm, classes)
    cal = calibration(probs, labels, preds=preds)
    metrics = {"checkpoint": str(ckpt), "epoch": p["epoch"], "split": p["split"], "n": int(len(labels)),
               "tta": p["tta"],
               "precision": p["precision"], "logit_adjust": p["logit_adjust"],
               "top1": m["top1"], "top5": m["top5"], "loss": m["loss"],
               "balanced_accuracy": balanced_accuracy(cm),
               "shot_accuracy": shot_accuracy(cm, p.get("class_counts")), "train_class_counts": p.get("class_counts"),
               "ece": cal["ece"], "per_class": table, "most_confused": most_confused(cm, classes),
               "calibration_bins": cal["bins"]}
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=1))
    with open(out / "confusion_matrix.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(csv_row(["true \\ predicted", *classes]))
        for i, row in enumerate(cm.tolist()):
            w.writerow(csv_row([classes[i], *row]))
    with open(out / "per_class.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["class", "precision", "recall", "f1", "accuracy", "support"])
        w.writeheader()
        for r in table:
            w.writerow(csv_dict({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()}))
    plot_confusion(cm, classes, out / "confusion_matrix.png")
    plot_reliability(cal, out / "reliability.png")
    errors = plot_misclassified(p["images"], labels, probs, preds, classes, out / "misclassified.png", n_errors)
    metrics["misclassified_index"] = errors
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=1))
    return metrics


def plot_confusion(cm: np.ndarray, classes: list[str], out: Path) -> None:
    """Save the confusion matrix `cm` (rows: true class) as counts and row-normalised, side by side, to `out`."""
    plt = pyplot()
    c = len(classes)
    size = max(5.0, 0.45 * c + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    for ax, mat, title, fmt in ((axes[0], cm, "counts", "d"), (axes[1], norm, "row-normalised (recall)", ".2f")):
        im = ax.imshow(mat, cmap="Blues")
        ax.set_title(title)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ticks = range(c)
        ax.set_xticks(ticks, classes if c <= 30 else [""] * c, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(ticks, classes if c <= 30 else [""] * c, fontsize=8)
        if c <= 20:
            thresh = mat.max() / 2 if mat.max() else 1
            for i in range(c):
                for j in range(c):
                    ax.text(j, i, format(mat[i, j], fmt), ha="center", va="center", fontsize=7,
                            color="white" if mat[i, j] > thresh else "black")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    save(fig, out)


def plot_reliability(cal: dict, out: Path) -> None:
    """Save the reliability diagram (accuracy per confidence bin, with the ECE) of `calibration` to `out`."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    draw_reliability(ax, cal["bins"], f"reliability (ECE {cal['ece'] * 100:.2f}%)")
    save(fig, out)


def plot_misclassified(images, labels: np.ndarray, probs: np.ndarray, preds: np.ndarray, classes: list[str],
                       out: Path, n: int = 24) -> list[int]:
    """Grid of the highest-loss errors: predicted and true label, each with the probability the model gave it
    (as fastai's top-losses plot). Returns their dataset indices."""
    plt = pyplot()
    wrong = np.flatnonzero(preds != labels)
    loss = -np.log(np.clip(probs[wrong, labels[wrong]], 1e-12, None))
    chosen = wrong[np.argsort(-loss)][:n].tolist()
    cols = 8
    rows = max(1, int(np.ceil(len(chosen) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.95), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, chosen):
        img = images[i].permute(1, 2, 0).numpy() if hasattr(images[i], "permute") else images[i]
        ax.imshow(img, interpolation="nearest")
        ax.set_title(f"P: {classes[preds[i]]} {probs[i, preds[i]]:.2f}\nT: {classes[labels[i]]} "
                     f"{probs[i, labels[i]]:.2f}", fontsize=7)
    if not chosen:
        axes[0][0].text(0.5, 0.5, "no errors", ha="center")
    fig.suptitle("highest-loss errors (P = predicted, T = true; each with its probability)", fontsize=9)
    fig.tight_layout()
    save(fig, out)
    return chosen
