"""Temperature scaling: the fit recovers a planted temperature, our ECE agrees with torchmetrics',
and a calibrated checkpoint changes probabilities but never a top-1, in every command, without
touching its input; bad input is one error line and writes nothing."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarkit.errors import CheckpointError, ConfigError
from cifarkit.infer.calibration import calibrate, calibration_scores, fit_temperature, fit_temperature_ece
from test_cli_data import run


def planted(n: int = 4000, c: int = 10, t: float = 2.5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits t times too confident: labels drawn from softmax(z), the model reports t * z."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=torch.float64) * 2
    labels = torch.multinomial(torch.softmax(z, 1), 1, generator=g)[:, 0]
    return z * t, labels


def test_fit_recovers_a_planted_temperature_and_lowers_nll():
    logits, labels = planted(t=2.5)
    t = fit_temperature(logits, labels)
    assert abs(t - 2.5) < 0.15
    before, after = calibration_scores(logits, labels), calibration_scores(logits, labels, t)
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"] and after["brier"] < before["brier"]
    assert after["top1"] == before["top1"]
    under, y = planted(t=0.5, seed=1)  # under-confident: T < 1
    assert abs(fit_temperature(under, y) - 0.5) < 0.05


def test_ece_objective_finds_the_lowest_ece_on_its_split():
    logits, labels = planted(t=2.5, seed=2)
    # smoothed-label-like distortion that one NLL-fitted T cannot fully undo
    logits = logits + 0.8 * torch.tanh(logits)
    t_nll, t_ece = fit_temperature(logits, labels), fit_temperature_ece(logits, labels)
    nll, ece = calibration_scores(logits, labels, t_nll), calibration_scores(logits, labels, t_ece)
    assert ece["ece"] <= nll["ece"] and nll["nll"] <= ece["nll"] + 1e-12  # each wins on its own objective
    assert ece["top1"] == nll["top1"]


def test_ece_agrees_with_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional.classification")
    logits, labels = planted(n=3000, t=1.7, seed=3)
    ours = calibration_scores(logits, labels)["ece"]
    theirs = float(tm.multiclass_calibration_error(torch.softmax(logits.float(), 1), labels, num_classes=10,
                                                    n_bins=15, norm="l1"))
    assert abs(ours - theirs) < 1e-5


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.slow
def test_calibrated_checkpoint_changes_scores_not_labels_everywhere(trained_run: Path, tmp_path: Path):
    from cifarkit.analysis.calibration_plot import calibrate_with_figure
    from cifarkit.export import export_model
    from cifarkit.infer.inference import Inference, evaluate_checkpoint
    from cifarkit.predict import load

    src = trained_run / "last.pt"
    digest = _sha(src)
    with pytest.raises(ConfigError, match="no validation split"):
        calibrate(src, tmp_path / "c.pt")
    with pytest.raises(ConfigError, match="--split test: fitting the temperature on the test split"):
        calibrate(src, tmp_path / "c.pt", split="test")
    assert not list(tmp_path.iterdir())  # nothing written
    r = calibrate_with_figure(src, tmp_path / "c.pt", split="test", allow_test=True)
    assert _sha(src) == digest  # the input is never rewritten
    assert r["after"]["nll"] <= r["before"]["nll"] and Path(r["figure"]).is_file()
    t = r["temperature"]
    assert T_OK(t) and torch.load(tmp_path / "c.pt", weights_only=True)["temperature"] == t

    plain, cal = evaluate_checkpoint(src), evaluate_checkpoint(tmp_path / "c.pt")
    assert cal["predictions"] == plain["predictions"] and cal["top1"] == plain["top1"]
    assert cal["temperature"] == t and "temperature" not in plain

    raw = Inference.from_checkpoint(src, temperature=1.0)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    want = torch.softmax(raw.logits(images) / t, 1)
    preds = load(tmp_path / "c.pt").predict(list(images.permute(0, 2, 3, 1).numpy()))  # HWC arrays
    for i, p in enumerate(preds):  # predict's probabilities are the calibrated ones, its labels the same
        assert p.label_id == int(want[i].argmax()) and abs(p.score - float(want[i].max())) < 1e-5
    # an exported model carries the temperature in its graph (the export's parity check compares
    # against the calibrated checkpoint through the one inference path)
    pytest.importorskip("onnxruntime")
    rep = export_model(tmp_path / "c.pt", "onnx", tmp_path / "c.onnx")
    assert rep.top1_agreement == 1.0
    onnx_inf = Inference.from_onnx(tmp_path / "c.onnx")
    assert onnx_inf.temperature == t
    assert torch.allclose(torch.softmax(onnx_inf.logits(images), 1), want.float(), atol=1e-4)


def T_OK(t: float) -> bool:  # noqa: N802
    return math.isfinite(t) and 0.05 <= t <= 20


@pytest.mark.slow
def test_cli_calibrate_and_a_damaged_temperature(trained_run: Path, tmp_path: Path):
    r = run("calibrate", str(trained_run / "last.pt"), "--out", str(tmp_path / "c.pt"))
    assert r.returncode == 2 and r.stderr.startswith("error:") and r.stderr.count("\n") == 1
    assert not (tmp_path / "c.pt").exists()
    r = run("calibrate", str(trained_run / "last.pt"), "--out", str(trained_run / "last.pt"), "--split", "test",
            "--allow-test")
    assert r.returncode == 2 and "never rewrites the input" in r.stderr
    r = run("calibrate", str(trained_run / "last.pt"), "--out", str(tmp_path / "c.pt"), "--split", "test",
            "--allow-test", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["split"] == "test" and out["before"]["top1"] == out["after"]["top1"] and out["objective"] == "nll"
    r = run("calibrate", str(trained_run / "last.pt"), "--out", str(tmp_path / "e.pt"), "--split", "test",
            "--allow-test", "--objective", "ece", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["objective"] == "ece", r.stderr
    assert json.loads(r.stdout)["after"]["ece"] <= out["after"]["ece"] + 1e-12
    for bad in (float("nan"), -1.0, 0.0, "2"):
        ck = torch.load(tmp_path / "c.pt", weights_only=True)
        ck["temperature"] = bad
        torch.save(ck, tmp_path / "bad.pt")
        r = run("eval", str(tmp_path / "bad.pt"))
        assert r.returncode == 2 and "temperature" in r.stderr and r.stderr.count("\n") == 1, (bad, r.stderr)
    with pytest.raises(CheckpointError, match="temperature"):
        from cifarkit.infer.inference import Inference

        Inference.from_checkpoint(tmp_path / "bad.pt")


@pytest.mark.slow
def test_train_calibrate_writes_calibrated_pt_from_the_validation_split(cifar10_small: Path, tmp_path: Path):
    from cifarkit.analysis.after_run import plot_writers
    from cifarkit.config import load_config
    from cifarkit.engine.train import fit
    from conftest import NARROW

    cfg = load_config("fast", [f"data.root={cifar10_small}", "train.batch_size=100", "train.epochs=1",
                               "data.val_fraction=0.2", "train.calibrate=true", "log.plots=false", "eval.tta=none",
                               NARROW])
    fit(cfg, work_dir=tmp_path / "run", quiet=True, after_run=plot_writers(cfg.log.plots, calibrate=True))
    assert (tmp_path / "run" / "calibrated_reliability.png").stat().st_size > 1000  # drawn by analysis, not engine
    ck = torch.load(tmp_path / "run" / "calibrated.pt", weights_only=True)
    assert ck["calibration"]["split"] == "val" and ck["calibration"]["n"] == 100
    assert np.isfinite(ck["temperature"]) and "temperature" not in torch.load(tmp_path / "run" / "best.pt",
                                                                              weights_only=True)
