"""Turn an image file into an RGB uint8 array, the same way everywhere.

Training from folders, `data stats`/`check`/`audit`/`export`, `predict`, `cam` and `serve` all go
through `load_rgb`, so an image is never decoded one way for training and another for prediction.

Only raster formats are decoded (`RASTER_FORMATS`: PNG, JPEG (and a camera's MPO), BMP, GIF,
TIFF, WebP and PBM/PGM/PPM/PNM/PFM), named to Pillow explicitly (`open_image`) whatever the file
is called: Pillow's other plugins include EPS/PS (which runs Ghostscript on the file), PDF, WMF
and a few dozen rare formats, and a file called `x.png` holding PostScript would otherwise reach
Ghostscript. `image_extensions` lists only those formats' extensions, so an `.eps` in a folder
is a non-image file, skipped and counted. Odd inputs are normalised here: EXIF rotation applied,
transparency composited on white, 16-bit scaled to 8-bit, CMYK/palette/grayscale converted to
RGB; decompression bombs are refused instead of filling memory.

Bounded memory (`max_side`, by default DECODE_MAX_SIDE = 1024 px, for datasets as for predict,
serve and cam): a classifier needs at most a few hundred pixels a side (a checkpoint takes at
most 1,024), so an image larger than `max_side` is reduced *while* decoding: a JPEG by its DCT
scaling (`draft`, never decoded at full size), any other format by an integer-factor box filter
(`Image.reduce`) straight after its raw decode and before any conversion, so no full-size RGB,
float64 or float copy is ever made. Decodes of large images
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
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps

from cifarkit.errors import DataError
from cifarkit.userfile import file_kind

# The formats cifarkit decodes, in the order Pillow tries them: raster formats only (module
# docstring). A camera's MPO (a JPEG holding a second picture) opens through the JPEG plugin.
RASTER_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
MAX_PIXELS = 64_000_000  # ~8k x 8k; more is far beyond any classifier input and likely a bomb
DECODE_MAX_SIDE = 1024  # every decode: larger images are reduced while decoding (module docstring)
BIG_DECODE_PIXELS = 4_000_000  # 2000 x 2000: such decodes take turns (one raw decode <= 256 MB at a time)
# Large decodes run one at a time on this one thread. Why one thread and not a lock: Pillow
# allocates an image in 16 MB blocks, which glibc serves from the calling thread's malloc arena and
# keeps there after free; big decodes spread over 4 decode threads left up to 4 arenas holding a
# few hundred MB each (predict of nine 7999^2 PNGs peaked at 1.05 or 1.66 GiB depending on which
# threads decoded them); on one thread the arena is reused and the peak is one decode's.
_BIG_DECODER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cifarkit-big-decode")


@lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """The file endings of `RASTER_FORMATS` (lower case, with the dot): .png, .jpg, .tif, .ppm, ..."""
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                     if fmt in (*RASTER_FORMATS, "MPO"))


def is_image_name(path: str | Path) -> bool:
    """Whether `path`'s extension is one of a format cifarkit decodes (`RASTER_FORMATS`)."""
    return Path(path).suffix.lower() in image_extensions()


def open_image(fp: Any) -> Image.Image:
    """`Image.open` restricted to `RASTER_FORMATS`: the one way cifarkit opens an image, so no
    other Pillow plugin (Ghostscript for EPS, ...) ever sees a file, whatever its name says.

    Raises:
        PIL.UnidentifiedImageError: `fp` is in none of those formats.
    """
    return Image.open(fp, formats=RASTER_FORMATS)


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
    except ValueError:  # a NUL byte (from stdin or a manifest): no file can be called that
        raise DataError(f"{path!r}: a path with a NUL byte in it, which no file has") from None
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: is {file_kind(mode)}, not an image file")


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


def load_rgb(path: str | Path | BinaryIO, size: tuple[int, int] | None = None,
             max_side: int | None = DECODE_MAX_SIDE) -> np.ndarray:
    """Decode `path` to (H, W, 3) uint8; resize (bilinear, antialiased) to `size` = (W, H) if given.

    `max_side`: a larger image is reduced while decoding (`reduce_while_decoding`) so that no
    full-size copy is ever held; None decodes at full size (only for callers that bound memory
    themselves). A path must be a regular file (`check_regular_file`)."""
    return decode_sized(path, size, max_side)[0]


def decode_sized(path: str | Path | BinaryIO, size: tuple[int, int] | None = None,
                 max_side: int | None = DECODE_MAX_SIDE) -> tuple[np.ndarray, tuple[int, int]]:
    """`load_rgb`, plus the image's own (W, H) as stored in the file (what `data check` and
    `data stats` report, whatever size the pixels were decoded at).

    Raises:
        DataError: not a regular file, not in `RASTER_FORMATS`, over MAX_PIXELS, or unreadable.
    """
    if isinstance(path, (str, Path)):
        check_regular_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open_image(path) as im:
                own = im.size
                if im.width * im.height > MAX_PIXELS:
                    raise DataError(f"{path}: {im.width}x{im.height} pixels is over the {MAX_PIXELS:,} "
                                    "limit (possible decompression bomb); resize it first")
                def decode() -> Image.Image:
                    return to_rgb(reduce_while_decoding(im, max_side) if max_side else im)

                big = im.width * im.height > BIG_DECODE_PIXELS
                img = _BIG_DECODER.submit(decode).result() if big else decode()
                if size is not None and img.size != tuple(size):
                    img = img.resize(tuple(size), Image.BILINEAR)
                return np.asarray(img, dtype=np.uint8).copy(), own
    except DataError:
        raise
    except Image.UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (none of the formats cifarkit reads: "
                        f"{', '.join(RASTER_FORMATS)}); convert it to PNG or JPEG") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: refused as a possible decompression bomb ({e})") from None
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, ValueError, SyntaxError, TypeError,
            EOFError, MemoryError) as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
