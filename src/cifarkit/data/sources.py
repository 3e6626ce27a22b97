"""One entry point for every kind of dataset path: `load_dataset(path, split)`.

CIFAR batches (folder, parent or .tar.gz), an image folder (`root/[split/]<class>/*`) or a CSV
manifest all come back as the same `ImageSet`, so nothing downstream cares where data came from.
"""

from __future__ import annotations

from pathlib import Path

from cifarkit.data.cifar import is_cifar, read_cifar
from cifarkit.data.folder import FileList, read_manifest, scan_folder
from cifarkit.data.imageset import ImageSet
from cifarkit.errors import DataError


def describe_kind(path: str | Path) -> str:
    """What kind of dataset `path` is: "cifar", "manifest" (a .csv) or "folder".

    Raises:
        DataError: `path` does not exist or is none of the three.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if is_cifar(p):
        return "cifar"
    if p.is_file() and p.suffix.lower() == ".csv":
        return "manifest"
    if p.is_dir():
        return "folder"
    raise DataError(f"{p}: not a dataset; give CIFAR batches (folder or .tar.gz), an image folder or "
                    "a .csv manifest")


def list_files(path: str | Path, split: str | None, classes: list[str] | None = None) -> FileList:
    """The image files and labels of an image folder or a manifest, without decoding them.

    Args:
        path: an image folder `root/[split/]<class>/<file>` or a CSV manifest.
        split: the split to list (a subfolder or the manifest's `split` column); None for all.
        classes: the class names to use, in id order (default: the sorted folder names).

    Returns:
        A `FileList` (paths, label ids, class names, non-image files found).

    Raises:
        DataError: `path` is CIFAR batches, missing, or holds no images.
    """
    kind = describe_kind(path)
    if kind == "manifest":
        return read_manifest(path, split)
    if kind == "folder":
        return scan_folder(path, split, classes)
    raise DataError(f"{path}: CIFAR batches are not a file list")


def load_dataset(path: str | Path, split: str = "train", image_size: int | None = None,
                 cache: bool = True, classes: list[str] | None = None) -> ImageSet:
    """Read any supported dataset path as an `ImageSet`.

    Args:
        path: CIFAR batches (folder or `.tar.gz`), an image folder or a CSV manifest.
        split: "train", "test" (or another split folder / manifest split).
        image_size: decode folder images to this size [px]; None keeps their own size (all must
            then be the same).
        cache: keep the decoded array in `$CIFARKIT_CACHE` (default `~/.cache/cifarkit`), keyed by
            every file's path, size and mtime, so the next call loads it at once.
        classes: the class names to use, in id order (default: the folder names, sorted).

    Returns:
        uint8 (N, H, W, 3) images with labels, class names and provenance.

    Raises:
        DataError: the path is missing, an image is unreadable, or the data is malformed.
    """
    kind = describe_kind(path)
    if kind == "cifar":
        return read_cifar(path, split)
    files = list_files(path, split, classes)
    if cache:
        from cifarkit.data.cache import cached_decode

        return cached_decode(files, image_size)
    from cifarkit.data.folder import decode_files

    return decode_files(files, image_size)
