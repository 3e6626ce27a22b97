"""Extra views of the run log: TensorBoard event files (`log.tensorboard`), a CSV (`log.csv`)
and an MLflow run (`log.mlflow`, engine/tracking.py). `log.jsonl` stays the source of truth;
these sinks receive the same records as it is written (`RunLog(sinks=...)`) and never feed back
into training.

On resume the JSONL is rewritten up to the checkpoint: the CSV is rewritten with it (`replay`),
while TensorBoard, which only appends, is told to purge the events after that iteration.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from cifarkit.engine.tracking import MlflowSink
from cifarkit.extras import MissingExtra, require
from cifarkit.safecsv import csv_dict

CSV_COLUMNS = ["type", "epoch", "iter", "lr", "loss", "top1", "top5", "split", "time", "data_time", "metric",
               "best", "best_epoch"]
CSV_TYPES = ("train", "val", "early_stop")  # the header and summary are nested / per-run, not rows


class CsvSink:
    """RUN/metrics.csv: one row per train / val / early_stop record, fixed columns (CSV_COLUMNS)."""

    def __init__(self, path: Path):
        self.f = open(path, "w", newline="", encoding="utf-8")
        self.w = csv.DictWriter(self.f, CSV_COLUMNS, extrasaction="ignore")
        self.w.writeheader()

    def write(self, rec: dict[str, Any]) -> None:
        """Append `rec` as a row when it is a train, val or early_stop record, and flush."""
        if rec.get("type") in CSV_TYPES:
            self.w.writerow(csv_dict({k: rec.get(k) for k in CSV_COLUMNS}))
            self.f.flush()

    replay = write

    def close(self) -> None:
        """Close the CSV file."""
        self.f.close()


def summary_writer_class():
    """torch's SummaryWriter, or one sentence naming the extra to install."""
    try:
        require("tensorboard", "log.tensorboard")  # torch.utils.tensorboard needs it, and says so less clearly
    except MissingExtra as e:
        raise MissingExtra(f"{e} (or set log.tensorboard=false)") from None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter


class TensorBoardSink:
    """RUN/tb/: scalars train/loss, train/lr, train/images_per_s, val/top1, val/top5, val/loss,
    against the iteration."""

    def __init__(self, log_dir: Path, batch_size: int, resume_iter: int | None = None):
        writer = summary_writer_class()
        # purge_step: events at or after it, left by the interrupted run, are hidden by TensorBoard
        self.w = writer(str(log_dir), purge_step=resume_iter + 1 if resume_iter is not None else None)
        self.batch_size = batch_size

    def write(self, rec: dict[str, Any]) -> None:
        """Add a train or val record's scalars at its iteration; flush after an evaluation.

        Train: loss, lr and images/s; val: top-1, top-5 and loss."""
        step, kind = rec.get("iter"), rec.get("type")
        if kind == "train":
            self.w.add_scalar("train/loss", rec["loss"], step)
            self.w.add_scalar("train/lr", rec["lr"], step)
            if rec.get("time"):
                self.w.add_scalar("train/images_per_s", self.batch_size / rec["time"], step)
        elif kind == "val":
            for k in ("top1", "top5", "loss"):
                self.w.add_scalar(f"val/{k}", rec[k], step)
        if kind in ("val", "early_stop"):
            self.w.flush()  # an evaluation is worth seeing at once; train scalars flush on TB's timer

    def replay(self, rec: dict[str, Any]) -> None:
        """Nothing: on resume the kept records are already in the event files."""
        pass  # already in the event files from before the interruption

    def close(self) -> None:
        """Close the event writer."""
        self.w.close()


def make_sinks(cfg, run_dir: Path, header: dict[str, Any], resume_iter: int | None) -> list:
    """The extra log views `log.*` asks for, for `RunLog(sinks=...)`.

    Args:
        cfg: the run's `Config`; `log.tensorboard` adds a `TensorBoardSink` in `run_dir/tb`, `log.csv`
            a `CsvSink` writing `run_dir/metrics.csv`, `log.mlflow` an `MlflowSink`.
        run_dir: the run directory.
        header: the run log's header (config, versions, device, precision) for MLflow's params and tags.
        resume_iter: the iteration a resumed run continues from (TensorBoard hides its later
            events, MLflow skips the steps it has), or None for a fresh run.

    Raises:
        MissingExtra: `log.tensorboard` is on and tensorboard is not installed.
    """
    sinks: list = []
    if cfg.log.tensorboard:
        sinks.append(TensorBoardSink(run_dir / "tb", cfg.train.batch_size, resume_iter))
    if cfg.log.csv:
        sinks.append(CsvSink(run_dir / "metrics.csv"))
    if cfg.log.mlflow:
        sinks.append(MlflowSink(cfg, run_dir, header, resume_iter))
    return sinks
