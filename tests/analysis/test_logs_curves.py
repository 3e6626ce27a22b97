"""Log reading in every format and the curves figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarkit.analysis.curves import plot_runs, smooth
from cifarkit.errors import DataError
from cifarkit.logs import read, read_records

FIX = Path(__file__).resolve().parents[1] / "fixtures"
MBV2 = FIX / "mmcls-0.25_mobilenet-v2_cifar10.subset.log.json"
FLOWER = FIX / "mmcls-0.25_resnet18_flower5.log.json"


def not_blank(path: Path) -> bool:
    arr = np.asarray(Image.open(path).convert("L"), dtype=float)
    return arr.std() > 5 and arr.shape[0] > 200


def test_mmcls_log_on_a_true_iteration_axis():
    r = read_records(MBV2)
    assert r.format == "mmcls" and r.classes[0] == "airplane"
    assert [v["epoch"] for v in r.val] == list(range(1, 11))
    assert r.val[-1]["top1"] == 92.98 and r.val[0]["top5"] == 99.27
    iters = [t["iter"] for t in r.train]
    assert iters == sorted(iters)  # strictly increasing across epochs, not reset each epoch
    assert r.train[-1]["iter"] == 15600 and r.val[0]["iter"] == 1560  # 1560 logged iterations per epoch


def test_flower_log_and_dataframe():
    pytest.importorskip("pandas")
    df = read(FLOWER)
    assert set(df["mode"]) == {"train", "val"}
    assert df[df["mode"] == "val"]["top1"].max() > 90


def test_our_log_and_mmengine_scalars(trained_run: Path, tmp_path: Path):
    r = read_records(trained_run)
    assert r.format == "cifarkit" and len(r.val) == 3 and r.train[0]["loss"] > 0
    sc = tmp_path / "20240101_000000" / "vis_data"
    sc.mkdir(parents=True)
    lines = [{"lr": 0.1, "data_time": 0.01, "loss": 2.0 - s / 100, "time": 0.1, "epoch": 1 + (s - 1) // 50, "step": s}
             for s in range(1, 101)]
    lines += [{"accuracy/top1": 50.0, "accuracy/top5": 90.0, "step": 1}, {"accuracy/top1": 60.0,
                                                                         "accuracy/top5": 95.0, "step": 2}]
    (sc / "scalars.json").write_text("\n".join(json.dumps(x) for x in lines))
    m = read_records(tmp_path / "20240101_000000")
    assert m.format == "mmengine" and [v["top1"] for v in m.val] == [50.0, 60.0]
    assert m.val[1]["iter"] == 100


def test_plot_several_runs_overlaid_with_non_ascii_names(trained_run: Path, tmp_path: Path):
    out = plot_runs([MBV2, FLOWER, trained_run], tmp_path / "c.png", names=["移动网络 v2", "花卉 ResNet", "ours"])
    assert out.exists() and not_blank(out)
    svg = plot_runs([MBV2], tmp_path / "c.svg", keys=["top1"])
    assert svg.read_text().startswith("<?xml")


def test_bad_logs(tmp_path: Path):
    (tmp_path / "x.json").write_text("not json at all\n")
    with pytest.raises(DataError, match="no JSON records"):
        read_records(tmp_path / "x.json")
    with pytest.raises(DataError, match="no such log"):
        read_records(tmp_path / "missing.log.json")
    with pytest.raises(DataError, match="unknown"):
        plot_runs([FLOWER], tmp_path / "y.png", keys=["accuracy"])


def test_smooth():
    v = np.array([0, 10, 0, 10, 0], dtype=float)
    assert np.allclose(smooth(v, 2), [0, 5, 5, 5, 5])
    assert np.array_equal(smooth(v, 1), v)


def test_mmcls_global_iteration_from_header_or_given(tmp_path: Path, capsys):
    """The tutorial's real log: MMCV logs every 10 iterations and drops each epoch's last partial
    interval (1560 of 1563), so the records alone put epoch 10's end 30 iterations early."""
    import json

    from cifarkit.logs import mmcls_iters_per_epoch, read_records

    real = Path(__file__).resolve().parents[1] / "fixtures" / "mmcls-0.25_mobilenet-v2_cifar10.subset.log.json"
    r = read_records(real)
    assert capsys.readouterr().err == ""  # a real MMCls header (config as text) is not "malformed"
    assert r.val[-1]["epoch"] == 10 and r.val[-1]["iter"] == 15600  # last logged, documented as a lower bound
    exact = read_records(real, iters_per_epoch=1563)
    assert exact.val[-1]["iter"] == 15630 and exact.train[-1]["iter"] == 9 * 1563 + 1560
    # a config that names a dataset of known size gives the exact count by itself
    lines = real.read_text().splitlines()
    header = json.loads(lines[0])
    assert mmcls_iters_per_epoch(header) is None  # CustomDataset: its size is not in the log
    custom = "type='CustomDataset',\n        data_prefix='data/cifar10_dataset/train'"
    header["config"] = header["config"].replace(custom, "type='CIFAR10',\n        data_prefix='data/cifar10'", 1)
    assert mmcls_iters_per_epoch(header) == 1563  # ceil(50,000 / 32)
    (tmp_path / "c.log.json").write_text("\n".join([json.dumps(header), *lines[1:]]))
    assert read_records(tmp_path / "c.log.json").val[-1]["iter"] == 15630
