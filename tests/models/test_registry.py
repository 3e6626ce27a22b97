"""The model registry: every model builds, runs, and reports params/MACs; clean errors."""

from __future__ import annotations

import pytest
import torch

from cifarkit.errors import CheckpointError, ConfigError
from cifarkit.models import count_macs, count_params, create_model, get_entry, list_models


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds_and_runs(name: str):
    entry = get_entry(name)
    size = 64 if entry.input_size == 224 else 32
    m = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = m(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    assert count_params(m) > 100_000 and count_macs(m, size) > 1_000_000


def test_airnet_matches_the_paper_architecture():
    m = create_model("airnet", 10)
    assert 1.9e6 < count_params(m) < 2.1e6  # airbench94: ~1.97M parameters
    assert not m.whiten.weight.requires_grad and m.layers[0].norm1.eps == 1e-12
    assert m.layers[0].norm1.momentum == pytest.approx(0.4) and not m.layers[0].norm1.weight.requires_grad
    w = m.layers[1].conv1.weight  # dirac init on the first C_in filters
    assert torch.equal(w[:64, :, 1, 1], torch.eye(64))


def test_airnet_whitening_init_decorrelates():
    m = create_model("airnet", 10)
    x = torch.randn(200, 3, 32, 32)
    x[:, 1] = x[:, 0] * 0.9 + 0.1 * x[:, 1]  # strongly correlated channels
    m.data_init(x)
    w = m.whiten.weight
    assert torch.allclose(w[:12], -w[12:])  # filters and their negations
    out = torch.nn.functional.conv2d(x, w[:12]).permute(0, 2, 3, 1).reshape(-1, 12)
    cov = out.T @ out / len(out)
    off = cov - torch.diag(torch.diag(cov))
    assert off.abs().max() < 0.05 * torch.diag(cov).max()


def test_cifar_stem_and_torchvision_names():
    m = create_model("mobilenet_v2", 10, cifar_stem=True)
    assert m.features[0][0].stride == (1, 1)
    r = create_model("resnet18_cifar", 10)
    assert r.conv1.kernel_size == (3, 3) and isinstance(r.maxpool, torch.nn.Identity)
    s = create_model("shufflenet_v2_x0_5", 10)  # any torchvision classifier by name
    assert s(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_unknown_model_suggests():
    with pytest.raises(ConfigError, match="did you mean 'resnet18_cifar'"):
        create_model("resnet18_cifr", 10)


def test_torchvision_weights_offline_is_one_clear_sentence(monkeypatch):
    import urllib.error

    import torch.hub

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CheckpointError, match="could not be downloaded.*local .pth file"):
        create_model("mobilenet_v2", 10, pretrained="torchvision")


def test_timm_models_need_timm():
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="needs timm"):
            create_model("timm/resnet18", 10)
    else:
        assert create_model("timm/resnet18", 10)(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_cifar_resnet_accepts_cifar_stem_restated():
    """resnet*_cifar always has the CIFAR stem; `model.cifar_stem=true` restating it was a TypeError."""
    a = create_model("resnet18_cifar", 10, cifar_stem=True)
    b = create_model("resnet18_cifar", 10)
    assert [tuple(p.shape) for p in a.parameters()] == [tuple(p.shape) for p in b.parameters()]
    assert a.conv1.kernel_size == (3, 3)
