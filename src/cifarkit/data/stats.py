"""`cifarkit data stats`: class balance, per-channel mean/std, sizes, exact duplicates, unreadable files.

Duplicates are exact pixel matches (a hash of the decoded uint8 pixels), within each split and
across splits: a test image that also sits in train silently inflates the test accuracy.
An unreadable file is listed and counted, and the rest of its split is still measured (dropping
the split would hide its duplicates and class counts). Output files have fixed names inside
`--out`; nothing is named after the input.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from cifarkit.data.imageset import ImageSet
from cifarkit.errors import DataError
from cifarkit.safepath import check_apart, output_file, write_text_atomic


def channel_mean_std(images: np.ndarray, chunk_pixels: int = 1 << 22) -> tuple[list[float], list[float]]:
    """Per-channel mean and std over all pixels, on the 0..255 scale (what configs expect).

    Summed in float64 a chunk of images at a time, the chunk sized in pixels (4 Mpx, ~100 MB of
    float64 with its square), not in images: 8,192 CIFAR images are 8 Mpx, eight photos of
    1,000 x 1,000 as many."""
    s = np.zeros(3)
    ss = np.zeros(3)
    n = 0
    chunk = max(1, chunk_pixels // max(1, images.shape[1] * images.shape[2])) if images.ndim == 4 else 8192
    for k in range(0, len(images), chunk):
        x = images[k:k + chunk].reshape(-1, 3).astype(np.float64)
        s += x.sum(0)
        ss += (x * x).sum(0)
        n += len(x)
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean ** 2, 0))
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


def pixel_hashes(images: np.ndarray) -> list[bytes]:
    """A 16-byte BLAKE2b digest of every image's pixels (exact duplicates share one)."""
    return [hashlib.blake2b(img.tobytes(), digest_size=16).digest() for img in images]


def duplicates(splits: dict[str, ImageSet]) -> dict[str, Any]:
    """Exact pixel duplicates within each split and across splits (train/test leakage), with up to 20 examples."""
    where: dict[bytes, list[tuple[str, int]]] = defaultdict(list)
    for name, ds in splits.items():
        for i, h in enumerate(pixel_hashes(ds.images)):
            where[h].append((name, i))
    within: dict[str, int] = defaultdict(int)
    across: dict[str, int] = defaultdict(int)
    examples = []
    for locs in where.values():
        if len(locs) < 2:
            continue
        names = [n for n, _ in locs]
        for n in set(names):
            if names.count(n) > 1:
                within[n] += names.count(n) - 1
        if len(set(names)) > 1:
            across["/".join(sorted(set(names)))] += 1
        if len(examples) < 20:
            examples.append([f"{n}:{splits[n].sources[i]}#{splits[n].indices[i]}" for n, i in locs])
    return {"within_split": dict(within), "across_splits": dict(across), "examples": examples}


def dataset_stats(path: str | Path, out: str | Path | None = None, imbalance_ratio: float = 0.0) -> dict[str, Any]:
    """Class balance, per-channel mean/std, image sizes and duplicates of a dataset.

    Args:
        path: CIFAR batches (folder or `.tar.gz`), an image folder or a CSV manifest.
        out: a folder for `stats.json` and `class_balance.png`; None writes nothing.
        imbalance_ratio: describe the train split cut to this long-tail profile (what a run with
            `data.imbalance_ratio` trains on); 0 = the data as it is.

    Returns:
        A JSON-ready dict: classes, class_counts per split, imbalance (max / min images per
        class, per split), imbalance_ratio (the profile applied), mean and std per channel on the
        0..255 scale (of the train split; the values for `data.mean` / `data.std`), sizes,
        duplicates (within and across splits), unreadable files and links_out (files that are
        symlinks leading out of the dataset folder: skipped, never read).

    Raises:
        DataError: the path is missing or holds no readable image, or `imbalance_ratio` is given
            for data without a train split.
        ConfigError: `imbalance_ratio` is neither 0 nor a finite number >= 1.
    """
    from cifarkit.data.splits import check_imbalance_ratio, long_tail_train

    check_imbalance_ratio(imbalance_ratio, "--imbalance-ratio")
    if out is not None:  # the output place before any reading: not inside the data, its files regular
        check_apart(out, [path])
        if Path(out).exists() and not Path(out).is_dir():
            raise DataError(f"--out {out}: exists and is not a folder; choose another output folder")
        for name in ("stats.json", "class_balance.png"):
            output_file(Path(out) / name, overwrite=True)
    from cifarkit.data.cache import cached_decode
    from cifarkit.data.folder import FileList, check_files, manifest_splits, splits_of
    from cifarkit.data.sources import describe_kind, list_files, load_dataset

    kind = describe_kind(path)
    if kind == "cifar":
        names: list[str | None] = ["train", "test"]
    elif kind == "folder":
        names = splits_of(path) or [None]
    else:  # a manifest: its split column, as `data export` reads it
        names = manifest_splits(path) or [None]
    splits: dict[str, ImageSet] = {}
    unreadable: list[str] = []
    outside: list[str] = []
    sizes: dict[str, int] = {}
    for s in names:
        if kind == "cifar":
            splits[s or "all"] = load_dataset(path, s)
            continue
        files = list_files(path, s)
        rep = check_files(files)
        unreadable += [e if e.startswith(p) else f"{p}: {e}" for p, e in rep.unreadable]  # errors name their file
        outside += rep.outside
        for k, v in rep.sizes.items():
            sizes[k] = sizes.get(k, 0) + v
        bad = {p for p, _ in rep.unreadable}  # decode_files would stop at the first bad file
        keep = [i for i, p in enumerate(files.paths) if str(p) not in bad]
        if keep:
            splits[s or "all"] = cached_decode(FileList(
                [files.paths[i] for i in keep], [files.labels[i] for i in keep], files.classes,
                files.origin, files.split))
    if not splits:
        raise DataError(f"{path}: no readable images ({len(unreadable)} unreadable files); "
                        f"`cifarkit data check {path}` lists them")
    splits = long_tail_train(splits, imbalance_ratio, path)
    if kind == "cifar":
        sizes = {"32x32": sum(len(d) for d in splits.values())}
    ref = splits.get("train") or next(iter(splits.values()))
    mean, std = channel_mean_std(ref.images)
    result = {
        "path": str(path), "kind": kind, "classes": ref.classes,
        "class_counts": {n: d.class_counts() for n, d in splits.items()},
        "imbalance": {n: imbalance(d.class_counts()) for n, d in splits.items()},
        "imbalance_ratio": imbalance_ratio,
        "mean": mean, "std": std, "mean_std_split": "train" if "train" in splits else next(iter(splits)),
        "sizes": sizes, "duplicates": duplicates(splits), "unreadable": unreadable, "links_out": outside,
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "stats.json", json.dumps(result, indent=1))
        plot_class_balance(result, out / "class_balance.png")
    return result


def imbalance(counts: dict[str, int]) -> float | None:
    """max / min images per class (1.0 = balanced); None when a class has no image."""
    vals = list(counts.values())
    return max(vals) / min(vals) if vals and min(vals) > 0 else None


def plot_class_balance(stats: dict[str, Any], out: Path) -> None:
    """Save a bar chart of images per class and split from `dataset_stats`' result to `out`."""
    from cifarkit.plotting import pyplot, save

    plt = pyplot()
    classes = stats["classes"]
    splits = list(stats["class_counts"])
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(classes) + 2), 3.8))
    w = 0.8 / len(splits)
    for k, s in enumerate(splits):
        counts = [stats["class_counts"][s].get(c, 0) for c in classes]
        ax.bar(np.arange(len(classes)) + k * w - 0.4 + w / 2, counts, width=w, label=s)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("images")
    ax.set_title("class balance")
    ax.legend()
    save(fig, out)


def format_stats(s: dict[str, Any]) -> str:
    """The text `cifarkit data stats` prints for `dataset_stats`' result."""
    lt = f", train cut to imbalance ratio {s['imbalance_ratio']:g}" if s.get("imbalance_ratio") else ""
    lines = [f"{s['path']} ({s['kind']}, {len(s['classes'])} classes{lt})"]
    for split, counts in s["class_counts"].items():
        vals = list(counts.values())
        r = imbalance(counts)
        lines.append(f"  {split:<6} {sum(vals):>7,} images  per class min {min(vals)} max {max(vals)}  "
                     f"imbalance {'inf (an empty class)' if r is None else f'{r:.1f}'}")
        if r != 1.0 and len(counts) <= 20:  # the profile, class by class
            lines.append("         " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    lines.append(f"  mean/std over {s['mean_std_split']} (0..255, paste into a config):")
    lines.append(f"    data.mean: {s['mean']}")
    lines.append(f"    data.std:  {s['std']}")
    lines.append("  sizes: " + ", ".join(f"{k} x{v}" for k, v in s["sizes"].items()))
    d = s["duplicates"]
    lines.append(f"  exact duplicates within splits: {d['within_split'] or 'none'}; across splits: "
                 f"{d['across_splits'] or 'none'}")
    lines.append(f"  unreadable files: {len(s['unreadable'])}")
    lines += [f"    {u}" for u in s["unreadable"][:20]]
    if s.get("links_out"):
        lines.append(f"  links leading out of the folder, skipped: {len(s['links_out'])}")
        lines += [f"    {u}" for u in s["links_out"][:20]]
    return "\n".join(lines)
