"""Evaluation: loss, top-1 and top-5 (in percent) with optional test-time augmentation.

`evaluate` is what training calls every `eval.interval` epochs; `evaluate_checkpoint` rebuilds
the same model, data and transform from a checkpoint alone, so `cifarkit eval` reproduces the
log's last `val` record for the same checkpoint and data.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cifarkit.data.loader import Preprocess, eval_transform


def autocast_ctx(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def tta_forward(model: torch.nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    """Logits averaged over views. flip: (x, mirror). flip_translate: airbench94's TTA, the flip
    pair weighted 0.5 plus the 1 px reflect-pad translations (0,0) and (2,2) and their mirrors
    weighted 0.5 (+0.4-0.5% top-1 in the airbench94 paper)."""
    def mirror(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * model(v).float() + 0.5 * model(v.flip(-1)).float()

    if mode == "none":
        return model(x).float()
    logits = mirror(x)
    if mode == "flip":
        return logits
    h, w = x.shape[-2:]
    xp = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = (mirror(xp[..., 0:h, 0:w]) + mirror(xp[..., 2:h + 2, 2:w + 2])) / 2
    return 0.5 * logits + 0.5 * shifted


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, prep: Preprocess, batch_size: int,
                   device: torch.device, amp: torch.dtype | None = None, tta: str = "none",
                   channels_last: bool = False) -> torch.Tensor:
    """uint8 images (N, 3, H, W) -> float32 logits (N, C) on the CPU, in the model's eval mode."""
    was = model.training
    model.eval()
    out = []
    for k in range(0, len(images), batch_size):
        x = eval_transform(images[k:k + batch_size].to(device), prep)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_ctx(device, amp):
            out.append(tta_forward(model, x, tta).float().cpu())
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0)


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    labels = labels.cpu()
    n = len(labels)
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices  # (N, k)
    hit = topk == labels[:, None]
    return {
        "loss": float(F.cross_entropy(logits, labels)),
        "top1": float(hit[:, 0].float().mean() * 100),
        "top5": float(hit.any(1).float().mean() * 100),
        "n": n,
    }


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, prep: Preprocess,
             batch_size: int, device: torch.device, amp: torch.dtype | None = None, tta: str = "none",
             channels_last: bool = False) -> dict[str, float]:
    logits = predict_logits(model, images, prep, batch_size, device, amp, tta, channels_last)
    return metrics_from_logits(logits, labels)


def evaluate_checkpoint(ckpt: str | Path, data: str | None = None, split: str | None = None,
                        tta: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Numbers for a checkpoint on its own evaluation data (or `data`/`split`)."""
    from cifarkit.engine.restore import load_for_inference
    from cifarkit.engine.setup import amp_dtype, load_eval_split, resolve_device

    dev = resolve_device(device)
    model, ck, cfg, prep = load_for_inference(ckpt, dev)
    images, labels, name = load_eval_split(cfg, ck["classes"], data, split)
    amp = amp_dtype(cfg.train.amp, dev)
    tta = tta or cfg.eval.tta
    m = evaluate(model, images, labels, prep, cfg.eval.batch_size, dev, amp, tta, cfg.train.channels_last)
    return {**m, "split": name, "tta": tta, "checkpoint": str(ckpt), "epoch": ck.get("epoch")}
