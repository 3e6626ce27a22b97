"""Everything a run needs before its first step: device and precision, data, optimiser groups
and the learning-rate schedule, work-directory and resume checks. `train.py` holds the loop."""

from __future__ import annotations

import ctypes
import math
import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarkit import __version__
from cifarkit.config import Config
from cifarkit.data.loader import Augment, Preprocess, TensorLoader, streaming_fetch, to_chw_tensor
from cifarkit.errors import CifarkitError, ConfigError


def resolve_device(spec: str = "auto") -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r}: CUDA is not available on this machine; use --device cpu")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"device {spec!r}: not a device; use auto, cpu, cuda or cuda:N") from None


# glibc mallopt parameter numbers (malloc.h) and their documented defaults
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM, _DEFAULT_MMAP_MAX = 128 * 1024, 65536


def hold_freed_memory() -> Callable[[], None]:
    """Keep memory freed by the CPU allocator inside the process until the returned `release()`.

    Why: glibc serves every allocation above 32 MiB (a batch's activations) with a fresh mmap and
    unmaps it on free, so each training step page-faults its whole working set in again and the
    kernel zeroes it. Measured on the 2-core CI machine, airnet batch 2000 in bf16: 745,000 minor
    faults and 2.49 s per step by default, 0 faults and 1.83 s with mmap off and no trimming; the
    issue's plain airbench loop (batch 1024) gains ~5% the same way. No-op off glibc, or when the
    user already tunes malloc through GLIBC_TUNABLES or MALLOC_* variables."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or \
            "malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(k.startswith("MALLOC_") for k in os.environ):
        return lambda: None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return lambda: None
    libc.mallopt(_M_MMAP_MAX, 0)  # large blocks come from the heap and go back to it
    libc.mallopt(_M_TRIM_THRESHOLD, -1)  # and the heap is never trimmed (-1: "disables trimming completely")

    def release() -> None:
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM)
        libc.malloc_trim(0)  # give the held memory back, e.g. to a notebook that trains again later

    return release


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "none":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or device.type == "cpu":
        return torch.bfloat16  # CPU: AMX/AVX-512 bf16 convolutions are several times faster than fp32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _subset_per_class(ds, n: int):
    return ds.first_per_class(n) if n else ds


def load_train_split(cfg: Config):
    from cifarkit.data.sources import load_dataset

    if not cfg.data.root:
        raise ConfigError("data.root is empty; set it in the config or with --set data.root=PATH")
    ds = load_dataset(cfg.data.root, cfg.data.train_split, cfg.data.image_size or None)
    ds = _subset_per_class(ds, cfg.data.subset_per_class)
    if cfg.data.val_fraction > 0:
        perm = np.random.default_rng(cfg.data.val_seed).permutation(len(ds))
        n_val = max(1, int(round(len(ds) * cfg.data.val_fraction)))
        return ds.subset(np.sort(perm[n_val:])), ds.subset(np.sort(perm[:n_val])), "val"
    return ds, None, cfg.data.test_split


def load_eval_split(cfg: Config, classes: list[str], data: str | None = None,
                    split: str | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The evaluation images of a run (val carve-out or test split), as CPU uint8 tensors."""
    from cifarkit.data.sources import load_dataset

    root = data or cfg.data.root
    if split is None and cfg.data.val_fraction > 0 and data is None:
        _, val, name = load_train_split(cfg)
        ds = val
    else:
        name = split or cfg.data.test_split
        ds = load_dataset(root, name, cfg.data.image_size or None, classes=None)
        ds = _subset_per_class(ds, cfg.data.subset_per_class if data is None else 0)
    if list(ds.classes) != list(classes):
        raise ConfigError(f"{root}: its classes {ds.classes} differ from the checkpoint's {classes}")
    return to_chw_tensor(ds.images), torch.from_numpy(ds.labels), name


@dataclass
class RunData:
    loader: TensorLoader
    eval_images: torch.Tensor  # (M, 3, H, W) uint8, CPU
    eval_labels: torch.Tensor
    eval_name: str
    classes: list[str]
    prep: Preprocess
    train_images: torch.Tensor | None  # for data-dependent init (airnet whitening)
    num_train: int


def build_data(cfg: Config, device: torch.device, rank: int = 0, world: int = 1) -> RunData:
    train, val, eval_name = load_train_split(cfg)
    if cfg.model.num_classes != train.num_classes:
        raise ConfigError(f"model.num_classes is {cfg.model.num_classes} but {cfg.data.root} has "
                          f"{train.num_classes} classes; set model.num_classes={train.num_classes}")
    if val is None:
        images, labels, _ = load_eval_split(cfg, train.classes)
    else:
        images, labels = to_chw_tensor(val.images), torch.from_numpy(val.labels)
    d = cfg.data
    size = d.rrc_size or d.eval_crop or train.images.shape[1]
    prep = Preprocess(list(d.mean), list(d.std), size, d.eval_resize, d.eval_crop)
    aug = Augment(d.crop_padding, d.pad_mode, d.flip, d.rrc_size, tuple(d.rrc_scale), d.cutout)
    y = torch.from_numpy(train.labels).to(device)
    fetch, x = None, None
    from cifarkit.data.sources import describe_kind

    if not d.in_memory and describe_kind(d.root) != "cifar":
        root = Path(d.root).parent if Path(d.root).is_file() else Path(d.root)
        paths = [str(root / s) for s in train.sources]
        fetch = streaming_fetch(paths, train.images.shape[1], d.workers, device)
    else:
        x = to_chw_tensor(train.images).to(device)  # (N, 3, H, W) uint8, resident for the whole run
    loader = TensorLoader(x, y, cfg.train.batch_size, aug, prep, cfg.train.seed, drop_last=True, fetch=fetch,
                          rank=rank, world=world)
    return RunData(loader, images, labels, eval_name, train.classes, prep,
                   x if x is not None else to_chw_tensor(train.images[:5000]), len(train))


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Parameter groups, each tagged with a `kind`:

    - `weights` (ndim > 1): base lr (the 2-D head gets `optim.head_lr` when set);
    - `filters` (4-D conv weights) instead go to Muon when `optim.name: muon`;
    - `norm_bias` (ndim <= 1): lr x `optim.norm_bias_lr_mult`, weight decay divided by it, so the
      decay applied per step (lr x wd) stays the same: airbench94 uses x64 for BN biases;
    - `whiten` (airnet's whitening bias) on its own when `optim.whiten_bias_decay` gives it its
      own schedule.
    With `optim.wd_per_lr`, each group's PyTorch weight decay is weight_decay / its lr (airbench's
    convention: the decay per step does not depend on the lr).
    """
    o = cfg.optim
    whiten_bias = getattr(getattr(model, "whiten", None), "bias", None) if o.whiten_bias_decay else None
    kinds: dict[str, list] = {"filters": [], "weights": [], "head": [], "norm_bias": [], "whiten": []}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if whiten_bias is not None and p is whiten_bias:
            kinds["whiten"].append(p)
        elif p.ndim == 4 and o.name == "muon":
            kinds["filters"].append(p)
        elif p.ndim == 2 and o.head_lr:
            kinds["head"].append(p)
        elif p.ndim > 1:
            kinds["weights"].append(p)
        else:
            kinds["norm_bias"].append(p)
    m = o.norm_bias_lr_mult
    lrs = {"filters": o.muon_lr, "weights": o.lr, "head": o.head_lr or o.lr, "norm_bias": o.lr * m,
           "whiten": o.lr * m}
    groups = []
    for kind, params in kinds.items():
        if not params:
            continue
        lr = lrs[kind]
        if kind == "filters":
            wd = 0.0  # Muon renormalises the filters itself
        elif o.wd_per_lr:
            wd = o.weight_decay / lr
        elif kind in ("norm_bias", "whiten"):
            wd = 0.0 if o.no_wd_norm_bias else o.weight_decay / m
        else:
            wd = o.weight_decay
        g = dict(params=params, lr=lr, weight_decay=wd, kind=kind)
        if kind == "filters":
            g.update(muon=True, momentum=o.muon_momentum)
        groups.append(g)
    if o.name == "muon":
        from cifarkit.engine.muon import MuonSGD

        return MuonSGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.momentum, 0.999))


def lr_lambdas(cfg: Config, optimizer: torch.optim.Optimizer, total: int, spe: int) -> list:
    """One schedule per parameter group (the whitening bias may decay on its own clock)."""
    out = []
    for g in optimizer.param_groups:
        if g.get("kind") == "whiten":
            n = max(1, math.ceil(cfg.train.whiten_bias_epochs * spe))
            out.append(lambda s, n=n: max(0.0, 1 - s / n))
        else:
            out.append(lambda s: lr_factor(cfg, s, total, spe))
    return out


def lr_factor(cfg: Config, step: int, total: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at iteration `step` (0-based) of `total`."""
    s = cfg.schedule
    warm = int(round(s.warmup_epochs * steps_per_epoch))
    if step < warm:
        return s.warmup_start + (1 - s.warmup_start) * step / warm
    epoch = step // steps_per_epoch
    t = (step - warm) / max(1, total - warm)  # progress after warm-up, 0..1
    if s.name == "constant":
        return 1.0
    if s.name == "step":
        return s.gamma ** (epoch // s.step)
    if s.name == "multistep":
        return s.gamma ** sum(epoch >= m for m in s.milestones)
    if s.name == "cosine":
        return s.final_factor + (1 - s.final_factor) * 0.5 * (1 + math.cos(math.pi * t))
    peak = int(total * s.peak_fraction)
    if s.name == "linear":  # airbench: start -> 1 over the first peak_fraction, then -> final
        if step < peak:
            return s.warmup_start + (1 - s.warmup_start) * step / max(1, peak)
        return 1.0 + (s.final_factor - 1.0) * (step - peak) / max(1, total - peak)
    # onecycle: cosine up from warmup_start to 1, cosine down to final_factor
    if step < peak:
        return s.warmup_start + (1 - s.warmup_start) * 0.5 * (1 - math.cos(math.pi * step / max(1, peak)))
    return s.final_factor + (1 - s.final_factor) * 0.5 * (1 + math.cos(math.pi * (step - peak) / max(1, total - peak)))


def check_work_dir(path: Path, need_bytes: int = 50 << 20) -> None:
    if path.exists() and not path.is_dir():
        raise CifarkitError(f"{path}: is a file, not a folder; choose another --work-dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        raise CifarkitError(f"{path}: the work directory is not writable ({e.strerror}); choose another "
                            "with --work-dir") from None
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise CifarkitError(f"{path}: only {free >> 20} MiB free, need at least {need_bytes >> 20} MiB for "
                            "checkpoints; free some space or choose another --work-dir")


def _versions() -> dict[str, str]:
    import torchvision

    return {"cifarkit": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "python": platform.python_version(), "platform": platform.platform()}


def check_resume_compatible(ck: dict[str, Any], cfg: Config, path: Path) -> None:
    """One sentence naming what differs, instead of a state-dict traceback."""
    from cifarkit.errors import CheckpointError

    old = ck.get("config", {}).get("model", {})
    for key, new in (("name", cfg.model.name), ("num_classes", cfg.model.num_classes)):
        if old.get(key) != new:
            raise CheckpointError(f"{path}: was trained with model.{key}={old.get(key)!r}, the config asks for "
                                  f"{new!r}; resume with the same model, or start a new --work-dir")
    if "optimizer" not in ck:
        raise CheckpointError(f"{path}: holds no optimizer state (an exported or best-only file?); resume from "
                              "last.pt or epoch_N.pt")
    groups = ck["optimizer"].get("param_groups", [])
    if cfg.optim.name == "muon" and not any(g.get("muon") for g in groups):
        raise CheckpointError(f"{path}: was trained with another optimizer than optim.name=muon")
