"""The training loss for imbalanced data: class weights, logit adjustment and soft (mixed) targets.

Plain cross-entropy stays `F.cross_entropy` itself (step.py), so the default path is bitwise
unchanged; `weighted_cross_entropy` is taken only when one of these options is on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_weights(kind: str | list[float], counts: list[int], beta: float = 0.9999) -> torch.Tensor | None:
    """Per-class loss weights, normalised to mean 1 over the classes, or None for `none`.

    balanced: inverse frequency 1/n_c; effective: (1 - beta) / (1 - beta^n_c), the inverse effective
    number of samples (Cui et al. 2019); a list: those weights. A class with no images gets 0."""
    if isinstance(kind, str) and kind == "none":
        return None
    if isinstance(kind, list):
        w = torch.tensor(kind, dtype=torch.float64)
    else:
        n = torch.tensor(counts, dtype=torch.float64)
        w = 1 / n if kind == "balanced" else (1 - beta) / (1 - beta ** n)
        w = torch.where(n > 0, w, torch.zeros_like(w))
    return (w * len(w) / w.sum()).float()


def weighted_cross_entropy(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None,
                           adjust: torch.Tensor | None = None, label_smoothing: float = 0.0
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image losses (B,) and their weights (B,): cross-entropy of `logits` (+ `adjust`, e.g.
    tau * log prior) against `y`, class ids (B,) or soft targets (B, C).

    Label smoothing mixes the targets with the uniform distribution, as `F.cross_entropy` does;
    with `adjust` it mixes them with softmax(adjust) (the prior, for tau = 1) instead. Why: the
    adjusted loss fits softmax(logits + tau * log prior) to the targets, so uniform smoothing mass
    on a class with 50 of 12,406 images forces that class's raw logit up by -log prior (~5.5)
    on every image, and at test time the rarest class wins everywhere (measured on CIFAR-10-LT,
    R = 100, smoothing 0.2: 50.6% top-1, truck recall 99.5%, airplane 0%). Smoothing toward the
    prior puts the smoothing mass uniformly over the raw, balanced logits.

    An image's weight is its target's class weight (a mixed target: the same mix of its two
    classes' weights); the batch loss is sum(w * loss) / sum(w) (mean) or sum(w * loss) (sum), which equals
    `F.cross_entropy(weight=...)` for class ids without smoothing."""
    z = logits.float() if adjust is None else logits.float() + adjust
    c = z.shape[1]
    target = F.one_hot(y, c).float() if y.dim() == 1 else y.float()
    w = target @ weights if weights is not None else torch.ones(len(z), device=z.device)
    if label_smoothing:
        smooth = 1 / c if adjust is None else F.softmax(adjust.float(), 0)  # (C,)
        target = target * (1 - label_smoothing) + label_smoothing * smooth
    loss = -(target * F.log_softmax(z, 1)).sum(1)
    return loss, w


def batch_weight(y: torch.Tensor, weights: torch.Tensor | None) -> float | torch.Tensor:
    """The sum of the image weights of a whole batch (its count without class weights): the
    denominator of a weighted mean over micro-batches."""
    if weights is None:
        return len(y)
    target = weights[y] if y.dim() == 1 else y.float() @ weights
    return target.sum()


def adjustment(tau: float, prior: torch.Tensor) -> torch.Tensor | None:
    """tau * log prior (Menon et al. 2021), or None when tau is 0."""
    return tau * prior if tau else None
