"""Hostile model files, built at test time: edited checkpoints and ONNX files with bad metadata.

Each generator takes a good file and returns a copy with one thing wrong, named after what a
user (or an attacker) would have changed, so a test can assert the one-line error names it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _edit(ck: dict[str, Any], fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    fn(ck)
    return ck


# name -> (edit of the checkpoint dict, words the error must contain)
CHECKPOINT_EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "no_preprocess": (lambda ck: ck.pop("preprocess"), "preprocessing is missing"),
    "preprocess_not_dict": (lambda ck: ck.__setitem__("preprocess", [1, 2, 3]), "preprocessing is missing"),
    "absurd_input_size": (lambda ck: ck["preprocess"].__setitem__("input_size", 100_000), "input_size"),
    "zero_std": (lambda ck: ck["preprocess"].__setitem__("std", [0.0, 1.0, 1.0]), "std must be"),
    "nan_mean": (lambda ck: ck["preprocess"].__setitem__("mean", [float("nan")] * 3), "mean must be"),
    "string_mean": (lambda ck: ck["preprocess"].__setitem__("mean", "0,0,0"), "mean must be"),
    "no_classes": (lambda ck: ck.pop("classes"), "'classes' must be"),
    "classes_of_ints": (lambda ck: ck.__setitem__("classes", list(range(10))), "'classes' must be"),
    "too_few_classes": (lambda ck: ck.__setitem__("classes", ["a", "b"]), "names 2 classes"),
    "duplicate_classes": (lambda ck: ck.__setitem__("classes", ["a"] * 10), "same class twice"),
    "no_config": (lambda ck: ck.pop("config"), "no 'model'/'config'"),
    "config_not_dict": (lambda ck: ck.__setitem__("config", "model: airnet"), "not a mapping"),
    "unknown_model": (lambda ck: ck["config"]["model"].__setitem__("name", "no_such_net"), "no_such_net"),
    "bogus_kwarg": (lambda ck: ck["config"]["model"].__setitem__("kwargs", {"bogus": 1}), "bogus"),
    "nan_lr_in_config": (lambda ck: ck["config"]["optim"].__setitem__("lr", float("nan")), "optim.lr"),
    "weights_not_tensors": (lambda ck: ck.__setitem__("model", {"w": [1, 2]}), "not a state dict"),
}


def edited_checkpoint(good: Path, name: str, out_dir: Path) -> Path:
    """A copy of the checkpoint `good` with edit `name` applied (see CHECKPOINT_EDITS)."""
    ck = torch.load(good, weights_only=True)
    _edit(ck, CHECKPOINT_EDITS[name][0])
    path = out_dir / f"{name}.pt"
    torch.save(ck, path)
    return path


# name -> (new value of the `cifarkit` metadata entry, words the error must contain)
ONNX_METADATA: dict[str, tuple[str, str]] = {
    "not_json": ("{classes: [", "not a JSON object"),
    "json_list": ("[1, 2, 3]", "not a JSON object"),
    "no_preprocess": (json.dumps({"classes": [f"c{i}" for i in range(10)]}), "preprocessing is missing"),
    "classes_not_list": (json.dumps({"classes": "cat,dog", "preprocess": None}), "'classes' must be"),
    "classes_wrong_count": (json.dumps({"classes": ["a", "b"], "preprocess": {
        "mean": [0, 0, 0], "std": [1, 1, 1], "input_size": 32, "eval_resize": 0, "eval_crop": 0}}), "2 classes"),
    "bad_tta": (json.dumps({"classes": [f"c{i}" for i in range(10)], "tta": "rot90", "preprocess": {
        "mean": [0, 0, 0], "std": [1, 1, 1], "input_size": 32, "eval_resize": 0, "eval_crop": 0}}), "rot90"),
}


def onnx_with_metadata(good: Path, name: str, out_dir: Path) -> Path:
    """A copy of the exported ONNX file `good` whose cifarkit metadata is replaced (ONNX_METADATA)."""
    import onnx

    m = onnx.load(str(good))
    for prop in m.metadata_props:
        if prop.key == "cifarkit":
            prop.value = ONNX_METADATA[name][0]
    path = out_dir / f"{name}.onnx"
    onnx.save(m, str(path))
    return path
