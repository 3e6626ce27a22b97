"""`cifarkit calibrate` and `train.calibrate`: temperature scaling (Guo et al., ICML 2017), so a
model's scores mean what they say; and the calibration metrics (softmax, ECE) analysis reports.

One scalar T > 0 divides every logit; it is fitted by minimising the negative log-likelihood on a
held-out split (the run's validation split, or one the user names), which leaves every argmax,
so top-1, unchanged. The fitted T goes into a *new* checkpoint (`temperature`, plus a
`calibration` record of how and where it was fitted, ECE / NLL / Brier before and after); the
one inference path (`infer.inference.Inference`) divides by it, so eval, predict, analyze,
report, cam scores, serve and exported ONNX/TorchScript models all give calibrated
probabilities. Fitting on the test split is refused unless asked for: the test split's
calibration numbers would then be measured where T was fitted.

The NLL of logits / T is convex in 1/T, so a golden-section search over log T (unimodal there)
finds the optimum without a learning rate to tune: 80 steps narrow [0.05, 20] to ~1e-15.
It lives in `infer` (not analysis) because a run calibrates itself at its end (`train.calibrate`);
the reliability figure is drawn in `analysis.calibration_plot`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cifarkit.errors import ConfigError
from cifarkit.infer.checkpoint import atomic_save, load_checkpoint
from cifarkit.infer.evaluate import ranked
from cifarkit.infer.inference import TEMPERATURE_RANGE, InferOptions, eval_data
from cifarkit.safepath import check_apart, output_file

T_RANGE = TEMPERATURE_RANGE  # check_temperature accepts what this can fit, and no more


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) `logits`, computed stably (max subtracted first)."""
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = 15, preds: np.ndarray | None = None) -> dict:
    """Expected calibration error over equal-width confidence bins, plus the per-bin table.
    `preds`: the predicted ids when they come from elsewhere (the logits' tie-break)."""
    conf = probs.max(1)
    correct = (probs.argmax(1) if preds is None else preds) == labels
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        m = idx == b
        n = int(m.sum())
        acc = float(correct[m].mean()) if n else 0.0
        c = float(conf[m].mean()) if n else 0.0
        ece += n / len(labels) * abs(acc - c) if n else 0.0
        table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": n, "accuracy": acc,
                      "confidence": c})
    return {"ece": float(ece), "bins": table}



def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 80) -> float:
    """The T in T_RANGE minimising mean cross-entropy of `logits / T` (N, C) against `labels` (N,)."""
    z, y = logits.double(), labels.long()

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(z / math.exp(log_t), y))

    a, b = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(steps):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    return math.exp((a + b) / 2)


def fit_temperature_ece(logits: torch.Tensor, labels: torch.Tensor, points: int = 801) -> float:
    """The T in T_RANGE minimising the 15-bin ECE of softmax(`logits` / T): a log-spaced grid (ECE is
    piecewise and not unimodal in T, so no bracketing search), the smallest T of a tie. The choice
    of Mukhoti et al. (NeurIPS 2020) where NLL-fitted scaling leaves a visible ECE, e.g. after
    label smoothing (Mueller et al., NeurIPS 2019); ECE on a few thousand images is a noisy target."""
    z = logits.double()
    y = labels.numpy()
    preds = ranked(logits, 1)[:, 0].numpy()
    grid = np.exp(np.linspace(math.log(T_RANGE[0]), math.log(T_RANGE[1]), points))
    eces = [calibration(softmax((z / t).numpy()), y, preds=preds)["ece"] for t in grid]
    return float(grid[int(np.argmin(eces))])


OBJECTIVES = ("nll", "ece")


def calibration_scores(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> dict[str, Any]:
    """ECE (15 equal-width bins, as `analyze`), NLL and Brier score of softmax(logits / T), plus the
    reliability bins; predictions use the logits' tie-break (`ranked`), as every command does."""
    z = logits.double() / temperature
    probs = softmax(z.numpy())
    y = labels.numpy()
    preds = ranked(logits, 1)[:, 0].numpy()
    cal = calibration(probs, y, preds=preds)
    onehot = np.eye(probs.shape[1])[y]
    return {"ece": cal["ece"], "nll": float(F.cross_entropy(z, labels.long())),
            "brier": float(((probs - onehot) ** 2).sum(1).mean()), "top1": float((preds == y).mean() * 100),
            "bins": cal["bins"]}


def calibrate(ckpt: str | Path, out: str | Path | None = None, *, data: str | None = None, split: str | None = None,
              allow_test: bool = False, device: str = "auto", tta: str | None = None, precision: str | None = None,
              overwrite: bool = False, objective: str = "nll") -> dict[str, Any]:
    """Fit the temperature of `ckpt` on a held-out split and write it into a new checkpoint (no
    figure: `analysis.calibration_plot.calibrate_with_figure` adds the reliability diagram).

    Args:
        ckpt: the checkpoint to calibrate (never rewritten).
        out: the new checkpoint (default: `<ckpt stem>_calibrated.pt` next to it).
        data: the dataset to take `split` from (default: the run's `data.root`).
        split: the held-out split (default: the run's validation split, when `data.val_fraction`
            made one).
        allow_test: accept the test split (its calibration numbers are then optimistic).
        device: as `cifarkit eval` ("auto", "cpu", "cuda", ...).
        tta: test-time augmentation (default the run's); T is fitted on the logits it gives.
        precision: auto (None), fp32, bf16 or fp16, as `cifarkit eval`.
        overwrite: replace an existing `out`.
        objective: "nll" (Guo et al.: T minimises the negative log-likelihood) or "ece" (T minimises
            the 15-bin ECE on the held-out split, `fit_temperature_ece`).

    Returns:
        {"temperature", "split", "n", "tta", "precision", "before": scores, "after": scores,
        "checkpoint": out, "figure": None}; scores are `calibration_scores` without bins.

    Raises:
        ConfigError: no held-out split, the test split without `allow_test`, `out` is the input, or an
            unknown `objective`.
        CifarkitError: `out` exists without `overwrite`, is not a regular file (a device, FIFO,
            folder, link), cannot be written, or lies inside the data.
        CheckpointError, DataError: as `cifarkit eval`.
    """
    result, _, _ = fit_calibration(ckpt, out, data=data, split=split, allow_test=allow_test, device=device, tta=tta,
                                   precision=precision, overwrite=overwrite, objective=objective)
    return {**result, "figure": None}


def calibrated_path(ckpt: str | Path, out: str | Path | None = None) -> Path:
    """Where `calibrate` writes: `out`, or `<ckpt stem>_calibrated.pt` next to `ckpt`."""
    ckpt = Path(ckpt)
    return Path(out) if out else ckpt.with_name(f"{ckpt.stem}_calibrated.pt")


def fit_calibration(ckpt: str | Path, out: str | Path | None = None, *, data: str | None = None,
                    split: str | None = None, allow_test: bool = False, device: str = "auto", tta: str | None = None,
                    precision: str | None = None, overwrite: bool = False, objective: str = "nll",
                    also_writes: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """`calibrate`'s work: (result without "figure", scores before, scores after), the scores with
    their reliability bins for a figure. `also_writes`: further output files of the caller (the
    figure), checked with `out` before any work."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective {objective!r}: choose nll (Guo et al.) or ece")
    ckpt = Path(ckpt)
    out = calibrated_path(ckpt, out)
    if out.resolve() == ckpt.resolve():
        raise ConfigError(f"--out {out}: that is the input checkpoint; calibrate writes a new file (never rewrites "
                          "the input)")
    for p in (out, *also_writes):  # a figure's name derives from --out: checked the same way, before any work
        output_file(p, overwrite)
    inf = InferOptions(data=data, split=split, tta=tta, precision=precision, device=device,
                       temperature=1.0).load(ckpt)  # the uncalibrated logits
    cfg = inf.config
    check_apart(out, [data or cfg.data.root])  # a checkpoint and a figure must not land among the images
    if split is None and data is not None and cfg.data.val_fraction > 0:
        # the run's validation split is carved out of *its* data.root; another dataset has none
        raise ConfigError(f"--data {data}: the run's validation split (data.val_fraction "
                          f"{cfg.data.val_fraction:g}) is carved out of its own data.root, so with --data name the "
                          "held-out split to fit on with --split")
    if split is None and cfg.data.val_fraction == 0:
        raise ConfigError(f"{ckpt}: its run has no validation split (data.val_fraction is 0); name a held-out split "
                          "with --split (and --data), or train with data.val_fraction=0.1")
    if split is not None and split == cfg.data.test_split and not allow_test:
        raise ConfigError(f"--split {split}: fitting the temperature on the test split makes that split's later "
                          "calibration numbers optimistic; use a validation split, or pass --allow-test knowingly")
    images, labels, name = eval_data(inf, data, split)
    if len(labels) == 0:
        raise ConfigError(f"--split {name}: no images to fit the temperature on")
    logits = inf.logits(images)
    t = fit_temperature(logits, labels) if objective == "nll" else fit_temperature_ece(logits, labels)
    before, after = calibration_scores(logits, labels), calibration_scores(logits, labels, t)
    record = {"temperature": t, "objective": objective, "split": name, "n": int(len(labels)), "tta": inf.tta,
              "precision": inf.precision,
              "before": {k: v for k, v in before.items() if k != "bins"},
              "after": {k: v for k, v in after.items() if k != "bins"}, "source": str(ckpt)}
    ck = load_checkpoint(ckpt)
    ck["temperature"], ck["calibration"] = t, record
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(ck, out)  # temp file beside `out` + rename
    return {**record, "checkpoint": str(out)}, before, after
