"""`cifarkit robustness`: top-1 under the CIFAR-10-C corruptions (Hendrycks & Dietterich, ICLR 2019).

The protocol: the test split under 15 corruptions x 5 severities (`data.corruptions`), plain
evaluation (TTA only on request), top-1 per cell; the summary numbers are
- mean corruption accuracy (mCA): the mean of the 75 cells (the 4 extra corruptions, when run,
  get their own mean, `mca_extra`: the paper keeps them out of its summary numbers);
- against a reference model f0 (`baseline`), the paper's corruption error CE_c = sum_s E(f, c, s) /
  sum_s E(f0, c, s) and relative CE_c = sum_s (E(f, c, s) - E(f, clean)) / sum_s (E(f0, c, s) -
  E(f0, clean)); mCE and relative mCE are their means over the corruptions (in %; 100 = as the
  reference, lower is better).

Corrupted images are made a chunk at a time (`CHUNK` images) with a seed per (corruption,
severity, chunk), fed through the one inference path (`infer.inference.Inference`, as `eval`:
same transform, precision and tie-break) and dropped, so memory stays at two chunks (one being
made, one evaluated) whatever the table's size. With `cifar10c` the images come from a
downloaded CIFAR-10-C folder instead.

Writes into OUT: robustness.json (the table and summary), robustness.png (corruption x severity
heat map), robustness_samples.png (one test image under every corruption and severity) and a
"robustness" entry in metrics.json (created, or added to an existing one, e.g. analyze's).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cifarkit.data.cifar import CIFAR10_CLASSES
from cifarkit.data.corruptions import (
    CIFAR10C_PER_SEVERITY,
    CORRUPTIONS,
    check_corruptions,
    check_severities,
    chunk_rng,
    cifar10c_batch,
    corrupt,
    read_cifar10c,
)
from cifarkit.errors import CifarkitError, ConfigError
from cifarkit.extras import require
from cifarkit.infer.device import cpu_kind
from cifarkit.infer.evaluate import ranked
from cifarkit.infer.inference import Inference, InferOptions, checkpoint_label, eval_data
from cifarkit.plotting import pyplot, save
from cifarkit.safepath import check_apart, check_replaceable, claim_outputs, writable_place, write_text_atomic

CHUNK = 1000  # images corrupted at a time: fixed, so the seeds (and images) never depend on batch sizes
FILES = ("robustness.json", "robustness.png", "robustness_samples.png")
TITLES = {"gaussian_noise": "Gaussian noise", "shot_noise": "shot noise", "impulse_noise": "impulse noise",
          "defocus_blur": "defocus blur", "glass_blur": "glass blur", "motion_blur": "motion blur",
          "zoom_blur": "zoom blur", "snow": "snow", "frost": "frost", "fog": "fog", "brightness": "brightness",
          "contrast": "contrast", "elastic_transform": "elastic", "pixelate": "pixelate",
          "jpeg_compression": "JPEG", "speckle_noise": "speckle noise", "gaussian_blur": "Gaussian blur",
          "spatter": "spatter", "saturate": "saturate"}


def _check_out(out: Path, overwrite: bool, inputs: list[str | Path | None]) -> None:
    """`out` may exist and hold other results (an analyze folder, a run); our own files in it are
    replaced only with `overwrite`, and only when an earlier robustness wrote them (listed in its
    `safepath.OUTPUTS_RECORD`); it may not overlap the data (`inputs`)."""
    check_apart(out, inputs)
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise CifarkitError(f"{out}: exists and is not a folder; choose another --out")
    clash = [f for f in FILES if (out / f).exists() or (out / f).is_symlink()]
    if clash and not overwrite:
        raise CifarkitError(f"{out / clash[0]}: exists; pass --overwrite to replace it or choose another --out")
    check_replaceable(out, FILES)
    writable_place(out)
    _read_metrics(out / "metrics.json")  # a damaged metrics.json is refused before the work, not after it


def _read_metrics(path: Path) -> dict[str, Any]:
    """An existing metrics.json (which robustness adds its line to) as a dict; {} when there is none."""
    if not path.exists():
        return {}
    if not path.is_file() or path.is_symlink():
        raise CifarkitError(f"{path}: not a regular file; move it away to let robustness add its line")
    try:
        metrics = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CifarkitError(f"{path}: not JSON ({e}); move it away to let robustness add its line") from None
    if not isinstance(metrics, dict):
        raise CifarkitError(f"{path}: not a JSON object; move it away to let robustness add its line")
    return metrics


def corruption_errors(table: dict[str, dict[str, float]], clean: float, base: dict[str, dict[str, float]],
                      base_clean: float) -> dict[str, Any]:
    """The paper's CE and relative CE per corruption, and their means (mCE, relative mCE) [%], from
    top-1 tables {corruption: {severity: top-1 %}} of the model and of the reference model. The
    means take the protocol's 15 corruptions only (the 4 extras are the paper's held-out set),
    or every corruption given when none of the 15 is."""
    ce, rel = {}, {}
    for c, row in table.items():
        err = [100 - row[s] for s in row]
        berr = [100 - base[c][s] for s in row]
        ce[c] = 100 * sum(err) / sum(berr) if sum(berr) > 0 else None
        denom = sum(e - (100 - base_clean) for e in berr)
        rel[c] = 100 * sum(e - (100 - clean) for e in err) / denom if denom > 0 else None
    def mean(d: dict) -> float | None:
        vals = [d[c] for c in _headline(list(d))]
        return float(np.mean(vals)) if vals and None not in vals else None

    return {"ce": ce, "relative_ce": rel, "mce": mean(ce), "relative_mce": mean(rel)}


def _headline(names: list[str]) -> list[str]:
    """The corruptions the summary numbers average: the protocol's 15 among `names`, else all of them."""
    protocol = [c for c in names if c in CORRUPTIONS]
    return protocol or names


def robustness(ckpt: str | Path, out: str | Path, *, data: str | None = None, split: str | None = None,
               corruptions: list[str] | None = None, severities: list[int] | None = None, extra: bool = False,
               baseline: str | Path | None = None, cifar10c: str | Path | None = None, tta: str | None = "none",
               precision: str | None = None, device: str = "auto", seed: int = 0, overwrite: bool = False,
               progress: bool | None = None, sample_index: int = 0, limit: int | None = None) -> dict[str, Any]:
    """Top-1 of `ckpt` on its test split under each corruption and severity.

    Args:
        ckpt: a checkpoint (.pt).
        out: folder for robustness.json/.png, robustness_samples.png and metrics.json (created).
        data: the dataset of the clean images (default: the run's data.root).
        split: its split (default: the run's test split).
        corruptions: names (default: the protocol's 15; `extra` adds speckle_noise, gaussian_blur,
            spatter, saturate).
        severities: 1-5 (default all five).
        baseline: a reference checkpoint for mCE and relative mCE (evaluated on the same images).
        cifar10c: a downloaded CIFAR-10-C folder to read the corrupted images from instead.
        tta: "none" (the protocol's plain evaluation), "flip", "flip_translate" or None (the run's).
        precision: auto (None: what this machine is fast at), fp32, bf16 or fp16, as `cifarkit eval`.
        device: "auto", "cpu", "cuda", ... as `cifarkit eval`.
        seed: of the corruptions' random draws (the same seed gives the same images).
        overwrite: replace robustness files already in `out`.
        progress: a bar over all corrupted images (None: on a terminal).
        sample_index: the test image shown in robustness_samples.png.
        limit: use only `limit` test images, spread evenly over the split (a quick look; the protocol
            uses all).

    Returns:
        robustness.json's dict: checkpoint, epoch, split, n, settings, clean_top1, table
        {corruption: {severity: top-1 %}}, per_corruption (mean over severities), mca, per_severity,
        baseline (its clean_top1, table, ce, relative_ce, mce, relative_mce) or None, seconds,
        images_per_s, cpu_kind, source ("generated" with the seed, or the CIFAR-10-C folder).

    Raises:
        ConfigError: unknown corruption, severity outside 1-5, images that are not 32 x 32, a
            baseline with other classes, or a CIFAR-10-C folder with a model that is not CIFAR-10's.
        DataError: a CIFAR-10-C file missing or mis-sized; the data as `cifarkit eval`.
        CheckpointError: a checkpoint cannot be used.
        CifarkitError: robustness files exist in `out` without `overwrite`.
    """
    names = check_corruptions(corruptions, extra)
    sevs = check_severities(severities)
    out = Path(out)
    _check_out(out, overwrite, [data, cifar10c])
    if "spatter" in names and cifar10c is None:
        require("cv2", "the spatter corruption")  # before any work, not 60 cells in
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit}: give a positive number of test images")
    if seed < 0:
        raise ConfigError(f"--seed {seed}: give a number >= 0")
    t0 = time.perf_counter()
    opts = InferOptions(data=data, split=split, tta=tta, precision=precision, device=device)
    inf = opts.load(ckpt)
    if data is None:
        check_apart(out, [inf.config.data.root])  # the run's data, known now
    base = opts.load(baseline) if baseline else None
    if base is not None and base.classes != inf.classes:
        raise ConfigError(f"--baseline {baseline}: its classes differ from {ckpt}'s; a reference model must "
                          "predict the same classes")
    files = {}
    if cifar10c is not None:
        if inf.classes != CIFAR10_CLASSES:
            raise ConfigError(f"--cifar10c: {ckpt} predicts {inf.classes[:3]}...; CIFAR-10-C's labels are CIFAR-10's "
                              f"classes in their order ({', '.join(CIFAR10_CLASSES[:3])}, ...)")
        files = {c: read_cifar10c(cifar10c, c) for c in names}  # every file checked before any work
    split = split or (inf.config.data.test_split if inf.config is not None else None)
    images, labels, split_name = eval_data(inf, data, split)
    total = len(labels)
    if cifar10c is not None:  # the clean images must be the ones CIFAR-10-C corrupted, in its order
        c10c_labels = torch.from_numpy(np.asarray(next(iter(files.values()))[1][:CIFAR10C_PER_SEVERITY],
                                                  dtype=np.int64))
        if total != CIFAR10C_PER_SEVERITY or not torch.equal(labels, c10c_labels):
            raise ConfigError(f"--cifar10c: the clean split ({data or inf.config.data.root}, {split_name}) is not "
                              "CIFAR-10's test split in CIFAR-10-C's order (its labels differ); pass --data with the "
                              "CIFAR-10 python batches (`cifarkit data fetch cifar10`)")
    # --limit: images spread evenly over the split, never its first N (a folder lists one class first)
    rows = torch.arange(min(limit, total)) * total // min(limit, total) if limit else torch.arange(total)
    images, labels = images[rows], labels[rows]  # clean top-1 on the very rows that are corrupted
    n = len(rows)
    if cifar10c is None and tuple(images.shape[1:]) != (3, 32, 32):
        raise ConfigError(f"{data or inf.config.data.root}: images are {images.shape[-1]} px; the CIFAR-10-C "
                          "corruptions are defined for 32 x 32 images")
    if not 0 <= sample_index < n:
        raise ConfigError(f"--sample-index {sample_index}: choose 0 .. {n - 1}")

    def top1(model: Inference, x: torch.Tensor, y: torch.Tensor) -> int:
        return int((ranked(model.logits(x), 1)[:, 0] == y).sum())

    clean = 100 * top1(inf, images, labels) / len(labels)
    base_clean = 100 * top1(base, images, labels) / len(labels) if base else None
    table: dict[str, dict[str, float]] = {c: {} for c in names}
    btable: dict[str, dict[str, float]] = {c: {} for c in names}
    samples: dict[str, list[torch.Tensor]] = {c: [] for c in names}
    bar = tqdm(total=len(names) * len(sevs) * n, desc="robustness", unit="img", disable=None if progress is None
               else not progress, smoothing=0.05)
    jobs = [(c, s, k, start, min(start + CHUNK, n)) for c in names for s in sevs
            for k, start in enumerate(range(0, n, CHUNK))]

    def make(job: tuple[str, int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        c, s, k, start, stop = job
        if cifar10c is None:
            return corrupt(images[start:stop], c, s, chunk_rng(seed, c, s, k)), labels[start:stop]
        imgs, lab = files[c]
        off = (s - 1) * CIFAR10C_PER_SEVERITY
        return (cifar10c_batch(imgs, s, rows[start:stop].numpy()),
                torch.from_numpy(np.asarray(lab[off + rows[start:stop].numpy()], dtype=np.int64)))

    hits: dict[tuple[str, int], int] = {}
    bhits: dict[tuple[str, int], int] = {}
    # The next chunk is corrupted in a second thread while this one is evaluated: much of the
    # corrupting is single-threaded (numpy draws, Pillow's JPEG, the glass-blur swaps) and would
    # leave a core idle. At most two chunks exist at a time; the seeds make the order irrelevant.
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(make, jobs[0]) if jobs else None
        for i, (c, s, _, start, stop) in enumerate(jobs):
            x, y = ahead.result()
            ahead = pool.submit(make, jobs[i + 1]) if i + 1 < len(jobs) else None
            hits[c, s] = hits.get((c, s), 0) + top1(inf, x, y)
            if base is not None:
                bhits[c, s] = bhits.get((c, s), 0) + top1(base, x, y)
            if start <= sample_index < stop:
                samples[c].append(x[sample_index - start])
            bar.update(stop - start)
    for (c, s), h in hits.items():
        table[c][str(s)] = 100 * h / n
        if base is not None:
            btable[c][str(s)] = 100 * bhits[c, s] / n
    bar.close()
    seconds = time.perf_counter() - t0
    cells = [v for row in table.values() for v in row.values()]
    head = _headline(names)
    extras = [c for c in names if c not in head]
    result: dict[str, Any] = {
        "checkpoint": str(ckpt), "epoch": inf.meta.get("epoch"), "split": split_name, "n": n, **inf.settings(),
        "clean_top1": clean, "table": table,
        "per_corruption": {c: float(np.mean(list(row.values()))) for c, row in table.items()},
        "per_severity": {str(s): float(np.mean([table[c][str(s)] for c in names])) for s in sevs},
        # mCA over the protocol's corruptions; the extras get their own mean (the paper keeps them apart)
        "mca": float(np.mean([table[c][str(s)] for c in head for s in sevs])),
        "mca_extra": float(np.mean([table[c][str(s)] for c in extras for s in sevs])) if extras else None,
        "corruptions": names, "severities": sevs,
        "source": f"generated (seed {seed})" if cifar10c is None else f"CIFAR-10-C folder {cifar10c}",
        "seconds": seconds, "images_per_s": len(cells) * n / seconds, "cpu_kind": cpu_kind(),
        "baseline": None}
    if base is not None:
        result["baseline"] = {"checkpoint": str(baseline), "clean_top1": base_clean, "table": btable,
                              **corruption_errors(table, clean, btable, base_clean)}
    out.mkdir(parents=True, exist_ok=True)
    claim_outputs(out, FILES, "robustness")
    write_text_atomic(out / "robustness.json", json.dumps(result, indent=1))
    plot_heatmap(result, out / "robustness.png")
    plot_samples(images[sample_index], samples, sevs, out / "robustness_samples.png")
    _add_to_metrics(out / "metrics.json", summary(result))
    return result


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """The one-line summary that goes into metrics.json."""
    b = r.get("baseline") or {}
    return {"mca": r["mca"], "clean_top1": r["clean_top1"], "mce": b.get("mce"), "relative_mce": b.get("relative_mce"),
            "n": r["n"], "corruptions": len(r["corruptions"]), "severities": r["severities"], "tta": r["tta"],
            "precision": r["precision"], "source": r["source"], "file": "robustness.json"}


def _add_to_metrics(path: Path, entry: dict[str, Any]) -> None:
    metrics = _read_metrics(path)
    metrics["robustness"] = entry
    write_text_atomic(path, json.dumps(metrics, indent=1))


def plot_heatmap(r: dict[str, Any], out: Path) -> Path:
    """Top-1 per corruption (rows) and severity (columns), plus each row's mean, annotated."""
    plt = pyplot()
    names, sevs = r["corruptions"], [str(s) for s in r["severities"]]
    mat = np.array([[r["table"][c][s] for s in sevs] + [r["per_corruption"][c]] for c in names])
    fig, ax = plt.subplots(figsize=(1.0 * len(sevs) + 3.2, 0.42 * len(names) + 1.6))
    im = ax.imshow(mat, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            ax.text(j, i, f"{mat[i, j]:.1f}", ha="center", va="center", fontsize=8,
                    fontweight="bold" if j == mat.shape[1] - 1 else "normal")
    ax.set_xticks(range(len(sevs) + 1), [*sevs, "mean"])
    ax.set_yticks(range(len(names)), [TITLES.get(c, c) for c in names])
    ax.set_xlabel("severity")
    ax.axvline(len(sevs) - 0.5, color="white", lw=2)
    label = checkpoint_label(r)
    ax.set_title(f"{label}: top-1 [%] under corruption\nclean {r['clean_top1']:.2f}, mean corruption accuracy "
                 f"{r['mca']:.2f}" + (f", mCE {r['baseline']['mce']:.1f}" if r.get("baseline") and
                                      r["baseline"].get("mce") is not None else ""), fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    save(fig, out)
    return out


def plot_samples(clean: torch.Tensor, samples: dict[str, list[torch.Tensor]], sevs: list[int], out: Path) -> Path:
    """One image: clean (first column), then each severity, one row per corruption."""
    plt = pyplot()
    names = list(samples)
    cols = len(sevs) + 1
    fig, axes = plt.subplots(len(names), cols, figsize=(1.1 * cols + 1.2, 1.1 * len(names)), squeeze=False)
    for i, c in enumerate(names):
        for j, img in enumerate([clean, *samples[c]]):
            ax = axes[i][j]
            ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("clean" if j == 0 else f"severity {sevs[j - 1]}", fontsize=8)
        axes[i][0].set_ylabel(TITLES.get(c, c), fontsize=8, rotation=0, ha="right", va="center")
    save(fig, out)
    return out
