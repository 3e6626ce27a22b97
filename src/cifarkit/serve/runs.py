"""The runs view's data: run directories under `--runs`, their curves and reports.

Clients never name a path. The server scans the runs folder itself and gives each run an id
(its path relative to the folder); a request names an id, which is looked up in the scan's own
table, so only files the server found under the folder can be served. Symlinks and anything
resolving outside the folder are left out of the scan.

Accuracies leave the server rounded to 2 decimals (`pct`), as the page prints them, so the API
and the page agree (no float32 noise such as 61.19999694824219 in the JSON).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifarkit.errors import CifarkitError
from cifarkit.logs import read_records

MAX_DEPTH = 3  # runs folder / group / run: deep enough for work_dirs/<experiment>/<run>
PCT_DECIMALS = 2  # accuracies [%] as the page prints them


def pct(value: Any) -> float | None:
    """An accuracy [%] rounded as the page shows it, or None when it is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return round(float(value), PCT_DECIMALS)


def eval_split(config: dict[str, Any], *recorded: Any) -> str:
    """The split a run's top-1 was measured on: the first name the log recorded, else what the
    config implies ("val" when data.val_fraction > 0, else data.test_split, "test" by default)."""
    for name in recorded:
        if isinstance(name, str) and name:
            return name
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    fraction = data.get("val_fraction")
    if isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and fraction > 0:
        return "val"
    test = data.get("test_split")
    return test if isinstance(test, str) and test else "test"


@dataclass
class Run:
    """One run directory found under the runs folder; `id` is the only handle a client gets."""
    id: str  # path relative to the runs folder, with "/" separators
    path: Path
    root: Path | None = None  # the runs folder it was found in (resolved)


def _inside(root: Path, p: Path) -> bool:
    return not p.is_symlink() and p.resolve().is_relative_to(root)


def served_file(run: Run, root: Path | None, name: str) -> Path | None:
    """`run/name` when it is a regular file that is itself no symlink and resolves inside `root`
    (the runs folder), else None: a link planted in a run directory never leads the server out.
    A hard link cannot be told from the file it links to; it is served (see the README)."""
    path = run.path / name
    try:
        if path.is_symlink() or not path.is_file():
            return None
        return path if path.resolve(strict=True).is_relative_to((root or run.path).resolve()) else None
    except OSError:
        return None


def find_runs(root: Path) -> dict[str, Run]:
    """Every folder under `root` (at most MAX_DEPTH deep) holding a `log.jsonl`, by id."""
    root = root.resolve()
    found: dict[str, Run] = {}
    level = [root]
    for _ in range(MAX_DEPTH + 1):
        nxt = []
        for d in level:
            log = d / "log.jsonl"
            if d != root and log.is_file() and _inside(root, log):
                rid = d.relative_to(root).as_posix()
                found[rid] = Run(rid, d, root)
            try:
                nxt += sorted(c for c in d.iterdir() if c.is_dir() and not c.name.startswith(".") and _inside(root, c))
            except OSError:
                continue
        level = nxt
    return found


def run_summary(run: Run) -> dict[str, Any]:
    """name (the config's `name`; the id is the folder), model, best top-1 [%] and the split it was
    measured on, date, whether it is still training, and whether it has a report."""
    log = run.path / "log.jsonl"
    info: dict[str, Any] = {"id": run.id, "name": run.id, "model": None, "best_top1": None, "split": None,
                            "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(log.stat().st_mtime)),
                            "running": False, "report": served_file(run, run.root, "report.html") is not None,
                            "error": None}
    try:
        rec = read_records(log)
    except CifarkitError as e:
        info["error"] = str(e)
        return info
    cfg = rec.header.get("config") if isinstance(rec.header.get("config"), dict) else {}
    if isinstance(cfg.get("name"), str) and cfg["name"].strip():
        info["name"] = cfg["name"].strip()[:200]  # the config's name ("demo"), not the folder's ("run")
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    info["model"] = model.get("name") if isinstance(model.get("name"), str) else None
    best = rec.summary.get("best_top1")
    tops = [v["top1"] for v in rec.val if v["top1"] is not None]
    info["best_top1"] = pct(best if isinstance(best, (int, float)) and best >= 0 else max(tops, default=None))
    info["split"] = eval_split(cfg, rec.summary.get("eval_split"), rec.header.get("eval_split"))
    info["running"] = not rec.summary  # the closing record is written when training ends
    return info


def run_curves(run: Run) -> dict[str, Any]:
    """Train and val records (iter, epoch, loss, top1, ...) for drawing the curves; top-1/top-5 rounded (`pct`)."""
    rec = read_records(run.path / "log.jsonl")
    def rounded(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, "top1": pct(r.get("top1")), "top5": pct(r.get("top5"))} for r in records]

    return {"id": run.id, "train": rounded(rec.train), "val": rounded(rec.val), "running": not rec.summary}
