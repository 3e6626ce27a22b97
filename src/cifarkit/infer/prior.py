"""The training class prior at inference: post-hoc logit adjustment (Menon et al. 2021) subtracts
tau * log prior from a model's logits. Training's logit-adjusted loss (`engine.losses`) adds the
same log prior, so both read it from here."""

from __future__ import annotations

import torch


def log_prior(counts: list[int]) -> torch.Tensor:
    """log of the training class frequencies (an empty class counts as one image, to stay finite)."""
    n = torch.tensor([max(c, 1) for c in counts], dtype=torch.float64)
    return (n / n.sum()).log().float()


def posthoc_bias(tau: float, counts: list[int] | None) -> torch.Tensor | None:
    """What post-hoc logit adjustment (Menon et al. 2021) adds to a model's logits: -tau * log prior
    (C,), or None when tau is 0. Raises ValueError when tau > 0 but the class counts are unknown."""
    if not tau:
        return None
    if not counts:
        raise ValueError("post-hoc logit adjustment needs the training class counts")
    return -tau * log_prior(list(counts))
