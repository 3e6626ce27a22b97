"""Faults injected on purpose: hostile and broken checkpoints, crashes during save, kill -9 and
exact resume, NaN losses, unwritable work directories."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cifarkit.config import load_config
from cifarkit.engine.step import TrainingDiverged
from cifarkit.engine.train import fit
from cifarkit.errors import CheckpointError, CifarkitError
from cifarkit.infer import checkpoint as ckmod
from cifarkit.infer.checkpoint import load_checkpoint
from conftest import NARROW
from test_cli_data import run

FAST = Path(__file__).resolve().parents[2] / "configs" / "cifar10_airbench94.yaml"


def tiny(root: Path, *extra: str):
    return load_config(FAST, [f"data.root={root}", "train.batch_size=100", "train.epochs=3", "eval.interval=1",
                              "log.plots=false", "train.deterministic=true", "eval.tta=none",
                              *([] if any(x.startswith("model.name=") for x in extra) else [NARROW]), *extra])


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.slow
def test_checkpoint_with_code_payload_is_refused(trained_run: Path, tmp_path: Path):
    marker = tmp_path / "pwned"
    ck = torch.load(trained_run / "last.pt", weights_only=True)
    ck["config"]["name"] = _Evil(marker)
    with open(tmp_path / "evil.pt", "wb") as f:
        torch.save(ck, f)
    r = run("eval", str(tmp_path / "evil.pt"))
    assert r.returncode == 2 and "refused" in r.stderr and "nothing from it was run" in r.stderr
    assert not marker.exists()
    r = run("predict", str(tmp_path / "evil.pt"), str(tmp_path))
    assert r.returncode == 2 and not marker.exists()


@pytest.mark.slow
def test_truncated_and_mismatched_checkpoints(trained_run: Path, tmp_path: Path, cifar10_small: Path):
    data = (trained_run / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    r = run("eval", str(tmp_path / "cut.pt"))
    assert r.returncode == 2 and "truncated or corrupt" in r.stderr and "cut.pt" in r.stderr
    ck = torch.load(trained_run / "last.pt", weights_only=True)
    ck["config"]["model"]["num_classes"] = 5
    torch.save(ck, tmp_path / "five.pt")
    r = run("eval", str(tmp_path / "five.pt"))
    assert r.returncode == 2 and "names 10 classes but the model has 5 outputs" in r.stderr
    with pytest.raises(CheckpointError, match="model.name='airnet', the config asks for 'resnet18_cifar'"):
        fit(tiny(cifar10_small, "model.name=resnet18_cifar"), work_dir=tmp_path / "x",
            resume=str(trained_run / "last.pt"), quiet=True)


def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch):
    good = {"model": {"w": torch.ones(3)}, "config": {}}
    ckmod.atomic_save(good, tmp_path / "last.pt")

    def crash(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk yanked")

    monkeypatch.setattr(ckmod.torch, "save", crash)
    with pytest.raises(OSError):
        ckmod.atomic_save({"model": {"w": torch.zeros(3)}, "config": {}}, tmp_path / "last.pt")
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def _cli_train(cfg_args: list[str], work: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cifarkit", "train", str(FAST), *cfg_args, "--work-dir",
                             str(work), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_kill_9_then_resume_is_bitwise_identical(cifar10_small: Path, tmp_path: Path):
    args = []
    for s in (f"data.root={cifar10_small}", "train.batch_size=100", "train.epochs=6", "eval.interval=1",
              "log.plots=false", "train.deterministic=true", "eval.tta=none", "log.interval=1", NARROW):
        args += ["--set", s]
    ref = _cli_train(args, tmp_path / "ref")
    assert ref.wait(timeout=600) == 0, ref.stderr.read()
    victim = _cli_train(args, tmp_path / "run")
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until at least two epochs are checkpointed, then kill mid-run
        if log.exists() and sum('"type": "val"' in ln for ln in log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere inside the next epoch (or its checkpoint write)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    killed_at = load_checkpoint(ckmod.newest_valid_checkpoint(tmp_path / "run"))["epoch"]
    assert killed_at < 6, "the run finished before it could be killed; make it longer"
    resumed = _cli_train(args, tmp_path / "run", "--resume")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resumed from" in out
    a, b = load_checkpoint(tmp_path / "ref" / "last.pt"), load_checkpoint(tmp_path / "run" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["lookahead"]:
        assert torch.equal(a["lookahead"][k], b["lookahead"][k]), k

    def vals(p):
        return [(r["epoch"], r["top1"], r["loss"]) for r in map(json.loads, p.read_text().splitlines())
                if r["type"] == "val"]

    assert vals(tmp_path / "ref" / "log.jsonl") == vals(log)


def _poison(monkeypatch, at_call: int):
    """Make the `at_call`-th training batch NaN."""
    import cifarkit.data.loader as loader

    orig = loader.train_batch
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        x = orig(*a, **k)
        return x * float("nan") if calls["n"] == at_call else x

    monkeypatch.setattr(loader, "train_batch", poisoned)


def test_nan_stop_names_epoch_and_iteration_and_keeps_last_good(cifar10_small: Path, tmp_path: Path, monkeypatch):
    _poison(monkeypatch, 8)  # 5 batches per epoch: iteration 8 is in epoch 2
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 2, iteration 8"):
        fit(tiny(cifar10_small), work_dir=tmp_path / "n", quiet=True)
    ck = load_checkpoint(tmp_path / "n" / "last.pt")
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_deferred_nan_check_names_the_same_iteration(cifar10_small: Path, tmp_path: Path, monkeypatch):
    """The GPU path (losses checked at log records/epoch end, not per step), forced on the CPU:
    same error, same last good checkpoint, and the same logged losses as the per-step path."""
    import cifarkit.engine.step as step_mod

    ok = fit(tiny(cifar10_small, "log.interval=2"), work_dir=tmp_path / "sync", quiet=True)
    monkeypatch.setattr(step_mod, "defer_loss_sync", lambda device: True)
    deferred = fit(tiny(cifar10_small, "log.interval=2"), work_dir=tmp_path / "defer", quiet=True)
    assert deferred["final"] == ok["final"]

    def losses(run):
        return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())
                if r["type"] == "train"]

    assert losses(tmp_path / "defer") == losses(tmp_path / "sync") and len(losses(tmp_path / "sync")) == 7
    _poison(monkeypatch, 8)
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 2, iteration 8"):
        fit(tiny(cifar10_small), work_dir=tmp_path / "n", quiet=True)
    ck = load_checkpoint(tmp_path / "n" / "last.pt")
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_nan_skip_batch_finishes(cifar10_small: Path, tmp_path: Path, monkeypatch):
    _poison(monkeypatch, 3)
    s = fit(tiny(cifar10_small, "train.nan_policy=skip_batch"), work_dir=tmp_path / "s", quiet=True)
    assert s["iters"] == 15 and s["final"]["top1"] > 20


def test_unwritable_or_full_work_dir_fails_before_training(cifar10_small: Path, tmp_path: Path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CifarkitError, match="not writable"):
        fit(tiny(cifar10_small), work_dir=tmp_path / "file" / "run", quiet=True)
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10, 10, 1 << 20))
    with pytest.raises(CifarkitError, match="only 1 MiB free"):
        fit(tiny(cifar10_small), work_dir=tmp_path / "full", quiet=True)


def test_resume_without_checkpoint(cifar10_small: Path, tmp_path: Path):
    with pytest.raises(CifarkitError, match="found no valid checkpoint"):
        fit(tiny(cifar10_small), work_dir=tmp_path / "empty", resume=True, quiet=True)
    (tmp_path / "empty" / "last.pt").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(CifarkitError, match="found no valid checkpoint"):
        fit(tiny(cifar10_small), work_dir=tmp_path / "empty", resume=True, quiet=True)
