"""Turn any Pillow-readable file into an RGB uint8 array, the same way everywhere.

Training from folders, `data check` and `predict` all go through `load_rgb`, so an image is never
decoded one way for training and another for prediction. Odd inputs are normalised here:
EXIF rotation applied, transparency composited on white, 16-bit scaled to 8-bit, CMYK/palette/
grayscale converted to RGB; decompression bombs are refused instead of filling memory.

Bounded memory (`max_side`, what predict, serve and cam ask for): a classifier needs at most a few
hundred pixels a side, so an image larger than `max_side` (DECODE_MAX_SIDE, 1024 px) is reduced
*while* decoding: a JPEG by its DCT scaling (`draft`, never decoded at full size), any other format
by an integer-factor box filter (`Image.reduce`) straight after its raw decode and before any
conversion, so no full-size RGB, float64 or float copy is ever made. Decodes of large images
(over BIG_DECODE_PIXELS) take turns on one thread of their own, so ten files cannot each hold a
full-size raw decode at once. Only regular files are opened: a FIFO, a device or a folder is one
`DataError` (opening a FIFO would block for ever).
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cifarkit.errors import DataError

MAX_PIXELS = 64_000_000  # ~8k x 8k; more is far beyond any classifier input and likely a bomb
DECODE_MAX_SIDE = 1024  # predict / serve / cam: larger images are reduced while decoding (module docstring)
BIG_DECODE_PIXELS = 4_000_000  # 2000 x 2000: such decodes take turns (one raw decode <= 256 MB at a time)
# Large decodes run one at a time on this one thread. Why one thread and not a lock: Pillow
# allocates an image in 16 MB blocks, which glibc serves from the calling thread's malloc arena and
# keeps there after free; big decodes spread over 4 decode threads left up to 4 arenas holding a
# few hundred MB each (predict of nine 7999^2 PNGs peaked at 1.05 or 1.66 GiB depending on which
# threads decoded them); on one thread the arena is reused and the peak is one decode's.
_BIG_DECODER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cifarkit-big-decode")


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


def check_regular_file(path: str | Path) -> None:
    """Refuse anything but a regular file (after symlinks): a FIFO would block `open` for ever, a
    device (/dev/zero) never ends.

    Raises:
        DataError: it is missing, or a FIFO, device, socket or folder.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise DataError(f"{path}: is {kind}, not an image file")


def reduce_while_decoding(im: Image.Image, max_side: int) -> Image.Image:
    """`im` (just opened, not yet loaded) decoded with its longer side reduced to <= `max_side`:
    JPEG by DCT scaling (never decoded at full size), others by an integer box filter right after
    the raw decode. Returns `im` itself when it is small enough."""
    w, h = im.size
    if max(w, h) <= max_side:
        return im
    k = math.ceil(max(w, h) / max_side)
    if im.format == "JPEG":
        im.draft(None, (math.ceil(w / k), math.ceil(h / k)))  # a power-of-2 scale >= the request
    im.load()
    k = math.ceil(max(im.size) / max_side)
    if k <= 1:
        return im
    if im.mode not in ("1", "L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F", "La", "RGBa"):
        # Image.reduce has no kernel for these (16-bit grey, palette): one conversion first
        im = im.convert("I" if im.mode.startswith("I;16") else "RGBA" if "transparency" in im.info else "RGB")
    return im.reduce(k)


def load_rgb(path: str | Path, size: tuple[int, int] | None = None, max_side: int | None = None) -> np.ndarray:
    """Decode `path` to (H, W, 3) uint8; resize (bilinear, antialiased) to `size` = (W, H) if given.

    `max_side`: reduce a larger image while decoding (`reduce_while_decoding`), for callers that
    bound memory (predict, serve, cam). A path must be a regular file (`check_regular_file`)."""
    if isinstance(path, (str, Path)):
        check_regular_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise DataError(f"{path}: {im.width}x{im.height} pixels is over the {MAX_PIXELS:,} "
                                    "limit (possible decompression bomb); resize it first")
                def decode() -> Image.Image:
                    return to_rgb(reduce_while_decoding(im, max_side) if max_side else im)

                big = im.width * im.height > BIG_DECODE_PIXELS
                img = _BIG_DECODER.submit(decode).result() if big else decode()
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
