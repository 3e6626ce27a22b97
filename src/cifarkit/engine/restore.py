"""Rebuild a trained model from one of our checkpoints, ready for eval/predict/CAM/export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cifarkit.config import Config, config_from_dict
from cifarkit.data.loader import Preprocess
from cifarkit.engine.checkpoint import load_checkpoint
from cifarkit.errors import CheckpointError, ConfigError


def config_of(ck: dict[str, Any], path: str | Path) -> Config:
    try:
        return config_from_dict(ck["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: its stored config is not valid for this cifarkit ({e})") from None


def load_for_inference(path: str | Path, device: torch.device) -> tuple[torch.nn.Module, dict, Config, Preprocess]:
    """(model in eval mode on `device`, raw checkpoint dict, config, preprocessing)."""
    from cifarkit.models import create_model

    ck = load_checkpoint(path)
    cfg = config_of(ck, path)
    model = create_model(cfg.model.name, cfg.model.num_classes, cifar_stem=cfg.model.cifar_stem,
                         **cfg.model.kwargs)
    weights = ck.get("ema") or ck["model"]  # evaluation uses the EMA weights when the run kept them
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit model {cfg.model.name!r} with "
                              f"{cfg.model.num_classes} classes ({str(e).splitlines()[0][:160]})") from None
    model.to(device).eval()
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    prep = Preprocess(**ck["preprocess"])
    return model, ck, cfg, prep
