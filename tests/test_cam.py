"""Grad-CAM on every registered model, and the `cifarkit cam` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarkit.errors import ConfigError
from cifarkit.models import get_entry, list_models
from conftest import make_checkpoint
from test_cli_data import run

pytest.importorskip("pytorch_grad_cam")


@pytest.mark.parametrize("name", list_models())
def test_heatmap_for_every_registered_model(name: str, tmp_path: Path):
    from cifarkit.cam import compute_cam
    from cifarkit.predict import Classifier

    size = 224 if get_entry(name).input_size == 224 else 32
    ck = make_checkpoint(name, tmp_path / "m.pt", input_size=size)
    clf = Classifier.from_checkpoint(ck, device="cpu")
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    img[10:30, 10:30] = 255  # some structure to attend to
    a = compute_cam(clf, img, target=0)
    b = compute_cam(clf, img, target=7)
    assert a.heatmap.shape == (40, 48)  # the image's own size
    assert a.heatmap.min() >= 0 and a.heatmap.max() <= 1 and a.heatmap.std() > 1e-3
    assert not np.allclose(a.heatmap, b.heatmap)  # changes with the target class
    assert a.target_label == "airplane" and b.target_label == "horse"


@pytest.mark.slow
def test_cam_cli(trained_run: Path, tmp_path: Path):
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(img)
    r = run("cam", str(trained_run / "last.pt"), str(img), "--out", str(tmp_path / "o"), "--target", "cat",
            "--method", "gradcam++", "--save-npy")
    assert r.returncode == 0, r.stderr
    pngs = list((tmp_path / "o").glob("*_cam.png"))
    npys = list((tmp_path / "o").glob("*_cam.npy"))
    assert len(pngs) == 1 and len(npys) == 1 and np.load(npys[0]).shape == (32, 32)
    with Image.open(pngs[0]) as im:
        assert im.size[0] >= 500  # readable, not 32 px
    r = run("cam", str(trained_run / "last.pt"), "--list-layers")
    assert r.returncode == 0 and "layers.2" in r.stdout and "<- default" in r.stdout
    r = run("cam", str(trained_run / "last.pt"), str(img), "--target", "kat", cwd=tmp_path)
    assert r.returncode == 2 and "did you mean 'cat'" in r.stderr
    assert not (tmp_path / "cam_out").exists()  # a command that wrote nothing leaves no output folder


def test_bad_layer(trained_run: Path):
    from cifarkit.cam import compute_cam
    from cifarkit.predict import Classifier

    clf = Classifier.from_checkpoint(trained_run / "last.pt", device="cpu")
    with pytest.raises(ConfigError, match="no such module"):
        compute_cam(clf, np.zeros((32, 32, 3), np.uint8), layer="nope")
