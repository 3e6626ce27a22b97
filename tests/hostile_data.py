"""Hostile-input generator: builds crafted dataset files at test time, each tiny on disk.

Nothing hostile is checked in; every function writes (or returns) one crafted input, so a
reader of the tests can see exactly what each attack is:
- class, split and file names that try to climb out of the export folder or collide;
- pickles that the unpickler's memo makes small but that expand when converted;
- tar archives whose headers claim gigabytes (plain tar kept sparse, gzip with a lying header);
- CSV manifests with a byte-order mark, negative or huge ids, empty splits.
"""

from __future__ import annotations

import csv
import io
import os
import tarfile
from pathlib import Path

import numpy as np

from conftest import cifar_batch, make_cifar10, write_py2_pickle

GIB = 1 << 30


def escaping_names(target: Path) -> list[str]:
    """Ten unique class names: path climbers (one aimed at `target`), dots, separators, odd bytes."""
    climb = "../" * 12 + str(target).lstrip("/")
    return [climb, "", ".", "..", "a/b", "a%2Fb", "__init__", "nul\x00byte", "x" * 300, "/abs/" + target.name]


def escaping_filenames(n: int) -> list[str]:
    """`n` per-image names that climb, hold NUL, are too long for a file system, or repeat."""
    odd = ["../../up.png", "a\x00b.png", "y" * 300 + ".png", "", ".png", "same.png", "same.png", "..", "/etc/x.png"]
    return [odd[i % len(odd)] for i in range(n)]


def hostile_cifar(root: Path, target: Path) -> Path:
    """A CIFAR-10 folder whose meta class names and batch file names are all hostile."""
    d = make_cifar10(root, per_batch=10, test=10)
    write_py2_pickle({"label_names": escaping_names(target), "num_cases_per_batch": 10}, d / "batches.meta")
    for i, name in enumerate([f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]):
        b = cifar_batch(np.arange(10) % 10, name, i)
        b["filenames"] = escaping_filenames(10)  # the same names in every batch and split
        write_py2_pickle(b, d / name)
    return d


def shared_nested(width: int, depth: int) -> list:
    """A list of `width` references to one nested list: width**depth leaves from ~depth*10 bytes."""
    x: list = [0] * width
    for _ in range(depth - 1):
        x = [x] * width
    return x


def batch_with(d: Path, name: str = "test_batch", n: int = 20, **overrides) -> Path:
    """Overwrite batch `name` in CIFAR folder `d` with a valid batch of `n` rows plus `overrides`."""
    b = cifar_batch(np.arange(n) % 10, name, 7)
    b.update(overrides)
    write_py2_pickle(b, d / name)
    return d / name


def memo_bomb(index: int) -> bytes:
    """A 10-byte pickle whose LONG_BINPUT `index` makes the C unpickler grow its memo to `index`."""
    return b"\x80\x02]r" + index.to_bytes(4, "little") + b"."


def _tar_header(member: str, size: int) -> bytes:
    info = tarfile.TarInfo(f"cifar-10-batches-py/{member}")
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def sparse_tar(path: Path, member: str = "data_batch_1", size: int = 3 * GIB) -> Path:
    """A plain .tar whose `member` really is `size` bytes of zeros, stored sparse (a few KB on disk)."""
    with open(path, "wb") as f:
        f.write(_tar_header(member, size))
        f.truncate(512 + size + (-size % 512) + 1024)  # data, padding and the end-of-archive blocks
    return path


def lying_tar_gz(path: Path, member: str = "data_batch_1", size: int = 3 * GIB) -> Path:
    """A .tar.gz (a few hundred bytes) whose header says `member` inflates to `size` bytes."""
    import gzip

    path.write_bytes(gzip.compress(_tar_header(member, size) + b"\0" * 4096))
    return path


def sparse_file(path: Path, size: int) -> Path:
    """A `size`-byte file of zeros that takes no disk space."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def write_manifest(path: Path, rows: list[dict], bom: bool = False) -> Path:
    """A CSV manifest of `rows` (dicts with the same keys); `bom` starts it as Excel does."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode("utf-8"))
    return path


def png_files(folder: Path, n: int) -> list[Path]:
    """`n` distinct tiny PNGs named 0.png.. (pixel value = index), for manifests to point at."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"{i}.png"
        Image.new("RGB", (8, 8), (i * 7 % 256, i, 255 - i)).save(p)
        out.append(p)
    return out


def hostile_manifest(root: Path, target: Path) -> Path:
    """A manifest whose splits are absolute/dot/empty and whose label names are '', '.', '..', a climber.

    Train and test rows share file names and labels: an export that joins names into paths
    files both under the same directory, and test images overwrite train images.
    """
    files = png_files(root / "imgs", 12)
    names = ["", ".", "..", "../" * 12 + str(target).lstrip("/")]
    splits = ["train", "test", str(target / "absdir"), "", "..", "."]
    rows = [{"path": f"imgs/{p.name}", "split": splits[i % len(splits)], "label_id": i % 4,
             "label_name": names[i % 4]} for i, p in enumerate(files)]
    return write_manifest(root / "m.csv", rows)


def children_of(pid: int) -> list[int]:
    """Live pids whose parent is `pid` (Linux /proc), for checking that workers die with it."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an exited child not yet reaped is dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
