"""Turn any Pillow-readable file into an RGB uint8 array, the same way everywhere.

Training from folders, `data check` and `predict` all go through `load_rgb`, so an image is never
decoded one way for training and another for prediction. Odd inputs are normalised here:
EXIF rotation applied, transparency composited on white, 16-bit scaled to 8-bit, CMYK/palette/
grayscale converted to RGB; decompression bombs are refused instead of filling memory.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cifarkit.errors import DataError

MAX_PIXELS = 64_000_000  # ~8k x 8k; more is far beyond any classifier input and likely a bomb


@lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """Every file ending Pillow can open (lower case, with the dot)."""
    Image.init()
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def is_image_name(path: str | Path) -> bool:
    """Whether `path`'s extension is one Pillow can open."""
    return Path(path).suffix.lower() in image_extensions()


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image -> 8-bit RGB: EXIF rotation applied, 16-bit grey rescaled, transparency over white."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grey: scale the used range to 0..255 instead of clipping to white
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("RGB")


def load_rgb(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode `path` to (H, W, 3) uint8; resize (bilinear, antialiased) to `size` = (W, H) if given."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise DataError(f"{path}: {im.width}x{im.height} pixels is over the {MAX_PIXELS:,} "
                                    "limit (possible decompression bomb); resize it first")
                img = to_rgb(im)
                if size is not None and img.size != tuple(size):
                    img = img.resize(tuple(size), Image.BILINEAR)
                return np.asarray(img, dtype=np.uint8).copy()
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: refused as a possible decompression bomb ({e})") from None
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, ValueError, SyntaxError, TypeError, Image.UnidentifiedImageError,
            EOFError, MemoryError) as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
