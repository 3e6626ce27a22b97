"""Which images a run trains and evaluates on, and the training loader over them.

The one place that decides splits: `data.val_fraction` carves a validation set out of train
(a fixed permutation from `data.val_seed`), otherwise the test split is evaluated. Training,
`cifarkit eval`, analyze and report all ask here, so they agree on the images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cifarkit.config import Config
from cifarkit.data.imageset import ImageSet
from cifarkit.data.loader import Augment, Mix, Preprocess, TensorLoader, streaming_fetch, to_chw_tensor
from cifarkit.data.sources import describe_kind, load_dataset
from cifarkit.errors import ConfigError, DataError


def _subset_per_class(ds, n: int):
    return ds.first_per_class(n) if n else ds


def long_tail_counts(counts: list[int], ratio: float) -> list[int]:
    """Images kept per class for imbalance ratio R (Cao et al. 2019, the CIFAR-10-LT profile):
    class i keeps floor(n_max * R^(-i/(C-1))), never more than it has; R = 0 keeps all."""
    if not ratio or len(counts) < 2:
        return list(counts)
    n_max, c = max(counts), len(counts)
    return [min(n, math.floor(n_max * ratio ** (-i / (c - 1)))) for i, n in enumerate(counts)]


def long_tail(ds, ratio: float, what: str = "data.imbalance_ratio"):
    """`ds` cut to the long-tail profile of `long_tail_counts` (the first images of each class, in
    dataset order); `ds` itself when `ratio` is 0. One selection for training, `data stats` and
    `data export --imbalance-ratio`.

    Raises:
        ConfigError: the cut leaves a class that had images with none (named, with `what` and the
            ratio): a run would train on nothing of it.
    """
    if not ratio:
        return ds
    before = ds.class_counts()
    keep = long_tail_counts(list(before.values()), ratio)
    emptied = [c for (c, n), k in zip(before.items(), keep) if n > 0 and k == 0]
    if emptied:
        largest = max(before.values())
        names = ", ".join(repr(c) for c in emptied[:10])
        names += f" and {len(emptied) - 10} more" if len(emptied) > 10 else ""
        raise ConfigError(f"{what} {ratio:g} leaves class{'es' if len(emptied) > 1 else ''} {names}"
                          f" with no training image (the largest class has {largest}, so R may be at most "
                          f"{largest:g}); lower {what}")
    return ds.first_per_class(keep)


def long_tail_train(splits: dict, ratio: float, path: str | Path, what: str = "--imbalance-ratio") -> dict:
    """`splits` (name -> dataset) with its "train" split cut by `long_tail`, for `data stats` and
    `data export --imbalance-ratio`; unchanged when `ratio` is 0.

    Raises:
        DataError: `ratio` is set but there is no "train" split.
    """
    if not ratio:
        return splits
    if "train" not in splits:
        raise DataError(f"{path}: has no train split to cut to --imbalance-ratio {ratio:g} "
                        f"(splits: {', '.join(splits)})")
    return {**splits, "train": long_tail(splits["train"], ratio, what)}


def check_imbalance_ratio(ratio: float, what: str = "data.imbalance_ratio") -> float:
    """`ratio` unchanged when it is 0 (off) or a finite number >= 1.

    Raises:
        ConfigError: otherwise, naming `what`.
    """
    if not (math.isfinite(ratio) and (ratio == 0 or ratio >= 1)):
        raise ConfigError(f"{what}: must be 0 (off) or a finite number >= 1 (max / min images per class), "
                          f"got {ratio!r}")
    return ratio


def load_train_split(cfg: Config):
    """The images a run trains on, and its validation set when it carves one out of train.

    `data.subset_per_class` applies first, then `data.imbalance_ratio` (the first images of each
    class in file order, so the long-tail set is reproducible). With `data.val_fraction` > 0 a fixed permutation (seed
    `data.val_seed`) holds that fraction of train out; otherwise the run evaluates on
    `data.test_split`, which `load_eval_split` loads.

    Returns:
        (train, val, eval split name) as `ImageSet`s: val is None and the name is `data.test_split`
        without a carve-out, the name is "val" with one.

    Raises:
        ConfigError: `data.root` is empty.
    """
    if not cfg.data.root:
        raise ConfigError("data.root is empty; set it in the config or with --set data.root=PATH")
    full = load_dataset(cfg.data.root, cfg.data.train_split, cfg.data.image_size or None)
    ds = long_tail(_subset_per_class(full, cfg.data.subset_per_class), cfg.data.imbalance_ratio)
    if cfg.data.val_fraction > 0:
        perm = np.random.default_rng(cfg.data.val_seed).permutation(len(ds))
        n_val = max(1, int(round(len(ds) * cfg.data.val_fraction)))
        train = ds.subset(np.sort(perm[n_val:]))
        check_every_class_trains(full.class_counts(), train.class_counts(), cfg)
        return train, ds.subset(np.sort(perm[:n_val])), "val"
    return ds, None, cfg.data.test_split


def check_every_class_trains(full: dict[str, int], train: dict[str, int], cfg: Config) -> None:
    """Refuse a training set that the settings left without any image of a class the dataset has
    (`data.val_fraction` held them all out, after `data.subset_per_class` / `data.imbalance_ratio`
    thinned the class): such a run would train on nine classes and report ten, without a word.

    Args:
        full, train: images per class in the dataset's train split, and left for training after
            the subset, long-tail and validation split.

    Raises:
        ConfigError: naming the classes, the settings and what to change.
    """
    emptied = [c for c, n in train.items() if n == 0 and full.get(c, 0) > 0]
    if not emptied:
        return
    d = cfg.data
    names = ", ".join(repr(c) for c in emptied[:10]) + (f" and {len(emptied) - 10} more" if len(emptied) > 10 else "")
    settings = [f"data.val_fraction={d.val_fraction:g}"]
    fixes = ["lower data.val_fraction"]
    if d.subset_per_class:
        settings.append(f"data.subset_per_class={d.subset_per_class}")
        fixes.append("raise data.subset_per_class")
    if d.imbalance_ratio:
        settings.append(f"data.imbalance_ratio={d.imbalance_ratio:g}")
        fixes.append("lower data.imbalance_ratio")
    many = len(emptied) > 1
    raise ConfigError(f"{', '.join(settings)} leave{'s' if len(settings) == 1 else ''} class{'es' if many else ''} "
                      f"{names} with no training image (the validation split took every one left of "
                      f"{'them' if many else 'it'}); {' or '.join(fixes)}")


def load_eval_set(cfg: Config, classes: list[str], data: str | None = None,
                  split: str | None = None) -> tuple[ImageSet, str]:
    """The evaluation images of a run (val carve-out or test split) with their provenance, and the split's name."""
    root = data or cfg.data.root
    if data is None and not Path(root).exists():
        raise DataError(f"{root}: the run's data.root is not there from {Path.cwd()}; pass --data with the "
                        "dataset's path (or run from the folder training ran in)")
    if split is None and cfg.data.val_fraction > 0 and data is None:
        _, val, name = load_train_split(cfg)
        ds = val
    else:
        name = split or cfg.data.test_split
        ds = load_dataset(root, name, cfg.data.image_size or None, classes=None)
        ds = _subset_per_class(ds, cfg.data.subset_per_class if data is None else 0)
    if list(ds.classes) != list(classes):
        raise ConfigError(f"{root}: its classes {ds.classes} differ from the checkpoint's {classes}")
    return ds, name


def load_eval_split(cfg: Config, classes: list[str], data: str | None = None,
                    split: str | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The evaluation images of a run (val carve-out or test split), as CPU uint8 tensors."""
    ds, name = load_eval_set(cfg, classes, data, split)
    return to_chw_tensor(ds.images), torch.from_numpy(ds.labels), name


@dataclass
class RunData:
    """Everything the training loop takes from the data side; `build_data` makes one per run.

    Attributes:
        loader: the training `TensorLoader` (this rank's share of each batch, augmented on the device).
        eval_images: the evaluation images, (M, 3, H, W) uint8 on the CPU.
        eval_labels: their labels, (M,).
        eval_name: the evaluation split's name ("val" or `data.test_split`).
        classes: the class names, in label order.
        prep: the evaluation/predict preprocessing, saved in every checkpoint.
        train_images: training images for data-dependent init (airnet's whitening): all of them on
            the device when held in memory, else the first 5,000 on the CPU.
        num_train: the number of training images.
        class_counts: training images per class, in label order (class weights, samplers, the
            logit-adjustment prior; saved in checkpoints for analyze's many/medium/few-shot split).
    """
    loader: TensorLoader
    eval_images: torch.Tensor  # (M, 3, H, W) uint8, CPU
    eval_labels: torch.Tensor
    eval_name: str
    classes: list[str]
    prep: Preprocess
    train_images: torch.Tensor | None  # for data-dependent init (airnet whitening)
    num_train: int
    class_counts: list[int]


def build_data(cfg: Config, device: torch.device, rank: int = 0, world: int = 1,
               sets: tuple[ImageSet, ImageSet] | None = None) -> RunData:
    """Load a run's data: its training loader and its evaluation images.

    Args:
        cfg: the run's config (`data.*`, `train.batch_size`, `train.seed`, `model.num_classes`).
        device: where the training labels and images (or the streamed batches) live.
        rank: this process's rank under torchrun (0 otherwise).
        world: the number of processes; each trains on its slice of every global batch.
        sets: (train, val) images already in memory, instead of reading `data.root` (the data
            audit's cross-validation folds); the run evaluates on that val set.

    Returns:
        A `RunData`. The training images are one uint8 tensor on `device`, or are streamed from
        their files when `data.in_memory` is false and the dataset is not CIFAR batches.

    Raises:
        ConfigError: `data.root` is empty, `model.num_classes` differs from the dataset's class
            count, or the evaluation split's classes differ from the training split's.
    """
    if sets is not None:
        (train, val), eval_name = sets, "val"
    else:
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
    if not d.in_memory and sets is None and describe_kind(d.root) != "cifar":
        root = Path(d.root).parent if Path(d.root).is_file() else Path(d.root)
        paths = [str(root / s) for s in train.sources]
        fetch = streaming_fetch(paths, train.images.shape[1], d.workers, device)
    else:
        x = to_chw_tensor(train.images).to(device)  # (N, 3, H, W) uint8, resident for the whole run
    counts = list(train.class_counts().values())
    loader = TensorLoader(x, y, cfg.train.batch_size, aug, prep, cfg.train.seed, drop_last=True, fetch=fetch,
                          rank=rank, world=world, sampler=d.sampler,
                          mix=Mix(d.mixup, d.cutmix, d.mix_prob, train.num_classes))
    return RunData(loader, images, labels, eval_name, train.classes, prep,
                   x if x is not None else to_chw_tensor(train.images[:5000]), len(train), counts)
