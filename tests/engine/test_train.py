"""The trainer on tiny real-format data: learning, schedules, resume, eval reproduction, NaN stop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cifarkit.config import load_config
from cifarkit.engine.optimizers import lr_factor
from cifarkit.engine.step import TrainingDiverged
from cifarkit.engine.train import fit
from cifarkit.errors import ConfigError
from cifarkit.infer.checkpoint import load_checkpoint
from cifarkit.infer.inference import evaluate_checkpoint
from conftest import NARROW

FAST = Path(__file__).resolve().parents[2] / "configs" / "cifar10_fast.yaml"


def small_cfg(root: Path, *extra: str):
    return load_config(FAST, [f"data.root={root}", "train.batch_size=100", "train.epochs=3", "eval.interval=1",
                              "eval.batch_size=50", "log.interval=1", "log.plots=false",
                              "train.deterministic=true", NARROW, *extra])


@pytest.mark.slow
def test_fit_writes_the_run_directory(cifar10_small: Path, tmp_path: Path):
    summary = fit(small_cfg(cifar10_small), work_dir=tmp_path / "run", quiet=True)
    run = tmp_path / "run"
    assert {"config.yaml", "log.jsonl", "last.pt", "best.pt"} <= {p.name for p in run.iterdir()}
    recs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert recs[0]["type"] == "header" and recs[0]["classes"][0] == "airplane" and recs[0]["seed"] == 0
    train = [r for r in recs if r["type"] == "train"]
    val = [r for r in recs if r["type"] == "val"]
    assert set(train[0]) >= {"epoch", "iter", "lr", "loss", "time", "data_time"}
    assert [v["epoch"] for v in val] == [1, 2, 3] and set(val[0]) >= {"loss", "top1", "top5", "iter"}
    assert summary["final"]["top1"] > 30  # toy data is learnable: well above the 10% of chance
    ck = load_checkpoint(run / "last.pt")
    for key in ("model", "optimizer", "scheduler", "lookahead", "rng", "epoch", "iter", "classes", "config",
                "preprocess"):
        assert key in ck, key
    assert ck["preprocess"]["input_size"] == 32 and ck["epoch"] == 3


def test_eval_reproduces_last_val_record(cifar10_small: Path, tmp_path: Path):
    fit(small_cfg(cifar10_small, "train.epochs=1", "eval.tta=flip_translate"), work_dir=tmp_path / "r", quiet=True)
    last = [r for r in map(json.loads, (tmp_path / "r" / "log.jsonl").read_text().splitlines())
            if r["type"] == "val"][-1]
    m = evaluate_checkpoint(tmp_path / "r" / "last.pt")
    assert (m["top1"], m["top5"]) == (last["top1"], last["top5"])
    assert m["loss"] == pytest.approx(last["loss"], abs=1e-6) and m["tta"] == "flip_translate"


@pytest.mark.slow
def test_resume_is_bitwise_identical(cifar10_small: Path, tmp_path: Path):
    fit(small_cfg(cifar10_small), work_dir=tmp_path / "a", quiet=True)
    # the same run stopped after 2 of 3 epochs (10 iterations), then resumed
    fit(small_cfg(cifar10_small, "train.max_iters=10"), work_dir=tmp_path / "b", quiet=True)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 2
    fit(small_cfg(cifar10_small), work_dir=tmp_path / "b", resume=True, quiet=True)
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    log_a = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()[1:]]
    log_b = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()[1:]]
    def strip(recs):
        return [{k: v for k, v in r.items() if k not in ("time", "data_time")} for r in recs if r["type"] != "summary"]

    assert strip(log_a) == strip(log_b)


@pytest.mark.slow
def test_resume_mid_epoch_after_max_iters_is_bitwise_identical(cifar10_small: Path, tmp_path: Path):
    fit(small_cfg(cifar10_small), work_dir=tmp_path / "a", quiet=True)
    fit(small_cfg(cifar10_small, "train.max_iters=7"), work_dir=tmp_path / "b", quiet=True)  # inside epoch 2
    ck = load_checkpoint(tmp_path / "b" / "last.pt")
    assert (ck["epoch"], ck["iter"]) == (1, 7)
    s = fit(small_cfg(cifar10_small), work_dir=tmp_path / "b", resume=True, quiet=True)
    assert s["iters"] == 15 and s["epochs"] == 3
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    last = [r for r in map(json.loads, (tmp_path / "b" / "log.jsonl").read_text().splitlines()) if r["type"] == "val"]
    ref = [r for r in map(json.loads, (tmp_path / "a" / "log.jsonl").read_text().splitlines()) if r["type"] == "val"]
    assert last[-1]["top1"] == ref[-1]["top1"] and last[-1]["loss"] == ref[-1]["loss"]


def test_val_fraction_and_ema_and_resnet(cifar10_small: Path, tmp_path: Path):
    cfg = load_config(None, [f"data.root={cifar10_small}", "model.name=resnet18_cifar", "train.batch_size=20",
                             "train.max_iters=2", "train.ema=true", "data.val_fraction=0.2", "log.plots=false",
                             "optim.lr=0.05", "eval.batch_size=100"])
    s = fit(cfg, work_dir=tmp_path / "v", quiet=True)
    assert s["eval_split"] == "val" and s["final"]["n"] == 100
    ck = load_checkpoint(tmp_path / "v" / "last.pt")
    assert ck["ema"] is not None
    m = evaluate_checkpoint(tmp_path / "v" / "last.pt")
    assert m["split"] == "val" and m["top1"] == s["final"]["top1"]


def test_wrong_class_count_and_missing_root(cifar10_small: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="model.num_classes is 100 but .* has 10 classes"):
        fit(small_cfg(cifar10_small, "model.num_classes=100"), work_dir=tmp_path / "x", quiet=True)
    with pytest.raises(ConfigError, match="data.root is empty"):
        fit(load_config(None), work_dir=tmp_path / "y", quiet=True)


def test_nan_loss_stops_with_epoch_and_iteration(cifar10_small: Path, tmp_path: Path):
    cfg = small_cfg(cifar10_small, "train.amp=fp32")
    cfg.optim.lr = 1e30  # past the config's range (at most 100, which this net survives): the engine's own NaN stop
    with pytest.raises(TrainingDiverged, match=r"epoch \d+, iteration \d+"):
        fit(cfg, work_dir=tmp_path / "n", quiet=True)


# lr factor at steps 0, 10, 19, 20, 25, 40, 50, 60, 99 of 100 (20 per epoch); values worked out by hand:
# step: 0.5 every 2 epochs; multistep: x0.5 at epochs 1 and 3; cosine: 0.1 + 0.45 (1 + cos(pi s/100));
# linear/onecycle: 0.2 -> 1 over the first 25 steps, then -> 0.1 (straight / cosine)
SCHEDULE_VALUES = {
    "constant": [1, 1, 1, 1, 1, 1, 1, 1, 1],
    "step": [1, 1, 1, 1, 1, 0.5, 0.5, 0.5, 0.25],
    "multistep": [1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25],
    "cosine": [1, 0.977975, 0.922186, 0.914058, 0.868198, 0.689058, 0.55, 0.410942, 0.100222],
    "linear": [0.2, 0.52, 0.808, 0.84, 1, 0.82, 0.7, 0.58, 0.112],
    "onecycle": [0.2, 0.476393, 0.891587, 0.923607, 1, 0.914058, 0.775, 0.597038, 0.100395],
}


@pytest.mark.parametrize("name", list(SCHEDULE_VALUES))
def test_schedules(name: str):
    cfg = load_config(None, [f"schedule.name={name}", "schedule.step=2", "schedule.gamma=0.5",
                             "schedule.milestones=[1, 3]", "schedule.final_factor=0.1", "schedule.warmup_start=0.2",
                             "schedule.peak_fraction=0.25"])
    got = [lr_factor(cfg, s, 100, 20) for s in (0, 10, 19, 20, 25, 40, 50, 60, 99)]
    assert got == pytest.approx(SCHEDULE_VALUES[name], abs=1e-6)


def test_warmup_is_linear_from_warmup_start_then_the_schedule():
    cfg = load_config(None, ["schedule.name=cosine", "schedule.warmup_epochs=1", "schedule.warmup_start=0.2",
                             "schedule.final_factor=0"])
    got = [lr_factor(cfg, s, 100, 20) for s in (0, 10, 19, 20, 60, 99)]
    assert got == pytest.approx([0.2, 0.6, 0.96, 1.0, 0.5, 0.000385], abs=1e-6)


@pytest.mark.parametrize("source", ["folder", "manifest", "folder-streaming"])
def test_train_from_image_folders_and_manifests(source: str, cifar10_small: Path, tmp_path: Path):
    from cifarkit.data.cifar import read_cifar
    from cifarkit.data.export import export_dataset

    out = export_dataset({s: read_cifar(cifar10_small, s) for s in ("train", "test")}, tmp_path / "png")
    root = out.manifest if source == "manifest" else out.out
    extra = ["data.in_memory=false", "data.workers=1"] if source == "folder-streaming" else []
    s = fit(small_cfg(root, "train.epochs=2", *extra), work_dir=tmp_path / "r", quiet=True)
    assert s["final"]["n"] == 100 and s["final"]["top1"] > 20
    ck = load_checkpoint(tmp_path / "r" / "last.pt")
    assert ck["classes"][0] == "airplane"  # folder classes are sorted names: same order as CIFAR's here


def test_muon_recipe_runs_and_resumes(cifar10_small: Path, tmp_path: Path):
    cfg = load_config(FAST.parent / "cifar10_fast.yaml",
                      [f"data.root={cifar10_small}", "train.batch_size=100", "train.micro_batch=50",
                       "train.epochs=2", "log.plots=false", "eval.tta=none", "train.deterministic=true", NARROW])
    s = fit(cfg, work_dir=tmp_path / "m", quiet=True)
    ck = load_checkpoint(tmp_path / "m" / "last.pt")
    kinds = [g["kind"] for g in ck["optimizer"]["param_groups"]]
    assert kinds == ["filters", "head", "norm_bias", "whiten"] and s["iters"] == 10
    assert ck["optimizer"]["param_groups"][0]["muon"] is True


def test_micro_batches_keep_bn_running_stats_forgetting_per_step():
    from cifarkit.engine.train import micro_batches, rescale_bn_momentum

    assert micro_batches(2000, 250) == 8 and micro_batches(2000, 0) == 1 and micro_batches(100, 250) == 1
    assert micro_batches(1000, 300) == 4
    chunk = torch.randn(50, 4, 5, 5) * 3 + 2
    whole = torch.nn.BatchNorm2d(4, momentum=0.4)
    whole(chunk.repeat(8, 1, 1, 1))  # one update from the whole batch
    split = torch.nn.BatchNorm2d(4, momentum=0.4)
    rescale_bn_momentum(split, 8)
    assert (1 - split.momentum) ** 8 == pytest.approx(0.6)
    for _ in range(8):  # eight chunk updates of the same statistics
        split(chunk)
    assert torch.allclose(split.running_mean, whole.running_mean, atol=1e-5)
    assert torch.allclose(split.running_var, whole.running_var, rtol=0.02)
