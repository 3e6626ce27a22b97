"""Pretrained weights in every key layout, MMCls remapping, head re-init, hostile files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from cifarkit.errors import CheckpointError
from cifarkit.models import create_model
from cifarkit.models.weights import mmcls_to_torchvision


def _mmcls_mobilenet_v2_keys(sd: dict) -> dict:
    """Build an MMCls-layout state dict from a torchvision MobileNetV2 one, written independently
    of the loader: MMCls names blocks layerS.j with ConvModules (conv/bn) inside `conv`."""
    blocks = [1, 2, 3, 4, 3, 3, 1]
    names = {}
    b = 1
    for stage, n in enumerate(blocks, start=1):
        for j in range(n):
            names[b] = (stage, j)
            b += 1
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] == "classifier":
            out[f"head.fc.{parts[2]}"] = v
            continue
        idx = int(parts[1])
        if idx == 0 or idx == 18:
            kind = "conv" if parts[2] == "0" else "bn"
            out[f"backbone.conv{1 if idx == 0 else 2}.{kind}.{'.'.join(parts[3:])}"] = v
            continue
        stage, j = names[idx]
        rest = parts[3:]  # after "conv"
        expand = stage != 1
        if len(rest) >= 2 and rest[1] in ("0", "1") and (int(rest[0]) < (2 if expand else 1)):
            pos, kind, tail = rest[0], "conv" if rest[1] == "0" else "bn", rest[2:]
        else:  # bare projection conv / bn
            last = 2 if expand else 1
            pos, kind, tail = str(last), "conv" if int(rest[0]) == last else "bn", rest[1:]
        out[f"backbone.layer{stage}.{j}.conv.{pos}.{kind}.{'.'.join(tail)}"] = v
    return out


@pytest.fixture
def mbv2_sd():
    torch.manual_seed(0)
    return create_model("mobilenet_v2", 1000).state_dict()


def _check_backbone_equal(model, sd):
    own = model.state_dict()
    for k, v in sd.items():
        if not k.startswith("classifier"):
            assert torch.equal(own[k], v), k


@pytest.mark.parametrize("layout", ["plain", "state_dict", "model", "ddp"])
def test_layouts(layout: str, tmp_path: Path, mbv2_sd):
    obj = {"plain": mbv2_sd, "state_dict": {"state_dict": mbv2_sd, "meta": {"epoch": 3}},
           "model": {"model": mbv2_sd, "optimizer": {}},
           "ddp": {f"module.{k}": v for k, v in mbv2_sd.items()}}[layout]
    torch.save(obj, tmp_path / "w.pth")
    m = create_model("mobilenet_v2", 10, pretrained=str(tmp_path / "w.pth"))
    _check_backbone_equal(m, mbv2_sd)
    report = m.pretrained_report
    assert "re-initialised (shape differs): classifier.1.weight, classifier.1.bias" in report


def test_mmcls_mobilenet_v2_remap(tmp_path: Path, mbv2_sd):
    mm = _mmcls_mobilenet_v2_keys(mbv2_sd)
    assert "backbone.layer1.0.conv.1.conv.weight" in mm and "backbone.layer7.0.conv.2.bn.running_var" in mm
    assert set(mmcls_to_torchvision(mm, "mobilenet_v2")) == set(mbv2_sd)
    torch.save({"state_dict": mm, "meta": {"CLASSES": ["a"] * 1000}}, tmp_path / "mm.pth")
    m = create_model("mobilenet_v2", 10, pretrained=str(tmp_path / "mm.pth"))
    _check_backbone_equal(m, mbv2_sd)
    assert "mmcls layout" in m.pretrained_report and "missing" not in m.pretrained_report


def test_mmcls_resnet_remap_keeps_head_when_it_fits(tmp_path: Path):
    src = create_model("resnet18", 10).state_dict()
    mm = {("head.fc." + k[3:]) if k.startswith("fc.") else "backbone." + k: v for k, v in src.items()}
    torch.save({"state_dict": mm}, tmp_path / "r.pth")
    m = create_model("resnet18", 10, pretrained=str(tmp_path / "r.pth"))
    for k, v in src.items():
        assert torch.equal(m.state_dict()[k], v), k


def test_timm_style_plain_state_dict_for_a_different_model_is_refused(tmp_path: Path):
    torch.save({"blocks.0.weight": torch.zeros(3)}, tmp_path / "t.pth")
    with pytest.raises(CheckpointError, match="none of its 1 tensors match"):
        create_model("resnet18_cifar", 10, pretrained=str(tmp_path / "t.pth"))


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_code_payload_is_refused_and_not_run(tmp_path: Path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as f:
        torch.save({"state_dict": _Evil(marker)}, f, pickle_protocol=2)
    with pytest.raises(CheckpointError, match="refused.*posix.system|refused.*os.system|refused"):
        create_model("resnet18_cifar", 10, pretrained=str(tmp_path / "evil.pth"))
    assert not marker.exists()
    with open(tmp_path / "evil2.pth", "wb") as f:
        pickle.dump(_Evil(marker), f)
    with pytest.raises(CheckpointError):
        create_model("resnet18_cifar", 10, pretrained=str(tmp_path / "evil2.pth"))
    assert not marker.exists()


def test_truncated_and_missing_files(tmp_path: Path, mbv2_sd):
    torch.save(mbv2_sd, tmp_path / "w.pth")
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "t.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        create_model("mobilenet_v2", 10, pretrained=str(tmp_path / "t.pth"))
    with pytest.raises(CheckpointError, match="no such weights file.*model.pretrained=torchvision") as e:
        create_model("mobilenet_v2", 10, pretrained=str(tmp_path / "nope.pth"))
    assert "MMClassification" in str(e.value) and "\n" not in str(e.value)
