"""`audit`: near-duplicates, train/test leakage, probable label errors and outliers of a dataset.

    load the splits -> K folds (stratified) -> per fold: `fit` a recipe on the other folds, predict
    the held-out fold (out-of-sample probabilities); fold 0's model also embeds every image ->
    label issues (confident learning), duplicates (pixel hashes + embedding neighbours), outliers
    -> duplicates.csv, label_issues.csv, outliers.csv, audit.json, audit.html in `out`.

Every fold is an ordinary run in `out/folds/<k>/` (config, log, checkpoint), so a user can see how
good the models behind the verdicts were. The folds' budget: `FOLD_BUDGET` of the recipe's
epochs, unless the user sets `train.epochs` (see its comment for the evidence).
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarkit.audit.clean import check_clean_args, check_images_folder, write_clean_manifest
from cifarkit.audit.findings import FILES, OUTPUTS, Audited, Findings, write_csv
from cifarkit.audit.label_issues import rank_label_issues
from cifarkit.audit.neighbours import logits_and_embeddings, near_pairs, outlier_scores
from cifarkit.audit.page import write_page
from cifarkit.config import Config, load_config
from cifarkit.data.folder import manifest_splits, splits_of
from cifarkit.data.imageset import ImageSet
from cifarkit.data.loader import to_chw_tensor
from cifarkit.data.sources import describe_kind, load_dataset
from cifarkit.data.stats import pixel_hashes
from cifarkit.engine.train import fit
from cifarkit.errors import ConfigError, DataError
from cifarkit.infer.device import cpu_kind, cpu_model
from cifarkit.infer.inference import Inference
from cifarkit.safecsv import csv_uncell
from cifarkit.safepath import claim_outputs, output_dir, remove_outputs, write_text_atomic
from cifarkit.userfile import MiB, open_user_file

# The folds train for this fraction of the recipe's epochs (fast: 1.6 of 8), in batches of at most
# FOLD_BATCH: 5 folds x 4/5 of the data x 1/5 of the epochs is 0.8 of one recipe run's training,
# which leaves room for the predictions, the embeddings and the search within the target of 1.5x
# one `train fast` run. One fold of CIFAR-10 (48,000 images; `benchmarks/audit.py --fold-study`,
# Intel Xeon with AMX, bf16), held-out top-1 with mirror TTA: batch 1000 x 1.6 epochs 84.9% in
# 70 s (this default); batch 2000 x 2 epochs 83.3% in 82 s, x 3 86.8% in 118 s; batch 1000 x 2
# 86.1% in 82 s, x 4 89.2% in 164 s; batch 500 x 1.6 85.7% in 71 s; the airbench94 recipe x 2
# epochs 81.8% in 79 s. Short runs want more steps.
FOLD_BUDGET = 0.2
FOLD_BATCH = 1000
# Pixel similarity (`neighbours.pixel_similarity`, a correlation) from which two images are near
# duplicates. On CIFAR-10 with 500 planted altered copies (benchmarks/audit.py's exploration):
# 0.95 finds 90% of the copies with ~650 other train/test pairs above it (CIFAR-10's own near
# copies among them); 0.90 finds 94% with ~2,700; 0.97 78% with ~250. Precision first.
NEAR_THRESHOLD = 0.95
# `eval --exclude`: CIFAR-10's own duplicates.csv is a few hundred KB; 128 MiB is over a million pairs
MAX_DUPLICATES_BYTES = 128 * MiB
OUTLIER_Z = 3.5  # modified z-score (Iglewicz & Hoaglin) of the outlier score within its class
DUPLICATE_COLUMNS = ["split_a", "path_a", "index_a", "split_b", "path_b", "index_b", "distance", "kind"]
# and each image's pixel hash (`eval --exclude` checks it: a list from another dataset is refused)
HASH_COLUMNS = ["hash_a", "hash_b"]
LABEL_COLUMNS = ["split", "path", "index", "given", "suggested", "score", "p_given", "p_suggested"]
OUTLIER_COLUMNS = ["split", "path", "index", "label", "score", "z"]


def load_splits(data: str | Path, splits: list[str] | None = None, image_size: int | None = None) -> Audited:
    """The splits to audit (default: every split the dataset has) as one `Audited`; an image folder
    or manifest decoded at `image_size` px (the recipe's `data.image_size`; None: their own size).

    Raises:
        DataError: the path is not a dataset, a named split is missing, or the splits' classes differ.
    """
    kind = describe_kind(data)
    found = ["train", "test"] if kind == "cifar" else splits_of(data) if kind == "folder" else manifest_splits(data)
    if splits is None:
        splits = found or [None]  # type: ignore[list-item]
    elif kind != "cifar" and (missing := [s for s in splits if s not in found]):
        raise DataError(f"--splits {' '.join(missing)}: {data} has " + (f"the splits {', '.join(found)}" if found else
                        "no splits (leave --splits out to audit it whole)"))
    if len(set(splits)) != len(splits):
        raise DataError(f"--splits {' '.join(splits)}: a split is named twice")
    parts = []
    for s in splits:
        ds = load_dataset(data, s, image_size)  # type: ignore[arg-type]  # s None: a dataset without splits
        if parts and list(ds.classes) != list(parts[0].classes):
            raise DataError(f"{data}: split {s!r} has classes {ds.classes}, split {splits[0]!r} "
                            f"{parts[0].classes}; audit splits of one dataset")
        if parts and ds.images.shape[1:] != parts[0].images.shape[1:]:
            raise DataError(f"{data}: split {s!r} has {ds.images.shape[2]}x{ds.images.shape[1]} images, split "
                            f"{splits[0]!r} {parts[0].images.shape[2]}x{parts[0].images.shape[1]}; audit one size "
                            "(export or resize them alike)")
        parts.append(ds)
    names = [s if s is not None else "" for s in splits]  # "" = a dataset without splits
    split = np.concatenate([np.full(len(p), n, dtype=object) for p, n in zip(parts, names)])
    return Audited(ImageSet.concat(parts), split, names, kind)


def fold_config(recipe: str | Path, overrides: list[str], num_classes: int, data: str | Path) -> Config:
    """The recipe with `--set` overrides, at the folds' budget, evaluating once (plain, no TTA) at the end."""
    cfg = load_config(recipe, overrides)
    given = {o.split("=", 1)[0].strip() for o in overrides}
    if "train.epochs" not in given:
        cfg.train.epochs = cfg.train.epochs * FOLD_BUDGET
        # the whitening bias's phase is cut to the shortened run
        cfg.train.whiten_bias_epochs = min(cfg.train.whiten_bias_epochs, cfg.train.epochs)
    if "train.batch_size" not in given:
        cfg.train.batch_size = min(cfg.train.batch_size, FOLD_BATCH)
    cfg.model.num_classes = num_classes
    cfg.data.root = str(data)
    cfg.data.val_fraction = 0.0
    cfg.eval.tta = "none"  # the audit predicts the held-out fold itself (mirror TTA), once
    cfg.eval.interval = max(1, math.ceil(cfg.train.epochs))
    cfg.checkpoint.interval = 10 ** 6  # last.pt only
    cfg.train.calibrate = False
    cfg.log.plots = False
    return cfg


def assign_folds(labels: np.ndarray, folds: int, seed: int, groups: list[list[int]] | None = None) -> np.ndarray:
    """(N,) fold id per image: each class dealt round-robin over the folds in a seeded random order;
    each of `groups` (identical images) then joins its first member's fold, so no fold's model
    trains on a copy of an image it predicts (its probabilities stay out of sample).

    Raises:
        ConfigError: a fold is left without images (more folds than images allow).
    """
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        fold[rows] = (np.arange(len(rows)) + rng.integers(folds)) % folds
    for g in groups or []:
        fold[g] = fold[g[0]]
    empty = sorted(set(range(folds)) - set(fold.tolist()))
    if empty:
        raise ConfigError(f"--folds {folds}: {len(labels)} images leave fold {empty[0] + 1} empty; use fewer folds")
    return fold


def check_args(folds: int, near_threshold: float, n: int, batch: int) -> None:
    """Refuse a fold count, threshold or data size the audit cannot work with, before any work."""
    if not 2 <= folds <= 20:
        raise ConfigError(f"--folds {folds}: use 2..20 (5 is the default)")
    if n < 2 * folds:
        raise ConfigError(f"--folds {folds}: {n} images are too few; use fewer folds or more images")
    if not (math.isfinite(near_threshold) and 0 < near_threshold <= 1):
        raise ConfigError(f"--near-threshold {near_threshold}: a pixel similarity (correlation) in (0, 1]")
    if n * (folds - 1) // folds < batch:
        raise ConfigError(f"{n} images in {folds} folds leave fewer than one training batch ({batch}) per fold; "
                          f"lower train.batch_size with --set train.batch_size=N or --folds")


def audit(data: str | Path, out: str | Path, splits: list[str] | None = None, folds: int = 5,
          recipe: str | Path = "fast", overrides: list[str] | None = None,
          near_threshold: float | None = NEAR_THRESHOLD,
          seed: int = 0, device: str | None = None, overwrite: bool = False, quiet: bool = False,
          write_manifest: str | Path | None = None, drop: list[str] | None = None, relabel: bool = False,
          ) -> dict[str, Any]:
    """Audit a dataset: write duplicates.csv, label_issues.csv, outliers.csv, audit.json and audit.html.

    Args:
        data: CIFAR batches (folder or .tar.gz), an image folder or a CSV manifest.
        out: the output folder (missing or empty unless `overwrite`).
        splits: the splits to audit together (default: all the dataset has).
        folds: K of the K-fold cross-validation that gives every image out-of-sample probabilities.
        recipe: the recipe (shipped name or YAML file) the folds train; `overrides` are its `--set`s.
        near_threshold: pixel similarity (a correlation, 1 = same picture) from which two images are near-duplicates.
        seed: fold assignment and the folds' training seeds (fold k trains with seed + k).
        device: "cpu", "cuda", ... (default: the recipe's).
        overwrite: write into a non-empty `out`.
        quiet: no progress lines.
        write_manifest: also write a cleaned manifest there (`clean.write_clean_manifest`): the
            findings named in `drop` ("duplicates", "labels", "outliers"; default duplicates)
            left out, and with `relabel` the label issues given their suggested label instead.

    Returns:
        audit.json's content: counts per finding and split, the folds' out-of-sample top-1,
        times, settings and the machine.

    Raises:
        ConfigError: a bad recipe, override, fold count or threshold (before any work).
        DataError: the dataset cannot be read.
    """
    t0 = time.perf_counter()
    cfg = load_config(recipe, list(overrides or []))  # a bad recipe or --set fails before the data is read
    if (drop or relabel) and write_manifest is None:
        raise ConfigError("--drop and --relabel say what --write-manifest leaves out; give --write-manifest CSV")
    # every output place before the data is read and the folds train: --out, the manifest, its images
    output_dir(out, overwrite, inputs=[data], writes=OUTPUTS, create=False)
    if write_manifest is not None:
        drop = check_clean_args(write_manifest, drop, relabel, overwrite, out, data)
    a = load_splits(data, splits, cfg.data.image_size or None)
    if write_manifest is not None:
        check_images_folder(a.kind, write_manifest, overwrite, data, a.images.sources)
    summary, found = audit_set(a, out, str(data), folds, recipe, overrides, near_threshold, seed, device, overwrite,
                               quiet, t0, inputs=[data])
    if write_manifest is not None:
        summary["manifest"] = write_clean_manifest(a, found, data, write_manifest, drop or [], relabel, out,
                                                   overwrite)
        write_text_atomic(Path(out) / "audit.json", json.dumps(summary, indent=1))
    return summary


def audit_set(a: Audited, out: str | Path, data: str, folds: int = 5, recipe: str | Path = "fast",
              overrides: list[str] | None = None, near_threshold: float | None = NEAR_THRESHOLD, seed: int = 0,
              device: str | None = None, overwrite: bool = False, quiet: bool = False,
              t0: float | None = None, inputs: list[str | Path] | None = None) -> tuple[dict[str, Any], Findings]:
    """`audit` of images already loaded (`load_splits`); `data` names them in the outputs, `inputs`
    are the paths they were read from (`out` may not overlap them). With `overwrite` only an earlier
    audit's own files and folds/ in `out` are replaced (`safepath.OUTPUTS_RECORD`).
    Returns audit.json's content and the findings themselves."""
    t0 = time.perf_counter() if t0 is None else t0
    overrides = list(overrides or [])
    near_threshold = NEAR_THRESHOLD if near_threshold is None else near_threshold
    ds = a.images
    if len(np.unique(ds.labels)) < 2:
        raise DataError(f"{data}: the audited images are all of one class; a label audit needs two or more")
    cfg = fold_config(recipe, overrides, ds.num_classes, data)
    check_args(folds, near_threshold, len(ds), cfg.train.batch_size)
    hashes = pixel_hashes(ds.images)
    groups = exact_groups(hashes)
    fold = assign_folds(ds.labels, folds, seed, groups)
    out = output_dir(out, overwrite, inputs=inputs or [], writes=OUTPUTS)
    # stale results of an earlier audit must not survive next to new ones; only what an audit wrote
    # (listed in OUT's record) goes: a `folds` or `audit.json` of anyone else was refused above
    remove_outputs(out, OUTPUTS)
    claim_outputs(out, OUTPUTS, "data audit")
    probs = np.zeros((len(ds), ds.num_classes), dtype=np.float64)
    emb = None
    fold_top1 = []
    images = to_chw_tensor(ds.images)  # (N, 3, H, W) uint8
    t_train = 0.0
    for k in range(folds):
        held = np.flatnonzero(fold == k)
        train = np.flatnonzero(fold != k)
        if not quiet:
            print(f"fold {k + 1}/{folds}: training {cfg.model.name} on {len(train):,} images for "
                  f"{cfg.train.epochs:.3g} epochs, then predicting the {len(held):,} held out", flush=True)
        cfg.name, cfg.train.seed = f"audit_fold{k}", seed + k
        t1 = time.perf_counter()
        run = fit(cfg, Path(out) / "folds" / str(k), device=device, quiet=quiet, force=True,
                  sets=(ds.subset(train), ds.subset(held)))
        t_train += time.perf_counter() - t1
        inf = Inference.from_checkpoint(Path(run["run_dir"]) / "last.pt", device=device or cfg.train.device)
        if k == 0:  # one model embeds everything: near-duplicates need one space for all images
            plain, emb = logits_and_embeddings(inf, images)
            logits = (plain[held] + inf.logits(images[held].flip(-1), tta="none")) / 2  # = tta "flip"
        else:
            logits = inf.logits(images[held], tta="flip")
        probs[held] = torch.softmax(logits.double(), 1).numpy()
        fold_top1.append(100.0 * float((probs[held].argmax(1) == ds.labels[held]).mean()))
    assert emb is not None
    t_search = time.perf_counter()
    dups = duplicate_pairs(ds, emb, near_threshold, groups)
    issues = rank_label_issues(ds.labels, probs)
    scores = outlier_scores(emb, ds.labels)
    outliers = flag_outliers(scores, ds.labels)
    t_search = time.perf_counter() - t_search
    write_duplicates(out / "duplicates.csv", a, dups, hashes)
    write_label_issues(out / "label_issues.csv", a, issues, probs)
    write_outliers(out / "outliers.csv", a, outliers, scores)
    # for re-ranking or an approximate index (faiss) beyond CIFAR scale, in the CSV files' row order
    np.save(out / "embeddings.npy", emb.numpy().astype(np.float16))  # (N, D), L2-normalised
    np.save(out / "probs.npy", probs.astype(np.float32))  # (N, C) out-of-sample probabilities
    summary = {
        "data": data, "kind": a.kind, "splits": {s: int((a.split == s).sum()) for s in a.splits},
        "classes": ds.classes, "folds": folds, "recipe": str(recipe), "overrides": overrides,
        "fold_epochs": cfg.train.epochs, "fold_top1": fold_top1,
        "oos_top1": 100.0 * float((probs.argmax(1) == ds.labels).mean()),
        "near_threshold": near_threshold, "seed": seed,
        "counts": counts(a, dups, issues, outliers),
        "seconds": {"total": 0.0, "folds": t_train, "search": t_search},
        "precision": inf.precision, "device": str(inf.device), "cpu": cpu_model(), "cpu_kind": cpu_kind(),
        "files": list(FILES),
    }
    write_page(out / "audit.html", a, dups, issues, probs, outliers, scores, summary)
    summary["seconds"]["total"] = time.perf_counter() - t0
    write_text_atomic(out / "audit.json", json.dumps(summary, indent=1))
    return summary, Findings(dups, issues, probs, outliers, scores)


def exact_groups(hashes: list[bytes]) -> list[list[int]]:
    """Indices of the images with identical pixel hashes, one list per group of two or more."""
    groups: dict[bytes, list[int]] = {}
    for i, h in enumerate(hashes):
        groups.setdefault(h, []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def duplicate_pairs(ds: ImageSet, emb: torch.Tensor, threshold: float, groups: list[list[int]]
                    ) -> list[tuple[int, int, float, str]]:
    """(i, j, distance, "exact" | "near") for identical pixels (`groups`, `exact_groups`; distance 0,
    a group of copies as its first image paired with each other one) and every pair of near
    neighbours whose pixel similarity is at least `threshold` (distance 1 - it); exact pairs
    first, then the most alike."""
    exact = [(g[0], x) for g in groups for x in g[1:]]
    group = {i: k for k, g in enumerate(groups) for i in g}
    pairs = [(i, j, 0.0, "exact") for i, j in exact]
    pairs += [(i, j, max(0.0, 1.0 - s), "near") for i, j, s in near_pairs(ds.images, emb, threshold)
              if i not in group or group[i] != group.get(j)]
    return pairs


def flag_outliers(scores: np.ndarray, labels: np.ndarray, z: float = OUTLIER_Z) -> list[tuple[int, float]]:
    """(index, modified z-score) of the images whose outlier score stands out within their class, highest first."""
    flagged = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        med = np.median(scores[rows])
        mad = np.median(np.abs(scores[rows] - med)) * 1.4826
        if mad <= 0:
            continue
        zs = (scores[rows] - med) / mad
        flagged += [(int(r), float(v)) for r, v in zip(rows, zs) if v >= z]
    return sorted(flagged, key=lambda p: -p[1])


def where(a: Audited, i: int) -> list[Any]:
    """[split, path, index] of image i, as the CSV files name it (path: the file for folders and
    manifests, relative to the dataset; the batch file for CIFAR batches; index: the row in it)."""
    return [a.split[i], a.images.sources[i], int(a.images.indices[i])]


def write_duplicates(path: Path, a: Audited, pairs: list[tuple[int, int, float, str]], hashes: list[bytes]) -> None:
    """duplicates.csv: one row per pair, in the order given, with both images' pixel hashes."""
    write_csv(path, DUPLICATE_COLUMNS + HASH_COLUMNS,
              [where(a, i) + where(a, j) + [f"{d:.6f}", kind, hashes[i].hex(), hashes[j].hex()]
               for i, j, d, kind in pairs])


def write_label_issues(path: Path, a: Audited, issues: np.ndarray, probs: np.ndarray) -> None:
    """label_issues.csv: one row per probable label error, in rank order; score = 1 - p(given)."""
    cls = a.images.classes
    rows = []
    for i in issues.tolist():
        given, sug = int(a.images.labels[i]), int(probs[i].argmax())
        rows.append(where(a, i) + [cls[given], cls[sug], f"{1 - probs[i, given]:.6f}", f"{probs[i, given]:.6f}",
                                   f"{probs[i, sug]:.6f}"])
    write_csv(path, LABEL_COLUMNS, rows)


def write_outliers(path: Path, a: Audited, flagged: list[tuple[int, float]], scores: np.ndarray) -> None:
    """outliers.csv: one row per flagged outlier, the most extreme first."""
    cls = a.images.classes
    write_csv(path, OUTLIER_COLUMNS, [where(a, i) + [cls[int(a.images.labels[i])], f"{scores[i]:.6f}", f"{z:.2f}"]
                                      for i, z in flagged])


def counts(a: Audited, pairs: list[tuple[int, int, float, str]], issues: np.ndarray,
           outliers: list[tuple[int, float]]) -> dict[str, Any]:
    """Findings per split: duplicate pairs within and across splits (exact / near), label issues, outliers."""
    dup: dict[str, dict[str, int]] = {}
    for i, j, _, kind in pairs:
        si, sj = a.split[i], a.split[j]
        key = si if si == sj else "/".join(sorted((si, sj)))
        dup.setdefault(key, {"exact": 0, "near": 0})[kind] += 1
    return {"duplicate_pairs": dup,
            "label_issues": {s: int((a.split[issues] == s).sum()) for s in a.splits},
            "outliers": {s: sum(1 for i, _ in outliers if a.split[i] == s) for s in a.splits},
            "leaked": leaked_counts(a, pairs)}


def leaked_counts(a: Audited, pairs: list[tuple[int, int, float, str]]) -> dict[str, int]:
    """Per split: its images with a (near-)duplicate in another split."""
    hit: dict[str, set[int]] = {s: set() for s in a.splits}
    for i, j, _, _ in pairs:
        if a.split[i] != a.split[j]:
            hit[a.split[i]].add(i)
            hit[a.split[j]].add(j)
    return {s: len(v) for s, v in hit.items()}


def leaked_images(duplicates_csv: str | Path) -> dict[str, dict[tuple[str, int], str | None]]:
    """Per split, (path, index) -> pixel hash (None when the file has none) of its images that
    duplicates.csv pairs with an image of another split: what `cifarkit eval --exclude` leaves out
    of the split it evaluates (and checks are the same pixels there).

    Raises:
        DataError: the file is missing, empty, malformed or not an audit's duplicates.csv.
    """
    p = Path(duplicates_csv)
    what = f"{p}: not a duplicates.csv of `cifarkit data audit`"
    # a regular file of bounded size only (a FIFO or /dev/zero is refused before it is read)
    # -sig: a file saved again by a spreadsheet
    with open_user_file(p, "duplicates.csv", MAX_DUPLICATES_BYTES, encoding="utf-8-sig", newline="") as f:
        try:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"{what} ({e})") from None
    if not set(DUPLICATE_COLUMNS) <= set(header):
        raise DataError(f"{what} (it needs the columns {', '.join(DUPLICATE_COLUMNS)})")
    out: dict[str, dict[tuple[str, int], str | None]] = {}
    for n, r in enumerate(rows, start=2):
        if any(r.get(c) is None for c in DUPLICATE_COLUMNS):
            raise DataError(f"{p}: row {n} has fewer cells than its header")
        sa, sb = csv_uncell(r["split_a"]), csv_uncell(r["split_b"])
        if sa == sb:
            continue
        for s, side in ((sa, "a"), (sb, "b")):
            try:
                key = (csv_uncell(r[f"path_{side}"]), int(r[f"index_{side}"]))
            except ValueError:
                raise DataError(f"{p}: row {n}: index_{side} {r[f'index_{side}']!r} is not an integer") from None
            out.setdefault(s, {})[key] = r.get(f"hash_{side}") or None
    return out
