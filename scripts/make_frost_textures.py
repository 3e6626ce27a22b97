"""Make the frost textures `cifarkit robustness` overlays (src/cifarkit/data/frost/frost{1..5}.png).

The CIFAR-10-C protocol (Hendrycks & Dietterich, ICLR 2019) blends a random 32x32 crop of one of
five frost photographs, first scaled by 0.2 with bilinear interpolation (OpenCV's INTER_LINEAR:
half-pixel centres, no antialiasing). We ship them already scaled: the crops are then the
protocol's, and the package carries ~1/25 of the pixels. The photographs come with the
Apache-2.0 `imagecorruptions` package (bethgelab, after hendrycks/robustness); see
src/cifarkit/data/frost/NOTICE. Run once, with that package's wheel unpacked somewhere:

    pip download --no-deps imagecorruptions==1.1.2 -d /tmp/ic && unzip /tmp/ic/*.whl -d /tmp/ic/x
    python scripts/make_frost_textures.py /tmp/ic/x/imagecorruptions/frost
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

OUT = Path(__file__).resolve().parents[1] / "src" / "cifarkit" / "data" / "frost"
NAMES = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"]  # the protocol draws from 5


def main(src: Path) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(NAMES, 1):
        # cv2.imread applies a JPEG's EXIF orientation (these files have none; kept for the rule)
        rgb = np.asarray(ImageOps.exif_transpose(Image.open(src / name)).convert("RGB"), dtype=np.float32)
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
        # cv2.resize(fx=0.2): source coordinate (d + 0.5) / 0.2 - 0.5 = 5d + 2; a given scale_factor
        # maps with exactly that scale (size= would use in/out, off for sides not a multiple of 5)
        y = F.interpolate(x, scale_factor=0.2, mode="bilinear", align_corners=False, recompute_scale_factor=False)
        assert y.shape[2:] == (round(x.shape[2] * 0.2), round(x.shape[3] * 0.2))  # cv2's output size
        arr = y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(OUT / f"frost{i}.png", optimize=True)
        print(f"{name}: {rgb.shape[1]}x{rgb.shape[0]} -> {arr.shape[1]}x{arr.shape[0]}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
