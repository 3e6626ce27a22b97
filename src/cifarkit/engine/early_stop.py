"""Early stopping: end a run after `train.early_stop.patience` evaluations without improvement.

Counted in evaluations (every `eval.interval` epochs), on `metric` (val top-1, higher is
better, or val loss, lower is better); an evaluation improves when it beats the best so far by
more than `min_delta`. The counter and the best value live in every checkpoint, so a resumed run
stops where the uninterrupted one would. With early stopping on, `best.pt` follows the same
metric: it is the model to use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class EarlyStop:
    """A run's early-stopping settings (`train.early_stop`) and its counter.

    `fit` calls `update` after each evaluation and stops when `should_stop`; `state_dict` goes into
    every checkpoint, so a resumed run keeps counting where it was.

    Attributes:
        patience: evaluations without improvement before stopping; 0 turns early stopping off.
        metric: "top1" (higher is better) or "loss" (lower is better).
        min_delta: the smallest change that counts as an improvement (top-1 in %, or loss).
        best: the best value of `metric` so far; None before the first evaluation.
        best_epoch: the epoch of `best`.
        bad_evals: evaluations since the last improvement.
    """
    patience: int  # evaluations without improvement before stopping; 0 = off
    metric: str = "top1"  # top1 | loss
    min_delta: float = 0.0  # smallest change that counts as an improvement [% for top1]
    best: float | None = None  # best value of `metric` so far
    best_epoch: int = 0
    bad_evals: int = 0  # evaluations since the last improvement

    @property
    def enabled(self) -> bool:
        """True when `patience` > 0."""
        return self.patience > 0

    def improves(self, value: float) -> bool:
        """True when `value` beats `best` by more than `min_delta` (always before the first evaluation)."""
        if self.best is None:
            return True
        if self.metric == "loss":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, val: dict[str, Any], epoch: int) -> bool:
        """Record one evaluation; True when it is the best so far."""
        value = float(val[self.metric])
        if self.improves(value):
            self.best, self.best_epoch, self.bad_evals = value, epoch, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        """True when enabled and the last `patience` evaluations have not improved."""
        return self.enabled and self.bad_evals >= self.patience

    def record(self, epoch: int, step: int) -> dict[str, Any]:
        """The `early_stop` log record."""
        return {"type": "early_stop", "epoch": epoch, "iter": step, "metric": self.metric, "best": self.best,
                "best_epoch": self.best_epoch, "patience": self.patience, "min_delta": self.min_delta}

    def state_dict(self) -> dict[str, Any]:
        """The counter (best, best_epoch, bad_evals) as stored in checkpoints."""
        return {k: v for k, v in asdict(self).items() if k in ("best", "best_epoch", "bad_evals")}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore the counter from a checkpoint's `early_stop` entry; keys it lacks keep their value."""
        for k in ("best", "best_epoch", "bad_evals"):
            if k in d:
                setattr(self, k, d[k])
