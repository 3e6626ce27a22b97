"""Edited checkpoints, bad ONNX metadata and wrong CLI values: one `error:` line each, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import cli_run, make_checkpoint
from hostile_models import CHECKPOINT_EDITS, ONNX_METADATA, edited_checkpoint, onnx_with_metadata
from test_cli_data import run


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return make_checkpoint("airnet", tmp_path_factory.mktemp("ck") / "good.pt")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    import numpy as np
    from PIL import Image

    p = tmp_path_factory.mktemp("img") / "cat.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(p)
    return p


def one_line_error(r, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("name", list(CHECKPOINT_EDITS))
def test_edited_checkpoint_is_named_on_load(name: str, good: Path, image: Path, tmp_path: Path):
    from cifarkit.errors import CifarkitError
    from cifarkit.predict import load

    bad = edited_checkpoint(good, name, tmp_path)
    with pytest.raises(CifarkitError, match=CHECKPOINT_EDITS[name][1]):
        load(bad, device="cpu")


@pytest.mark.parametrize("name", ["absurd_input_size", "classes_of_ints", "bogus_kwarg"])
def test_edited_checkpoint_cli_one_line(name: str, good: Path, image: Path, tmp_path: Path):
    bad = edited_checkpoint(good, name, tmp_path)
    one_line_error(run("predict", str(bad), str(image)), str(bad), CHECKPOINT_EDITS[name][1])


@pytest.fixture(scope="module")
def good_onnx(good: Path, tmp_path_factory) -> Path:
    """`good` exported once for every bad-metadata case (an export takes seconds; the cases edit copies)."""
    pytest.importorskip("onnxruntime")
    from cifarkit.export import export_model

    return export_model(good, "onnx", tmp_path_factory.mktemp("onnx") / "good.onnx", check_images=None).path


@pytest.mark.parametrize("name", list(ONNX_METADATA))
def test_onnx_with_bad_metadata_is_named(name: str, good_onnx: Path, image: Path, tmp_path: Path):
    bad = onnx_with_metadata(good_onnx, name, tmp_path)
    one_line_error(cli_run("predict", str(bad), str(image)), str(bad), ONNX_METADATA[name][1])


@pytest.mark.slow
def test_cam_on_onnx_and_on_a_non_spatial_layer(good: Path, image: Path, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("pytorch_grad_cam")
    from cifarkit.export import export_model

    onnx_file = export_model(good, "onnx", tmp_path / "m.onnx").path
    r = run("cam", str(onnx_file), str(image), "--out", str(tmp_path / "c1"))
    one_line_error(r, "needs the PyTorch checkpoint")
    one_line_error(run("cam", str(good), str(image), "--layer", "head", "--out", str(tmp_path / "c2")),
                   "not a spatial map")


@pytest.mark.parametrize("args", [("--topk", "0"), ("--batch-size", "-1"), ("--tta", "rot90"), ("--topk", "x")])
def test_bad_cli_values_are_one_line(args: tuple[str, str], good: Path, image: Path):
    r = run("predict", str(good), str(image), *args)
    one_line_error(r, args[0])


@pytest.mark.slow
def test_export_parity_says_which_images(good: Path, tmp_path: Path, cifar10_dir: Path):
    """Run from elsewhere (the checkpoint's data root does not exist): the export says it checked
    random pixels, and `--data` makes it use real images."""
    pytest.importorskip("onnxruntime")
    r = run("export", str(good), "--out", str(tmp_path / "a.onnx"))
    assert r.returncode == 0, r.stderr
    assert "random-pixel images" in r.stdout and "pass --data" in r.stdout
    r = run("export", str(good), "--out", str(tmp_path / "b.onnx"), "--data", str(cifar10_dir))
    assert r.returncode == 0, r.stderr
    assert "real images" in r.stdout and str(cifar10_dir) in r.stdout
    r = run("export", str(good), "--out", str(tmp_path / "b.onnx"))
    one_line_error(r, "exists", "--overwrite")


_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                       lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
                       max_leaves=12)
_prep_keys = st.sampled_from(["mean", "std", "input_size", "eval_resize", "eval_crop", "other"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_prep_keys, _values | st.lists(st.floats(), min_size=3, max_size=3)), _values)
def test_checkpoint_validators_fuzzed(prep: dict, classes):
    """Any value: a valid result or a CheckpointError, never another exception or a bad result."""
    from cifarkit.errors import CheckpointError
    from cifarkit.infer.restore import MAX_INPUT_SIZE, check_classes, check_preprocess

    try:
        p = check_preprocess(prep, "f.pt")
    except CheckpointError:
        pass
    else:
        assert 8 <= p.input_size <= MAX_INPUT_SIZE and all(s > 0 for s in p.std) and len(p.mean) == 3
    try:
        c = check_classes(classes, "f.pt")
    except CheckpointError:
        pass
    else:
        assert c and all(isinstance(x, str) and x for x in c) and len(set(c)) == len(c)


def test_model_kwargs_of_the_wrong_type_are_one_line(cifar10_dir: Path, tmp_path: Path):
    r = run("train", "fast", "--set", f"data.root={cifar10_dir}", "--set", "model.kwargs.widths=hello",
            "--work-dir", str(tmp_path / "r"))
    one_line_error(r, "model.kwargs", "'airnet' cannot be built")
