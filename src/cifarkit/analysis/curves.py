"""`cifarkit plot`: loss, accuracy and lr curves from one or several runs, any log format.

Train loss is drawn per logged iteration on a true iteration axis (raw, light), smoothed with a
moving average, and as the per-epoch mean; top-1/top-5 per epoch on the evaluated split (named); the learning rate.
Several runs are overlaid with a legend, each in its own colour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cifarkit.errors import DataError
from cifarkit.logs import RunRecords, read_records
from cifarkit.plotting import pyplot, save
from cifarkit.safepath import output_file

KEYS = ("loss", "top1", "top5", "lr")


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average that is defined from the first point on."""
    if window <= 1 or len(values) < 2:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_runs(paths: list[str | Path], out: str | Path, keys: tuple[str, ...] | list[str] = KEYS,
              smooth_window: int = 0, names: list[str] | None = None, iters_per_epoch: int | None = None,
              overwrite: bool = True) -> Path:
    """Overlay the curves of one or several runs in one image.

    Args:
        paths: run directories or log files: cifarkit's `log.jsonl`, MMClassification 0.x
            `*.log.json` or MMEngine `scalars.json` (detected by content).
        out: the image file to write.
        keys: the panels: any of "loss" (train loss per iteration, with the per-epoch mean),
            "top1"/"top5" (accuracy [%] per epoch on the split the run evaluated: test, or val when
            `data.val_fraction` held one out; in one panel) and "lr".
        smooth_window: moving-average window over the loss [iterations]; 0 plots it raw.
        names: legend names, one per path (default: each run's name).
        iters_per_epoch: iterations per epoch for MMCls 0.x logs whose config names no dataset
            of known size.
        overwrite: replace an existing regular file `out` (the CLI asks for --overwrite unless `out`
            is its default).

    Returns:
        `out`, as a Path.

    Raises:
        DataError: a log is missing, holds no records, or `keys` names an unknown panel.
    """
    output_file(out, overwrite=overwrite)  # a regular file only replaced with `overwrite`; never a device, FIFO or link
    runs = [read_records(p, names[i] if names else None, iters_per_epoch) for i, p in enumerate(paths)]
    return plot_records(runs, out, keys, smooth_window)


def accuracy_title(runs: list[RunRecords]) -> str:
    """The accuracy panel's title, naming the split the runs were evaluated on: "test accuracy"
    unless `data.val_fraction` held out a validation split (cifarkit logs record it in their
    header); MMClassification logs do not say which split their "val" records are on."""
    splits = {r.header.get("eval_split") if isinstance(r.header.get("eval_split"), str) else None for r in runs}
    if splits == {None}:
        return "accuracy on the evaluation split (the log does not name it)"
    if len(splits) == 1:
        return f"{splits.pop()} accuracy"
    return "accuracy on each run's evaluation split (" + ", ".join(sorted(str(s) for s in splits)) + ")"


def plot_records(runs: list[RunRecords], out: str | Path, keys=KEYS, smooth_window: int = 0) -> Path:
    """`plot_runs` for logs already read with `cifarkit.logs.read_records`."""
    bad = [k for k in keys if k not in KEYS]
    if bad:
        raise DataError(f"--keys: unknown {bad}; choose from {', '.join(KEYS)}")
    plt = pyplot()
    panels = []
    if "loss" in keys:
        panels.append("loss")
    if "top1" in keys or "top5" in keys:
        panels.append("acc")
    if "lr" in keys:
        panels.append("lr")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), squeeze=False)
    ax_of = dict(zip(panels, axes[0]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        col = colors[i % len(colors)]
        label = run.name if len(runs) > 1 else None
        tr = [t for t in run.train if t["iter"] is not None]
        if "loss" in ax_of and tr:
            ax = ax_of["loss"]
            it = np.array([t["iter"] for t in tr], dtype=float)
            loss = np.array([t["loss"] if t["loss"] is not None else np.nan for t in tr], dtype=float)
            loss[~np.isfinite(loss)] = np.nan  # a diverged step ("inf" in the log) is a gap, not the y-range
            ax.plot(it, loss, color=col, alpha=0.25, lw=0.8)
            w = smooth_window or max(1, len(loss) // 25)
            ax.plot(it, smooth(np.nan_to_num(loss, nan=np.nanmean(loss)), w), color=col, lw=1.6,
                    label=f"{run.name} (smoothed)" if label else "smoothed")
            epochs = sorted({t["epoch"] for t in tr if t["epoch"] is not None})
            if len(epochs) > 1:
                ends = [max(t["iter"] for t in tr if t["epoch"] == e) for e in epochs]
                ep_of = np.array([t["epoch"] if t["epoch"] is not None else -1 for t in tr])
                means = [np.nanmean(loss[ep_of == e]) for e in epochs]
                ax.plot(ends, means, "o--", color=col, ms=4, lw=1, label="epoch mean" if not label else None)
            ax.set_xlabel("iteration")
            ax.set_ylabel("train loss")
            ax.set_title("loss")
        if "acc" in ax_of and run.val:
            ax = ax_of["acc"]
            ep = [v["epoch"] for v in run.val]
            if "top1" in keys and any(v["top1"] is not None for v in run.val):
                ax.plot(ep, [v["top1"] for v in run.val], "o-", color=col, label=f"{run.name} top-1" if label
                        else "top-1")
            if "top5" in keys and any(v["top5"] is not None for v in run.val):
                ax.plot(ep, [v["top5"] for v in run.val], "s:", color=col, alpha=0.7,
                        label=f"{run.name} top-5" if label else "top-5")
            ax.set_xlabel("epoch")
            ax.set_ylabel("accuracy (%)")
            ax.set_title(accuracy_title(runs))
        if "lr" in ax_of and tr and any(t["lr"] is not None for t in tr):
            ax = ax_of["lr"]
            ax.plot([t["iter"] for t in tr if t["lr"] is not None], [t["lr"] for t in tr if t["lr"] is not None],
                    color=col, label=label)
            ax.set_xlabel("iteration")
            ax.set_title("learning rate")
    for name, ax in ax_of.items():
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        if name == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if not any(ax.lines for ax in ax_of.values()):
        raise DataError("nothing to plot: the logs have no records for the requested --keys")
    fig.tight_layout()
    out = Path(out)
    if out.suffix.lower() not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
        raise DataError(f"{out}: unsupported figure type; use .png, .pdf or .svg")
    save(fig, out)
    return out
