"""Engine v2 features through the real CLI on tiny data: early stopping, TensorBoard/CSV
loggers, the LR finder."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cifarkit.engine.early_stop import EarlyStop
from cifarkit.engine.loggers import summary_writer_class
from cifarkit.engine.lr_find import smooth, steepest, swept_kinds, valley
from cifarkit.extras import MissingExtra
from conftest import NARROW_SET

TINY = ["--set", "train.batch_size=100", "--set", "eval.tta=none", "--set", "eval.batch_size=100",
        "--set", "log.interval=1", "--set", "log.plots=false", "--set", "train.device=cpu", *NARROW_SET]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cifarkit", *args], cwd=cwd, capture_output=True, text=True,
                          env=os.environ.copy(), timeout=600)


def records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_early_stop_stops_logs_and_resume_keeps_the_counter(cifar10_small: Path, tmp_path: Path):
    # min_delta 100 [% top-1]: no evaluation after the first can improve, so patience 2 stops at epoch 3 of 6
    args = ["train", "fast", "--work-dir", "run", "--set", f"data.root={cifar10_small}", *TINY,
            "--set", "train.epochs=6", "--set", "eval.interval=1", "--set", "train.early_stop.patience=2",
            "--set", "train.early_stop.min_delta=100"]
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "watches the 'test' split" in r.stderr and "data.val_fraction" in r.stderr
    recs = records(tmp_path / "run")
    stop = [x for x in recs if x["type"] == "early_stop"]
    assert len(stop) == 1 and stop[0]["epoch"] == 3 and stop[0]["best_epoch"] == 1 and stop[0]["patience"] == 2
    assert [x["epoch"] for x in recs if x["type"] == "val"] == [1, 2, 3]
    assert recs[-1]["type"] == "summary" and recs[-1]["early_stopped"] is True
    import torch

    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert best["epoch"] == 1 and last["epoch"] == 3  # best.pt is the model to use
    assert last["early_stop"]["bad_evals"] == 2 and last["early_stop"]["stopped"] is True
    r = cli(*args, "--resume", cwd=tmp_path)  # the counter came back with the checkpoint: nothing to do
    assert r.returncode != 0 and "already finished" in r.stderr and "early_stop.patience" in r.stderr


def test_early_stop_counts_evaluations_without_improvement():
    s = EarlyStop(patience=2, metric="loss", min_delta=0.1)
    assert s.update({"loss": 1.0}, 1) and not s.should_stop
    assert not s.update({"loss": 0.95}, 2)  # better, but by less than min_delta
    assert s.update({"loss": 0.8}, 3) and s.bad_evals == 0
    s.update({"loss": 0.9}, 4)
    s.update({"loss": 0.85}, 5)
    assert s.should_stop and s.best_epoch == 3
    again = EarlyStop(patience=2, metric="loss")
    again.load_state_dict(s.state_dict())
    assert (again.best, again.bad_evals, again.should_stop) == (0.8, 2, True)


@pytest.mark.slow
def test_tensorboard_and_csv_loggers(cifar10_small: Path, tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = cli("train", "fast", "--work-dir", "run", "--set", f"data.root={cifar10_small}", *TINY,
            "--set", "train.epochs=2", "--set", "eval.interval=1", "--set", "log.tensorboard=true",
            "--set", "log.csv=true", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "run"
    recs = records(run)
    train = [x for x in recs if x["type"] == "train"]
    val = [x for x in recs if x["type"] == "val"]
    ea = EventAccumulator(str(run / "tb"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/images_per_s", "val/top1", "val/top5", "val/loss"} <= tags
    assert [e.step for e in ea.Scalars("train/loss")] == [x["iter"] for x in train]
    assert [e.value for e in ea.Scalars("train/loss")] == pytest.approx([x["loss"] for x in train], rel=1e-6)
    assert [e.value for e in ea.Scalars("val/top1")] == pytest.approx([x["top1"] for x in val], rel=1e-6)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == len(train) + len(val)  # one row per record
    assert [float(x["loss"]) for x in rows if x["type"] == "val"] == [x["loss"] for x in val]


def test_tensorboard_missing_extra_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    with pytest.raises(MissingExtra, match=r"pip install 'cifarkit\[tensorboard\]' \(or set log.tensorboard=false\)"):
        summary_writer_class()


@pytest.mark.slow
@pytest.mark.parametrize("recipe, key", [("airbench94", "optim.lr"), ("fast", "optim.muon_lr")])
def test_lr_find_cli_writes_plot_and_csv_and_suggests_a_set_line(recipe: str, key: str, cifar10_small: Path,
                                                                 tmp_path: Path):
    r = cli("lr-find", recipe, "--set", f"data.root={cifar10_small}", "--set", "train.batch_size=50",
            "--steps", "15", "--start-lr", "1e-5", "--end-lr", "1", "--out", "lrf", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((tmp_path / "lrf" / "lr_find.csv").open()))
    lrs = [float(x["lr"]) for x in rows]
    assert 2 <= len(rows) <= 15 and lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-5)
    assert (tmp_path / "lrf" / "lr_find.png").stat().st_size > 1000
    assert f"--set {key}=" in r.stdout and "valley" in r.stdout and "steepest" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lrf"]  # no run directory left behind
    before = (tmp_path / "lrf" / "lr_find.csv").read_bytes()
    again = cli("lr-find", recipe, "--set", f"data.root={cifar10_small}", "--steps", "15", "--out", "lrf",
                cwd=tmp_path)  # refused before any training: the earlier result is not overwritten
    assert again.returncode != 0 and again.stderr.count("error:") == 1 and "--overwrite" in again.stderr
    assert (tmp_path / "lrf" / "lr_find.csv").read_bytes() == before


def test_lr_find_suggestions_on_a_known_curve():
    lrs = [10 ** (-6 + 0.1 * i) for i in range(61)]
    # flat, then falling fastest around 1e-3, a minimum near 1e-1, then diverging
    losses = [2.3 - 1.5 / (1 + 10 ** (-(i - 30) / 4)) + (0.05 * (i - 50) ** 2 if i > 50 else 0) for i in range(61)]
    assert steepest(lrs, losses) == pytest.approx(1e-3, rel=0.3)
    v = valley(lrs, smooth(losses, 0.5))
    assert 1e-4 < v < 1e-1
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # bias-corrected: no pull towards 0


def test_lr_find_sweeps_the_filter_lr_for_muon():
    from cifarkit.config import load_config

    assert swept_kinds(load_config("fast")) == ("optim.muon_lr", {"filters"})
    key, kinds = swept_kinds(load_config("airbench94"))
    assert key == "optim.lr" and {"weights", "norm_bias", "whiten", "head"} == kinds
