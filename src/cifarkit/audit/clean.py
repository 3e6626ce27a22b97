"""Acting on an audit: a cleaned manifest that cifarkit trains and evaluates from.

What goes is the user's choice (`--drop duplicates,labels,outliers`, `--relabel`), and nothing
goes silently: every dropped or relabelled image is listed with its reason in `OUT/changes.csv`
and counted in audit.json and on the terminal.

- duplicates: of a pair across splits, the image of the split that ranks lower goes: train ranks
  lowest, then any other split, then val/valid/validation, then test (the test image stays, the
  training copy that leaked into it goes), whatever order the splits come in; of a pair within a
  split, the later image goes. An image goes only while its partner stays (a chain of copies
  keeps one).
- labels: the probable label errors go, or with `--relabel` stay with the suggested label.
- outliers: the flagged outliers go.

Image folders and manifests: the manifest points at the original files, by paths relative to the
manifest's folder; since a manifest reads only files inside its own folder (`saferead.Within`),
it has to be written in the dataset's folder or one above it (checked before any work). CIFAR
batches have no files: the kept images are exported next to the manifest (`<name>_images/`,
`data export`'s layout) and the manifest points there.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from cifarkit.audit.findings import FILES, Audited, Findings, write_csv
from cifarkit.data.export import MANIFEST_COLUMNS, check_export_out, export_dataset
from cifarkit.errors import CifarkitError, ConfigError, DataError
from cifarkit.safecsv import csv_uncell
from cifarkit.safepath import output_file, real_path
from cifarkit.saferead import Within, printable

DROPPABLE = ("duplicates", "labels", "outliers")
KEEP_RANK = {"train": 0, "val": 2, "valid": 2, "validation": 2, "test": 3}  # other splits: 1


def keep_rank(split: str) -> int:
    """How much a split's image is worth keeping when it duplicates another split's (test highest)."""
    return KEEP_RANK.get(split.lower(), 1)


def check_clean_args(manifest: str | Path, drop: list[str] | None, relabel: bool, overwrite: bool,
                     out: str | Path | None = None, data: str | Path | None = None) -> list[str]:
    """The validated `drop` list (default: duplicates), checked before any work.

    Raises:
        ConfigError: an unknown `drop` item, `relabel` with labels dropped, or a manifest that is
            not a .csv, is the data, would be one of the audit's own files, or cannot be written
            (`safepath.output_file`: exists without `overwrite`, not a regular file, its folder
            not writable).
    """
    drop = ["duplicates"] if drop is None else [d.strip() for part in drop for d in part.split(",") if d.strip()]
    bad = [d for d in drop if d not in DROPPABLE]
    if bad:
        raise ConfigError(f"--drop {','.join(bad)}: choose from {', '.join(DROPPABLE)}")
    if relabel and "labels" in drop:
        raise ConfigError("--relabel gives the label issues their suggested label and --drop labels removes them; "
                          "choose one")
    p = Path(manifest)
    if p.suffix.lower() != ".csv":
        raise ConfigError(f"--write-manifest {p}: give a .csv file name")
    if data is not None and real_path(p) == real_path(data):
        raise ConfigError(f"--write-manifest {p}: that is the audited manifest; write the cleaned one beside it")
    if out is not None and p.resolve().parent == Path(out).resolve() and p.name in FILES:
        raise ConfigError(f"--write-manifest {p}: the audit writes its own {p.name} there; choose another name")
    try:
        output_file(p, overwrite, option="--write-manifest")  # here, not after the folds trained
    except CifarkitError as e:
        raise ConfigError(str(e)) from None
    return drop


def _data_folder(data: str | Path) -> Path:
    """The folder an image folder's or manifest's sources are relative to."""
    return Path(data) if Path(data).is_dir() else Path(data).parent


def check_images_folder(kind: str, manifest: str | Path, overwrite: bool, data: str | Path | None = None,
                        sources: list[str] | None = None) -> None:
    """Image folders and manifests: the clean manifest lists their files, so `data` must lie inside
    the manifest's folder (a manifest reads nothing outside it). CIFAR batches: the kept images go
    to `<manifest stem>_images/` beside the manifest; refuse, before any work, a folder there that
    overlaps `data`, is not empty without `overwrite`, or with it holds anything an earlier export
    did not write (`data.export.check_export_out`).

    Raises:
        ConfigError: the data lies outside the manifest's folder, a file name is not UTF-8 (a manifest
            is a UTF-8 CSV and could not name it), or the images folder is in the way.
    """
    if kind != "cifar":
        bad = next((f for f in sources or [] if printable(f) != f), None)
        if bad is not None:
            raise ConfigError(f"--write-manifest {manifest}: {_data_folder(data or '.') / printable(bad)} has a file "
                              "name that is not valid UTF-8, which a manifest (a UTF-8 CSV) cannot list; rename it "
                              "or leave --write-manifest out")
        if data is not None and not Within(Path(manifest).parent).holds(_data_folder(data)):
            raise ConfigError(f"--write-manifest {manifest}: a manifest lists only files inside its own folder, "
                              f"and {data} is not inside {Path(manifest).parent}; write it into "
                              f"{_data_folder(data)} or a folder above it")
        return
    folder = Path(manifest).parent / f"{Path(manifest).stem}_images"
    try:
        check_export_out(folder, overwrite, [data])
    except DataError as e:
        raise ConfigError(f"--write-manifest {manifest}: its images go to {e}") from None


def plan_changes(a: Audited, found: Findings, drop: list[str], relabel: bool
                 ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str, str]]]:
    """(keep mask (N,), new labels (N,), [(image, action, reason)]) for the chosen clean-up."""
    n = len(a.images)
    keep = np.ones(n, dtype=bool)
    labels = a.images.labels.copy()
    changes: list[tuple[int, str, str]] = []
    order = {s: (keep_rank(s), k) for k, s in enumerate(a.splits)}
    cls = a.images.classes

    def remove(i: int, reason: str) -> None:
        if keep[i]:
            keep[i] = False
            changes.append((i, "dropped", reason))

    if "duplicates" in drop:
        for i, j, d, kind in found.pairs:
            si, sj = a.split[i], a.split[j]
            if si == sj:
                gone, other = max(i, j), min(i, j)
            else:  # the split that ranks lower loses its copy
                gone, other = (i, j) if order[si] < order[sj] else (j, i)
            if keep[other]:  # a chain of copies keeps one
                src = f"{a.split[other]}:{a.images.sources[other]}#{int(a.images.indices[other])}"
                remove(gone, f"{kind} duplicate of {src} (distance {d:.4f})")
    if "outliers" in drop:
        for i, z in found.outliers:
            remove(i, f"outlier of class {cls[int(labels[i])]} (z {z:.1f})")
    for i in found.issues.tolist():
        given, sug = int(labels[i]), int(found.probs[i].argmax())
        why = f"label issue: given {cls[given]} (p {found.probs[i, given]:.3f}), suggested {cls[sug]}"
        if "labels" in drop:
            remove(i, why)
        elif relabel and keep[i]:
            labels[i] = sug
            changes.append((i, "relabelled", why))
    return keep, labels, changes


def write_clean_manifest(a: Audited, found: Findings, data: str | Path, manifest: str | Path, drop: list[str],
                         relabel: bool, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write the cleaned manifest and `out/changes.csv`; returns the counts (kept, dropped, relabelled per split)."""
    manifest = Path(manifest)
    keep, labels, changes = plan_changes(a, found, drop, relabel)
    ds = a.images
    rows: list[list[Any]] = []
    if a.kind == "cifar":
        folder = manifest.parent / f"{manifest.stem}_images"
        parts = {}
        for s in a.splits:
            idx = np.flatnonzero((a.split == s) & keep)
            parts[s] = dataclasses.replace(ds.subset(idx), labels=labels[idx], split=s)
        res = export_dataset(parts, folder, overwrite=overwrite, inputs=[data])
        with open(res.manifest, newline="", encoding="utf-8") as f:
            exported = [{k: csv_uncell(v) for k, v in r.items()} for r in csv.DictReader(f)]
        for r in exported:
            rows.append([r["split"], r["source"], r["index"], f"{folder.name}/{r['path']}", r["label_id"],
                         r["label_name"]])
    else:
        base, home = _data_folder(data), os.path.realpath(manifest.parent)
        for i in np.flatnonzero(keep).tolist():
            path = base / ds.sources[i]
            if not path.is_file():
                raise DataError(f"{path}: listed in {data} but not a file any more; run the audit again")
            y = int(labels[i])
            rel = os.path.relpath(os.path.realpath(path), home)  # inside: check_images_folder
            rows.append([a.split[i], ds.sources[i], int(ds.indices[i]), rel, y, ds.classes[y]])
    manifest.parent.mkdir(parents=True, exist_ok=True)
    write_csv(manifest, MANIFEST_COLUMNS, rows, "w" if overwrite else "x")
    write_csv(Path(out) / "changes.csv", ["split", "path", "index", "action", "reason", "label", "new_label"],
              [[a.split[i], ds.sources[i], int(ds.indices[i]), action, why, ds.classes[int(ds.labels[i])],
                ds.classes[int(labels[i])]] for i, action, why in changes])
    per = {s: {"kept": int(((a.split == s) & keep).sum()),
               "dropped": sum(1 for i, act, _ in changes if act == "dropped" and a.split[i] == s),
               "relabelled": sum(1 for i, act, _ in changes if act == "relabelled" and a.split[i] == s)}
           for s in a.splits}
    return {"path": str(manifest), "drop": drop, "relabel": relabel, "splits": per,
            "changes": str(Path(out) / "changes.csv")}
