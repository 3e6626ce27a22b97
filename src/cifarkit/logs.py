"""Read training logs of any supported format into one record schema.

Formats, detected by content (not by file name):
- ours: `log.jsonl` (header line `{"type": "header", ...}`, then `train` / `val` records);
- MMClassification 0.x `*.log.json` (header with `env_info`/`config`/`CLASSES`, then
  `mode: train` records whose `iter` counts within the epoch, and `mode: val` records with
  `accuracy_top-1` / `accuracy_top-5`);
- MMEngine / MMPretrain `vis_data/scalars.json` (train lines with `step` = global iteration,
  val lines with `accuracy/top1`).

Every record comes out as {mode, epoch, iter (global), lr, loss, top1, top5, time} (missing
values are None), so plotting never cares where a run came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifarkit.errors import DataError


@dataclass
class RunRecords:
    name: str
    format: str
    train: list[dict[str, Any]] = field(default_factory=list)
    val: list[dict[str, Any]] = field(default_factory=list)
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str] | None:
        return self.header.get("classes") or self.header.get("CLASSES")


def resolve_log(path: str | Path) -> Path:
    """A run directory -> its log file; a file -> itself."""
    p = Path(path)
    if p.is_dir():
        for cand in ("log.jsonl", "vis_data/scalars.json", "scalars.json"):
            if (p / cand).is_file():
                return p / cand
        found = sorted(p.glob("*.log.json")) + sorted(p.glob("*/vis_data/scalars.json"))
        if found:
            return found[-1]
        raise DataError(f"{p}: no log.jsonl, *.log.json or vis_data/scalars.json in this folder")
    if not p.is_file():
        raise DataError(f"{p}: no such log file or run directory")
    return p


def _lines(path: Path) -> list[dict[str, Any]]:
    out = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read as a text log ({e})") from None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn line from a crash; the rest is still useful
        if isinstance(rec, dict):
            out.append(rec)
    if not out:
        raise DataError(f"{path}: no JSON records found; expected log.jsonl, an MMCls *.log.json or scalars.json")
    return out


def detect_format(recs: list[dict[str, Any]]) -> str:
    if any(r.get("type") in ("header", "train", "val") for r in recs[:5]):
        return "cifarkit"
    if any("mode" in r for r in recs[:50]) or any("env_info" in r for r in recs[:2]):
        return "mmcls"
    if any("step" in r for r in recs[:50]):
        return "mmengine"
    raise DataError("unrecognised log format: no 'type', 'mode' or 'step' fields in the first records")


def _rec(mode: str, **kw: Any) -> dict[str, Any]:
    base = {"mode": mode, "epoch": None, "iter": None, "lr": None, "loss": None, "top1": None, "top5": None,
            "time": None}
    base.update({k: v for k, v in kw.items() if k in base})
    return base


def read_records(path: str | Path, name: str | None = None) -> RunRecords:
    p = resolve_log(path)
    recs = _lines(p)
    fmt = detect_format(recs)
    stem = p.name.removesuffix(".log.json").removesuffix(".jsonl").removesuffix(".json")
    run_name = name or (p.parent.name if p.name in ("log.jsonl", "scalars.json") else stem)
    if p.name == "scalars.json" and p.parent.name == "vis_data":
        run_name = name or p.parent.parent.parent.name
    out = RunRecords(run_name, fmt)
    if fmt == "cifarkit":
        for r in recs:
            if r.get("type") == "header":
                out.header = r
            elif r.get("type") == "train":
                out.train.append(_rec("train", **r))
            elif r.get("type") == "val":
                out.val.append(_rec("val", **r))
    elif fmt == "mmcls":
        header = next((r for r in recs if "env_info" in r or "CLASSES" in r), {})
        out.header = header
        # iterations per epoch: the last logged train `iter` of each epoch (a val record's `iter`
        # counts validation batches, not training ones)
        per_epoch: dict[int, int] = {}
        for r in recs:
            if r.get("mode") == "train" and r.get("epoch") is not None:
                per_epoch[r["epoch"]] = max(per_epoch.get(r["epoch"], 0), int(r.get("iter", 0)))
        default = max(per_epoch.values(), default=0)
        for r in recs:
            mode, ep = r.get("mode"), r.get("epoch")
            if mode not in ("train", "val") or ep is None:
                continue
            offset = sum(per_epoch.get(e, default) for e in range(1, ep))
            if mode == "train":
                out.train.append(_rec("train", epoch=ep, iter=offset + r.get("iter", 0), lr=r.get("lr"),
                                      loss=r.get("loss"), time=r.get("time")))
            else:
                out.val.append(_rec("val", epoch=ep, iter=offset + per_epoch.get(ep, default), lr=r.get("lr"),
                                    top1=r.get("accuracy_top-1"), top5=r.get("accuracy_top-5"), loss=r.get("loss")))
    else:  # mmengine scalars.json
        for r in recs:
            if "loss" in r:
                out.train.append(_rec("train", epoch=r.get("epoch"), iter=r.get("step"), lr=r.get("lr"),
                                      loss=r.get("loss"), time=r.get("time")))
            elif any(k.startswith("accuracy/") for k in r):
                # epoch-based runners log val at step == epoch
                out.val.append(_rec("val", epoch=r.get("epoch", r.get("step")), iter=None,
                                    top1=r.get("accuracy/top1"), top5=r.get("accuracy/top5")))
        iters_by_epoch: dict[int, int] = {}
        for t in out.train:
            if t["epoch"] is not None and t["iter"] is not None:
                iters_by_epoch[t["epoch"]] = max(iters_by_epoch.get(t["epoch"], 0), t["iter"])
        for v in out.val:
            v["iter"] = iters_by_epoch.get(v["epoch"])
    for t in out.train:  # "nan"/"inf" strings written for non-finite losses
        if isinstance(t["loss"], str):
            t["loss"] = float(t["loss"])
    if not out.train and not out.val:
        raise DataError(f"{p}: the log holds no train or val records")
    return out


def read(path: str | Path):
    """All records of a log as a pandas DataFrame (columns: mode, epoch, iter, lr, loss, top1, top5, time)."""
    try:
        import pandas as pd
    except ImportError:
        raise DataError("cifarkit.logs.read needs pandas: pip install 'cifarkit[pandas]'") from None
    r = read_records(path)
    df = pd.DataFrame(r.train + r.val)
    df.insert(0, "run", r.name)
    return df
