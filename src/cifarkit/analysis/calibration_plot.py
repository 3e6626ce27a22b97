"""The reliability figures of temperature scaling: `cifarkit calibrate`'s `<out stem>_reliability.png`
(`calibrate_with_figure`), `train.calibrate`'s `RUN/calibrated_reliability.png` (an `after_run`
writer) and the reliability panel `analyze` draws. The fitting itself is `infer.calibration`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cifarkit.infer.calibration import calibrated_path, calibration_scores, fit_calibration
from cifarkit.infer.checkpoint import load_checkpoint
from cifarkit.infer.inference import InferOptions, eval_data
from cifarkit.plotting import pyplot, save
from cifarkit.safepath import output_file


def calibrate_with_figure(ckpt: str | Path, out: str | Path | None = None, *, data: str | None = None,
                          split: str | None = None, allow_test: bool = False, device: str = "auto",
                          tta: str | None = None, precision: str | None = None, overwrite: bool = False,
                          figure: bool = True, objective: str = "nll") -> dict[str, Any]:
    """`cifarkit calibrate`: `infer.calibration.calibrate` (same arguments and errors), plus, with
    `figure`, the before/after reliability diagram next to `out` (`<out stem>_reliability.png`,
    checked with `out` before any work). Returns calibrate's dict with "figure": its path or None."""
    out = calibrated_path(ckpt, out)
    fig_path = out.with_name(f"{out.stem}_reliability.png") if figure else None
    result, before, after = fit_calibration(ckpt, out, data=data, split=split, allow_test=allow_test, device=device,
                                            tta=tta, precision=precision, overwrite=overwrite, objective=objective,
                                            also_writes=(fig_path,) if fig_path else ())
    if fig_path is not None:
        plot_before_after(before, after, result["temperature"], fig_path)
    return {**result, "figure": str(fig_path) if fig_path else None}


def write_run_calibration_figure(run_dir: Path) -> Path:
    """`train.calibrate`'s figure: `run_dir/calibrated_reliability.png` from `run_dir/calibrated.pt`, its
    reliability before and after the fitted temperature on the split it was fitted on (the run's
    validation split, at the checkpoint's TTA and precision, as `calibrate` measured it)."""
    ckpt = Path(run_dir) / "calibrated.pt"
    t = float(load_checkpoint(ckpt)["temperature"])
    inf = InferOptions(temperature=1.0).load(ckpt)  # the uncalibrated logits, as `calibrate` fitted on
    images, labels, _ = eval_data(inf, None, None)
    logits = inf.logits(images)
    fig_path = output_file(ckpt.with_name(f"{ckpt.stem}_reliability.png"), True)  # a regular file or nothing
    return plot_before_after(calibration_scores(logits, labels), calibration_scores(logits, labels, t), t, fig_path)


def plot_before_after(before: dict, after: dict, temperature: float, out: Path) -> Path:
    """Two reliability diagrams side by side: the model's scores, then after dividing by `temperature`."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.3))
    for ax, s, title in ((axes[0], before, "before (T = 1)"), (axes[1], after, f"after (T = {temperature:.3f})")):
        draw_reliability(ax, s["bins"], f"{title}: ECE {s['ece'] * 100:.2f}%, NLL {s['nll']:.3f}, "
                         f"Brier {s['brier']:.3f}", fontsize=9)
    save(fig, out)
    return out


def draw_reliability(ax: Any, bins: list[dict], title: str, fontsize: float | None = None) -> None:
    """A reliability diagram on `ax`: accuracy per confidence bin (`calibration`'s bins) against the diagonal."""
    centers = [(b["low"] + b["high"]) / 2 for b in bins]
    width = bins[0]["high"] - bins[0]["low"]
    ax.bar(centers, [b["accuracy"] if b["count"] else 0 for b in bins], width=width * 0.95, edgecolor="k",
           alpha=0.8, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    ax.set_title(title, fontsize=fontsize)
    ax.legend(loc="upper left", fontsize=8)
