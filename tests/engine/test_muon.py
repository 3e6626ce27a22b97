"""Muon (engine/muon.py): Newton-Schulz orthogonalisation, filter renormalisation, Nesterov momentum."""

from __future__ import annotations

import torch

from cifarkit.engine.muon import MuonSGD, newton_schulz


def test_newton_schulz_orthogonalises_a_random_matrix():
    torch.manual_seed(0)
    g = torch.diag(torch.logspace(-1, 1, 64)) @ torch.randn(64, 576)  # badly conditioned, like a gradient
    s_in = torch.linalg.svdvals(g)
    assert s_in.max() / s_in.min() > 20
    x = newton_schulz(g, steps=5).float()
    s = torch.linalg.svdvals(x)
    # the quintic is tuned for speed, not exactness: singular values land in a band around 1
    # (airbench94_muon / Jordan 2024: roughly [0.7, 1.2]) whatever the input's spread was
    assert s.min() > 0.5 and s.max() < 1.5, s
    assert (s.max() / s.min()) < 3
    # same singular vectors: x ~ U V^T of g, so its correlation with U V^T is high
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    polar = u @ vh
    cos = (x * polar).sum() / (x.norm() * polar.norm())
    assert cos > 0.95
    tall = newton_schulz(g.T, steps=5).float()  # tall inputs are handled through the transpose
    assert torch.allclose(tall, x.T, atol=1e-2)


def test_muon_keeps_each_filter_bank_at_norm_sqrt_cout():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(16, 8, 3, 3) * 5)
    opt = MuonSGD([dict(params=[w], lr=0.0, momentum=0.9, muon=True)], lr=0.0, momentum=0.9)
    w.grad = torch.randn_like(w)
    frozen = w.detach().clone()
    opt.step()
    assert torch.equal(w.detach(), frozen)  # lr 0 (optim.muon_lr=0) freezes the filters: not even renormalised
    opt.param_groups[0]["lr"] = 1e-12
    opt.step()
    assert abs(float(w.detach().norm()) - 16 ** 0.5) < 1e-4  # renormalised before the (here ~zero) update
    opt.param_groups[0]["lr"] = 0.1
    before = w.detach().clone()
    w.grad = torch.randn_like(w)
    opt.step()
    update = (before * (16 ** 0.5 / before.norm()) - w.detach()) / 0.1
    s = torch.linalg.svdvals(update.reshape(16, -1).float())
    assert s.max() < 1.6 and s.min() > 0.3  # an orthogonalised step, not the raw gradient


def test_non_muon_groups_are_nesterov_sgd():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(10))
    b = torch.nn.Parameter(a.detach().clone())
    ours = MuonSGD([dict(params=[a], lr=0.1, momentum=0.9, weight_decay=0.01)], lr=0.1, momentum=0.9, nesterov=True)
    ref = torch.optim.SGD([b], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    for _ in range(4):
        g = torch.randn(10)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(a, b, atol=1e-6)
    plain = torch.nn.Parameter(torch.zeros(3))
    opt = MuonSGD([dict(params=[plain], lr=1.0, momentum=0.5)], lr=1.0, momentum=0.5, nesterov=False)
    for _ in range(2):
        plain.grad = torch.ones(3)
        opt.step()
    assert torch.allclose(plain, torch.full((3,), -2.5))  # heavy ball: -(1) - (0.5 + 1)
