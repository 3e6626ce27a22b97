"""Where and in what precision a run computes, and what software it runs on.

`resolve_device` turns the user's `train.device` into a torch device (one sentence when CUDA is
asked for and missing); `amp_dtype` picks the autocast dtype; `versions` is recorded in every
log header and checkpoint so a run can be reproduced.
"""

from __future__ import annotations

import platform

import torch
import torchvision

from cifarkit import __version__
from cifarkit.errors import ConfigError


def resolve_device(spec: str = "auto") -> torch.device:
    """The torch device for `train.device` / --device; "auto" is CUDA when available, else the CPU.

    Raises:
        ConfigError: CUDA is asked for and not available, or `spec` names no device.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r}: CUDA is not available on this machine; use --device cpu")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"device {spec!r}: not a device; use auto, cpu, cuda or cuda:N") from None


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.amp` on `device`, or None for fp32.

    "none" is None and "fp16" float16; "bf16", and "auto" on a CPU (several times faster there than
    fp32), are bfloat16; "auto" on CUDA is bfloat16 where the GPU supports it, else float16."""
    if amp == "none":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or device.type == "cpu":
        return torch.bfloat16  # CPU: AMX/AVX-512 bf16 convolutions are several times faster than fp32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def versions() -> dict[str, str]:
    """cifarkit, torch, torchvision and Python versions and the platform, for log headers and checkpoints."""
    return {"cifarkit": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "python": platform.python_version(), "platform": platform.platform()}
