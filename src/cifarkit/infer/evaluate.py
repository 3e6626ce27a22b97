"""Evaluation: the batched logits loop, test-time augmentation, and loss / top-1 / top-5 [%].

`predict_logits` is the one loop from uint8 pixels to logits: training's per-epoch `evaluate`
and `infer.inference.Inference` (eval, predict, analyze, report, cam, export parity) all run
it, so the `val` records of a run and `cifarkit eval` of its checkpoint compute the same thing.
`ranked` is the one place that orders classes: ties go to the lowest class id, everywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cifarkit.data.loader import Preprocess, eval_transform
from cifarkit.options import TTA_LEVELS

TTA_MODES = TTA_LEVELS  # infer's name for options.TTA_LEVELS
# Pad every forward pass to at least this many images. Why: a batch of one takes another kernel
# path; measured here (AMD EPYC, fp32) airnet's logits for an image alone differed by 4e-8 and
# ResNet-18's by 1.7e-6 from the same image in a batch, while batches of 7, 64, 250 and 500 gave
# bitwise the same logits, whatever the other images. Padding keeps a single predicted image
# exactly equal to the same image evaluated in a dataset.
MIN_BATCH = 8
TRANSFORM_PIXELS = 1 << 24  # transform_batch: input pixels per evaluation transform (16.7 Mpx, 200 MB as float)


def autocast_ctx(device: torch.device, dtype: torch.dtype | None):
    """`torch.autocast` on `device` in `dtype`, or a context that does nothing when `dtype` is None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def model_forward(model: torch.nn.Module, device: torch.device, amp: torch.dtype | None = None,
                  channels_last: bool = False, bias: torch.Tensor | None = None
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    """normalised float (B, 3, S, S) -> float32 logits (B, C), in eval mode, under `amp` autocast;
    `bias` (C,) is added to the logits (post-hoc logit adjustment, `infer.prior.posthoc_bias`)."""
    add = bias.float().to(device) if bias is not None else None
    @torch.no_grad()
    def forward(x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        if n < MIN_BATCH:
            x = torch.cat([x, x.new_zeros((MIN_BATCH - n, *x.shape[1:]))])
        x = x.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        was = model.training
        model.eval()
        try:
            with autocast_ctx(device, amp):
                out = model(x).float()[:n]
                return out + add if add is not None else out
        finally:
            model.train(was)

    return forward


def tta_forward(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str) -> torch.Tensor:
    """Logits averaged over views. flip: (x, mirror). flip_translate: airbench94's TTA, the flip
    pair weighted 0.5 plus the 1 px reflect-pad translations (0,0) and (2,2) and their mirrors
    weighted 0.5 (+0.4-0.5% top-1 in the airbench94 paper)."""
    def mirror(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * forward(v).float() + 0.5 * forward(v.flip(-1)).float()

    if mode == "none":
        return forward(x).float()
    logits = mirror(x)
    if mode == "flip":
        return logits
    h, w = x.shape[-2:]
    xp = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = (mirror(xp[..., 0:h, 0:w]) + mirror(xp[..., 2:h + 2, 2:w + 2])) / 2
    return 0.5 * logits + 0.5 * shifted


def transform_batch(images: torch.Tensor | Sequence[torch.Tensor], prep: Preprocess,
                    device: torch.device | None = None) -> torch.Tensor:
    """uint8 (B, 3, H, W), or a list of (3, H, W) of any sizes -> normalised float (B, 3, S, S).

    Large images go through the transform TRANSFORM_PIXELS at a time: its first step is a float
    copy of its input, and a batch of 67 photos of 1,000 x 1,000 would be 800 MB of it (what took
    `predict` of a folder of huge PNGs past 2 GiB)."""
    if images[0].shape[-1] * images[0].shape[-2] * len(images) > TRANSFORM_PIXELS and len(images) > 1:
        step = max(1, TRANSFORM_PIXELS // (images[0].shape[-1] * images[0].shape[-2]))
        if isinstance(images, torch.Tensor) or all(t.shape == images[0].shape for t in images):
            return torch.cat([transform_batch(images[k:k + step], prep, device) for k in range(0, len(images), step)])
    if isinstance(images, torch.Tensor):
        return eval_transform(images.to(device) if device is not None else images, prep)
    if all(t.shape == images[0].shape for t in images):
        return transform_batch(torch.stack(list(images)), prep, device)
    return torch.cat([transform_batch(t[None], prep, device) for t in images])


def predict_logits(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor | Sequence[torch.Tensor],
                   prep: Preprocess, batch_size: int, tta: str = "none",
                   device: torch.device | None = None, progress: bool | None = None) -> torch.Tensor:
    """uint8 images (N, 3, H, W) or a list of (3, H, W) -> float32 logits (N, C) on the CPU.

    `forward` takes a normalised float batch (see `model_forward`); the evaluation transform runs
    on `device` (the GPU when evaluating there), a batch at a time. `progress`: a bar over the
    images (None: when there are more than two batches and stderr is a terminal; True: always; a
    6-view TTA evaluation of 10,000 images takes minutes on a CPU)."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta {tta!r} not in {TTA_MODES}")
    # tqdm's disable=None: shown on a terminal only; True forces it, False hides it
    disable = (None if len(images) > 2 * batch_size else True) if progress is None else not progress
    bar = tqdm(total=len(images), desc=f"evaluating (tta {tta})", unit="img", leave=False, disable=disable)
    out = []
    for k in range(0, len(images), batch_size):
        x = transform_batch(images[k:k + batch_size], prep, device)
        out.append(tta_forward(forward, x, tta).float().cpu())
        bar.update(len(x))
    bar.close()
    return torch.cat(out) if out else torch.zeros(0)


def ranked(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Class ids (N, k) by falling logit; equal logits keep the lower class id first (stable sort),
    so every command breaks a tie the same way."""
    return torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :k]


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """loss, top1, top5 [%], n, and `predicted` (N,) class ids as a list."""
    labels = labels.cpu()
    if len(labels) == 0:
        return {"loss": float("nan"), "top1": float("nan"), "top5": float("nan"), "n": 0, "predicted": []}
    topk = ranked(logits, min(5, logits.shape[1]))  # (N, k)
    hit = topk == labels[:, None]
    return {
        "loss": float(F.cross_entropy(logits, labels)),
        "top1": float(hit[:, 0].float().mean() * 100),
        "top5": float(hit.any(1).float().mean() * 100),
        "n": len(labels),
        "predicted": topk[:, 0].tolist(),
    }


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, prep: Preprocess,
             batch_size: int, device: torch.device, amp: torch.dtype | None = None, tta: str = "none",
             channels_last: bool = False, bias: torch.Tensor | None = None, progress: bool | None = None
             ) -> dict[str, float]:
    """What training logs every `eval.interval` epochs: loss, top1, top5 [%] and n (`bias`: see
    `model_forward`; `progress`: see `predict_logits`)."""
    logits = predict_logits(model_forward(model, device, amp, channels_last, bias), images, prep, batch_size, tta,
                            device, progress)
    m = metrics_from_logits(logits, labels)
    m.pop("predicted")
    return m
