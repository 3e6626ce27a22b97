"""Untrusted input, round four (issue #33): decoding and dataset readers.

- PostScript in a file called `x.png` (or an `.eps` in a dataset) never reaches Ghostscript: only
  the raster formats of `decode.RASTER_FORMATS` are opened (a fake `gs` on PATH proves nothing ran);
- symlinks out of a dataset folder, a manifest's folder, a CIFAR batches folder or a folder given to
  `predict` are not followed: a file link is skipped and listed, a class folder link or a manifest
  row is refused in one line naming it;
- a non-UTF-8 file name works through stats, export, predict and train; a non-UTF-8 class folder
  name is one line.

Every hostile input is built here, at test time. The peak-memory side of the round (datasets of
huge PNGs) is in tests/test_bounded_input.py.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarkit.data.decode import RASTER_FORMATS, image_extensions, is_image_name, load_rgb
from cifarkit.errors import DataError
from conftest import NARROW, cli_run, make_checkpoint, make_cifar10

POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nnewpath 0 0 moveto 16 16 lineto stroke\nshowpage\n"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_checkpoint("airnet", tmp_path_factory.mktemp("r4") / "model.pt", num_classes=2)


def png(path: Path, colour: tuple[int, int, int], size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def one_error_line(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.startswith("error:") and r.stderr.count("\n") == 1, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def test_postscript_is_never_handed_to_ghostscript(tmp_path: Path, model: Path):
    """`x.png` holding PostScript: predict says one line (exit 1), `data check` lists it unreadable
    and counts `y.eps` as a non-image file; a fake `gs` on PATH records any call, and none comes."""
    fake = tmp_path / "bin"
    fake.mkdir()
    called = tmp_path / "gs-was-run"
    (fake / "gs").write_text(f"#!/bin/sh\ntouch {called}\nexit 1\n")
    (fake / "gs").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    ds = tmp_path / "ds"
    png(ds / "cat" / "good.png", (200, 0, 0))
    png(ds / "dog" / "good.png", (0, 200, 0))
    (ds / "cat" / "x.png").write_bytes(POSTSCRIPT)
    (ds / "cat" / "y.eps").write_bytes(POSTSCRIPT)

    def cifarkit(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cifarkit", *args], capture_output=True, text=True, env=env,
                              timeout=300)

    r = cifarkit("predict", str(model), str(ds / "cat" / "x.png"), "--json")
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stdout == "", r.stderr[-2000:]
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 2 and "x.png: not a readable image" in errors[0] and "PNG, JPEG" in errors[0], errors
    r = cifarkit("data", "check", str(ds))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "2 readable images" in r.stdout and "unreadable:" in r.stdout and "x.png" in r.stdout
    assert "1 non-image files ignored" in r.stdout  # y.eps
    assert not called.exists(), "Ghostscript was run on a file from the dataset"
    with pytest.raises(DataError, match="not a readable image"):
        load_rgb(ds / "cat" / "x.png")
    assert not is_image_name("a.eps") and not is_image_name("a.pdf") and is_image_name("a.JPG")
    assert {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"} <= image_extensions()
    assert "EPS" not in RASTER_FORMATS and "PDF" not in RASTER_FORMATS


def test_folder_file_links_out_are_skipped_and_listed_class_links_refused(tmp_path: Path):
    secret = png(tmp_path / "elsewhere" / "secret.png", (1, 2, 3))
    ds = tmp_path / "ds"
    png(ds / "cat" / "0.png", (200, 0, 0))
    png(ds / "cat" / "1.png", (210, 0, 0))
    png(ds / "dog" / "0.png", (0, 200, 0))
    (ds / "dog" / "leak.png").symlink_to(secret)
    (ds / "dog" / "same.png").symlink_to(Path("..") / "cat" / "1.png")  # a link inside the folder: fine
    r = cli_run("data", "stats", str(ds), "--out", str(tmp_path / "st"))
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "st" / "stats.json").read_text())
    assert s["links_out"] == [str(ds / "dog" / "leak.png")]
    assert s["class_counts"]["all"] == {"cat": 2, "dog": 2}  # 0.png and same.png; never secret.png
    assert "links leading out of the folder, skipped: 1" in r.stdout
    r = cli_run("data", "check", str(ds))
    assert r.returncode == 0 and "1 links leading out of the folder ignored" in r.stdout, r.stdout
    (ds / "share").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # a class folder leading out
    for cmd in (["data", "stats", str(ds)], ["data", "check", str(ds)],
                ["data", "export", str(ds), str(tmp_path / "x")]):
        one_error_line(cli_run(*cmd), "share (class folder): leads outside", "elsewhere")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_manifest_row_leading_out_of_its_folder_is_refused_by_row(tmp_path: Path, how: str):
    png(tmp_path / "outside.png", (9, 9, 9))
    base = tmp_path / "data"
    png(base / "img" / "a.png", (200, 0, 0))
    (base / "link.png").symlink_to(tmp_path / "outside.png")
    bad = {"dotdot": "../outside.png", "absolute": str(tmp_path / "outside.png"), "symlink": "link.png"}[how]
    (base / "m.csv").write_text(f"path,label\nimg/a.png,cat\n{bad},dog\n")
    for cmd in (["data", "stats"], ["data", "check"]):
        one_error_line(cli_run(*cmd, str(base / "m.csv")), "m.csv: row 3: path", "leads outside")


def test_manifest_absolute_path_inside_its_folder_is_read(tmp_path: Path):
    base = tmp_path / "data"
    png(base / "img" / "a.png", (200, 0, 0))
    png(base / "img" / "b.png", (0, 200, 0))
    (base / "m.csv").write_text(f"path,label\n{base / 'img' / 'a.png'},cat\nimg/b.png,dog\n")
    r = cli_run("data", "check", str(base / "m.csv"))
    assert r.returncode == 0 and "2 readable images" in r.stdout, r.stdout + r.stderr


def test_cifar_batch_file_or_folder_linking_out_is_refused(tmp_path: Path):
    batches = make_cifar10(tmp_path / "c")
    away = tmp_path / "away"
    away.mkdir()
    (batches / "test_batch").rename(away / "test_batch")
    (batches / "test_batch").symlink_to(away / "test_batch")
    one_error_line(cli_run("data", "inspect", str(batches)), "test_batch (a CIFAR batch file): leads outside")
    one_error_line(cli_run("data", "stats", str(tmp_path / "c")), "test_batch (a CIFAR batch file): leads outside")
    (away / "test_batch").rename(batches / "test_batch")
    parent = tmp_path / "p"
    parent.mkdir()
    (parent / "cifar-10-batches-py").symlink_to(batches, target_is_directory=True)
    one_error_line(cli_run("data", "inspect", str(parent)), "cifar-10-batches-py (the CIFAR batches folder)")
    r = cli_run("data", "inspect", str(parent / "cifar-10-batches-py"))  # the folder named itself: the user's
    assert r.returncode == 0, r.stderr


def test_predict_on_a_folder_skips_links_out_by_name(tmp_path: Path, model: Path):
    secret = png(tmp_path / "elsewhere" / "secret.png", (1, 2, 3))
    folder = tmp_path / "photos"
    png(folder / "a.png", (200, 0, 0))
    (folder / "leak.png").symlink_to(secret)
    r = cli_run("predict", str(model), str(folder), "--json")
    assert r.returncode == 1, r.stderr
    assert [json.loads(x)["path"] for x in r.stdout.splitlines()] == [str(folder / "a.png")]
    assert "leak.png: a link leading outside" in r.stderr and "Traceback" not in r.stderr
    r = cli_run("predict", str(model), str(folder / "leak.png"), "--json")  # named itself: the user's choice
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1, r.stderr


def non_utf8_dataset(root: Path) -> Path:
    """root/{train,test}/{cat,dog}/x\\xfe<i>.png: file names that are not UTF-8 (bytes on disk)."""
    for split in ("train", "test"):
        for c, (cls, colour) in enumerate((("cat", 40), ("dog", 200))):
            d = os.path.join(os.fsencode(root), split.encode(), cls.encode())
            os.makedirs(d)
            for i in range(6):
                arr = np.full((32, 32, 3), colour, np.uint8)
                arr[:, : 4 * (i + 1), c] = 120 + 20 * i  # distinct images
                Image.fromarray(arr).save(os.fsdecode(os.path.join(d, b"x\xfe%d.png" % i)))
    return root


def test_non_utf8_file_names_work_in_stats_export_predict_and_train(tmp_path: Path, model: Path):
    ds = non_utf8_dataset(tmp_path / "ds")
    r = cli_run("data", "stats", str(ds), "--out", str(tmp_path / "st"))
    assert r.returncode == 0 and "train" in r.stdout, r.stderr
    r = cli_run("data", "export", str(ds), str(tmp_path / "exp"))
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "exp" / "manifest.csv", encoding="utf-8") as f:  # valid UTF-8, bytes escaped
        rows = list(csv.DictReader(f))
    assert len(rows) == 24 and all(r["source"].endswith(".png") and "\\xfe" in r["source"] for r in rows)
    assert cli_run("data", "check", str(tmp_path / "exp" / "manifest.csv")).returncode == 0  # reads back
    r = cli_run("predict", str(model), str(ds / "test"), "--out", str(tmp_path / "pred"))
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "pred" / "predictions.csv", encoding="utf-8") as f:
        paths = [r["path"] for r in csv.DictReader(f)]
    assert len(paths) == 12 and all("x\\xfe" in p for p in paths)
    r = cli_run("train", "fast", "--set", f"data.root={ds}", "--set", NARROW, "--set", "model.num_classes=2",
                "--set", "train.epochs=1", "--set", "train.batch_size=12", "--set", "log.plots=false",
                "--work-dir", str(tmp_path / "run"))
    assert r.returncode == 0 and (tmp_path / "run" / "last.pt").is_file(), r.stderr[-2000:]
    # the audit's clean manifest (a UTF-8 CSV) cannot name such a file: one line, before any fold trains
    r = cli_run("data", "audit", str(ds), "--out", str(tmp_path / "aud"), "--folds", "2", "--write-manifest",
                str(tmp_path / "clean.csv"))
    one_error_line(r, "x\\xfe", "not valid UTF-8")
    assert not (tmp_path / "aud" / "folds").exists()


def test_non_utf8_class_folder_name_is_one_line(tmp_path: Path):
    ds = tmp_path / "ds"
    png(ds / "dog" / "a.png", (0, 200, 0))
    cat = os.path.join(os.fsencode(ds), b"cat\xff")
    os.makedirs(cat)
    Image.new("RGB", (16, 16), (200, 0, 0)).save(os.fsdecode(os.path.join(cat, b"a.png")))
    for cmd in (["data", "stats", str(ds)], ["data", "export", str(ds), str(tmp_path / "x")]):
        one_error_line(cli_run(*cmd), "cat\\xff: the class name is not valid UTF-8")
