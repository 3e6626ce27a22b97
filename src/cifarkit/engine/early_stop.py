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
    patience: int  # evaluations without improvement before stopping; 0 = off
    metric: str = "top1"  # top1 | loss
    min_delta: float = 0.0  # smallest change that counts as an improvement [% for top1]
    best: float | None = None  # best value of `metric` so far
    best_epoch: int = 0
    bad_evals: int = 0  # evaluations since the last improvement

    @property
    def enabled(self) -> bool:
        return self.patience > 0

    def improves(self, value: float) -> bool:
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
        return self.enabled and self.bad_evals >= self.patience

    def record(self, epoch: int, step: int) -> dict[str, Any]:
        """The `early_stop` log record."""
        return {"type": "early_stop", "epoch": epoch, "iter": step, "metric": self.metric, "best": self.best,
                "best_epoch": self.best_epoch, "patience": self.patience, "min_delta": self.min_delta}

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k in ("best", "best_epoch", "bad_evals")}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        for k in ("best", "best_epoch", "bad_evals"):
            if k in d:
                setattr(self, k, d[k])
