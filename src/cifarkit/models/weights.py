"""Load pretrained weights from a local file, whatever layout it was saved in.

Accepted: a plain state dict; a checkpoint dict with a `state_dict` or `model` entry (ours,
torchvision references, timm); MMClassification/MMPretrain checkpoints, whose `backbone.*` /
`head.fc.*` keys are renamed onto torchvision's module names for MobileNetV2 and ResNet. A
classifier whose shape does not fit `num_classes` is dropped (and stays freshly initialised);
the report says what was loaded, missing and unexpected. Files are read with
`torch.load(weights_only=True)`: a file carrying code is refused, never run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cifarkit.errors import CheckpointError
from cifarkit.safeload import safe_torch_load


@dataclass
class LoadReport:
    """What `load_pretrained` took from a weights file; its `summary()` is printed before training.

    Attributes:
        path: the weights file.
        layout: how its tensors were stored: "plain", "state_dict", "model", "model_state_dict",
            "module" or "mmcls".
        loaded: the number of tensors loaded.
        missing: model keys the file did not provide; they keep their fresh init.
        unexpected: file keys the model has no place for.
        reinitialised: keys whose shape differs (e.g. a 1000-class head), left freshly initialised.
    """
    path: str
    layout: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: file, tensors loaded, layout, then any re-initialised, missing and unexpected keys."""
        s = f"{self.path}: loaded {self.loaded} tensors ({self.layout} layout)"
        if self.reinitialised:
            s += f"; re-initialised (shape differs): {', '.join(self.reinitialised)}"
        if self.missing:
            s += f"; missing: {_short(self.missing)}"
        if self.unexpected:
            s += f"; unexpected: {_short(self.unexpected)}"
        return s


def _short(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of a weights file and the name of the layout they came in."""
    if not Path(path).is_file():
        raise CheckpointError(
            f"{path}: no such weights file; model.pretrained takes a local file (e.g. the MMClassification "
            "tutorial's mobilenet_v2_batch256_imagenet_*.pth from download.openmmlab.com, or a timm/torchvision "
            ".pth you downloaded), or `model.pretrained=torchvision` for torchvision's own ImageNet weights")
    obj = safe_torch_load(path)
    layout = "plain"
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "module"):
            if isinstance(obj.get(key), dict):
                obj, layout = obj[key], key
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors; expected a .pth/.pt weights file")
    sd = {k.removeprefix("module."): v for k, v in obj.items()}  # DataParallel/DDP prefix
    if any(k.startswith("backbone.") for k in sd):
        layout = "mmcls"
    return sd, layout


# ---- MMClassification -> torchvision ------------------------------------------------------------
_MMCLS_MBV2_BLOCKS = [1, 2, 3, 4, 3, 3, 1]  # blocks per stage: layer1..layer7 of MMCls MobileNetV2


def mmcls_to_torchvision(sd: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Rename MMCls `backbone.*`/`head.fc.*` keys onto torchvision's ResNet or MobileNetV2 names."""
    out = {}
    for k, v in sd.items():
        if k.startswith("head.fc."):
            new = ("classifier.1." if arch == "mobilenet_v2" else "fc.") + k[len("head.fc."):]
        elif k.startswith("backbone."):
            new = k[len("backbone."):]
            if arch == "mobilenet_v2":
                new = _mbv2_key(new)
        else:
            continue  # neck/data_preprocessor entries have no counterpart
        if new is not None:
            out[new] = v
    return out


def _mbv2_key(k: str) -> str | None:
    """backbone key of MMCls MobileNetV2 -> torchvision `features.*` key."""
    conv_bn = {"conv": "0", "bn": "1"}
    m = re.fullmatch(r"conv1\.(conv|bn)\.(.+)", k)
    if m:
        return f"features.0.{conv_bn[m[1]]}.{m[2]}"
    m = re.fullmatch(r"conv2\.(conv|bn)\.(.+)", k)
    if m:
        return f"features.18.{conv_bn[m[1]]}.{m[2]}"
    m = re.fullmatch(r"layer(\d)\.(\d+)\.conv\.(\d)\.(conv|bn)\.(.+)", k)
    if not m:
        return None
    stage, j, pos, part, rest = int(m[1]), int(m[2]), int(m[3]), m[4], m[5]
    block = 1 + sum(_MMCLS_MBV2_BLOCKS[: stage - 1]) + j  # torchvision features index
    expand = stage != 1  # the first stage has expand ratio 1: no 1x1 expansion conv
    last = 2 if expand else 1
    if pos < last:  # ConvModule -> Conv2dNormActivation (conv=.0, bn=.1)
        return f"features.{block}.conv.{pos}.{conv_bn[part]}.{rest}"
    # the final linear 1x1 projection is a bare conv + bn in torchvision
    return f"features.{block}.conv.{last + (0 if part == 'conv' else 1)}.{rest}"


def _arch_of(model_name: str) -> str:
    if model_name.startswith("mobilenet_v2"):
        return "mobilenet_v2"
    if model_name.startswith(("resnet", "wide_resnet", "resnext")):
        return "resnet"
    return "other"


def load_pretrained(model: nn.Module, path: str | Path, model_name: str) -> LoadReport:
    """Load a local weights file into `model`, whatever its layout; tensors of another shape are skipped.

    Args:
        model: the freshly built model.
        path: the weights file (.pth / .pt).
        model_name: its registry name, used to map MMClassification keys (ResNet, MobileNetV2).

    Returns:
        A `LoadReport` of what was loaded, missing, unexpected and re-initialised.

    Raises:
        CheckpointError: the file is missing or unreadable, holds no state dict of tensors, holds
            MMClassification weights for another architecture, or none of its tensors fit `model`.
    """
    sd, layout = read_state_dict(path)
    if layout == "mmcls":
        arch = _arch_of(model_name)
        if arch == "other":
            raise CheckpointError(f"{path}: MMClassification weights can be mapped onto ResNet and "
                                  f"MobileNetV2 models, not {model_name!r}")
        sd = mmcls_to_torchvision(sd, arch)
    own = model.state_dict()
    usable, reinit = {}, []
    for k, v in sd.items():
        if k in own and own[k].shape != v.shape:
            reinit.append(k)  # e.g. a 1000-class ImageNet head on a 10-class model
        elif k in own:
            usable[k] = v
    if not usable:
        raise CheckpointError(f"{path}: none of its {len(sd)} tensors match {model_name!r} (first keys: "
                              f"{_short(list(sd), 3)}); is it for another model?")
    res = model.load_state_dict(usable, strict=False)
    missing = [k for k in res.missing_keys if k not in reinit]
    return LoadReport(str(path), layout, len(usable), missing,
                      [k for k in sd if k not in own], reinit)
