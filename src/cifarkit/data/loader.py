"""Batched tensor augmentation and loaders: no per-image PIL work per epoch.

The training set stays one uint8 tensor (N, 3, H, W), on the GPU when training there. Every
random number comes from a generator seeded by (seed, epoch), drawn on the CPU and moved to the
device, so an epoch's order and augmentations are a pure function of the seed and the epoch:
resuming at an epoch boundary replays exactly, on any device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Preprocess:
    """What turns uint8 pixels into network input; saved in every checkpoint."""

    mean: list[float]  # 0..255 scale
    std: list[float]
    input_size: int  # size the network sees [px]
    eval_resize: int = 0  # resize (shorter side) before center crop, 0 = off
    eval_crop: int = 0  # center crop, 0 = off

    def as_dict(self) -> dict:
        """The fields as a plain dict, as stored in checkpoints."""
        return dict(mean=list(self.mean), std=list(self.std), input_size=self.input_size,
                    eval_resize=self.eval_resize, eval_crop=self.eval_crop)


@dataclass
class Augment:
    """Training augmentations, all batched on tensors (sizes in pixels; 0 turns one off)."""
    crop_padding: int = 0
    pad_mode: str = "reflect"
    flip: str = "random"  # random | alternate | none
    rrc_size: int = 0
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    cutout: int = 0


@dataclass
class Mix:
    """MixUp / CutMix of the normalised batches (alphas of Beta(a, a); 0 turns one off)."""
    mixup: float = 0.0
    cutmix: float = 0.0
    prob: float = 1.0  # probability that a batch is mixed
    num_classes: int = 10

    @property
    def enabled(self) -> bool:
        """Whether any batch is mixed: the loader then yields (B, C) soft targets."""
        return (self.mixup > 0 or self.cutmix > 0) and self.prob > 0


def mix_batch(x: torch.Tensor, y: torch.Tensor, mix: Mix, rng: np.random.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp or CutMix of a (B, 3, H, W) batch with a permutation of itself -> (x, (B, C) soft targets).

    All draws come from `rng` in a fixed order (mixed?, which, lambda, permutation, box), so a
    batch's mix is a pure function of the generator's seed and the batch's position in the epoch.
    CutMix's lambda is the pasted box's actual area fraction."""
    soft = F.one_hot(y, mix.num_classes).float()
    mixed = rng.random() < mix.prob
    use_cutmix = mix.cutmix > 0 and (mix.mixup <= 0 or rng.random() < 0.5)
    alpha = mix.cutmix if use_cutmix else mix.mixup
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(len(y))).to(y.device)
    h, w = x.shape[-2:]
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    if not mixed:
        return x, soft
    if use_cutmix:
        rh, rw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        y0, y1 = max(cy - rh // 2, 0), min(cy + rh // 2, h)
        x0, x1 = max(cx - rw // 2, 0), min(cx + rw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * soft + (1 - lam) * soft[perm]


def sampling_weights(labels: torch.Tensor, sampler: str) -> torch.Tensor | None:
    """Per-image draw weights of `data.sampler`: 1/n_c (balanced) or 1/sqrt(n_c) (sqrt) for an
    image of class c; None for uniform (a plain permutation)."""
    if sampler == "uniform":
        return None
    y = labels.cpu()
    n = torch.bincount(y).double()
    per_class = 1 / n if sampler == "balanced" else 1 / n.sqrt()
    return per_class[y]


def normalize(x: torch.Tensor, prep: Preprocess, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> `(x - mean) / std` per channel, in `dtype`."""
    mean = torch.tensor(prep.mean, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x.float() - mean) / std).to(dtype)


def eval_transform(x: torch.Tensor, prep: Preprocess) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> normalised float (B, 3, S, S): the one evaluation/predict transform."""
    x = x.float()
    if prep.eval_resize and min(x.shape[-2:]) != prep.eval_resize:
        h, w = x.shape[-2:]
        s = prep.eval_resize / min(h, w)
        x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", align_corners=False,
                          antialias=True)
    elif x.shape[-2] != x.shape[-1] and x.shape[-1] != prep.input_size:
        # a non-square photo on a model without an explicit eval resize: shorter side to the
        # input size, then the center crop below (never squash the aspect ratio)
        h, w = x.shape[-2:]
        s = prep.input_size / min(h, w)
        x = F.interpolate(x, size=(max(prep.input_size, round(h * s)), max(prep.input_size, round(w * s))),
                          mode="bilinear", align_corners=False, antialias=True)
        h, w = x.shape[-2:]
        top, left = (h - prep.input_size) // 2, (w - prep.input_size) // 2
        x = x[..., top:top + prep.input_size, left:left + prep.input_size]
    if prep.eval_crop:
        h, w = x.shape[-2:]
        c = prep.eval_crop
        top, left = (h - c) // 2, (w - c) // 2
        x = x[..., top:top + c, left:left + c]
    if x.shape[-1] != prep.input_size or x.shape[-2] != prep.input_size:
        x = F.interpolate(x, size=(prep.input_size, prep.input_size), mode="bilinear",
                          align_corners=False, antialias=True)
    return normalize(x, prep)


def random_crop(x: torch.Tensor, pad: int, mode: str, g: torch.Generator) -> torch.Tensor:
    """Per-image random translation by up to `pad` px, via one padded gather. x: (B, C, H, W)."""
    b, c, h, w = x.shape
    xp = F.pad(x.float() if mode == "reflect" else x, (pad,) * 4,
               mode="reflect" if mode == "reflect" else "constant").to(x.dtype)
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=g).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=g).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[bi, ci, rows, cols]


def random_resized_crop(x: torch.Tensor, size: int, scale: tuple[float, float], g: torch.Generator,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision-style RandomResizedCrop for a whole batch with one affine grid_sample.

    Area fraction ~ U(scale), log aspect ~ U(log ratio); boxes that do not fit are clamped
    (torchvision retries 10 times then falls back to a center crop; clamping is the batched
    equivalent and differs only for extreme draws).
    """
    b = x.shape[0]
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=g)
    logr = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    r = torch.exp(logr)
    sw = torch.sqrt(area * r).clamp(max=1.0)  # crop width as a fraction of the image
    sh = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - sw)  # center in [-1+sw, 1-sw]
    cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - sh)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw, cx, sh, cy
    grid = F.affine_grid(theta.to(x.device), [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def cutout(x: torch.Tensor, side: int, g: torch.Generator) -> torch.Tensor:
    """Zero a `side` x `side` square at a random centre of each image of (B, C, H, W) `x`."""
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b,), generator=g).to(x.device)
    cx = torch.randint(0, w, (b,), generator=g).to(x.device)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = ((ys - cy[:, None, None]).abs() <= side // 2) & ((xs - cx[:, None, None]).abs() <= side // 2)
    return x * (~inside)[:, None].to(x.dtype)


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """The random generator of (`seed`, `epoch`, `stream`): the same numbers after a resume."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch * 7919 + stream)


def train_batch(x: torch.Tensor, idx: torch.Tensor, epoch: int, aug: Augment, prep: Preprocess,
                g: torch.Generator, base_flip: torch.Tensor | None) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> augmented, normalised float (B, 3, S, S)."""
    if aug.crop_padding:
        x = random_crop(x, aug.crop_padding, aug.pad_mode, g)
    if aug.flip == "random":
        flip = torch.rand(len(x), generator=g) < 0.5
    elif aug.flip == "alternate":
        # epoch 0 random; afterwards each image flips relative to its previous epoch (airbench)
        flip = base_flip[idx.cpu()] ^ bool(epoch % 2)
    else:
        flip = None
    if flip is not None:
        flip = flip.to(x.device)[:, None, None, None]
        x = torch.where(flip, x.flip(-1), x)
    if aug.rrc_size:
        x = random_resized_crop(x, aug.rrc_size, aug.rrc_scale, g)
    elif x.shape[-1] != prep.input_size:
        x = F.interpolate(x.float(), size=(prep.input_size,) * 2, mode="bilinear", antialias=True)
    x = normalize(x, prep)
    if aug.cutout:
        x = cutout(x, aug.cutout, g)
    return x


class TensorLoader:
    """Training batches from an in-memory uint8 tensor, or from a streaming source of batches."""

    def __init__(self, images: torch.Tensor | None, labels: torch.Tensor, batch_size: int, aug: Augment,
                 prep: Preprocess, seed: int, drop_last: bool = True, fetch=None, rank: int = 0, world: int = 1,
                 sampler: str = "uniform", mix: Mix | None = None):
        self.images, self.labels = images, labels  # (N, 3, H, W) uint8, (N,) int64
        self.batch_size, self.aug, self.prep, self.seed = batch_size, aug, prep, seed
        self.drop_last = drop_last and len(labels) >= batch_size
        self.fetch = fetch  # callable(list of index batches) -> iterator of uint8 batches (streaming)
        self.epoch = 0
        # torchrun: every rank draws the same global permutation and keeps its own slice of each
        # global batch, so each image is seen once per epoch across ranks
        self.rank, self.world = rank, world
        self.base_flip = torch.rand(len(labels), generator=epoch_generator(seed, 0, 1)) < 0.5
        self.weights = sampling_weights(labels, sampler)  # None: a permutation per epoch
        self.mix = mix if mix is not None and mix.enabled else None

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose permutation and augmentations the next iteration draws."""
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        """This epoch's image order, the same on every rank: a permutation, or with `data.sampler`
        balanced/sqrt as many draws with replacement; a pure function of (seed, epoch)."""
        g = epoch_generator(self.seed, self.epoch)
        if self.weights is None:
            return torch.randperm(len(self.labels), generator=g)
        return torch.multinomial(self.weights, len(self.labels), replacement=True, generator=g)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(augmented normalised images, labels) of each batch; labels are (B, C) soft targets when mixing."""
        perm = self.order()
        batches = [perm[k:k + self.batch_size] for k in range(0, len(perm), self.batch_size)][: len(self)]
        batches = [b[self.rank::self.world] for b in batches]
        g = epoch_generator(self.seed, self.epoch, stream=2 + self.rank)  # this rank's augmentations
        if self.fetch is not None:
            source = self.fetch([b.tolist() for b in batches])
        else:
            source = (self.images[b.to(self.images.device)] for b in batches)
        rng = np.random.default_rng((self.seed, self.epoch, self.rank, 5))  # mixing: its own stream
        for idx, xb in zip(batches, source):
            yb = self.labels[idx.to(self.labels.device)]
            xb = train_batch(xb, idx, self.epoch, self.aug, self.prep, g, self.base_flip)
            yield mix_batch(xb, yb, self.mix, rng) if self.mix is not None else (xb, yb)


def to_chw_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 numpy -> (N, 3, H, W) uint8 tensor (contiguous copy)."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


class _FileBatches(torch.utils.data.Dataset):
    """Streaming: each item is a whole batch of decoded images (workers decode in parallel)."""

    def __init__(self, paths: list[str], size: int, batches: list[list[int]]):
        self.paths, self.size, self.batches = paths, size, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> torch.Tensor:
        from cifarkit.data.decode import load_rgb

        arr = np.stack([load_rgb(self.paths[j], (self.size, self.size)) for j in self.batches[i]])
        return to_chw_tensor(arr)


def streaming_fetch(paths: list[str], size: int, workers: int, device: torch.device):
    """A `TensorLoader` fetch function that decodes batches of image files in DataLoader workers."""
    def fetch(batches: list[list[int]]):
        dl = torch.utils.data.DataLoader(_FileBatches(paths, size, batches), batch_size=None,
                                         num_workers=workers, shuffle=False)
        for xb in dl:
            yield xb.to(device, non_blocking=True)

    return fetch
