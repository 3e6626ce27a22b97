"""Rebuild a trained model from one of our checkpoints, ready for eval/predict/CAM/export.

A checkpoint may come from anywhere (a colleague, the internet) and may have been edited: its
schema is checked once, here, before anything is built from it — classes a list of names that
matches the model's class count, preprocessing with finite mean, positive std and an input
size a classifier can have, a config this cifarkit accepts, weights that fit the model — and
what is wrong is named in one sentence.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from cifarkit.config import Config, config_from_dict
from cifarkit.data.loader import Preprocess
from cifarkit.errors import CheckpointError, ConfigError
from cifarkit.infer.checkpoint import load_checkpoint
from cifarkit.models import create_model

MAX_INPUT_SIZE = 1024  # [px]; an edited input_size of 10^5 would otherwise allocate ~120 GB per image
MAX_CLASSES = 100_000
MAX_CLASS_NAME = 256  # characters


def config_of(ck: dict[str, Any], path: str | Path) -> Config:
    """The checkpoint's stored config, as a validated `Config`; a relative `data.root` that is not
    found from here is replaced by the absolute path the checkpoint stored at training time.

    Args:
        ck: the loaded checkpoint dict.
        path: its file, named in errors.

    Raises:
        CheckpointError: the `config` entry is not a mapping, or is not valid for this cifarkit.
    """
    if not isinstance(ck.get("config"), dict):
        raise CheckpointError(f"{path}: its 'config' entry is not a mapping; this is not a usable cifarkit checkpoint")
    try:
        cfg = config_from_dict(ck["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: its stored config is not valid for this cifarkit ({e})") from None
    # data.root as typed is relative to where training ran; the checkpoint also holds it resolved
    # there ("data_root"), which still finds the data from another folder
    resolved = ck.get("data_root")
    root = cfg.data.root
    if root and not Path(root).exists() and isinstance(resolved, str) and Path(resolved).exists():
        cfg.data.root = resolved
    return cfg


def check_classes(classes: Any, path: str | Path, expected: int | None = None) -> list[str]:
    """A list of 1..MAX_CLASSES distinct short strings (and `expected` many when given)."""
    ok = (isinstance(classes, list) and 0 < len(classes) <= MAX_CLASSES
          and all(isinstance(c, str) and 0 < len(c) <= MAX_CLASS_NAME for c in classes))
    if not ok:
        raise CheckpointError(f"{path}: 'classes' must be a list of class-name strings (1..{MAX_CLASS_NAME} "
                              "characters each); the file is damaged or was edited")
    if len(set(classes)) != len(classes):
        raise CheckpointError(f"{path}: 'classes' names the same class twice; the file is damaged or was edited")
    if expected is not None and len(classes) != expected:
        raise CheckpointError(f"{path}: names {len(classes)} classes but the model has {expected} outputs; "
                              "the file is damaged or was edited")
    return list(classes)


def check_preprocess(prep: Any, path: str | Path) -> Preprocess:
    """mean/std: 3 finite numbers each (std > 0); input_size 8..MAX_INPUT_SIZE; eval resize/crop 0..MAX."""
    def num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def size(v: Any, low: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and (v == 0 or low <= v <= MAX_INPUT_SIZE)

    problem = None
    if not isinstance(prep, dict):
        problem = "is missing or not a mapping"
    elif not (isinstance(prep.get("mean"), list) and len(prep["mean"]) == 3 and all(map(num, prep["mean"]))):
        problem = "mean must be 3 finite numbers"
    elif not (isinstance(prep.get("std"), list) and len(prep["std"]) == 3
              and all(num(s) and s > 0 for s in prep["std"])):
        problem = "std must be 3 finite numbers > 0"
    elif not (size(prep.get("input_size"), 8) and prep["input_size"] > 0):
        problem = f"input_size must be an integer in 8..{MAX_INPUT_SIZE} [px]"
    elif not (size(prep.get("eval_resize", 0), 8) and size(prep.get("eval_crop", 0), 8)):
        problem = f"eval_resize / eval_crop must be 0 or integers in 8..{MAX_INPUT_SIZE} [px]"
    elif set(prep) - {"mean", "std", "input_size", "eval_resize", "eval_crop"}:
        problem = f"has unknown keys {sorted(set(prep) - {'mean', 'std', 'input_size', 'eval_resize', 'eval_crop'})}"
    if problem:
        raise CheckpointError(f"{path}: its preprocessing {problem}; the file is damaged or was edited")
    return Preprocess(**prep)


def load_for_inference(path: str | Path, device: torch.device) -> tuple[torch.nn.Module, dict, Config, Preprocess]:
    """(model in eval mode on `device`, raw checkpoint dict, config, preprocessing), schema-checked."""
    ck = load_checkpoint(path)
    cfg = config_of(ck, path)
    prep = check_preprocess(ck.get("preprocess"), path)
    ck["classes"] = check_classes(ck.get("classes"), path, cfg.model.num_classes)
    try:
        model = create_model(cfg.model.name, cfg.model.num_classes, cifar_stem=cfg.model.cifar_stem,
                             **cfg.model.kwargs)
    except (TypeError, ValueError, KeyError, ConfigError) as e:
        raise CheckpointError(f"{path}: its model settings cannot build {cfg.model.name!r} "
                              f"({str(e).splitlines()[0][:160]}); the file is damaged or was edited") from None
    weights = ck.get("ema") or ck["model"]  # evaluation uses the EMA weights when the run kept them
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: its weights are not a state dict of tensors; the file is damaged or was edited")
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit model {cfg.model.name!r} with "
                              f"{cfg.model.num_classes} classes ({str(e).splitlines()[0][:160]})") from None
    model.to(device).eval()
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return model, ck, cfg, prep
