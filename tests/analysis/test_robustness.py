"""`cifarkit robustness`: the CIFAR-10-C table through the one inference path, mCE, the files it
writes (and does not overwrite), the CIFAR-10-C folder reader, the report's section, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.data.test_corruptions import write_cifar10c

from cifarkit.analysis.robustness import corruption_errors, robustness
from cifarkit.data.corruptions import chunk_rng, corrupt
from cifarkit.errors import CifarkitError, ConfigError
from cifarkit.infer.evaluate import ranked
from cifarkit.infer.inference import Inference, eval_data, evaluate_checkpoint
from conftest import make_checkpoint, make_cifar10
from test_cli_data import run


def test_table_is_the_eval_path_on_corrupted_images(trained_run: Path, tmp_path: Path):
    ckpt = trained_run / "last.pt"
    other = make_checkpoint("airnet", tmp_path / "untrained.pt")  # a reference model that errs a lot
    r = robustness(ckpt, tmp_path / "rb", corruptions=["gaussian_noise", "contrast"], severities=[1, 5],
                   baseline=other, progress=False)
    assert set(r["table"]) == {"gaussian_noise", "contrast"} and set(r["table"]["contrast"]) == {"1", "5"}
    # clean top-1 is `cifarkit eval`'s (same path, plain evaluation as the protocol)
    assert r["clean_top1"] == pytest.approx(evaluate_checkpoint(ckpt, tta="none")["top1"])
    assert r["tta"] == "none" and r["n"] == 100
    # one cell recomputed by hand: corrupt the test images chunk by chunk, predict, count
    inf = Inference.from_checkpoint(ckpt, tta="none")
    images, labels, _ = eval_data(inf)
    x = corrupt(images, "contrast", 5, chunk_rng(0, "contrast", 5, 0))
    assert r["table"]["contrast"]["5"] == pytest.approx(100 * float((ranked(inf.logits(x), 1)[:, 0] == labels)
                                                                    .float().mean()))
    assert r["mca"] == pytest.approx(np.mean([v for row in r["table"].values() for v in row.values()]))
    # the reference is scored on the very same corrupted images, as if run on its own
    alone = robustness(other, tmp_path / "alone", data=inf.config.data.root, corruptions=["gaussian_noise", "contrast"],
                       severities=[1, 5], progress=False)
    assert r["baseline"]["table"] == alone["table"] and r["baseline"]["clean_top1"] == alone["clean_top1"]
    expect = corruption_errors(r["table"], r["clean_top1"], alone["table"], alone["clean_top1"])
    assert r["baseline"]["mce"] == pytest.approx(expect["mce"]) and expect["mce"] is not None
    out = tmp_path / "rb"
    for f in ("robustness.json", "robustness.png", "robustness_samples.png", "metrics.json"):
        assert (out / f).is_file(), f
    assert json.loads((out / "metrics.json").read_text())["robustness"]["mca"] == pytest.approx(r["mca"])
    # a rerun gives the same table (seeded corruptions) and never silently replaces the first
    with pytest.raises(CifarkitError, match="robustness.json: exists"):
        robustness(ckpt, out, corruptions=["contrast"], severities=[5], progress=False)
    again = robustness(ckpt, out, corruptions=["gaussian_noise", "contrast"], severities=[1, 5], overwrite=True,
                       progress=False)
    assert again["table"] == r["table"]


def test_a_damaged_metrics_json_is_refused_before_the_work(trained_run: Path, tmp_path: Path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "metrics.json").write_text("[1, 2]")
    with pytest.raises(CifarkitError, match="not a JSON object"):
        robustness(trained_run / "last.pt", out, corruptions=["fog"], severities=[1], limit=10, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]


def test_metrics_json_keeps_other_results(trained_run: Path, tmp_path: Path):
    out = tmp_path / "analysis"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"top1": 12.5}))
    robustness(trained_run / "last.pt", out, corruptions=["fog"], severities=[2], limit=30, progress=False)
    m = json.loads((out / "metrics.json").read_text())
    assert m["top1"] == 12.5 and m["robustness"]["n"] == 30


def test_limit_spreads_over_the_split_not_its_first_class(trained_run: Path, tmp_path: Path):
    """A folder dataset lists one class first: --limit must not measure one class's recall."""
    r = robustness(trained_run / "last.pt", tmp_path / "o", corruptions=["contrast"], severities=[1], limit=20,
                   progress=False)
    inf = Inference.from_checkpoint(trained_run / "last.pt", tta="none")
    images, labels, _ = eval_data(inf)
    rows = torch.arange(20) * len(labels) // 20
    assert rows[-1] == 95  # from the whole split, not its first 20
    assert r["clean_top1"] == pytest.approx(100 * float((ranked(inf.logits(images[rows]), 1)[:, 0] == labels[rows])
                                                        .float().mean()))


def test_corruption_errors_follow_the_paper():
    table = {"fog": {"1": 80.0, "2": 60.0}}  # errors 20, 40
    base = {"fog": {"1": 60.0, "2": 40.0}}  # errors 40, 60
    e = corruption_errors(table, 90.0, base, 80.0)
    assert e["ce"]["fog"] == pytest.approx(100 * 60 / 100)
    assert e["relative_ce"]["fog"] == pytest.approx(100 * (10 + 30) / (20 + 40))
    assert e["mce"] == pytest.approx(60) and e["relative_mce"] == pytest.approx(200 / 3)


def test_cifar10c_folder_is_read_not_generated(trained_run: Path, tmp_path: Path):
    root = write_cifar10c(tmp_path / "c10c", names=("fog", "snow"))
    clean = make_cifar10(tmp_path / "clean", per_batch=10, test=10_000)  # labels 0..9 repeating, as the folder's
    ckpt = trained_run / "last.pt"
    r = robustness(ckpt, tmp_path / "rb", data=str(clean), corruptions=["fog", "snow"], severities=[1, 2],
                   cifar10c=root, limit=40, progress=False)
    assert r["source"].startswith("CIFAR-10-C folder") and r["n"] == 40
    inf = Inference.from_checkpoint(ckpt, tta="none")
    rows = torch.arange(40) * 10_000 // 40  # --limit spreads the images over the split
    x = torch.zeros(40, 3, 32, 32, dtype=torch.uint8)
    x[rows < 20] = 200  # what write_cifar10c put in severity 1; the rest is zeros
    y = rows % 10
    assert r["table"]["fog"]["1"] == pytest.approx(100 * float((ranked(inf.logits(x), 1)[:, 0] == y).float().mean()))
    images, labels, _ = eval_data(inf, str(clean), "test")  # clean top-1 on the same 40 rows
    assert r["clean_top1"] == pytest.approx(100 * float((ranked(inf.logits(images[rows]), 1)[:, 0] == labels[rows])
                                                        .float().mean()))
    with pytest.raises(Exception, match="frost.npy: missing"):
        robustness(ckpt, tmp_path / "rb2", data=str(clean), corruptions=["frost"], cifar10c=root, progress=False)
    assert not (tmp_path / "rb2").exists()  # checked before anything is written
    # clean images that are not CIFAR-10's test split in CIFAR-10-C's order: refused, not mismatched
    with pytest.raises(ConfigError, match="not CIFAR-10's test split"):
        robustness(ckpt, tmp_path / "rb3", corruptions=["fog"], cifar10c=root, progress=False)
    assert not (tmp_path / "rb3").exists()


def test_extras_stay_out_of_the_headline_numbers(trained_run: Path, tmp_path: Path):
    r = robustness(trained_run / "last.pt", tmp_path / "o", corruptions=["fog", "saturate"], severities=[3],
                   limit=30, progress=False)
    assert r["mca"] == pytest.approx(r["table"]["fog"]["3"]) and r["mca_extra"] == pytest.approx(
        r["table"]["saturate"]["3"])
    e = corruption_errors({"fog": {"1": 50.0}, "saturate": {"1": 90.0}}, 90.0,
                          {"fog": {"1": 25.0}, "saturate": {"1": 10.0}}, 80.0)
    assert e["mce"] == pytest.approx(100 * 50 / 75)  # fog only


def test_bad_input_writes_nothing(trained_run: Path, tmp_path: Path):
    ckpt = trained_run / "last.pt"
    for kw, match in (({"corruptions": ["fogg"]}, "unknown corruption"), ({"severities": [0]}, "from 1"),
                      ({"limit": 0}, "--limit"), ({"sample_index": 100}, "sample-index"), ({"seed": -1}, "--seed")):
        with pytest.raises(ConfigError, match=match):
            robustness(ckpt, tmp_path / "o", progress=False, **kw)
        assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_cli_table_json_and_errors(trained_run: Path, tmp_path: Path):
    ckpt = trained_run / "last.pt"
    r = run("robustness", str(ckpt), "--out", str(tmp_path / "rb"), "--corruptions", "jpeg", "pixelate",
            "--severities", "3", "--limit", "50")
    assert r.returncode == 0, r.stderr
    assert "JPEG" in r.stdout and "mean corruption accuracy" in r.stdout and "last.pt (epoch 3)" in r.stdout
    r = run("robustness", str(ckpt), "--out", str(tmp_path / "rb"), "--corruptions", "fog", "--severities", "1",
            "--limit", "20", "--json", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)["table"]) == {"fog"}
    for bad, msg in ((["--corruptions", "rain"], "unknown corruption"), (["--severities", "6"], "from 1 (mildest)"),
                     (["--cifar10c", str(tmp_path / "none")], "not a folder")):
        r = run("robustness", str(ckpt), "--out", str(tmp_path / "bad"), *bad)
        assert r.returncode != 0 and msg in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "bad").exists()
