"""What a newcomer tripped over (issue #25), each pinned through the real CLI where it is behaviour:
a run that works from another folder, every printed top-1 naming its checkpoint and split, the
picture of one training batch, the run's ETA, a listing of models that does not build them all,
an export without torch's deprecation noise, galleries that show the true label's probability.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import NARROW_SET, make_cifar10
from test_cli_data import run


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory) -> Path:
    """A 2-epoch CLI run started in `home/` with a relative data.root (`data/...`), plots on."""
    home = tmp_path_factory.mktemp("home")
    d = make_cifar10(home / "data", per_batch=40, test=40, py2=False)
    test = pickle.loads((d / "test_batch").read_bytes())
    test["labels"] = [(y + 1) % 10 if i % 4 == 0 else y for i, y in enumerate(test["labels"])]  # some errors
    (d / "test_batch").write_bytes(pickle.dumps(test, protocol=4))
    r = run("train", "fast", "--set", "data.root=data/cifar-10-batches-py", "--set", "train.batch_size=100",
            "--set", "train.epochs=2", "--set", "eval.tta=none", "--set", "log.plots=true", "--set", "eval.interval=1",
            *NARROW_SET,
            "--work-dir", "run", cwd=home)
    assert r.returncode == 0, r.stderr
    (home / "stdout.txt").write_text(r.stdout)
    return home


@pytest.mark.slow
def test_a_run_trained_with_a_relative_data_root_evaluates_from_any_folder(relative_run: Path, tmp_path: Path):
    ck = torch.load(relative_run / "run" / "last.pt", weights_only=True)
    assert ck["config"]["data"]["root"] == "data/cifar-10-batches-py"  # as typed
    assert ck["data_root"] == str((relative_run / "data" / "cifar-10-batches-py").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run("eval", str(relative_run / "run" / "last.pt"), cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert "last.pt (epoch 2)  test (40 images" in r.stdout  # which checkpoint, which epoch, which split
    r = run("analyze", str(relative_run / "run" / "best.pt"), "--out", "a", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert "best.pt (epoch " in r.stdout.splitlines()[0]

    # neither the typed nor the stored path exists: the error says to pass --data
    moved = tmp_path / "moved"
    shutil.copytree(relative_run / "run", moved)
    shutil.move(relative_run / "data", tmp_path / "data-away")
    try:
        r = run("eval", str(moved / "last.pt"), cwd=elsewhere)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "data/cifar-10-batches-py: the run's data.root is not there" in r.stderr and "--data" in r.stderr
        r = run("eval", str(moved / "last.pt"), "--data", str(tmp_path / "data-away" / "cifar-10-batches-py"),
                cwd=elsewhere)
        assert r.returncode == 0, r.stderr
    finally:
        shutil.move(tmp_path / "data-away", relative_run / "data")


@pytest.mark.slow
def test_run_prints_its_eta_and_names_the_checkpoint_of_each_top1(relative_run: Path):
    out = (relative_run / "stdout.txt").read_text()
    first_epoch = next(ln for ln in out.splitlines() if ln.startswith("epoch 1/2"))
    assert "run ETA " in first_epoch  # the whole run's time left, after the first epoch
    assert "(last.pt, epoch 2)" in out
    best = next(ln for ln in out.splitlines() if ln.startswith("best "))
    assert "test top1" in best and "best.pt, epoch " in best and "chosen on the test split" in best


@pytest.mark.slow
def test_train_writes_one_augmented_batch_and_the_report_shows_it(relative_run: Path):
    from PIL import Image

    shot = relative_run / "run" / "train_batch.png"
    assert shot.is_file() and Image.open(shot).size[0] > 400
    report = (relative_run / "run" / "report.html").read_text()
    assert "One training batch, as the model sees it" in report
    assert "final test top-1 (last.pt)" in report and "best test top-1 (best.pt)" in report
    # the error gallery: predicted and true label, each with its probability
    assert "predicted <b>" in report and "), true <b>" in report


def test_first_training_batch_picture_is_the_batch_training_draws(tmp_path: Path):
    from cifarkit.analysis.after_run import write_train_batch
    from cifarkit.config import load_config
    from cifarkit.data.splits import build_data

    root = make_cifar10(tmp_path / "c10")
    cfg = load_config("fast", [f"data.root={root}", "train.batch_size=50"])
    data = build_data(cfg, torch.device("cpu"))
    first = next(iter(data.loader))[0].clone()
    write_train_batch(tmp_path, data, quiet=True)
    assert (tmp_path / "train_batch.png").is_file()
    again = next(iter(data.loader))[0]
    assert torch.equal(first, again)  # drawing it did not move the epoch's randomness


def test_accuracy_panel_names_the_split_that_was_evaluated():
    from cifarkit.analysis.curves import accuracy_title
    from cifarkit.logs import RunRecords

    def rec(split):
        r = RunRecords(name="r", format="cifarkit")
        r.header = {"eval_split": split} if split else {"CLASSES": []}
        return r

    assert accuracy_title([rec("test")]) == "test accuracy"
    assert accuracy_title([rec("val")]) == "val accuracy"
    assert "does not name it" in accuracy_title([rec(None)])  # an MMClassification log
    assert "validation" not in accuracy_title([rec("test"), rec("test")])


def test_eta_counts_from_this_processes_pace():
    import time

    from cifarkit.engine.train import Totals

    t = Totals(loop_start=time.perf_counter() - 10.0, start_step=100)
    assert t.eta(100, 200) == ""  # no step yet in this process: no guess
    left = t.eta(110, 200)  # 10 steps in ~10 s, 90 to go
    assert left.startswith("1m3") or left.startswith("1m2"), left


def test_evaluation_shows_a_progress_bar_when_asked(capsys):
    from cifarkit.data.loader import Preprocess
    from cifarkit.infer.evaluate import predict_logits

    prep = Preprocess(mean=[0.0] * 3, std=[1.0] * 3, input_size=8)
    images = torch.zeros(30, 3, 8, 8, dtype=torch.uint8)
    predict_logits(lambda x: x.flatten(1)[:, :4], images, prep, 10, progress=True)
    assert "evaluating (tta none)" in capsys.readouterr().err
    predict_logits(lambda x: x.flatten(1)[:, :4], images, prep, 10, progress=False)
    assert capsys.readouterr().err == ""


def test_models_all_lists_by_name_without_building_every_model(tmp_path: Path, monkeypatch):
    from cifarkit import models

    built = []
    monkeypatch.setattr(models, "create_model", lambda name, n: built.append(name) or torch.nn.Linear(1, 1))
    monkeypatch.setattr(models, "count_macs", lambda m, size: 7)
    assert models.model_stats("vit_h_14", 10, 224, compute=False) is None and built == []
    assert models.model_stats("vit_h_14", 10, 224) == (2, 7) and built == ["vit_h_14"]
    assert models.model_stats("vit_h_14", 10, 224, compute=False) == (2, 7)  # cached
    assert models.model_stats("vit_h_14", 10, 224) == (2, 7) and built == ["vit_h_14"]  # not built again
    from cifarkit import cache_dir

    cached = json.loads((cache_dir() / "model_stats.json").read_text())
    assert [k.split("|")[:3] for k in cached] == [["vit_h_14", "10", "224"]]


def test_misclassified_grid_titles_give_both_probabilities(tmp_path: Path, monkeypatch):
    from cifarkit.analysis import analyze as mod

    titles = []
    real = mod.pyplot

    def spy():
        plt = real()
        orig = plt.subplots

        def subplots(*a, **k):
            fig, axes = orig(*a, **k)
            for ax in axes.flat:
                ax.set_title = lambda t, _set=ax.set_title, **kw: (titles.append(t), _set(t, **kw))[1]
            return fig, axes

        monkeypatch.setattr(plt, "subplots", subplots)
        return plt

    monkeypatch.setattr(mod, "pyplot", spy)
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    images = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    chosen = mod.plot_misclassified(images, np.array([1, 1]), probs, np.array([0, 1]), ["a", "b", "c"],
                                    tmp_path / "m.png")
    assert chosen == [0] and titles == ["P: a 0.70\nT: b 0.20"]


@pytest.mark.slow
def test_torchscript_export_prints_no_deprecation_warning(trained_run: Path, tmp_path: Path):
    r = run("export", str(trained_run / "last.pt"), "--format", "torchscript", "--out", str(tmp_path / "m.ts"))
    assert r.returncode == 0, r.stderr
    assert "FutureWarning" not in r.stderr and "deprecated" not in r.stderr
    assert "prefer --format onnx" in r.stdout
