"""Export to image folders + manifest: lossless PNG, unique names, atomic and re-runnable."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarkit.data.cifar import read_cifar
from cifarkit.data.export import MANIFEST_COLUMNS, encode_png_rgb, export_dataset
from cifarkit.errors import DataError


def _splits(d: Path) -> dict:
    return {s: read_cifar(d, s) for s in ("train", "test")}


def test_png_encoder_is_lossless():
    img = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    import io

    back = np.asarray(Image.open(io.BytesIO(encode_png_rgb(img))))
    assert back.shape == (7, 5, 3) and np.array_equal(back, img)


def test_export_layout_manifest_and_exact_pixels(cifar10_dir: Path, tmp_path: Path):
    splits = _splits(cifar10_dir)
    res = export_dataset(splits, tmp_path / "out")
    out = res.out
    assert sorted(p.name for p in out.iterdir()) == [".cifarkit-outputs.json", "manifest.csv", "test", "train"]
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert list(rows[0]) == MANIFEST_COLUMNS
    assert len(rows) == 140
    r = rows[0]
    assert r["split"] == "train" and r["source"] == "data_batch_1" and r["index"] == "0"
    assert r["path"] == f"train/{r['label_name']}/{splits['train'].filenames[0]}"
    # re-reading every exported PNG gives exactly the pickle's pixels
    for i, row in enumerate(rows[:100]):
        got = np.asarray(Image.open(out / row["path"]))
        assert np.array_equal(got, splits["train"].images[i]), row["path"]
    assert not any(p.name.startswith(".out.partial") for p in tmp_path.iterdir())


def test_duplicate_names_never_overwrite(cifar10_dir: Path, tmp_path: Path):
    ds = read_cifar(cifar10_dir, "test")
    ds.filenames = ["same.png"] * len(ds)
    res = export_dataset({"test": ds}, tmp_path / "o")
    files = list((res.out / "test").rglob("*.png"))
    assert len(files) == len(ds)
    assert (res.out / "test" / "airplane" / "same_1.png").exists()


def test_refuses_non_empty_unless_overwrite(cifar10_dir: Path, tmp_path: Path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="not empty.*--overwrite"):
        export_dataset(_splits(cifar10_dir), out)
    assert (out / "keep.txt").exists()
    with pytest.raises(DataError, match="keep.txt there was not written by"):  # --overwrite deletes no one else's file
        export_dataset(_splits(cifar10_dir), out, overwrite=True)
    assert (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()
    export_dataset(_splits(cifar10_dir), out)
    export_dataset(_splits(cifar10_dir), out, overwrite=True, fmt="jpg")  # an earlier export: replaced
    assert (out / "manifest.csv").exists() and any(out.rglob("*.jpg")) and not any(out.rglob("*.png"))


def test_interrupted_export_never_looks_complete(cifar10_dir: Path, tmp_path: Path):
    calls = []

    def boom(n):
        calls.append(n)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_dataset(_splits(cifar10_dir), tmp_path / "o", progress=boom)
    assert calls and not (tmp_path / "o").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "c10"]  # no temporary folder left behind


def test_jpeg_export(cifar10_dir: Path, tmp_path: Path):
    res = export_dataset({"test": read_cifar(cifar10_dir, "test")}, tmp_path / "j", fmt="jpg", quality=90)
    files = sorted((res.out / "test").rglob("*.jpg"))
    assert len(files) == 40
    with Image.open(files[0]) as im:
        assert im.format == "JPEG" and im.size == (32, 32)
    with pytest.raises(DataError, match="quality"):
        export_dataset({"test": read_cifar(cifar10_dir, "test")}, tmp_path / "k", fmt="jpg", quality=0)


def test_stored_and_deflated_pngs_both_decode_exactly():
    import io

    for shape in ((32, 32, 3), (300, 400, 3)):  # the second needs several stored blocks
        img = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
        for level in (0, 6):
            data = encode_png_rgb(img, level)
            back = np.asarray(Image.open(io.BytesIO(data)))
            assert np.array_equal(back, img), (shape, level)


def test_export_folder_gets_the_users_usual_mode(cifar10_dir: Path, tmp_path: Path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        out = export_dataset({"test": read_cifar(cifar10_dir, "test")}, tmp_path / "exp").out
    finally:
        os.umask(old)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (out, out / "test", out / "test" / "cat")}
    assert modes == {0o755}, modes  # the top folder too, not mkdtemp's 0700


FORMULAS = ['=HYPERLINK("http://x","click")', "+1+2", "-2+3", "@SUM(A1)", "\tx", "'quoted", "-7", "plain"]


def test_csv_cells_a_spreadsheet_would_run_are_neutralised_and_read_back(cifar10_dir: Path, tmp_path: Path):
    """Class names and file names that a spreadsheet runs as formulas are written with a leading
    `'` into manifest.csv; reading our own manifest back gives the original names exactly."""
    from cifarkit.data.sources import load_dataset
    from cifarkit.safecsv import FORMULA_STARTS

    ds = read_cifar(cifar10_dir, "test")
    ds.classes = FORMULAS + ["ok8", "ok9"]
    ds.filenames = [f"=1+{i}.png" for i in range(len(ds))]
    res = export_dataset({"test": ds}, tmp_path / "o")
    raw = list(csv.reader(open(res.manifest, encoding="utf-8")))
    for row in raw[1:]:
        for cell in row:
            assert not (cell[:1] in FORMULA_STARTS and not _is_number(cell)), cell  # nothing a sheet would run
    names = {r[5] for r in raw[1:]}
    assert "'=HYPERLINK(\"http://x\",\"click\")" in names and "-7" in names and "''quoted" in names
    back = load_dataset(res.manifest, "test")
    assert back.classes == sorted(ds.classes) or set(back.classes) == set(ds.classes)
    assert [back.classes[y] for y in back.labels] == [ds.classes[y] for y in ds.labels]


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def test_predictions_csv_cells_are_neutralised(tmp_path: Path):
    """`cifarkit predict --out` writes class names and the paths given; a file named `=1+2.png`
    does not become a formula in predictions.csv."""
    import subprocess
    import sys

    from conftest import CLASSES, make_checkpoint

    ck = make_checkpoint("airnet", tmp_path / "m.pt")
    import torch

    c = torch.load(ck, weights_only=False)
    c["classes"] = ["=cmd|' /C calc'!A0", *CLASSES[1:]]
    torch.save(c, ck)
    img = tmp_path / "=1+2.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(img)
    r = subprocess.run([sys.executable, "-m", "cifarkit", "predict", str(ck), "=1+2.png", "--out", "out",
                        "--topk", "10"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(open(tmp_path / "out" / "predictions.csv", encoding="utf-8")))
    assert rows[1][0] == "'=1+2.png"
    for cell in rows[1]:
        assert not (cell[:1] in "=+-@\t\r" and not _is_number(cell)), cell


def test_class_and_split_folders_are_unique_after_unicode_and_case_folding(cifar10_dir: Path, tmp_path: Path):
    """NFC é and NFD é, and Cat / cat / CAT, would merge on macOS / Windows: each gets its own
    folder; the manifest keeps the originals and reads back to the same labels."""
    import unicodedata

    from cifarkit.data.export import fold_key
    from cifarkit.data.sources import load_dataset

    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    ds = read_cifar(cifar10_dir, "test")
    ds.classes = [nfc, nfd, "Cat", "cat", "CAT", "cat-2", "dog", "Dog", "x", "y"]
    tr = read_cifar(cifar10_dir, "test")
    tr.classes = list(ds.classes)
    res = export_dataset({"Train": tr, "train": ds}, tmp_path / "o")
    splits = [p.name for p in res.out.iterdir() if p.is_dir()]
    assert len(splits) == 2 and len({fold_key(s) for s in splits}) == 2
    for split in splits:
        folders = [p.name for p in (res.out / split).iterdir()]
        assert len(folders) == 10 and len({fold_key(f) for f in folders}) == 10, folders
    rows = list(csv.DictReader(open(res.manifest, encoding="utf-8")))
    assert {r["label_name"] for r in rows} == set(ds.classes) and {r["split"] for r in rows} == {"Train", "train"}
    back = load_dataset(res.manifest, "train")
    assert [back.classes[y] for y in back.labels] == [ds.classes[y] for y in ds.labels]
