"""Bounds and structure checks for values read from dataset files, applied before memory is spent.

A pickle can describe huge structures cheaply: the unpickler's memo lets 10 KB of opcodes build
a list that holds the same nested list a million times, and `np.asarray` or `str()` of that then
expands it to tens of GiB. So every value taken from a file is checked for its *type, length and
size* first, by walking only its top level (never converting or printing it), and refused with
one `DataError` line that names the file, the key and what to do.

The bounds, and why they are safe for every genuine file:
- `MAX_BATCH_BYTES` 200 MB per batch file: the largest official batch is CIFAR-100's `train`,
  50,000 x 3,072 pixel bytes + labels and file names = ~158 MB; CIFAR-10 batches are ~31 MB.
- `MAX_NAME_BYTES` 1,024 per file or class name: real ones are under 40 bytes.
- `MAX_CLASSES` 10,000 class names or class ids: CIFAR-100 has 100.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cifarkit.errors import DataError

MAX_BATCH_BYTES = 200_000_000
MAX_NAME_BYTES = 1024
MAX_CLASSES = 10_000


def check_file_size(size: int, shown: str, limit: int = MAX_BATCH_BYTES) -> None:
    """Refuse a batch/meta file (on disk or in a tar header) bigger than any real one."""
    if size > limit:
        raise DataError(f"{shown}: {size:,} bytes is more than any CIFAR batch can be (limit {limit:,}); "
                        "the file is corrupt or hostile, re-download the dataset")


def _kind(v: Any) -> str:
    return type(v).__name__


def int_labels(value: Any, shown: str, key: str, n: int, num_classes: int) -> np.ndarray:
    """`value` as an int64 (n,) array, refused unless it is a flat list of ints in 0..num_classes-1.

    Checked item by item before any array is built, so a list of shared nested lists or of
    floats (which `np.asarray(..., int64)` would expand or silently truncate) never gets that far.
    """
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or value.dtype.kind not in "iu":
            raise DataError(f"{shown}: {key!r} is a {value.dtype} array of shape {value.shape}, expected a "
                            "flat list of integer class ids; the file is corrupt")
        items = value
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise DataError(f"{shown}: {key!r} is a {_kind(value)}, expected a list of integer class ids; "
                        "the file is corrupt")
    if len(items) != n:
        raise DataError(f"{shown}: {len(items):,} labels for {n:,} images (in {key!r}); the file is corrupt, "
                        "re-download it")
    if not isinstance(items, np.ndarray):
        for i, v in enumerate(items):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise DataError(f"{shown}: {key}[{i}] is a {_kind(v)}, expected an integer class id; "
                                "the file is corrupt")
    if n:
        lo, hi = min(items), max(items)  # Python ints: 2**70 compares fine, no overflow
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise DataError(f"{shown}: label {int(bad)} is outside 0..{num_classes - 1} for {num_classes} "
                            f"classes (in {key!r}); the file does not match its meta")
    return np.asarray(items, dtype=np.int64)


def name_text(v: Any, shown: str, what: str) -> str:
    """One file or class name as str: refused unless str/bytes of at most MAX_NAME_BYTES."""
    if isinstance(v, bytes):
        v = v.decode("latin1")  # the 2009 files are Python-2 byte strings
    if not isinstance(v, str):
        raise DataError(f"{shown}: {what} is a {_kind(v)}, expected text; the file is corrupt")
    if len(v) > MAX_NAME_BYTES or len(v.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise DataError(f"{shown}: {what} is {len(v.encode('utf-8', 'surrogatepass')):,} bytes long, over the "
                        f"{MAX_NAME_BYTES} limit; the file is corrupt or hostile")
    return v


def name_list(value: Any, shown: str, key: str, n: int | None = None, unique: bool = False) -> list[str]:
    """A flat list of bounded names (exactly `n` of them when given, at most MAX_CLASSES otherwise)."""
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{shown}: {key!r} is a {_kind(value)}, expected a list of names; the file is corrupt")
    if n is not None and len(value) != n:
        raise DataError(f"{shown}: {len(value):,} {key} for {n:,} images; the file is corrupt, re-download it")
    if n is None and not 0 < len(value) <= MAX_CLASSES:
        raise DataError(f"{shown}: {key!r} holds {len(value):,} names, expected 1..{MAX_CLASSES:,}; "
                        "the file is corrupt")
    names = [name_text(v, shown, f"{key}[{i}]") for i, v in enumerate(value)]
    if unique and len(set(names)) != len(names):
        seen: set[str] = set()
        dup = next(s for s in names if s in seen or seen.add(s))  # set.add returns None
        raise DataError(f"{shown}: {key!r} names {dup!r} twice; two classes cannot share a name, fix the meta file")
    return names
