"""Typed run configuration: YAML file + `--set key.sub=value` overrides -> `Config` dataclasses.

Every field has a default and a one-line help string (its unit in brackets). Unknown keys and
wrong types are `ConfigError`s that name the key and suggest the nearest valid one, so a typo
never silently falls back to a default. The resolved config is saved with every run and
checkpoint, so nothing later needs the original file again.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import operator
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cifarkit.errors import ConfigError
from cifarkit.models import accepted_kwargs
from cifarkit.options import AMP_DEPRECATED, PRECISIONS, TTA_LEVELS, amp_deprecation

CIFAR_MEAN = [125.307, 122.961, 113.8575]  # CIFAR-10 train set, 0..255 scale
CIFAR_STD = [62.9932, 62.0887, 66.7048]


MAX_CONFIG_BYTES = 1 << 20  # a real config is a few KiB; a bound keeps a 50 MB YAML from eating RAM for minutes
MAX_INT = 2**31 - 1  # no count, size or seed of a run needs more; larger ones overflow torch's C ints
# Every float key without a tighter bound of its own lies within +-MAX_FLOAT: 3.5e38 is finite in
# Python but overflows float32 (torch's parameters, losses), and 1e300 makes every product inf.
MAX_FLOAT = 1e6
MAX_LR = 100.0  # learning rates: far above any that trains (airbench's 0.24-0.67, SGD's 0.1-1)


# Sizes in pixels are bounded like a checkpoint's input size (infer.restore.MAX_INPUT_SIZE): an image
# size of 10^5 decoded every image to 10^5 px a side (24 GB before the kernel killed it); padding of
# more than the image is refused by the crop itself, with a traceback
MAX_SIDE_PX = 1024
MAX_PADDING_PX = 64


def _f(default: Any, help: str, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
       lt: float | None = None, length: int | None = None) -> Any:
    """A config field: default, help line, and its valid range (checked by `_check_values`; for a
    list the bounds apply to every item and `length` is its required length). Every float must
    be finite, every int at most MAX_INT, whatever the field declares."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "length": length}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    """`data.*`: dataset path and splits, normalisation, training augmentation, evaluation resize/crop.

    `data.splits` builds a run's training loader and evaluation set from it."""
    root: str = _f("", "dataset path: CIFAR batches folder/.tar.gz, image folder, or manifest .csv")
    train_split: str = _f("train", "split used for training")
    test_split: str = _f("test", "split used for evaluation")
    val_fraction: float = _f(0.0, "fraction of train held out for validation instead of test (0 = use test)",
                             ge=0, lt=1)
    val_seed: int = _f(0, "seed of the train/val split", ge=0)
    subset_per_class: int = _f(0, "keep only the first N images per class of each split (0 = all)",
                               ge=0)
    image_size: int = _f(0, "decode folder images to this size [px] (0 = their own size)", ge=0, le=MAX_SIDE_PX)
    mean: list[float] = _f(list(CIFAR_MEAN), "per-channel mean on the 0..255 scale", length=3)
    std: list[float] = _f(list(CIFAR_STD), "per-channel std on the 0..255 scale", gt=0, length=3)
    in_memory: bool = _f(True, "keep the train set as one uint8 tensor on the device (False: stream files)")
    workers: int = _f(2, "DataLoader workers when streaming", ge=0)
    crop_padding: int = _f(4, "random-crop padding [px] (0 = off)", ge=0, le=MAX_PADDING_PX)
    pad_mode: str = _f("reflect", "random-crop padding: reflect | zero")
    flip: str = _f("random", "horizontal flip: random | alternate | none")
    rrc_size: int = _f(0, "random-resized-crop output size [px] (0 = off)", ge=0, le=MAX_SIDE_PX)
    rrc_scale: list[float] = _f([0.08, 1.0], "random-resized-crop area range", gt=0, le=1, length=2)
    cutout: int = _f(0, "cutout square side [px] (0 = off)", ge=0, le=MAX_SIDE_PX)
    eval_resize: int = _f(0, "evaluation: resize shorter side to this [px] (0 = off)", ge=0, le=MAX_SIDE_PX)
    eval_crop: int = _f(0, "evaluation: center crop to this [px] (0 = off)", ge=0, le=MAX_SIDE_PX)
    imbalance_ratio: float = _f(0.0, "long-tail train split: keep the first floor(n_max * R^(-i/(C-1))) images of "
                                     "class i (Cao et al. 2019; 0 = off, else >= 1; test split untouched)", ge=0,
                                le=1e12)
    sampler: str = _f("uniform", "uniform | balanced | sqrt: per-epoch draw with replacement, image weight "
                                 "1/n_c or 1/sqrt(n_c) (uniform: a plain permutation)")
    mixup: float = _f(0.0, "MixUp Beta(alpha, alpha) alpha (0 = off)", ge=0)
    cutmix: float = _f(0.0, "CutMix Beta(alpha, alpha) alpha (0 = off; with mixup on too, each mixed batch "
                            "picks one of the two)", ge=0)
    mix_prob: float = _f(1.0, "probability that a batch is mixed when mixup or cutmix is on", ge=0, le=1)


@dataclass
class ModelConfig:
    """`model.*`: which model to build, with how many classes, from which weights.

    `create_model` reads it in training and when a checkpoint is rebuilt for inference."""
    name: str = _f("resnet18_cifar", "registered model name (see `cifarkit models`)")
    num_classes: int = _f(10, "number of classes; must match the dataset", ge=1)
    pretrained: str = _f("", "weights file to start from ('' = none, 'torchvision' = torchvision's own)")
    cifar_stem: bool = _f(False, "torchvision models: 3x3 stride-1 stem for 32 px inputs")
    kwargs: dict = _f({}, "extra keyword arguments for the model constructor")


@dataclass
class OptimConfig:
    """`optim.*`: the optimiser (sgd, adamw or muon), its lr, momentum, weight decay and per-group lrs.

    Read by `engine.optimizers` when the run builds its optimiser."""
    name: str = _f("sgd", "sgd | adamw | muon (Muon on conv filters, Nesterov SGD on the rest)")
    lr: float = _f(0.1, "learning rate (0 freezes those parameters, and they get no weight decay)", ge=0, le=MAX_LR)
    momentum: float = _f(0.9, "SGD momentum / AdamW beta1", ge=0, lt=1)
    nesterov: bool = _f(False, "Nesterov momentum (SGD)")
    weight_decay: float = _f(5e-4, "weight decay", ge=0, le=100)
    no_wd_norm_bias: bool = _f(False, "no weight decay on norm layers and biases")
    norm_bias_lr_mult: float = _f(1.0, "lr multiplier for norm weights/biases and biases (wd divided by it)",
                                   gt=0, le=1e4)
    grad_clip: float = _f(0.0, "clip gradient norm to this (0 = off)", ge=0)
    head_lr: float = _f(0.0, "lr of 2-D weights (the linear head) when it should differ (0 = optim.lr)", ge=0,
                          le=MAX_LR)
    muon_lr: float = _f(0.24, "muon: lr of the conv filters (0 freezes them)", ge=0, le=MAX_LR)
    muon_momentum: float = _f(0.6, "muon: momentum of the conv filters", ge=0, lt=1)
    wd_per_lr: bool = _f(False, "weight_decay is per step: each group gets weight_decay / its lr (airbench)")
    whiten_bias_decay: bool = _f(False, "airnet: whitening-bias lr decays linearly to 0 over "
                                        "train.whiten_bias_epochs (airbench94_muon)")


@dataclass
class ScheduleConfig:
    """`schedule.*`: the lr schedule's shape, warm-up and decay points.

    Applied per iteration by `engine.optimizers.lr_lambdas`."""
    name: str = _f("cosine", "constant | step | multistep | cosine | linear | onecycle")
    warmup_epochs: float = _f(0.0, "linear warm-up length [epochs]", ge=0)
    warmup_start: float = _f(0.1, "lr factor at the start of warm-up", ge=0, le=100)
    gamma: float = _f(0.1, "step/multistep decay factor", gt=0, le=100)
    step: int = _f(30, "step: decay every this many epochs", ge=1)
    milestones: list[int] = _f([], "multistep: epochs at which to decay", ge=0)
    final_factor: float = _f(0.0, "cosine/linear/onecycle: lr factor at the end", ge=0, le=100)
    peak_fraction: float = _f(0.25, "onecycle/linear: where the peak lr is [fraction of training]",
                               ge=0, le=1)


@dataclass
class EarlyStopConfig:
    """`train.early_stop.*`: patience, metric and min_delta of early stopping (off at patience 0).

    `fit` builds its `EarlyStop` from them."""
    patience: int = _f(0, "stop after this many evaluations without improvement (0 = off); best.pt then "
                          "follows `metric`", ge=0)
    metric: str = _f("top1", "top1 | loss: the validation metric early stopping and best.pt watch")
    min_delta: float = _f(0.0, "smallest change that counts as an improvement [top-1 % or loss]", ge=0)


@dataclass
class TrainConfig:
    """`train.*`: length, batch size, seed, precision, weight averaging, device and NaN policy of a run.

    Read by the training loop (`engine.train.fit`)."""
    epochs: float = _f(10, "training length [epochs]; fractional allowed", gt=0, le=1e6)
    batch_size: int = _f(128, "batch size [images]", ge=1)
    max_iters: int = _f(0, "stop after this many iterations (0 = no limit; for smoke runs)", ge=0)
    seed: int = _f(0, "random seed", ge=0)
    deterministic: bool = _f(False, "use deterministic algorithms (identical runs on CPU)")
    label_smoothing: float = _f(0.0, "cross-entropy label smoothing", ge=0, le=1)
    loss_reduction: str = _f("mean", "mean | sum over the batch")
    ema: bool = _f(False, "keep an exponential moving average of the weights and evaluate it")
    ema_decay: float = _f(0.999, "EMA decay per iteration", ge=0, le=1)
    lookahead: bool = _f(False, "airbench lookahead: every 5 steps pull weights to a scheduled EMA")
    amp: str = _f("auto", "auto | fp32 | bf16 | fp16 (auto: bf16 on CUDA or on a CPU with AMX / AVX512-BF16, "
                            "else fp32; infer/device.py; none, the old fp32, still works)")
    channels_last: bool = _f(True, "channels_last memory format")
    compile: str = _f("off", "torch.compile the model: off | on | cuda (only when training on a GPU; "
                             "true/false read as on/off)")
    compile_mode: str = _f("default", "torch.compile mode: default | reduce-overhead (CUDA graphs: small batches "
                                      "on a GPU) | max-autotune")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    threads: int = _f(0, "CPU threads (0 = torch default)", ge=0, le=1024)
    hold_memory: bool = _f(True, "CPU: keep freed memory in the process while training instead of returning it "
                                 "to the OS after every step (glibc; airnet batch 2000: 1.73 vs 2.92 s/step)")
    nan_policy: str = _f("stop", "stop | skip_batch when the loss is NaN/inf")
    whiten_bias_epochs: float = _f(0, "airnet: train the whitening bias for this many epochs only", ge=0)
    sync_bn: bool = _f(False, "torchrun: SyncBatchNorm across processes")
    micro_batch: int = _f(0, "split each batch into chunks of this size, accumulating gradients (0 = off; "
                             "BatchNorm then normalises per chunk, its running-stat momentum rescaled per step)", ge=0)
    class_weights: str | list[float] = _f("none", "none | balanced (inverse frequency) | effective (Cui et al. "
                                                   "2019) | a list of one weight per class; normalised to mean 1",
                                           ge=0)
    cb_beta: float = _f(0.9999, "effective class weights: beta of (1 - beta) / (1 - beta^n_c)", ge=0, lt=1)
    class_weights_from_epoch: int = _f(0, "apply train.class_weights from this epoch on (0-based; before it plain "
                                          "CE: deferred re-weighting, LDAM-DRW)", ge=0)
    logit_adjust: float = _f(0.0, "logit-adjusted loss: train on logits + tau * log(class prior) (Menon et al. "
                                  "2021; 0 = off)", ge=0)
    calibrate: bool = _f(False, "at the end, fit a softmax temperature on the validation split (needs "
                                "data.val_fraction > 0) and write RUN/calibrated.pt from best.pt (cifarkit calibrate)")
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)


@dataclass
class EvalConfig:
    """`eval.*`: how often a run evaluates, at what batch size and with which test-time augmentation."""
    interval: int = _f(1, "evaluate every N epochs (and always at the end)", ge=1)
    batch_size: int = _f(512, "evaluation batch size", ge=1)
    tta: str = _f("none", " | ".join(TTA_LEVELS))
    logit_adjust: float = _f(0.0, "post-hoc logit adjustment: predict with logits - tau * log(training class prior) "
                                  "(Menon et al. 2021; 0 = off); every evaluation and prediction of the run uses it",
                             ge=0)


@dataclass
class LogConfig:
    """`log.*`: how often a train record is logged, and which extra outputs a run writes.

    The extras: curves and report (`plots`), TensorBoard event files, a CSV of the records."""
    interval: int = _f(10, "log a train record every N iterations", ge=1)
    plots: bool = _f(True, "cifarkit train: write curves.png and report.html at the end (library fit: pass "
                           "after_run writers)")
    tensorboard: bool = _f(False, "also write TensorBoard event files to RUN/tb/ (needs cifarkit[tensorboard])")
    csv: bool = _f(False, "also write RUN/metrics.csv, one row per train/val/early_stop record")
    mlflow: str = _f("", "MLflow tracking URI to log the run to ('' = off): sqlite:///mlflow.db or "
                         "http://host:port (needs cifarkit[mlflow])")
    mlflow_experiment: str = _f("cifarkit", "MLflow experiment the run is logged under (created when missing)")
    mlflow_checkpoints: bool = _f(False, "also upload last.pt and best.pt to MLflow at the end of the run")


@dataclass
class CheckpointConfig:
    """`checkpoint.*`: how often `epoch_N.pt` is kept and whether `best.pt` is written."""
    interval: int = _f(1, "write epoch_N.pt every N epochs (last.pt is written every epoch)", ge=1)
    save_best: bool = _f(True, "keep best.pt by validation top-1")


@dataclass
class Config:
    """A run's whole configuration: its `name` and one section per part of the run.

    Built and validated by `load_config` / `config_from_dict`; saved as the run's `config.yaml` and
    in every checkpoint, so evaluation and resume rebuild the run from it alone."""
    name: str = _f("run", "run name; the run directory is work_dirs/<name>")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every leaf key of `cls` as a dotted name (`data.root`, `train.early_stop.patience`, ...).

    In field order; `prefix` is prepended to each (the recursion's section path)."""
    hints = typing.get_type_hints(cls)
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        keys += all_keys(tp, f"{prefix}{f.name}.") if dataclasses.is_dataclass(tp) else [prefix + f.name]
    return keys


def unknown_key_message(key: str, where: str) -> str:
    """The error line for a config key that does not exist, with the nearest valid one (or the
    valid key with the same last part: `lr` -> `optim.lr`). `where` prefixes it (a file, `--set: `)."""
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5)
    if not close:
        # also try matching the last part alone (e.g. "lr" -> "optim.lr")
        tail = key.split(".")[-1]
        close = [k for k in all_keys() if k.split(".")[-1] == tail][:1]
    hint = f"; did you mean {close[0]!r}?" if close else "; see `cifarkit train --list-keys`"
    return f"{where}unknown config key {key!r}{hint}"


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{where}{key}: {value!r} is not a valid {getattr(tp, '__name__', tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):  # YAML 1.1 reads "1e-3" as a str
            raise bad
        try:
            return float(value)
        except (ValueError, OverflowError):  # "abc"; an int too large for a float
            raise bad from None
    if tp is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise bad
        if "\x00" in str(value):  # no path or name can hold a NUL byte; open() would fail much later
            raise ConfigError(f"{where}{key}: contains a NUL character")
        return str(value)
    if origin is types.UnionType:  # `str | list[float]`: a list is the list, anything else the str
        as_list = [a for a in typing.get_args(tp) if typing.get_origin(a) is list]
        if as_list and isinstance(value, (list, tuple)):
            return _coerce(value, as_list[0], key, where)
        return _coerce(value, typing.get_args(tp)[0], key, where)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(v, inner, key, where) for v in value]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    raise bad


_SWITCHES = {"train.compile"}  # str options that also take a YAML boolean


def _build(cls: type, d: dict, prefix: str, where: str, set_keys: frozenset[str] = frozenset()) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    outer = where
    for k, v in d.items():
        key = f"{prefix}{k}"
        # a value given with --set is named as such, not as the YAML file's (which never held it)
        where = "--set " if key in set_keys or any(s.startswith(key + ".") for s in set_keys if not
                                                   dataclasses.is_dataclass(hints.get(k))) else outer
        if k not in hints:
            raise ConfigError(unknown_key_message(key, where))
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                raise ConfigError(f"{where}{key}: expected a mapping of {tp.__name__} fields, got {v!r}")
            kwargs[k] = _build(tp, v, key + ".", outer, set_keys)
        else:
            if key in _SWITCHES and isinstance(v, bool):  # was a bool; YAML also reads on/off as bools
                v = "on" if v else "off"
            kwargs[k] = _coerce(v, tp, key, where)
    return cls(**kwargs)


def _check_values(obj: Any, prefix: str = "") -> None:
    """Every field against the range declared next to it (`_f`): one central pass, so a new
    field gets its check where it is defined. Floats must be finite: NaN, inf and 1e400 (which
    YAML reads as inf) pass every comparison or none, and would train silently wrong."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key, value = prefix + f.name, getattr(obj, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            _check_values(value, key + ".")
            continue
        m = f.metadata
        if m.get("length") is not None and len(value) != m["length"]:
            raise ConfigError(f"{key}: needs {m['length']} values, got {len(value)} ({value!r})")
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{key}: {v} is not a finite number")
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_INT:
                raise ConfigError(f"{key}: {v} is out of range (at most {MAX_INT})")
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            bounds = dict(m)
            if isinstance(v, float):  # no float without bounds (MAX_FLOAT)
                if bounds.get("le") is None and bounds.get("lt") is None:
                    bounds["le"] = MAX_FLOAT
                if bounds.get("ge") is None and bounds.get("gt") is None:
                    bounds["ge"] = -MAX_FLOAT
            for name, fails, words in (("ge", operator.lt, "at least"), ("gt", operator.le, "greater than"),
                                       ("le", operator.gt, "at most"), ("lt", operator.ge, "less than")):
                bound = bounds.get(name)
                if bound is not None and fails(v, bound):
                    valid = " and ".join(f"{op} {bounds[b]:g}" for b, op in (("ge", ">="), ("gt", ">"), ("le", "<="),
                                                                            ("lt", "<")) if bounds.get(b) is not None)
                    raise ConfigError(f"{key}: must be {words} {bound:g}, got {v!r} (valid: {valid})")


def _check_model_kwargs(cfg: Config) -> None:
    """model.kwargs against the constructor's own keyword arguments, so a typo fails at load
    rather than as a TypeError traceback once the data is loaded."""
    if not cfg.model.kwargs:
        return
    valid = accepted_kwargs(cfg.model.name)
    if valid is None:  # timm or an unknown name: create_model reports those itself
        return
    bad = sorted(str(k) for k in cfg.model.kwargs if k not in valid)
    if bad:
        raise ConfigError(f"model.kwargs: {', '.join(bad)} not accepted by {cfg.model.name}; valid: "
                          f"{', '.join(valid) or 'none'}")


def _validate(cfg: Config) -> None:
    choices = {
        "optim.name": (cfg.optim.name, ["sgd", "adamw", "muon"]),
        "schedule.name": (cfg.schedule.name, ["constant", "step", "multistep", "cosine", "linear", "onecycle"]),
        "train.amp": (cfg.train.amp, [*PRECISIONS, *AMP_DEPRECATED]),
        "train.loss_reduction": (cfg.train.loss_reduction, ["mean", "sum"]),
        "train.nan_policy": (cfg.train.nan_policy, ["stop", "skip_batch"]),
        "train.early_stop.metric": (cfg.train.early_stop.metric, ["top1", "loss"]),
        "train.compile": (cfg.train.compile, ["off", "on", "cuda"]),
        "train.compile_mode": (cfg.train.compile_mode, ["default", "reduce-overhead", "max-autotune",
                                                        "max-autotune-no-cudagraphs"]),
        "eval.tta": (cfg.eval.tta, list(TTA_LEVELS)),
        "data.flip": (cfg.data.flip, ["random", "alternate", "none"]),
        "data.pad_mode": (cfg.data.pad_mode, ["reflect", "zero"]),
        "data.sampler": (cfg.data.sampler, ["uniform", "balanced", "sqrt"]),
    }
    if isinstance(cfg.train.class_weights, str):
        choices["train.class_weights"] = (cfg.train.class_weights, ["none", "balanced", "effective"])
    for key, (val, ok) in choices.items():
        if val not in ok:
            near = difflib.get_close_matches(val, ok, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"{key}: {val!r} is not one of {', '.join(ok)}{hint}")
    _check_values(cfg)
    if 0 < cfg.data.imbalance_ratio < 1:
        raise ConfigError(f"data.imbalance_ratio: must be 0 (off) or at least 1, got {cfg.data.imbalance_ratio!r}")
    w = cfg.train.class_weights
    if isinstance(w, list) and len(w) != cfg.model.num_classes:
        raise ConfigError(f"train.class_weights: needs one weight per class ({cfg.model.num_classes}), got {len(w)}")
    if isinstance(w, list) and not sum(w) > 0:
        raise ConfigError("train.class_weights: the weights must not all be 0")
    o = cfg.optim
    for key, lr in (("optim.lr", o.lr), ("optim.head_lr", o.head_lr)):
        # wd_per_lr gives each group weight_decay / its lr: a tiny lr makes that overflow float32
        if o.wd_per_lr and lr > 0 and o.weight_decay / lr > MAX_FLOAT:
            raise ConfigError(f"{key}: {lr:g} with optim.wd_per_lr makes the group's weight decay "
                              f"{o.weight_decay / lr:.3g} (optim.weight_decay / lr, at most {MAX_FLOAT:g}); raise "
                              f"{key}, or set it to 0 to freeze those parameters")
    if cfg.data.rrc_scale[0] > cfg.data.rrc_scale[1]:
        raise ConfigError(f"data.rrc_scale: {cfg.data.rrc_scale} is not a [min, max] range")
    _check_model_kwargs(cfg)


class _NoAliasLoader(yaml.SafeLoader):
    """safe_load without anchors/aliases (`*name`): no config needs them, and nested aliases
    ("billion laughs") expand a few hundred bytes into more objects than memory holds."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed in a config; "
                                              "write the value out", self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        # plain YAML keeps the last of a key given twice, silently: refuse it, naming the key
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} is given twice (lines {seen[key]} and {line}); keep one",
                        key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep)


def yaml_load(text: str) -> Any:
    """YAML text -> Python values, as every config and space file is read: safe tags only, no
    aliases (a billion-laughs file), a key given twice refused.

    Raises:
        yaml.YAMLError: not valid YAML, a duplicate key, or nested too deeply.
    """
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:  # thousands of nested brackets
        raise yaml.YAMLError("nested too deeply") from None


def parse_override(item: str) -> tuple[str, Any]:
    """Split one `--set key.sub=value` into the key and its value, read as YAML.

    `0.1` becomes a float, `true` a bool, `[1, 2]` a list; a value YAML cannot read stays the raw
    string, an empty one is "".

    Raises:
        ConfigError: `item` has no `=`.
    """
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.sub=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _nest(d: dict, key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(unknown_key_message(key, where))
        cur = nxt
    cur[parts[-1]] = value


def config_from_dict(d: dict, overrides: list[str] | None = None, where: str = "") -> Config:
    """A validated `Config` from a plain dict (a YAML file's, or the one a checkpoint stores)."""
    if d is not None and not isinstance(d, dict):
        raise ConfigError(f"{where}the config must be a mapping of sections (data, model, ...), got "
                          f"{type(d).__name__}")
    d = copy.deepcopy(d or {})
    set_keys = set()
    for item in overrides or []:
        key, value = parse_override(item)
        if key not in all_keys() and not key.startswith("model.kwargs."):
            raise ConfigError(unknown_key_message(key, "--set: "))
        _nest(d, key, value, "--set: ")
        set_keys.add(key)
    cfg = _build(Config, d, "", where, frozenset(set_keys))
    _validate(cfg)
    return cfg


def read_config_text(p: Path, what: str = "config file") -> str:
    """The text of a config (or space) file, through `userfile.read_user_text`: folders, FIFOs and
    devices refused without opening, at most MAX_CONFIG_BYTES read."""
    from cifarkit.userfile import read_user_bytes

    try:
        return read_user_bytes(p, what, MAX_CONFIG_BYTES, ConfigError).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not valid YAML (not UTF-8 text)") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from defaults when `path` is None) and apply overrides.

    `path` is a file, or the name of a shipped recipe (`fast`, `airbench94`, ...; see `recipes`)."""
    from cifarkit.recipes import resolve_config

    d: dict = {}
    where = ""
    if path is not None:
        p = resolve_config(path)
        where = f"{p}: "
        try:
            d = yaml_load(read_config_text(p)) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections (data, model, ...)")
        d.setdefault("name", p.stem)
    cfg = config_from_dict(d, overrides, where)
    deprecated = amp_deprecation(cfg.train.amp)  # a checkpoint's stored config stays quiet (config_from_dict)
    if deprecated:
        print(deprecated, file=sys.stderr)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """The config as nested plain dicts: what `config.yaml`, the log header and checkpoints store."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the config to `path` as YAML, keys in field order (the run's `config.yaml`)."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")


def describe_keys() -> str:
    """`--list-keys`: every key with its default and help line."""
    lines = []
    default = config_to_dict(Config())

    def walk(cls: type, prefix: str, dflt: dict) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.", dflt[f.name])
            else:
                lines.append(f"{prefix + f.name:<28} {dflt[f.name]!r:<22} {f.metadata.get('help', '')}")

    walk(Config, "", default)
    return "\n".join(lines)
