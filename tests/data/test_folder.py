"""Image folders, manifests, `check`, and the decode-once cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarkit.data.cache import cached_decode
from cifarkit.data.folder import check_files, decode_files, read_manifest, scan_folder, splits_of
from cifarkit.data.sources import load_dataset
from cifarkit.errors import DataError


def make_folder(root: Path, classes=("cat", "dog"), n: int = 3, split: str | None = None) -> Path:
    base = root / split if split else root
    rng = np.random.default_rng(0)
    for c in classes:
        (base / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(base / c / f"{i}.png")
    return root


def test_scan_skips_hidden_and_counts_non_images(tmp_path: Path):
    make_folder(tmp_path)
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "x.png").write_bytes(b"")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "cat" / "notes.txt").write_text("hi")
    fl = scan_folder(tmp_path)
    assert fl.classes == ["cat", "dog"]
    assert len(fl) == 6 and [p.name for p in fl.non_images] == ["notes.txt"]


def test_split_layout(tmp_path: Path):
    make_folder(tmp_path, split="train")
    make_folder(tmp_path, split="test", n=2)
    assert splits_of(tmp_path) == ["test", "train"]
    assert len(scan_folder(tmp_path, "test")) == 4
    with pytest.raises(DataError, match="name one with --split"):
        scan_folder(tmp_path)
    with pytest.raises(DataError, match="no split folder 'val'"):
        scan_folder(tmp_path, "val")


def test_odd_formats_decode_to_rgb(tmp_path: Path):
    (tmp_path / "a").mkdir()
    Image.new("L", (32, 32), 128).save(tmp_path / "a" / "grey.png")
    Image.new("RGBA", (32, 32), (255, 0, 0, 0)).save(tmp_path / "a" / "clear.png")
    Image.new("CMYK", (32, 32), (0, 0, 0, 0)).save(tmp_path / "a" / "cmyk.jpg")
    Image.new("P", (40, 20)).save(tmp_path / "a" / "pal.gif")
    ds = decode_files(scan_folder(tmp_path))
    assert ds.images.shape == (4, 32, 32, 3)  # the odd-sized GIF was resized to the common size
    clear = ds.filenames.index("clear.png")
    assert (ds.images[clear] == 255).all()  # transparent pixels composited on white


def test_manifest_path_label(tmp_path: Path):
    make_folder(tmp_path / "imgs")
    (tmp_path / "m.csv").write_text("path,label\nimgs/cat/0.png,cat\nimgs/dog/1.png,dog\nimgs/dog/2.png,dog\n")
    fl = read_manifest(tmp_path / "m.csv")
    assert fl.classes == ["cat", "dog"] and fl.labels == [0, 1, 1]
    ds = load_dataset(tmp_path / "m.csv", split=None)
    assert len(ds) == 3 and ds.sources[0] == "imgs/cat/0.png"


def test_manifest_errors(tmp_path: Path):
    (tmp_path / "m.csv").write_text("file,cls\na.png,1\n")
    with pytest.raises(DataError, match="needs a 'path' column"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "e.csv").write_text("path,label\n")
    with pytest.raises(DataError, match="no rows"):
        read_manifest(tmp_path / "e.csv")
    (tmp_path / "b.csv").write_bytes(b"path,label\n\xff\xfe,\x00\n")
    with pytest.raises(DataError):
        read_manifest(tmp_path / "b.csv")


def test_check_finds_unreadable_and_empty(tmp_path: Path):
    make_folder(tmp_path)
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "bird").mkdir()
    rep = check_files(scan_folder(tmp_path))
    assert not rep.ok
    assert [Path(p).name for p, _ in rep.unreadable] == ["broken.jpg"]
    assert rep.empty_classes == ["bird"] and rep.sizes == {"32x32": 6}


def test_cache_hits_and_invalidates(tmp_path: Path):
    make_folder(tmp_path / "d")
    cache = tmp_path / "cache"
    first = cached_decode(scan_folder(tmp_path / "d"), root=cache)
    entries = list(cache.glob("*.npy"))
    assert len(entries) == 1
    second = cached_decode(scan_folder(tmp_path / "d"), root=cache)
    assert np.array_equal(first.images, second.images) and len(list(cache.glob("*.npy"))) == 1
    # editing a file (new size/mtime) gives a new key, so a stale cache is never served
    f = tmp_path / "d" / "cat" / "0.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(f)
    os.utime(f, ns=(1, 1))
    third = cached_decode(scan_folder(tmp_path / "d"), root=cache)
    assert (third.images[0] == [1, 2, 3]).all() and len(list(cache.glob("*.npy"))) == 2


def test_duplicates_within_and_across_splits(tmp_path: Path):
    from cifarkit.data.imageset import ImageSet
    from cifarkit.data.stats import channel_mean_std, duplicates

    def mk(imgs):
        n = len(imgs)
        return ImageSet(np.stack(imgs), np.zeros(n, np.int64), ["a"], ["f"] * n, np.arange(n), ["x"] * n)

    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 4, 3), 7, np.uint8)
    c = np.full((4, 4, 3), 9, np.uint8)
    d = duplicates({"train": mk([a, a, b]), "test": mk([b, c])})
    assert d["within_split"] == {"train": 1}
    assert d["across_splits"] == {"test/train": 1}
    mean, std = channel_mean_std(np.stack([a, b]))
    assert mean == [3.5, 3.5, 3.5] and std == [3.5, 3.5, 3.5]
