"""End-to-end through the real CLI: models, train (+ overrides, resume), eval --json, demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import NARROW_SET
from test_cli_data import run

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_models_lists_params_and_macs():
    r = run("models")
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("airnet"))
    assert "1.97M" in line
    assert "resnet18_cifar" in r.stdout and "mobilenet_v2" in r.stdout


@pytest.mark.slow
def test_train_resume_eval(cifar10_small: Path, tmp_path: Path):
    work = tmp_path / "run"
    common = ["--set", f"data.root={cifar10_small}", "--set", "train.batch_size=100", "--set", "train.epochs=2",
              "--set", "log.plots=false", "--work-dir", str(work), *NARROW_SET]
    r = run("train", str(ROOT / "configs/cifar10_fast.yaml"), *common, "--set", "train.max_iters=5")
    assert r.returncode == 0, r.stderr
    assert "final" in r.stdout and "top1" in r.stdout
    r = run("train", str(ROOT / "configs/cifar10_fast.yaml"), *common, "--resume")
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout and "epoch 2/2" in r.stdout
    r = run("eval", str(work / "last.pt"), "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    last = [r for r in map(json.loads, (work / "log.jsonl").read_text().splitlines()) if r["type"] == "val"][-1]
    assert m["top1"] == last["top1"] and m["top5"] == last["top5"]


@pytest.mark.slow
def test_train_errors_are_one_line(cifar10_small: Path, tmp_path: Path):
    r = run("train", str(ROOT / "configs/cifar10_fast.yaml"), "--set", "optim.lrr=1")
    assert r.returncode == 2 and r.stderr.startswith("error:") and "did you mean 'optim.lr'" in r.stderr
    r = run("train", str(ROOT / "configs/cifar10_fast.yaml"), "--set", f"data.root={tmp_path / 'nope'}",
            "--work-dir", str(tmp_path / "w"))
    assert r.returncode == 2 and "no such file or folder" in r.stderr and "Traceback" not in r.stderr
    r = run("eval", str(tmp_path / "missing.pt"))
    assert r.returncode == 2 and "no such checkpoint" in r.stderr
    r = run("train", "--list-keys")
    assert r.returncode == 0 and "train.max_iters" in r.stdout


@pytest.mark.slow
def test_tutorial_recipe_runs_a_few_iterations_with_pretrained(cifar10_small: Path, tmp_path: Path):
    from cifarkit.models import create_model

    torch.save(create_model("mobilenet_v2", 1000).state_dict(), tmp_path / "imagenet.pth")
    r = run("train", str(ROOT / "configs/cifar10_mobilenetv2_finetune.yaml"),
            "--set", f"data.root={cifar10_small}", "--set", f"model.pretrained={tmp_path / 'imagenet.pth'}",
            "--set", "train.max_iters=2", "--set", "data.subset_per_class=3", "--set", "log.plots=false",
            "--work-dir", str(tmp_path / "mb"))
    assert r.returncode == 0, r.stderr
    assert "re-initialised (shape differs): classifier.1.weight" in r.stdout
    ck = torch.load(tmp_path / "mb" / "last.pt", weights_only=True)
    assert ck["preprocess"] == {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375],
                                "input_size": 224, "eval_resize": 256, "eval_crop": 224}


@pytest.mark.slow
def test_demo_quick(tmp_path: Path):
    r = run("demo", "--out", str(tmp_path / "demo"), "--quick")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "demo"
    for name in ("data/cifar-10-batches-py/data_batch_1", "samples_first20.png", "samples_per_class.png",
                 "export/manifest.csv", "run/last.pt", "inspect.json"):
        assert (out / name).exists(), name
    assert "demo finished" in r.stdout
