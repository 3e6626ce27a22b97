"""`cifarkit data inspect`: what is in a dataset path, per batch file or per split, as a dict."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from cifarkit.data.cifar import open_cifar
from cifarkit.data.folder import FileList, read_manifest, scan_folder, splits_of
from cifarkit.data.sources import describe_kind


def inspect_path(path: str | Path) -> dict[str, Any]:
    """Describe a dataset without decoding its images.

    Args:
        path: CIFAR batches (folder or `.tar.gz`), an image folder or a CSV manifest.

    Returns:
        A JSON-ready dict: path, kind, classes, total, and per batch (CIFAR: name, batch label,
        count, shape, class counts) or per split (folders and manifests: count, class counts,
        non-image files).

    Raises:
        DataError: the path is missing or a batch is malformed or hostile.
    """
    kind = describe_kind(path)
    if kind == "cifar":
        with open_cifar(path) as src:
            batches = [src.batch_info(name) for name in src.files("all")]
        totals: Counter = Counter()
        for b in batches:
            totals[b.split] += b.count
        return {
            "path": str(path), "kind": src.variant, "classes": src.classes,
            "batches": [vars(b) | {"shape": list(b.shape)} for b in batches],
            "totals": dict(totals), "total": sum(totals.values()),
        }
    if kind == "manifest":
        lists = {"": read_manifest(path)}
    else:
        splits = splits_of(path)
        lists = {s: scan_folder(path, s) for s in splits} if splits else {"": scan_folder(path)}
    out: dict[str, Any] = {"path": str(path), "kind": kind, "splits": {}}
    for s, fl in lists.items():
        out["classes"] = fl.classes
        out["splits"][s or "all"] = _file_list_summary(fl)
    out["total"] = sum(v["count"] for v in out["splits"].values())
    return out


def _file_list_summary(fl: FileList) -> dict[str, Any]:
    counts = Counter(fl.labels)
    return {"count": len(fl), "class_counts": {c: counts.get(i, 0) for i, c in enumerate(fl.classes)},
            "non_images": len(fl.non_images)}


def format_inspect(info: dict[str, Any]) -> str:
    """The text `cifarkit data inspect` prints for `inspect_path`'s result."""
    lines = [f"{info['path']}  ({info['kind']}, {len(info['classes'])} classes, {info['total']:,} images)"]
    lines.append("classes: " + ", ".join(info["classes"]))
    if "batches" in info:
        for b in info["batches"]:
            lines.append(f"  {b['file']:<14} {b['batch_label']!r:<26} {b['count']:>6,} images  "
                         f"data {tuple(b['shape'])} {b['dtype']}")
            lines.append("      " + "  ".join(f"{c}:{n}" for c, n in b["class_counts"].items()))
        lines.append("totals: " + ", ".join(f"{k} {v:,}" for k, v in info["totals"].items()))
    else:
        for s, v in info["splits"].items():
            extra = f", {v['non_images']} non-image files skipped" if v["non_images"] else ""
            lines.append(f"  {s:<8} {v['count']:>7,} images{extra}")
            lines.append("      " + "  ".join(f"{c}:{n}" for c, n in v["class_counts"].items()))
    return "\n".join(lines)
