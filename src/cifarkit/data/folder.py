"""Image folders (`root/[split/]<class>/<file>`) and CSV manifests as datasets.

Scanning only lists files; `decode_files` turns the list into an `ImageSet` (decoded once,
optionally cached on disk by `cache.py`). Hidden entries such as `.ipynb_checkpoints` and
`.DS_Store` are skipped rather than becoming classes, and non-image files are counted, not fed
to the decoder.

Nothing is read from outside the dataset (`saferead.Within`): a file that is a symlink leading
out of the folder is skipped and counted (`FileList.outside`, listed by `data check` like the
non-image files), a class or split folder leading out, or a manifest row whose path leads out of
the manifest's folder (`../`, an absolute path elsewhere, a symlink), is one `DataError`; so is a
class or split folder whose name is not UTF-8 (a file's name need not be).
Decoding is bounded like predict's (`decode.load_rgb`, DECODE_MAX_SIDE px a side at most), so a
folder of huge images never holds one at full size.

Manifests are read as `utf-8-sig` (Excel starts its CSVs with a byte-order mark), and label ids
must be 0..MAX_CLASSES-1 with one name per id: a negative or huge id, or one name for two ids,
is refused when the manifest is read rather than crashing training or misfiling an export.
"""

from __future__ import annotations

import csv
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cifarkit.data.decode import decode_sized, is_image_name, load_rgb
from cifarkit.data.export import MANIFEST_COLUMNS
from cifarkit.data.imageset import ImageSet
from cifarkit.data.validate import MAX_CLASSES
from cifarkit.errors import DataError
from cifarkit.safecsv import csv_uncell
from cifarkit.saferead import Within, check_text_name


def _hidden(name: str) -> bool:
    return name.startswith((".", "__"))


@dataclass
class FileList:
    """A dataset not yet decoded: one path and class id per image."""

    paths: list[Path]
    labels: list[int]
    classes: list[str]
    origin: str
    split: str = ""
    non_images: list[Path] = field(default_factory=list)
    outside: list[Path] = field(default_factory=list)  # symlinks leading out of the folder: skipped

    def __len__(self) -> int:
        return len(self.paths)


def splits_of(root: str | Path) -> list[str]:
    """Split folders under `root` (e.g. train/test) when it is laid out as root/<split>/<class>/."""
    root = Path(root)
    within = Within(root)
    found = []
    # a folder leading out of root is not looked into (scan_folder refuses it by name)
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(p.name) and not within.link_out(p)):
        subs = [s for s in d.iterdir() if s.is_dir() and not _hidden(s.name)]
        if subs and not any(is_image_name(f) for f in d.iterdir() if f.is_file()):
            found.append(d.name)
    # A plain class folder has images directly inside; split folders only have class folders.
    return found if found and all(_has_images_below(root / s, within) for s in found) else []


def _has_images_below(d: Path, within: Within) -> bool:
    return any(f.is_file() and is_image_name(f) for sub in d.iterdir() if sub.is_dir() and within.holds(sub)
               for f in sub.iterdir())


def scan_folder(root: str | Path, split: str | None = None, classes: list[str] | None = None) -> FileList:
    """List `root/<class>/*` (or `root/<split>/<class>/*` when `split` is given or required)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    within = Within(root)
    base = root
    splits = splits_of(root)
    if split:
        if (root / split).is_dir():
            base = root / split
            within.check(base, f"{base} (split folder)")
            check_text_name(base, "split")
        elif splits:
            raise DataError(f"{root}: no split folder {split!r}; found {', '.join(splits)}")
    elif splits:
        raise DataError(f"{root}: holds split folders ({', '.join(splits)}); name one with --split")
    class_dirs = sorted(p for p in base.iterdir() if p.is_dir() and not _hidden(p.name))
    if not class_dirs:
        raise DataError(f"{base}: no class folders; expected {base}/<class>/<image files>")
    names = classes if classes is not None else [d.name for d in class_dirs]
    index = {n: i for i, n in enumerate(names)}
    paths: list[Path] = []
    labels: list[int] = []
    non_images: list[Path] = []
    outside: list[Path] = []
    for d in class_dirs:
        within.check(d, f"{d} (class folder)")
        check_text_name(d, "class")
        if d.name not in index:
            raise DataError(f"{d}: class {d.name!r} is not among the expected classes {names}")
        for f in sorted(d.rglob("*")):  # rglob does not descend into linked folders; linked files are judged
            if any(_hidden(part) for part in f.relative_to(d).parts) or not f.is_file():
                continue
            if within.link_out(f):
                outside.append(f)
            elif is_image_name(f):
                paths.append(f)
                labels.append(index[d.name])
            else:
                non_images.append(f)
    return FileList(paths, labels, list(names), str(root), split or "", non_images, outside)


def _manifest_rows(csv_path: Path) -> list[dict[str, str]]:
    """The rows of a manifest; one in the export's own layout has its cells un-neutralised
    (`safecsv.csv_uncell`), so the names it was written with come back exactly."""
    from cifarkit.userfile import MiB, open_user_file

    # a regular file of at most 512 MiB (millions of rows) only: a FIFO or /dev/zero is one error
    f = open_user_file(csv_path, "manifest", 512 * MiB, encoding="utf-8-sig", newline="")  # -sig: Excel's BOM
    try:
        with f:
            reader = csv.DictReader(f)
            rows = list(reader)
            if reader.fieldnames == MANIFEST_COLUMNS:
                rows = [{k: csv_uncell(v) if isinstance(v, str) else v for k, v in r.items()} for r in rows]
            return rows
    except (UnicodeDecodeError, csv.Error, OSError) as e:
        raise DataError(f"{csv_path}: not a readable CSV manifest ({e})") from None


def manifest_splits(csv_path: str | Path) -> list[str]:
    """The values of a manifest's `split` column in first-seen order, "" included ([] without one)."""
    rows = _manifest_rows(Path(csv_path))
    if not rows or "split" not in rows[0]:
        return []
    return list(dict.fromkeys(r.get("split") or "" for r in rows))


def _label_id(value: str, csv_path: Path, row: int, key: str) -> int:
    try:
        i = int(value)
    except (TypeError, ValueError):
        raise DataError(f"{csv_path}: row {row}: {key} {value!r} is not an integer") from None
    if not 0 <= i < MAX_CLASSES:
        raise DataError(f"{csv_path}: row {row}: {key} {i} is outside 0..{MAX_CLASSES - 1}; class ids count "
                        "from 0, fix that row")
    return i


def read_manifest(csv_path: str | Path, split: str | None = None) -> FileList:
    """A CSV with `path,label` (names or ids), or the export's columns, as a dataset.

    Paths are relative to the CSV's folder; an absolute one must lie inside that folder too, like
    every path after its symlinks (`saferead.Within`). With a `split` column and `split` given
    (not None; "" selects rows with an empty split), only those rows are kept.

    Raises:
        DataError: the manifest is unreadable or malformed, or a row's path leads out of its folder.
    """
    csv_path = Path(csv_path)
    rows = _manifest_rows(csv_path)
    if not rows:
        raise DataError(f"{csv_path}: the manifest has no rows")
    cols = set(rows[0])
    if "path" not in cols or not cols & {"label", "label_name", "label_id"}:
        raise DataError(f"{csv_path}: a manifest needs a 'path' column and a 'label' (or label_name/"
                        f"label_id) column; found {sorted(c for c in cols if c)}")
    if split is not None and "split" in cols:
        rows = [r for r in rows if r.get("split") == split]
        if not rows:
            raise DataError(f"{csv_path}: no rows with split {split!r}")
    for i, r in enumerate(rows):
        if not r.get("path"):
            raise DataError(f"{csv_path}: row {i + 2} has an empty path")
    if "label_id" in cols and "label_name" in cols:
        pairs: dict[int, str] = {}
        labels = []
        for i, r in enumerate(rows):
            y, name = _label_id(r["label_id"], csv_path, i + 2, "label_id"), r["label_name"] or ""
            if pairs.setdefault(y, name) != name:
                raise DataError(f"{csv_path}: row {i + 2}: label_id {y} is named {name!r} here but "
                                f"{pairs[y]!r} before; give each id one label_name")
            labels.append(y)
        classes = [pairs.get(i, str(i)) for i in range(max(pairs) + 1)]
        if len(set(classes)) != len(classes):
            dup = Counter(classes).most_common(1)[0][0]
            raise DataError(f"{csv_path}: label_name {dup!r} belongs to two label_ids; give each class one id")
    else:
        key = "label" if "label" in cols else ("label_name" if "label_name" in cols else "label_id")
        values = [(r.get(key) or "").strip() for r in rows]
        if any(v == "" for v in values):
            raise DataError(f"{csv_path}: row {values.index('') + 2} has an empty {key!r}")
        if all(v.lstrip("-").isdigit() for v in values):
            labels = [_label_id(v, csv_path, i + 2, key) for i, v in enumerate(values)]
            classes = [str(i) for i in range(max(labels) + 1)]
        else:
            classes = sorted(set(values))
            labels = [classes.index(v) for v in values]
    base = csv_path.parent
    within = Within(base)
    paths = [base / r["path"] for r in rows]  # an absolute path replaces base
    for i, p in enumerate(paths):
        within.check(p, f"{csv_path}: row {i + 2}: path {rows[i]['path']!r}")
    return FileList(paths, labels, classes, str(csv_path), split or "")


def decode_files(files: FileList, size: int | None = None, workers: int = 4) -> ImageSet:
    """Decode every file to one uint8 (N, S, S, 3) array.

    `size` None keeps the images' own size when they all agree (CIFAR exports) and otherwise
    resizes to the most common size, so one array can hold them. Either way an image over
    DECODE_MAX_SIDE px a side is reduced while it is decoded (`load_rgb`), never held at full size.
    """
    if not files.paths:
        raise DataError(f"{files.origin}: no images found")
    target = (size, size) if size else None
    with ThreadPoolExecutor(max(1, workers)) as pool:  # Pillow releases the GIL while decoding
        arrays = list(pool.map(lambda p: load_rgb(p, target), files.paths))
    shapes = Counter(a.shape for a in arrays)
    if len(shapes) > 1:
        (h, w, _), _ = shapes.most_common(1)[0]
        arrays = [a if a.shape[:2] == (h, w) else load_rgb(p, (w, h)) for a, p in zip(arrays, files.paths)]
    return imageset_from_files(files, np.stack(arrays))


def imageset_from_files(files: FileList, images: np.ndarray) -> ImageSet:
    """Attach labels and provenance (path relative to the dataset root) to decoded pixels."""
    root = Path(files.origin)
    root = root.parent if root.is_file() else root
    return ImageSet(
        images=images, labels=np.asarray(files.labels, dtype=np.int64), classes=list(files.classes),
        sources=[str(_relative(p, root)) for p in files.paths], indices=np.zeros(len(images), dtype=np.int64),
        filenames=[p.name for p in files.paths], origin=files.origin, split=files.split,
    )


def _relative(p: Path, root: Path) -> Path:
    try:
        return p.relative_to(root)
    except ValueError:
        return p


@dataclass
class CheckReport:
    """What `check_files` found: readable images, unreadable files with the reason, empty classes, sizes."""
    origin: str
    images: int
    unreadable: list[tuple[str, str]]
    empty_classes: list[str]
    non_images: list[str]
    sizes: dict[str, int]  # "WxH" as stored in the files (decoding reduces the huge ones)
    class_counts: dict[str, int]
    outside: list[str] = field(default_factory=list)  # links out of the folder, skipped

    @property
    def ok(self) -> bool:
        """True when every file decodes, no class is empty and there is at least one image."""
        return not self.unreadable and not self.empty_classes and self.images > 0


def check_files(files: FileList, workers: int = 4) -> CheckReport:
    """Decode every image of `files` once and report what would stop training.

    Args:
        files: a `FileList` from `list_files` / `scan_folder` / `read_manifest`.
        workers: decoding threads.

    Returns:
        A `CheckReport`: image count, unreadable files with the reason, non-image files, links
        leading out of the folder, empty classes, a "WxH" -> count histogram and the images per class.
    """
    def probe(p: Path) -> tuple[str, str | None, tuple[int, int] | None]:
        try:
            _, own = decode_sized(p)  # decoded (reduced) to prove it reads; its stored size reported
            return str(p), None, own
        except DataError as e:
            return str(p), str(e), None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(probe, files.paths))
    sizes = Counter(f"{s[0]}x{s[1]}" for _, err, s in results if s)
    counts = Counter(files.labels[i] for i, (_, err, _) in enumerate(results) if err is None)
    return CheckReport(
        origin=files.origin, images=sum(1 for _, e, _ in results if e is None),
        unreadable=[(p, e) for p, e, _ in results if e], non_images=[str(p) for p in files.non_images],
        outside=[str(p) for p in files.outside],
        empty_classes=[c for i, c in enumerate(files.classes) if counts.get(i, 0) == 0],
        sizes=dict(sizes.most_common()), class_counts={c: counts.get(i, 0) for i, c in enumerate(files.classes)},
    )
