"""What `cifarkit train` draws around a run: train_batch.png at the start, curves.png,
report.html (and, with train.calibrate, calibrated_reliability.png) once it has finished.

The engine does not draw: `fit(before_run=..., after_run=...)` calls these with the run
directory, and the CLI (and the demo) pass them when `log.plots` is on, so
`import cifarkit; fit(cfg)` stays cheap. A failure here only warns, since a figure must never cost
the user their run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cifarkit.analysis.calibration_plot import write_run_calibration_figure
from cifarkit.analysis.curves import plot_runs
from cifarkit.analysis.report import write_report
from cifarkit.errors import CifarkitError


def write_curves(run_dir: Path, quiet: bool = False) -> None:
    """Draw the run's training curves into `run_dir/curves.png`; a failure only prints a warning.

    `quiet` drops the `wrote ...` line."""
    _warn_on_failure("curves", lambda: plot_runs([run_dir], run_dir / "curves.png"), quiet)


def write_run_report(run_dir: Path, quiet: bool = False) -> None:
    """Write the run's HTML report (`run_dir/report.html`); a failure only prints a warning.

    `quiet` drops the `wrote ...` line."""
    _warn_on_failure("report", lambda: write_report(run_dir), quiet)


def write_train_batch(run_dir: Path, data, quiet: bool = False, n: int = 32) -> None:
    """Draw the first `n` images of the run's first training batch as the model gets them (after
    augmentation and MixUp/CutMix, un-normalised) into `run_dir/train_batch.png` (as Ultralytics
    does), each with its label (the larger share when mixed); a failure only prints a warning.

    `data` is the run's `RunData`; the loader draws epoch 0's first batch, a pure function of
    (seed, epoch), so training later draws the very same batch."""
    def draw() -> Path:
        from cifarkit.data.imageset import ImageSet
        from cifarkit.data.show import show_grid

        batches = iter(data.loader)
        try:
            x, y = next(batches)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # a streaming source stops its reads
        x = x[:n].float().cpu()
        mean = torch.tensor(data.prep.mean).view(1, 3, 1, 1)
        std = torch.tensor(data.prep.std).view(1, 3, 1, 1)
        pixels = (x * std + mean).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        mixed = y.ndim == 2
        labels = (y[:n].argmax(1) if mixed else y[:n]).cpu().numpy().astype(np.int64)
        shown = ImageSet(images=pixels, labels=labels, classes=list(data.classes), sources=["batch"] * len(labels),
                         indices=np.arange(len(labels)), filenames=[""] * len(labels), origin=str(run_dir))
        title = (f"one training batch as the model sees it ({len(labels)} of its {y.shape[0]} images, after "
                 f"augmentation{'; mixed: each labelled by its larger share' if mixed else ''})")
        return show_grid(shown, run_dir / "train_batch.png", first=len(labels), cols=8, title=title)

    _warn_on_failure("train_batch.png", draw, quiet)


def start_writers(plots: bool, quiet: bool = False) -> list[Callable[[Path, object], None]]:
    """The before_run list for `log.plots`: the picture of one augmented training batch."""
    return [lambda run, data: write_train_batch(run, data, quiet)] if plots else []


def _warn_on_failure(what: str, make: Callable[[], Path], quiet: bool) -> None:
    try:
        out = make()
        if not quiet:
            print(f"wrote {out}")
    except (CifarkitError, OSError, ValueError) as e:
        print(f"warning: {what} not written: {e}", file=sys.stderr)


def write_calibration_figure(run_dir: Path) -> None:
    """`train.calibrate`'s `run_dir/calibrated_reliability.png`, when the run wrote `calibrated.pt`
    (it has a validation split); no `wrote` line (the run's `calibrated ...` line names the
    checkpoint), a failure only warns."""
    if (run_dir / "calibrated.pt").is_file():
        _warn_on_failure("calibrated_reliability.png", lambda: write_run_calibration_figure(run_dir), True)


def plot_writers(plots: bool, quiet: bool = False, calibrate: bool = False) -> list[Callable[[Path], None]]:
    """The after_run list: with `calibrate` (`train.calibrate`) the calibration figure, whatever
    `plots`; with `plots` (`log.plots`) curves then report (which embeds the curves)."""
    first = [write_calibration_figure] if calibrate else []
    if not plots:
        return first
    return [*first, lambda run: write_curves(run, quiet), lambda run: write_run_report(run, quiet)]
