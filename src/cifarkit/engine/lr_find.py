"""LR range test (Leslie Smith 2015, fastai's `lr_find`): train a throwaway copy of the model for
a few hundred steps while the lr grows exponentially, and read a good lr off the loss curve.

The sweep multiplies the lr of the groups that `optim.lr` sets (sgd / adamw), or of the conv
filters that `optim.muon_lr` sets (muon; the other groups keep their configured lr). It stops
when the smoothed loss exceeds `diverge` x its minimum, or turns NaN. Suggestions, both from the
smoothed loss (EMA with bias correction, fastai's beta 0.98):
- steepest: the lr where the loss falls fastest per log-lr step;
- valley: fastai's default, a point two thirds down the longest falling stretch of the curve.
Nothing is written to a run directory: only `lr_find.csv` (here) and `lr_find.png`
(`analysis.lr_find_plot.plot_lr_find`, which `cifarkit lr-find` calls) in the folder given.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifarkit.config import MAX_LR, Config
from cifarkit.engine.dist import DistInfo
from cifarkit.engine.step import forward_backward, optimizer_step
from cifarkit.engine.train import build, configure_torch
from cifarkit.errors import CifarkitError
from cifarkit.infer.device import resolve_device
from cifarkit.models import train_hooks
from cifarkit.safecsv import csv_row
from cifarkit.safepath import claim_outputs, output_dir


@dataclass
class LrFindResult:
    """What an LR range test found; `lr_find` returns it and `cifarkit lr-find` prints it.

    Attributes:
        key: the config key the sweep set, `optim.lr` or `optim.muon_lr`.
        lrs: the lr of each step.
        losses: the raw training loss per image at each step.
        smoothed: `losses` smoothed (bias-corrected EMA).
        steepest: the lr where the smoothed loss falls fastest.
        valley: fastai's valley suggestion, the one `set_line` proposes.
        csv: the written `lr_find.csv`.
        png: where `analysis.lr_find_plot.plot_lr_find` draws `lr_find.png`.
    """
    key: str  # the config key the sweep sets: optim.lr or optim.muon_lr
    lrs: list[float]
    losses: list[float]  # raw per-image loss at each step
    smoothed: list[float]
    steepest: float
    valley: float
    csv: Path
    png: Path

    @property
    def set_line(self) -> str:
        """The `--set KEY=LR` option that trains with the valley lr."""
        return f"--set {self.key}={self.valley:.3g}"

FILES = ("lr_find.csv", "lr_find.png")  # what lr-find writes in its --out


def swept_kinds(cfg: Config) -> tuple[str, set[str]]:
    """(config key, parameter-group kinds whose lr the sweep sets)."""
    if cfg.optim.name == "muon":
        return "optim.muon_lr", {"filters"}
    return "optim.lr", {"weights", "norm_bias", "whiten"} | (set() if cfg.optim.head_lr else {"head"})


def smooth(losses: list[float], beta: float = 0.98) -> list[float]:
    """EMA with bias correction: early values are not pulled towards 0."""
    avg, out = 0.0, []
    for i, v in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** i))
    return out


def steepest(lrs: list[float], losses: list[float]) -> float:
    """lr of the most negative d loss / d log(lr)."""
    if len(lrs) < 3:
        return lrs[0]
    grad = np.gradient(np.asarray(losses), np.log(np.asarray(lrs)))
    return float(lrs[int(np.argmin(grad))])


def valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's valley: the longest decreasing subsequence of the loss, then the point two thirds
    along it (a step back from the minimum, where the loss still falls)."""
    n = len(losses)
    lds, max_start, max_end = [1] * n, 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
        if lds[max_end] < lds[i]:
            max_end = i
            max_start = max_end - lds[max_end]
    third = (max_end - max_start) / 3
    return float(lrs[min(n - 1, max_start + int(third) + int(third / 2))])


def lr_find(cfg: Config, out_dir: str | Path, start_lr: float = 1e-6, end_lr: float = 10.0, steps: int = 200,
            diverge: float = 4.0, device: str | None = None, quiet: bool = False,
            overwrite: bool = False) -> LrFindResult:
    """Sweep the lr from start_lr to end_lr over `steps` steps on a fresh model; write
    `out_dir/lr_find.csv` (step, lr, loss, smoothed); `analysis.lr_find_plot.plot_lr_find` draws
    `out_dir/lr_find.png` from the result. A non-empty `out_dir` is refused (before any training)
    unless `overwrite`."""
    if not 0 < start_lr < end_lr <= MAX_LR:  # NaN fails every comparison; above MAX_LR overflows float32 updates
        raise CifarkitError(f"lr-find: start lr {start_lr:g} must be positive and below the end lr {end_lr:g}, "
                            f"which is at most {MAX_LR:g}")
    if not (math.isfinite(diverge) and diverge > 1):
        raise CifarkitError(f"lr-find: --diverge {diverge:g} must be a number above 1 (the loss over its minimum)")
    if steps < 2:
        raise CifarkitError("lr-find: needs at least 2 steps")
    out = output_dir(out_dir, overwrite, inputs=[cfg.data.root], writes=FILES)
    claim_outputs(out, FILES, "lr-find")
    dev = resolve_device(device or cfg.train.device)
    configure_torch(cfg, dev, DistInfo())
    t, data, _ = build(cfg, dev, DistInfo(), fresh=True, quiet=quiet)
    key, kinds = swept_kinds(cfg)
    swept = [g for g in t.optimizer.param_groups if g.get("kind") in kinds]
    if not swept:
        raise CifarkitError(f"lr-find: the model has no parameters that {key} sets")
    t.net.train()
    hook = train_hooks(cfg.model.name).epoch_start
    lrs: list[float] = []
    losses: list[float] = []
    epoch = 0
    batches = iter(())
    while len(lrs) < steps:
        try:
            x, y = next(batches)
        except StopIteration:  # a short dataset: the sweep goes on over further epochs
            if hook is not None:
                hook(t.model, epoch, cfg.train)
            data.loader.set_epoch(epoch)
            batches, epoch = iter(data.loader), epoch + 1
            continue
        lr = start_lr * (end_lr / start_lr) ** (len(lrs) / (steps - 1))
        for g in swept:
            g["lr"] = lr
        t.optimizer.zero_grad(set_to_none=True)
        loss = forward_backward(t, x, y).item() / (len(y) if cfg.train.loss_reduction == "sum" else 1)
        lrs.append(lr)
        losses.append(loss)
        smoothed = smooth(losses)
        if not math.isfinite(loss) or smoothed[-1] > diverge * min(smoothed):
            break
        optimizer_step(t)
    smoothed = smooth(losses)
    ok = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    good_lrs, good = [lrs[i] for i in ok], [smoothed[i] for i in ok]
    if len(good) < 2:
        raise CifarkitError("lr-find: the loss diverged at once; lower the start lr (--start-lr)")
    res = LrFindResult(key, lrs, losses, smoothed, steepest(good_lrs, good), valley(good_lrs, good),
                       out / "lr_find.csv", out / "lr_find.png")
    write_csv(res)
    return res


def write_csv(res: LrFindResult) -> None:
    """Write `res.csv`: one row per step with its lr, loss and smoothed loss."""
    with open(res.csv, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["step", "lr", "loss", "smoothed"])
        w.writerows(csv_row([i, lr, v, s]) for i, (lr, v, s) in enumerate(zip(res.lrs, res.losses, res.smoothed)))
