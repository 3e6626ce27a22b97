"""Decode once: keep a decoded image folder as one uint8 array on disk.

The key is a hash of every file's path, size and mtime plus the target size, so any edit, added
or removed file makes a new entry and a stale cache can never be served. Entries are plain
`.npy` files (no pickle) written to a temporary name and renamed, so a killed run never leaves a
half-written cache behind.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from cifarkit import cache_dir
from cifarkit.data.folder import FileList, decode_files, imageset_from_files
from cifarkit.data.imageset import ImageSet
from cifarkit.safepath import temp_beside


def cache_key(files: FileList, size: int | None) -> str:
    """A key that changes when any file's path, size, mtime or label, or the decode size, changes."""
    # v2: images over DECODE_MAX_SIDE are reduced while decoding, so v1 entries of such folders differ
    h = hashlib.sha256(f"v2|{size}|{len(files.paths)}".encode())
    for p, y in zip(files.paths, files.labels):
        st = p.stat()
        # surrogateescape: a Linux file name is bytes, and one that is not UTF-8 (b"cat\xff.png")
        # comes to Python as lone surrogates; its own bytes go into the key, as the name is on disk
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}|{y}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:32]


def cached_decode(files: FileList, size: int | None = None, root: Path | None = None) -> ImageSet:
    """`decode_files` with an on-disk cache; the first call decodes, later calls load the array."""
    root = root or cache_dir()
    path = root / f"{cache_key(files, size)}.npy"
    if path.is_file():
        try:
            images = np.load(path, allow_pickle=False)
            return imageset_from_files(files, images)
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # unreadable entry: rebuild it below
    ds = decode_files(files, size)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = temp_beside(path)  # random, created exclusively (the cache folder may be shared)
        try:
            np.save(tmp, ds.images)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only cache location only costs speed, never correctness
    return ds
