"""The vocabularies written once: TTA levels, precisions and devices. The config (`eval.tta`,
`train.amp`), the CLI (`--tta`, `--precision`, `--device`), serve and the docs read them from here.
"""

from __future__ import annotations

# test-time augmentation: none; flip = (x, mirror); flip_translate = airbench94's, the flip pair
# at 1 px translations (infer.evaluate.tta_logits)
TTA_LEVELS = ("none", "flip", "flip_translate")
TTA_ALONE = "flip_translate"  # what `--tta` given without a value means

# computation precision; auto = bf16 on CUDA or a CPU with AMX / AVX512-BF16, else fp32 (infer.device)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AMP_DEPRECATED = {"none": "fp32"}  # train.amp's old spelling -> the one to use (still accepted)

DEVICE_DEFAULT = "auto"  # every command's --device; training commands default to the config's train.device
DEVICES = "auto | cpu | cuda | cuda:N"  # how a device is named (mps and others as torch names them)


def amp_deprecation(amp: str) -> str | None:
    """The one line `train.amp: none` prints (it means fp32), or None for a current spelling."""
    new = AMP_DEPRECATED.get(amp)
    return None if new is None else (f"warning: train.amp: {amp} is deprecated and means {new}; "
                                     f"write train.amp: {new}")
