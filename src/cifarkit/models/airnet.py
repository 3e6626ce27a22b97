"""`airnet`: the airbench94 network (Keller Jordan, arXiv 2404.00498), written for our engine.

Shape walk for a 32 px input: whiten 2x2 conv (no pad) 32->31, then three groups each halving
the size with a max-pool, 31->15->7->3, global max-pool -> 1, linear. The design choices are
the paper's, each measured there:
- 2x2 whitening conv whose filters are the eigenvectors of the patch covariance (and their
  negations), frozen: speeds early training by decorrelating pixels (paper sec. 3.2).
- BatchNorm with the scale frozen at 1 and eps 1e-12, momentum 0.4: bias-only BN trains as
  well and is cheaper (paper sec. 3.3, "frozen BN scale").
- Dirac (identity) init of each conv's first C_in filters: lets signal pass through the
  untrained net (paper sec. 3.4, +~0.1-0.2% at this budget).
- Output scaled by 1/9: keeps logits small at the high effective lr the recipe uses.
"""

from __future__ import annotations

import torch
from torch import nn


class FrozenScaleBN(nn.BatchNorm2d):
    """BatchNorm2d with its scale frozen at 1 (only the bias trains), momentum 0.4 and eps 1e-12."""
    def __init__(self, num_features: int, momentum: float = 0.4, eps: float = 1e-12):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)  # scale frozen at 1; only the bias trains


class DiracConv(nn.Conv2d):
    """A 3x3 "same"-padded conv without bias whose first C_in filters start as the identity."""
    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        """The default init, then the first C_in filters set to the identity (Dirac)."""
        super().reset_parameters()
        nn.init.dirac_(self.weight.data[: self.in_channels])  # identity on the first C_in filters


class ConvGroup(nn.Module):
    """One of AirNet's three stages: conv, 2x2 max-pool, BN, GELU, conv, BN, GELU."""
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = DiracConv(cin, cout)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = FrozenScaleBN(cout)
        self.conv2 = DiracConv(cout, cout)
        self.norm2 = FrozenScaleBN(cout)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H // 2, W // 2)."""
        x = self.act(self.norm1(self.pool(self.conv1(x))))  # (B, C, H/2, W/2)
        return self.act(self.norm2(self.conv2(x)))


class AirNet(nn.Module):
    """The airbench94 network: whitening conv, three `ConvGroup`s, global max-pool, linear head.

    The 2x2 whitening conv is frozen; the head has no bias and its logits are multiplied by `scale`.

    Args:
        num_classes: the number of outputs.
        widths: the channels of the three groups.
        whiten_width: the whitening filters: half the patch-covariance eigenvectors, half their
            negations (set by `data_init`).
        scale: the factor on the logits (1/9 in airbench94, 1/256 with a unit-std head in
            airbench94_muon).
        head_unit_std: rescale the head's initial weights to unit std.
    """
    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (64, 256, 256),
                 whiten_width: int = 24, scale: float = 1 / 9, head_unit_std: bool = False):
        super().__init__()
        if len(widths) != 3 or not all(isinstance(w, int) and 1 <= w <= 4096 for w in [*widths, whiten_width]):
            # a zero width builds but fails at the first step; 10^5 channels is terabytes of weights
            raise ValueError(f"widths must be three whole numbers from 1 to 4096, got {list(widths)}")
        self.whiten = nn.Conv2d(3, whiten_width, kernel_size=2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.act = nn.GELU()
        c = [whiten_width, *widths]
        self.layers = nn.Sequential(*[ConvGroup(c[i], c[i + 1]) for i in range(3)])
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(widths[-1], num_classes, bias=False)
        self.scale = scale  # airbench94: 1/9; airbench94_muon: 1/256 with a unit-std head
        if head_unit_std:
            with torch.no_grad():
                self.head.weight /= self.head.weight.std()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> logits (B, num_classes)."""
        x = self.act(self.whiten(x))  # (B, 24, H-1, W-1)
        x = self.layers(x)  # (B, 256, 3, 3) for 32 px
        x = self.pool(x).flatten(1)  # (B, 256)
        return self.head(x) * self.scale

    @torch.no_grad()
    def data_init(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Whitening filters from normalised training images (N, 3, H, W); the paper uses 5,000."""
        w = self.whiten.weight
        k = w.shape[-1]
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1)  # (N, 3, H', W', k, k)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * k * k)  # (P, 12)
        cov = patches.T @ patches / len(patches)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        evals, evecs = evals.flip(0), evecs.T.flip(0)  # largest first; rows are eigenvectors
        filt = (evecs / torch.sqrt(evals + eps)[:, None]).reshape(-1, 3, k, k)
        n = w.shape[0] // 2
        w.copy_(torch.cat([filt[:n], -filt[:n]]).to(w.dtype))

    def set_whiten_bias_trainable(self, flag: bool) -> None:
        """Let the whitening conv's bias train, or freeze it (airbench94 trains it for the first epochs only)."""
        self.whiten.bias.requires_grad_(flag)
