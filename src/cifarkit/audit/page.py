"""audit.html: one self-contained page of an audit (images inlined, readable offline).

Counts per finding and split, then galleries of the first `SHOW` of each finding in rank order:
duplicate pairs side by side, label issues with the given and the suggested label and their
out-of-sample probabilities, the strongest outliers. Every name from the data (classes, splits,
paths) is HTML-escaped; the only script is the report's image-load counter the browser test reads.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from cifarkit.analysis.report import CSS, SCRIPT, img_tag, png_bytes
from cifarkit.saferead import printable

SHOW = 60  # images of each finding on the page (the CSV files have them all)
EXTRA_CSS = ".pair{display:flex;gap:2px}.pair img{width:50%}"


def _figure(imgs: list[np.ndarray], alt: str, caption: str) -> str:
    tags = "".join(img_tag(png_bytes(im), alt) for im in imgs)
    return f'<figure><div class="pair">{tags}</div><figcaption>{caption}</figcaption></figure>'


def write_page(path: Path, a: Any, pairs: list[tuple[int, int, float, str]], issues: np.ndarray, probs: np.ndarray,
               outliers: list[tuple[int, float]], scores: np.ndarray, summary: dict[str, Any]) -> Path:
    """Write audit.html for an audit's findings (see `audit.audit`)."""
    ds = a.images
    esc = html.escape
    cls = ds.classes

    def name(i: int) -> str:
        return esc(f"{a.split[i]}: {ds.sources[i]}" + (f" #{int(ds.indices[i])}" if a.kind == "cifar" else ""))

    c = summary["counts"]
    rows = []
    for s in a.splits:
        within = c["duplicate_pairs"].get(s, {"exact": 0, "near": 0})
        rows.append(f"<tr><td>{esc(s)}</td><td>{summary['splits'][s]:,}</td><td>{within['exact']}</td>"
                    f"<td>{within['near']}</td><td>{c['leaked'].get(s, 0)}</td><td>{c['label_issues'][s]}</td>"
                    f"<td>{c['outliers'][s]}</td></tr>")
    across = {k: v for k, v in c["duplicate_pairs"].items() if k not in a.splits}
    across_txt = "; ".join(f"{esc(k)}: {v['exact']} exact, {v['near']} near" for k, v in across.items()) or "none"
    sec = summary["seconds"]
    parts = [
        f"<h1>Data audit of {esc(str(summary['data']))}</h1>",
        f'<p class="note">{summary["folds"]}-fold cross-validation with {esc(str(summary["recipe"]))} '
        f'({summary["fold_epochs"]:.3g} epochs per fold; out-of-sample top-1 {summary["oos_top1"]:.2f}%), '
        f'near-duplicates at pixel similarity >= {summary["near_threshold"]:g}; '
        f'{sec["total"]:.0f} s on {esc(summary["cpu"])} ({esc(summary["cpu_kind"])}, {esc(summary["precision"])}). '
        f'classes: {esc(", ".join(map(str, cls)))}</p>',
        '<div class="scroll"><table><tr><th>split</th><th>images</th><th>exact duplicate pairs</th>'
        '<th>near-duplicate pairs</th><th>images with a copy in another split</th><th>label issues</th>'
        "<th>outliers</th></tr>" + "".join(rows) + "</table></div>",
        f"<p>pairs across splits: {across_txt}</p>",
        f"<h2>Duplicates (first {min(SHOW, len(pairs))} of {len(pairs)}, most similar first)</h2>",
        '<div class="gallery">' + "".join(
            _figure([ds.images[i], ds.images[j]], "duplicate pair",
                    f"{kind}, distance {d:.4f}<br>{name(i)}<br>{name(j)}")
            for i, j, d, kind in pairs[:SHOW]) + "</div>",
        f"<h2>Label issues (first {min(SHOW, len(issues))} of {len(issues)}, most likely wrong first)</h2>",
        '<div class="gallery">' + "".join(
            _figure([ds.images[i]], "label issue",
                    f"given <b>{esc(cls[int(ds.labels[i])])}</b> (p {probs[i, int(ds.labels[i])]:.3f}), suggested "
                    f"<b>{esc(cls[int(probs[i].argmax())])}</b> (p {probs[i].max():.3f})<br>{name(i)}")
            for i in issues[:SHOW].tolist()) + "</div>",
        f"<h2>Outliers (first {min(SHOW, len(outliers))} of {len(outliers)}, farthest from their class first)</h2>",
        '<div class="gallery">' + "".join(
            _figure([ds.images[i]], "outlier",
                    f"{esc(cls[int(ds.labels[i])])}, score {scores[i]:.3f} (z {z:.1f})<br>{name(i)}")
            for i, z in outliers[:SHOW]) + "</div>",
        '<p class="note">All findings, ranked: duplicates.csv, label_issues.csv, outliers.csv beside this '
        "page.</p>",
    ]
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>data audit — cifarkit</title><style>{CSS}{EXTRA_CSS}</style>"
            f"<script>{SCRIPT}</script></head><body><main>{''.join(parts)}</main></body></html>")
    path.write_text(printable(page), encoding="utf-8")  # a non-UTF-8 file name's bytes as \xff escapes
    return path
