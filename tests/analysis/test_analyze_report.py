"""`cifarkit analyze`, `report` (rendered in headless Chromium) and `plot` through the CLI."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_logs_curves import FLOWER, MBV2, not_blank

from conftest import CHROMIUM
from conftest import chromium as _chromium
from test_cli_data import run


def test_analyze_writes_everything(trained_run: Path, tmp_path: Path):
    out = tmp_path / "an"
    r = run("analyze", str(trained_run / "last.pt"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    for f in ("confusion_matrix.png", "confusion_matrix.csv", "per_class.csv", "misclassified.png",
              "reliability.png", "metrics.json", "predictions.npz"):
        assert (out / f).exists(), f
    m = json.loads((out / "metrics.json").read_text())
    assert {"top1", "top5", "ece", "per_class", "most_confused"} <= set(m)
    last = json.loads((trained_run / "log.jsonl").read_text().splitlines()[-2])  # before the summary line
    assert m["top1"] == pytest.approx(last["top1"], abs=1e-4)
    rows = list(csv.reader(open(out / "confusion_matrix.csv")))
    assert rows[0][1:] == [r[0] for r in rows[1:]] and rows[0][1] == "airplane"
    counts = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    assert counts.sum() == m["n"] == 100
    pred = np.load(out / "predictions.npz")
    assert pred["logits"].shape == (100, 10)
    per = list(csv.DictReader(open(out / "per_class.csv")))
    assert per[-1]["class"] == "weighted avg"
    assert not_blank(out / "confusion_matrix.png") and not_blank(out / "misclassified.png")


def test_plot_cli_on_both_mmcls_logs(tmp_path: Path):
    r = run("plot", str(MBV2), str(FLOWER), "--out", str(tmp_path / "p.png"))
    assert r.returncode == 0, r.stderr
    assert not_blank(tmp_path / "p.png")
    r = run("plot", str(tmp_path / "nothing.json"))
    assert r.returncode == 2 and r.stderr.startswith("error:")


def test_data_stats_cli(cifar10_dir: Path, tmp_path: Path):
    r = run("data", "stats", str(cifar10_dir), "--out", str(tmp_path / "s"), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["class_counts"]["train"]["airplane"] == 10 and len(s["mean"]) == 3
    assert (tmp_path / "s" / "class_balance.png").exists()




@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (.ci/run installs Debian's chromium)")
def test_report_renders_in_a_real_browser(trained_run: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    from cifarkit.analysis.robustness import robustness

    robustness(run_dir / "last.pt", run_dir / "robustness", corruptions=["fog", "jpeg"], severities=[2], limit=40,
               progress=False)
    r = run("report", str(run_dir))
    assert r.returncode == 0, r.stderr
    page = run_dir / "report.html"
    text = page.read_text()
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text  # offline
    final = json.loads((run_dir / "log.jsonl").read_text().splitlines()[-2])
    assert f"{final['top1']:.2f}%" in text
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", page.as_uri(), tmp=tmp_path).stdout
    m = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert m, "the page's load script did not run"
    errors = len(json.loads((run_dir / "analysis" / "metrics.json").read_text())["misclassified_index"][:12])
    # curves, confusion matrix, reliability, class balance, robustness heat map and samples + each
    # gallery error with its CAM overlay
    assert m[1] == m[2] and int(m[2]) == 6 + 2 * errors
    assert "Per-class metrics" in dom and "Grad-CAM" in dom and "Robustness to corruptions" in dom
    shot = tmp_path / "phone.png"
    _chromium("--window-size=390,2400", f"--screenshot={shot}", page.as_uri(), tmp=tmp_path)
    assert not_blank(shot)
    from PIL import Image

    assert Image.open(shot).size[0] == 390
