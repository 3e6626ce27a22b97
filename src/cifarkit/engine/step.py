"""One training step and one epoch: forward, loss, backward, step, schedule.

`train_step` reads like airbench's step; every special case is a small named helper around it:
micro-batches and DDP / summed-loss scaling (`forward_backward`), the NaN/inf policy
(`loss_ok`, `undo_batch`), fp16 loss scaling and gradient clipping (`optimizer_step`), EMA and
airbench's lookahead (`average_weights`). `train_one_epoch` adds what an epoch needs around the
steps: the resume skip, deferred loss checks on CUDA, log records and the progress bar.
Everything the step touches lives on one `Trainer` object instead of 15 arguments.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cifarkit.config import Config
from cifarkit.engine.dist import DistInfo, all_reduce_sum
from cifarkit.engine.losses import batch_weight, weighted_cross_entropy
from cifarkit.engine.runlog import RunLog
from cifarkit.errors import CifarkitError
from cifarkit.infer.evaluate import autocast_ctx


class TrainingDiverged(CifarkitError):
    """The loss became NaN/inf and `train.nan_policy` is `stop`."""


def diverged(value: float, epoch: int, iteration: int) -> TrainingDiverged:
    """The `TrainingDiverged` error for a non-finite loss `value` at `iteration` (`epoch` 0-based)."""
    return TrainingDiverged(f"loss became {value} at epoch {epoch + 1}, iteration {iteration}; the last good "
                            "checkpoint is kept; lower optim.lr or set train.nan_policy=skip_batch")


@dataclass
class TrainState:
    """What a checkpoint restores besides tensors."""
    epoch: int = 0  # completed epochs
    step: int = 0  # completed iterations, all epochs
    best_top1: float = -1.0
    early_stop: dict[str, Any] = field(default_factory=dict)  # EarlyStop.state_dict(): patience counter, best
    best_epoch: int = 0  # the epoch best.pt holds (0: none yet)


@dataclass
class Trainer:
    """Everything a training step reads or changes."""
    cfg: Config
    model: torch.nn.Module  # the plain module: checkpoints, EMA, BatchNorm buffers, hooks
    net: torch.nn.Module  # what the step calls: `model`, torch.compile'd and/or DDP-wrapped
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    amp: torch.dtype | None  # autocast dtype, None = fp32
    total_steps: int  # iterations of the whole run (train.epochs x steps per epoch)
    steps_per_epoch: int
    dinfo: DistInfo = field(default_factory=DistInfo)
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    ema: dict[str, torch.Tensor] | None = None  # train.ema
    lookahead: dict[str, torch.Tensor] | None = None  # train.lookahead
    class_weights: torch.Tensor | None = None  # train.class_weights (C,), on the device
    logit_adjust: torch.Tensor | None = None  # train.logit_adjust: tau * log prior (C,), on the device
    state: TrainState = field(default_factory=TrainState)

    @property
    def stop_at(self) -> int:
        """The iteration the run stops at: its last one, or train.max_iters when that comes first."""
        m = self.cfg.train.max_iters
        return min(self.total_steps, m) if m else self.total_steps

    @property
    def sync_each_step(self) -> bool:
        """Check the loss on the host every step (else at log records and the epoch's end)."""
        return not defer_loss_sync(self.device) or self.cfg.train.nan_policy == "skip_batch" or self.dinfo.enabled


def defer_loss_sync(device: torch.device) -> bool:
    """On CUDA the loss stays on the device: a host sync per step would idle the GPU while Python
    queues the next step. Deferred losses are checked for NaN/inf at each log record and at the
    epoch's end, before any checkpoint is written; skip_batch and torchrun still decide per step."""
    return device.type == "cuda"


# ---- the step ---------------------------------------------------------------------------------
def train_step(t: Trainer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """One optimiser step on x (B, 3, H, W), y (B,); returns the batch loss (0-dim, on the device),
    or None when train.nan_policy=skip_batch dropped the batch."""
    t.optimizer.zero_grad(set_to_none=True)
    saved = snapshot_buffers(t)
    loss = forward_backward(t, x, y)
    if not loss_ok(t, loss):  # NaN/inf: raises (nan_policy=stop) or drops the batch (skip_batch)
        undo_batch(t, saved)
        advance(t)
        return None
    optimizer_step(t)
    advance(t)
    average_weights(t)
    return loss


def forward_backward(t: Trainer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Forward and backward of the batch, in chunks of train.micro_batch when set: the same summed
    gradient from smaller pieces, for batches that do not fit in memory. Not a CPU speed-up once
    freed memory is held (engine/memory.py): airnet at 2000 per step took 1.73-1.97 s in one
    piece, 1.92 in chunks of 500 (fresh processes). Returns the batch loss, averaged over ranks."""
    c = t.cfg.train
    if c.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    mb = c.micro_batch if 0 < c.micro_batch < len(y) else len(y)
    loss = torch.zeros((), device=t.device)
    for xc, yc in zip(x.split(mb), y.split(mb)):
        with autocast_ctx(t.device, t.amp):
            logits = t.net(xc)  # (b, C)
        part = chunk_loss(t, logits, yc, y)
        # DDP averages gradients over ranks; a summed loss must be the sum over the global batch
        scaled = part * t.dinfo.world if c.loss_reduction == "sum" else part
        (t.scaler.scale(scaled) if t.scaler is not None else scaled).backward()  # fp16: loss scaling
        loss = loss + part.detach().float()
    if t.dinfo.enabled:  # every rank takes the same skip/stop decision
        loss = all_reduce_sum(loss, t.dinfo) / t.dinfo.world
    return loss


def chunk_loss(t: Trainer, logits: torch.Tensor, yc: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss of chunk `yc` of batch `y`, as its share of the batch loss (mean: chunk means
    weighted into the batch mean). Plain cross-entropy unless class weights (from
    train.class_weights_from_epoch on), logit adjustment or soft (mixed) targets ask for more."""
    c = t.cfg.train
    weights = t.class_weights if t.state.epoch >= c.class_weights_from_epoch else None
    mean = c.loss_reduction == "mean"
    if weights is None and t.logit_adjust is None and yc.dim() == 1:
        part = F.cross_entropy(logits.float(), yc, label_smoothing=c.label_smoothing, reduction=c.loss_reduction)
        return part * (len(yc) / len(y)) if mean else part
    loss, w = weighted_cross_entropy(logits, yc, weights, t.logit_adjust, c.label_smoothing)
    total = (loss * w).sum()
    return total / batch_weight(y, weights) if mean else total


def loss_ok(t: Trainer, loss: torch.Tensor) -> bool:
    """False when the loss is NaN/inf and train.nan_policy=skip_batch; raises under `stop`. Where
    the check is deferred (CUDA, see Trainer.sync_each_step) it is always True here and
    `LossMeter.flush` raises instead."""
    if not t.sync_each_step:
        return True
    value = loss.item()
    if math.isfinite(value):
        return True
    if t.cfg.train.nan_policy == "stop":
        raise diverged(value, t.state.epoch, t.state.step + 1)
    return False


def snapshot_buffers(t: Trainer) -> list[torch.Tensor] | None:
    """BatchNorm running statistics before the step, so a dropped batch can be undone (skip_batch only)."""
    return [b.detach().clone() for b in t.model.buffers()] if t.cfg.train.nan_policy == "skip_batch" else None


@torch.no_grad()
def undo_batch(t: Trainer, saved: list[torch.Tensor] | None) -> None:
    """Forget a dropped batch: its gradients and what it did to the BatchNorm statistics."""
    t.optimizer.zero_grad(set_to_none=True)
    for b, old in zip(t.model.buffers(), saved or []):
        b.copy_(old)


def optimizer_step(t: Trainer) -> None:
    """fp16: unscale before clipping, and let the scaler skip steps with inf gradients."""
    if t.scaler is not None:
        t.scaler.unscale_(t.optimizer)
    if t.cfg.optim.grad_clip:
        torch.nn.utils.clip_grad_norm_(t.net.parameters(), t.cfg.optim.grad_clip)
    if t.scaler is not None:
        t.scaler.step(t.optimizer)
        t.scaler.update()
    else:
        t.optimizer.step()


def advance(t: Trainer) -> None:
    """The schedule and the step counter move on every iteration, a dropped batch included, so a
    run's lr at iteration i does not depend on how many batches were skipped."""
    t.scheduler.step()
    t.state.step += 1


def average_weights(t: Trainer) -> None:
    """After an optimiser step: update the EMA and, every 5 steps, airbench's lookahead average.

    The lookahead average (`train.lookahead`) is copied back into the model; the EMA
    (`train.ema`) is not."""
    if t.ema is not None:
        ema_update(t.ema, t.model, t.cfg.train.ema_decay)
    if t.lookahead is not None and t.state.step % 5 == 0:
        # airbench94: every 5 steps pull the weights to an EMA whose decay ramps up as
        # 0.95^5 * (progress)^3, i.e. late training is averaged hardest
        ema_update(t.lookahead, t.model, 0.95 ** 5 * (t.state.step / t.total_steps) ** 3, copy_back=True)


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float, copy_back: bool = False) -> None:
    """ema <- decay * ema + (1 - decay) * weights for float tensors; other buffers are copied.
    copy_back writes the average into the model (airbench's lookahead)."""
    for k, v in model.state_dict().items():
        if v.dtype.is_floating_point:
            ema[k].lerp_(v, 1 - decay)
            if copy_back:
                v.copy_(ema[k])
        else:
            ema[k].copy_(v)


# ---- the epoch --------------------------------------------------------------------------------
class LossMeter:
    """Per-image losses of an epoch. Losses wait on the device (`pending`) until `flush` moves
    them to the host in one sync and checks them for NaN/inf (see Trainer.sync_each_step)."""

    def __init__(self, t: Trainer):
        self.t = t
        self.values: list[float] = []  # per image
        self.pending: list[tuple[int, torch.Tensor, int]] = []  # (iteration, batch loss, batch size)

    def add(self, loss: torch.Tensor, n: int) -> None:
        """Queue a batch's loss (`n` images); flushed at once where the loss is checked every step."""
        self.pending.append((self.t.state.step, loss, n))
        if self.t.sync_each_step:
            self.flush()

    def flush(self) -> None:
        """Move the queued losses to the host in one sync and record them per image.

        Raises:
            TrainingDiverged: a queued loss is NaN or inf.
        """
        if not self.pending:
            return
        values = torch.stack([v for _, v, _ in self.pending]).cpu().tolist()
        for (it, _, n), v in zip(self.pending, values):
            if not math.isfinite(v):
                raise diverged(v, self.t.state.epoch, it)
            self.values.append(v / (n if self.t.cfg.train.loss_reduction == "sum" else 1))
        self.pending.clear()

    def last(self, k: int) -> float:
        """The mean per-image loss of the last `k` batches (flushes first)."""
        self.flush()
        return float(np.mean(self.values[-min(k, len(self.values)):]))


@dataclass
class EpochResult:
    """One epoch's outcome; `train_one_epoch` returns it, `fit` adds it to its totals and prints it.

    Attributes:
        loss: the mean per-image training loss (NaN when no batch was kept).
        images: the images trained on.
        seconds: the epoch's wall time [s].
        skipped: batches dropped by `train.nan_policy=skip_batch`.
        batches: the batches this epoch covered (fewer when resumed mid-epoch or stopped by
            `train.max_iters`).
    """
    loss: float  # mean per-image training loss
    images: int
    seconds: float
    skipped: int  # batches dropped by nan_policy=skip_batch
    batches: int


def batch_range(t: Trainer, n_batches: int) -> tuple[int, int]:
    """[first, end) batches of this epoch still to train. first > 0 after a run stopped mid-epoch
    by train.max_iters is resumed: an epoch's batches are a pure function of (seed, epoch), so
    skipping the trained ones replays exactly."""
    start = t.state.epoch * n_batches
    return t.state.step - start, min(n_batches, t.stop_at - start)


def train_one_epoch(t: Trainer, loader, log: RunLog | None = None, quiet: bool = False,
                    run_eta: Callable[[int], str] | None = None) -> EpochResult:
    """One pass over the loader (or up to the step limit), a log record every log.interval steps;
    `run_eta(step)` gives the whole run's time left, shown on the progress bar."""
    t.net.train()
    first, end = batch_range(t, len(loader))
    meter, seen, skipped = LossMeter(t), 0, 0
    interval = t.cfg.log.interval
    t_epoch = t_last = t_data = time.perf_counter()
    data_time = 0.0
    bar = tqdm(total=end - first, desc=f"epoch {t.state.epoch + 1}", unit="it", leave=False,
               disable=True if quiet else None)
    for i, (x, y) in enumerate(loader):
        if i < first:
            continue
        if i >= end:
            break
        data_time += time.perf_counter() - t_data
        loss = train_step(t, x, y)
        if loss is None:
            skipped += 1
            continue
        meter.add(loss, len(y))
        seen += len(y)
        bar.update(1)
        if log is not None and t.state.step % interval == 0:
            now = time.perf_counter()
            log.write({"type": "train", "epoch": t.state.epoch + 1, "iter": t.state.step,
                       "lr": t.optimizer.param_groups[0]["lr"], "loss": meter.last(interval),
                       "time": (now - t_last) / interval, "data_time": data_time / interval})
            t_last, data_time = now, 0.0
            shown = {"run_eta": run_eta(t.state.step)} if run_eta else {}
            bar.set_postfix(loss=f"{meter.last(interval):.3f}", **shown)
        t_data = time.perf_counter()
    meter.flush()
    bar.close()
    loss = float(np.mean(meter.values)) if meter.values else float("nan")
    return EpochResult(loss, seen, time.perf_counter() - t_epoch, skipped, end - first)
