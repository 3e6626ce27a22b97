"""What an audit finds and writes, shared by `audit.audit` (which finds it) and `audit.clean`
(which acts on it): the audited set, the findings, the output file names and the CSV writer.
Both import from here, so the imports between them go one way (audit -> clean -> findings).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifarkit.data.imageset import ImageSet
from cifarkit.safecsv import csv_row
from cifarkit.safepath import write_text_atomic

FILES = ("duplicates.csv", "label_issues.csv", "outliers.csv", "audit.json", "audit.html", "embeddings.npy",
         "probs.npy", "changes.csv")
OUTPUTS = (*FILES, "folds")  # everything an audit writes in its --out (folds/: the folds' runs)


@dataclass
class Audited:
    """The audited images: every split in one `ImageSet`, with each image's split name."""
    images: ImageSet
    split: np.ndarray  # (N,) split name per image
    splits: list[str]
    kind: str  # "cifar", "folder" or "manifest"


@dataclass
class Findings:
    """What an audit found, for acting on it in the same process (`clean.write_clean_manifest`)."""
    pairs: list[tuple[int, int, float, str]]
    issues: np.ndarray
    probs: np.ndarray
    outliers: list[tuple[int, float]]
    scores: np.ndarray


def write_csv(path: Path, header: list[str], rows: list[list[Any]], mode: str = "x") -> None:
    """A CSV of the audit's: `header`, then `rows` with formula-like cells defused (names come from
    the data); mode "x" (the default) refuses an existing file, "w" replaces it atomically."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(csv_row(r) for r in rows)
    if mode == "x":
        with open(path, "x", newline="", encoding="utf-8") as f:
            f.write(buf.getvalue())
    else:  # replacing: through a temporary file and a rename, never by opening what is there
        write_text_atomic(path, buf.getvalue())
