"""The figure of an LR range test (`engine.lr_find`): raw and smoothed loss against the lr, the
suggestions marked, into `lr_find.png` beside the sweep's `lr_find.csv`."""

from __future__ import annotations

import math
from pathlib import Path

from cifarkit.engine.lr_find import LrFindResult
from cifarkit.plotting import pyplot, save


def plot_lr_find(res: LrFindResult) -> Path:
    """Draw the raw and smoothed loss against the lr, suggestions marked, into `res.png`."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(res.lrs, res.losses, color="0.75", lw=0.8, label="loss")
    ax.plot(res.lrs, res.smoothed, color="C0", label="smoothed")
    for lr, name, c in ((res.steepest, "steepest", "C1"), (res.valley, "valley", "C2")):
        ax.axvline(lr, color=c, ls="--", lw=1, label=f"{name} {lr:.2g}")
    ax.set_xscale("log")
    finite = [v for v in res.smoothed if math.isfinite(v)]
    ax.set_ylim(min(finite) * 0.95, min(max(finite), 4 * min(finite)) * 1.05)
    ax.set_xlabel(res.key)
    ax.set_ylabel("training loss per image")
    ax.set_title("LR range test")
    ax.legend()
    save(fig, res.png)
    return res.png
