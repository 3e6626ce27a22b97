"""Optimisers and learning-rate schedules: parameter groups by kind (filters for Muon, weights,
head, norm/bias, airnet's whitening bias), SGD / AdamW / Muon (muon.py, next door), and the
per-iteration lr factor of every schedule."""

from __future__ import annotations

import math

import torch

from cifarkit.config import Config
from cifarkit.engine.muon import MuonSGD
from cifarkit.models import train_hooks


def build_optimizer(cfg: Config, model: torch.nn.Module, amp: torch.dtype | None = torch.bfloat16
                    ) -> torch.optim.Optimizer:
    """Parameter groups, each tagged with a `kind`:

    - `weights` (ndim > 1): base lr (the 2-D head gets `optim.head_lr` when set);
    - `filters` (4-D conv weights) instead go to Muon when `optim.name: muon`;
    - `norm_bias` (ndim <= 1): lr x `optim.norm_bias_lr_mult`, weight decay divided by it, so the
      decay applied per step (lr x wd) stays the same: airbench94 uses x64 for BN biases;
    - `whiten` (the model's `own_lr_params` hook: airnet's whitening bias) on its own when
      `optim.whiten_bias_decay` gives it its own schedule.
    With `optim.wd_per_lr`, each group's PyTorch weight decay is weight_decay / its lr (airbench's
    convention: the decay per step does not depend on the lr).
    """
    o = cfg.optim
    own = train_hooks(cfg.model.name).own_lr_params if o.whiten_bias_decay else None
    own_params = {id(p) for p in own(model)} if own is not None else set()
    kinds: dict[str, list] = {"filters": [], "weights": [], "head": [], "norm_bias": [], "whiten": []}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in own_params:
            kinds["whiten"].append(p)
        elif p.ndim == 4 and o.name == "muon":
            kinds["filters"].append(p)
        elif p.ndim == 2 and o.head_lr:
            kinds["head"].append(p)
        elif p.ndim > 1:
            kinds["weights"].append(p)
        else:
            kinds["norm_bias"].append(p)
    m = o.norm_bias_lr_mult
    lrs = {"filters": o.muon_lr, "weights": o.lr, "head": o.head_lr or o.lr, "norm_bias": o.lr * m,
           "whiten": o.lr * m}
    groups = []
    for kind, params in kinds.items():
        if not params:
            continue
        lr = lrs[kind]
        if kind == "filters":
            wd = 0.0  # Muon renormalises the filters itself
        elif o.wd_per_lr:
            # a zero lr freezes the group (a natural way to freeze one): it then gets no decay either
            wd = o.weight_decay / lr if lr > 0 else 0.0
        elif kind in ("norm_bias", "whiten"):
            wd = 0.0 if o.no_wd_norm_bias else o.weight_decay / m
        else:
            wd = o.weight_decay
        g = dict(params=params, lr=lr, weight_decay=wd, kind=kind)
        if kind == "filters":
            g.update(muon=True, momentum=o.muon_momentum)
        groups.append(g)
    if o.name == "muon":
        # Newton-Schulz in bf16 only for a bf16 run: fp32 autocast means no fast bf16 here
        ns_dtype = torch.bfloat16 if amp == torch.bfloat16 else torch.float32
        return MuonSGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, ns_dtype=ns_dtype)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.momentum, 0.999))


def lr_lambdas(cfg: Config, optimizer: torch.optim.Optimizer, total: int, spe: int) -> list:
    """One schedule per parameter group (the whitening bias may decay on its own clock)."""
    out = []
    for g in optimizer.param_groups:
        if g.get("kind") == "whiten":
            n = max(1, math.ceil(cfg.train.whiten_bias_epochs * spe))
            out.append(lambda s, n=n: max(0.0, 1 - s / n))
        else:
            out.append(lambda s: lr_factor(cfg, s, total, spe))
    return out


def lr_factor(cfg: Config, step: int, total: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at iteration `step` (0-based) of `total`."""
    s = cfg.schedule
    warm = int(round(s.warmup_epochs * steps_per_epoch))
    if step < warm:
        return s.warmup_start + (1 - s.warmup_start) * step / warm
    epoch = step // steps_per_epoch
    t = (step - warm) / max(1, total - warm)  # progress after warm-up, 0..1
    if s.name == "constant":
        return 1.0
    if s.name == "step":
        return s.gamma ** (epoch // s.step)
    if s.name == "multistep":
        return s.gamma ** sum(epoch >= m for m in s.milestones)
    if s.name == "cosine":
        return s.final_factor + (1 - s.final_factor) * 0.5 * (1 + math.cos(math.pi * t))
    peak = int(total * s.peak_fraction)
    if s.name == "linear":  # airbench: start -> 1 over the first peak_fraction, then -> final
        if step < peak:
            return s.warmup_start + (1 - s.warmup_start) * step / max(1, peak)
        return 1.0 + (s.final_factor - 1.0) * (step - peak) / max(1, total - peak)
    # onecycle: cosine up from warmup_start to 1, cosine down to final_factor
    if step < peak:
        return s.warmup_start + (1 - s.warmup_start) * 0.5 * (1 - math.cos(math.pi * step / max(1, peak)))
    return s.final_factor + (1 - s.final_factor) * 0.5 * (1 + math.cos(math.pi * (step - peak) / max(1, total - peak)))
