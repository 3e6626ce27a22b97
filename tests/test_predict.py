"""`cifarkit predict` and the Python API: parity with eval, odd inputs, failures, stdin, ONNX."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cifarkit
from cifarkit.data.cifar import read_cifar
from cifarkit.data.export import export_dataset
from cifarkit.errors import DataError
from test_cli_data import run


@pytest.fixture(scope="module")
def exported(cifar10_small: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exp") / "png"
    export_dataset({"test": read_cifar(cifar10_small, "test")}, out)
    return out


@pytest.mark.parametrize("tta", [pytest.param("none", marks=pytest.mark.slow), "flip_translate",
                                 pytest.param(None, marks=pytest.mark.slow)])
def test_predict_folder_matches_eval_image_for_image(trained_run: Path, exported: Path, tmp_path: Path, tta):
    """predict == eval by construction: every exported test image gets eval's own prediction,
    with TTA off, on, and as the checkpoint says (None: the default both take from it)."""
    import csv

    ckpt = str(trained_run / "last.pt")
    flag = [] if tta is None else ["--tta", tta]
    r = run("predict", ckpt, str(exported / "test"), "--json", *flag)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(rows) == 100 and set(rows[0]) >= {"path", "label", "label_id", "score", "topk", "tta", "precision"}
    # the tests' CPU rule is fp32 (conftest); the run itself trained under train.amp auto too
    assert rows[0]["tta"] == (tta or "none") and rows[0]["precision"] == "fp32"
    assert len(rows[0]["topk"]) == 5 and rows[0]["topk"][0]["label"] == rows[0]["label"]
    r = run("eval", ckpt, "--json", "--predictions", str(tmp_path / "eval.csv"), *flag)
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["tta"] == (tta or "none") and ev["precision"] == "fp32"
    eval_pred = [int(row["predicted_id"]) for row in csv.DictReader(open(tmp_path / "eval.csv"))]
    # map each file back to its CIFAR test-batch row through the export's manifest
    index = {str(exported / m["path"]): int(m["index"]) for m in csv.DictReader(open(exported / "manifest.csv"))}
    assert [row["label_id"] for row in rows] == [eval_pred[index[row["path"]]] for row in rows]
    acc = np.mean([row["label"] == Path(row["path"]).parent.name for row in rows]) * 100
    assert acc == pytest.approx(ev["top1"], abs=1e-6)


def test_tta_changes_logits_and_is_reported(trained_run: Path, exported: Path):
    """The TTA switch really switches (else the parity test above would prove nothing)."""
    files = sorted((exported / "test").rglob("*.png"))[:20]
    plain = cifarkit.load(trained_run / "last.pt", tta="none")
    tta = cifarkit.load(trained_run / "last.pt", tta="flip_translate")
    a, b = plain.predict(files), tta.predict(files)
    assert {p.tta for p in a} == {"none"} and {p.tta for p in b} == {"flip_translate"}
    assert max(abs(x.score - y.score) for x, y in zip(a, b)) > 1e-4


def test_one_image_alone_gets_the_same_logits_as_in_a_batch(trained_run: Path, exported: Path):
    files = sorted((exported / "test").rglob("*.png"))[:16]
    clf = cifarkit.load(trained_run / "last.pt", tta="flip")
    together = clf.predict(files)
    for f, p in zip(files[:4], together[:4]):
        alone = clf.predict(f)
        assert alone.topk == p.topk


def _odd_images(d: Path) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb[..., 0]).save(d / "grey.png")
    Image.fromarray(rgb).convert("P").save(d / "palette.png")
    Image.fromarray(np.dstack([rgb, np.full((32, 32), 128, np.uint8)])).save(d / "rgba.png")
    Image.fromarray((rng.integers(0, 65535, (32, 32))).astype(np.uint16)).save(d / "sixteen.png")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.fromarray(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)).save(d / "rotated.jpg", exif=exif)
    Image.fromarray(rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8)).save(d / "photo.jpg")
    return sorted(d.iterdir())


@pytest.mark.slow
def test_odd_formats_and_one_broken_file(trained_run: Path, tmp_path: Path):
    files = _odd_images(tmp_path / "odd")
    (tmp_path / "odd" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    r = run("predict", str(trained_run / "last.pt"), str(tmp_path / "odd"), "--json", "--topk", "3",
            "--out", str(tmp_path / "drawn"))
    assert r.returncode == 1  # some input failed ...
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(rows) == len(files)  # ... but every other input was still predicted
    assert all(len(x["topk"]) == 3 for x in rows)
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert any("broken.png" in ln and "not a readable image" in ln for ln in err)
    assert (tmp_path / "drawn" / "predictions.csv").exists()
    assert len(list((tmp_path / "drawn").glob("*.png"))) == len(files)


def test_decompression_bomb_refused(tmp_path: Path):
    from cifarkit.data.decode import load_rgb

    Image.new("L", (9000, 9000)).save(tmp_path / "bomb.png")  # 81 MP, tiny on disk
    with pytest.raises(DataError, match="decompression bomb"):
        load_rgb(tmp_path / "bomb.png")


@pytest.mark.slow
def test_stdin_glob_and_missing(trained_run: Path, exported: Path):
    files = sorted((exported / "test" / "cat").glob("*.png"))[:3]
    r = run("predict", str(trained_run / "last.pt"), "-", input="\n".join(map(str, files)) + "\n")
    assert r.returncode == 0 and r.stdout.count(".png") == 3
    r = run("predict", str(trained_run / "last.pt"), str(exported / "test" / "dog" / "*.png"), "--json")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 10
    r = run("predict", str(trained_run / "last.pt"), str(exported / "nope.png"), str(files[0]))
    assert r.returncode == 1 and "nope.png: no such file" in r.stderr and "cat" in r.stdout


def test_python_api(trained_run: Path, exported: Path):
    model = cifarkit.load(trained_run / "last.pt")
    f = sorted((exported / "test" / "ship").glob("*.png"))[0]
    res = model.predict(f)
    assert res.label in model.classes and 0 < res.score <= 1 and res.path == str(f)
    arr = np.asarray(Image.open(f))
    assert model.predict(arr).label_id == res.label_id  # arrays and PIL images work too
    assert model.predict(Image.open(f)).score == pytest.approx(res.score)
    batch = model.predict([f, f])
    assert len(batch) == 2
    fig = cifarkit.show_result(f, res)
    assert fig.axes and fig.axes[0].get_title().startswith(res.label)


@pytest.mark.slow
def test_export_onnx_and_torchscript_then_predict(trained_run: Path, exported: Path, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    r = run("export", str(trained_run / "last.pt"), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
            "--dynamic-batch")
    assert r.returncode == 0, r.stderr
    assert "top-1 agreement 100.0%" in r.stdout
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    info = json.loads(meta["cifarkit"])
    assert info["classes"][0] == "airplane" and info["preprocess"]["input_size"] == 32
    a = run("predict", str(tmp_path / "m.onnx"), str(exported / "test" / "frog"), "--json")
    b = run("predict", str(trained_run / "last.pt"), str(exported / "test" / "frog"), "--json")
    la = [json.loads(x)["label"] for x in a.stdout.splitlines()]
    lb = [json.loads(x)["label"] for x in b.stdout.splitlines()]
    assert a.returncode == 0 and la == lb
    r = run("export", str(trained_run / "last.pt"), "--format", "torchscript", "--out", str(tmp_path / "m.ts"))
    assert r.returncode == 0, r.stderr
    import torch

    files = {}
    torch.jit.load(str(tmp_path / "m.ts"), _extra_files=(files := {"cifarkit.json": ""}))
    assert json.loads(files["cifarkit.json"])["classes"][1] == "automobile"


def test_predict_throughput_path_uses_batches(trained_run: Path, exported: Path, monkeypatch):
    model = cifarkit.load(trained_run / "last.pt")
    calls = []
    orig = model.forward
    monkeypatch.setattr(model, "forward", lambda x: (calls.append(len(x)), orig(x))[1])
    files = sorted((exported / "test").rglob("*.png"))
    out = list(model.predict_files(files))
    assert len(out) == 100 and max(calls) > 1  # not one image at a time


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "cifarkit", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "cifarkit" in r.stdout
