"""End-to-end: the real `cifarkit data ...` commands in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def run(*args: str, cwd: Path | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cifarkit", *args], capture_output=True, text=True, cwd=cwd,
                          input=input, timeout=600)


def test_inspect_text_and_json(cifar10_dir: Path):
    r = run("data", "inspect", str(cifar10_dir))
    assert r.returncode == 0, r.stderr
    assert "data_batch_1" in r.stdout and "(20, 3072) uint8" in r.stdout and "train 100" in r.stdout
    r = run("data", "inspect", str(cifar10_dir), "--json")
    info = json.loads(r.stdout)
    assert info["kind"] == "cifar10" and info["totals"] == {"train": 100, "test": 40}
    assert info["batches"][5]["class_counts"]["truck"] == 4


def test_show_png_and_pdf(cifar10_dir: Path, tmp_path: Path):
    r = run("data", "show", str(cifar10_dir), "--out", str(tmp_path / "g.png"), "--first", "20")
    assert r.returncode == 0, r.stderr
    img = np.asarray(Image.open(tmp_path / "g.png").convert("L"))
    assert img.shape[1] > 800 and img.std() > 10  # readable size, not blank
    r = run("data", "show", str(cifar10_dir), "--out", str(tmp_path / "g.pdf"), "--per-class", "3")
    assert r.returncode == 0 and (tmp_path / "g.pdf").read_bytes()[:4] == b"%PDF"


def test_export_then_train_folder_inspect_and_check(cifar10_dir: Path, tmp_path: Path):
    out = tmp_path / "exp"
    r = run("data", "export", str(cifar10_dir), str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "manifest.csv").exists()
    r = run("data", "export", str(cifar10_dir), str(out))
    assert r.returncode == 2 and r.stderr.startswith("error:") and "--overwrite" in r.stderr
    r = run("data", "inspect", str(out))
    assert r.returncode == 0 and "train" in r.stdout and "100 images" in r.stdout
    r = run("data", "check", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    (out / "train" / "cat" / "bad.png").write_bytes(b"\x89PNG broken")
    r = run("data", "check", str(out))
    assert r.returncode == 1 and "bad.png" in r.stdout


def test_user_errors_are_one_line_without_traceback(tmp_path: Path):
    r = run("data", "inspect", str(tmp_path / "missing"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error:") and "missing" in r.stderr
    assert "Traceback" not in r.stderr
    r = run("--debug", "data", "inspect", str(tmp_path / "missing"))
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_hostile_batch_via_cli(cifar10_dir: Path, tmp_path: Path):
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    (cifar10_dir / "test_batch").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    r = run("data", "inspect", str(cifar10_dir))
    assert r.returncode == 2 and "refusing" in r.stderr and not (tmp_path / "pwned").exists()


def test_help_lists_commands():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("data", "train", "eval", "models", "demo"):
        assert cmd in r.stdout


def test_export_a_plain_class_folder(tmp_path: Path):
    for c in ("cat", "dog"):
        (tmp_path / "src" / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(tmp_path / "src" / c / f"{i}.png")
    r = run("data", "export", str(tmp_path / "src"), str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "out" / "all").rglob("*.png"))) == 4
    r = run("data", "export", str(tmp_path / "out" / "manifest.csv"), str(tmp_path / "again"))
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "again" / "all").rglob("*.png"))) == 4
