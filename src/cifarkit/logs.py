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

import bisect
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifarkit.errors import DataError


@dataclass
class RunRecords:
    """One run's log in the common record schema, whatever format it was read from.

    Attributes:
        name: the run's name, as plots label it.
        format: the detected format: "cifarkit", "mmcls" or "mmengine".
        train: the train records.
        val: the val records.
        header: the header record (ours, or MMCls's), or {}.
        summary: our run's closing record, if written.
    """
    name: str
    format: str
    train: list[dict[str, Any]] = field(default_factory=list)
    val: list[dict[str, Any]] = field(default_factory=list)
    header: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)  # ours: the run's closing record, if written

    @property
    def classes(self) -> list[str] | None:
        """The class names from the header (ours, or MMCls's `CLASSES`), or None."""
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


# numeric fields of every supported format: anything else in them (a string, a list, a bool, an
# int too large for a float) is dropped from its record, so plotting and reports only ever see
# numbers or None
_INT_FIELDS = ("epoch", "iter", "step")
_FLOAT_FIELDS = ("lr", "loss", "top1", "top5", "time", "data_time", "accuracy_top-1", "accuracy_top-5",
                 "accuracy/top1", "accuracy/top5", "seconds", "params", "num_train", "num_eval")


def _number(v: Any, integer: bool, finite: bool) -> float | int | None:
    """`v` as a number, or None when it is not one. Strings are read too: our own log writes
    non-finite losses as "nan"/"inf" (JSON has no such numbers); only a loss may be non-finite."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return None
    try:
        f = float(v)
    except (ValueError, OverflowError):
        return None
    if finite and not math.isfinite(f):
        return None
    if integer:
        return int(f) if f.is_integer() else None
    return f if isinstance(v, str) else v  # a number stays as written (an int stays an int)


def _clean(rec: dict[str, Any]) -> bool:
    """Drop malformed numeric fields from `rec` in place; True when something was dropped."""
    dropped = False
    for keys, integer in ((_INT_FIELDS, True), (_FLOAT_FIELDS, False)):
        for k in keys:
            if k in rec and rec[k] is not None:
                v = _number(rec[k], integer, finite=k != "loss")
                dropped |= v is None
                rec[k] = v
    # our header's config is a mapping; an MMCls 0.x header's is the config file's text
    for k, tp in (("config", (dict, str)), ("classes", list), ("CLASSES", list), ("versions", dict)):
        if k in rec and not isinstance(rec[k], tp):
            del rec[k]
            dropped = True
    return dropped


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every JSON object of a JSON-lines file: the one reader of log.jsonl / *.log.json /
    scalars.json. Torn, non-object and absurdly nested lines are skipped (a crash leaves a torn
    last line; the rest is still useful); numeric fields of the wrong type are dropped from their
    record. One `warning:` line on stderr says how many lines were affected."""
    path = Path(path)
    from cifarkit.userfile import MiB, read_user_text

    # a regular file only (a FIFO or a link to /dev/zero is one error), at most 1 GiB: a run that
    # logs every iteration writes ~100 bytes each, a few hundred MB for the longest
    text = read_user_text(path, "text log", 1024 * MiB, encoding="utf-8")
    return parse_jsonl(text, path)


def parse_jsonl(text: str, path: str | Path) -> list[dict[str, Any]]:
    """`read_jsonl` on text already read (`path` names it in the warning): for readers that take
    only part of a log, such as the server's bounded tail (`serve.runs`)."""
    out = []
    skipped = fixed = 0
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            skipped += 1
            continue
        if not isinstance(rec, dict):
            skipped += 1
            continue
        fixed += _clean(rec)
        out.append(rec)
    if skipped or fixed:
        what = [f"skipped {skipped} unreadable or non-object lines"] if skipped else []
        what += [f"ignored wrongly typed fields in {fixed} records"] if fixed else []
        print(f"warning: {path}: {' and '.join(what)}", file=sys.stderr)
    return out


def _lines(path: Path) -> list[dict[str, Any]]:
    out = read_jsonl(path)
    if not out:
        raise DataError(f"{path}: no JSON records found; expected log.jsonl, an MMCls *.log.json or scalars.json")
    return out


def detect_format(recs: list[dict[str, Any]]) -> str:
    """Which format a log's records are in, from their fields: "cifarkit", "mmcls" or "mmengine".

    Raises:
        DataError: the first records have no `type`, `mode` or `step` field.
    """
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


# training-set sizes of the datasets MMClassification configs name by type
_MMCLS_TRAIN_SIZES = {"CIFAR10": 50_000, "CIFAR100": 50_000, "MNIST": 60_000, "FashionMNIST": 60_000}


def mmcls_iters_per_epoch(header: dict[str, Any]) -> int | None:
    """Training iterations per epoch from an MMCls 0.x header, when its config says so exactly:
    a known dataset type (CIFAR10: 50,000 images) and `samples_per_gpu` on len(gpu_ids) GPUs.
    Its records cannot tell: MMCV logs every `interval` iterations and drops the epoch's last
    partial interval (the tutorial's log ends each epoch at 1560 of 1563)."""
    cfg = header.get("config")
    if not isinstance(cfg, str) or len(cfg) > 1 << 20:
        return None
    train = re.search(r"train\s*=\s*dict\(\s*type='(\w+)'", cfg)
    batch = re.search(r"samples_per_gpu\s*=\s*(\d+)", cfg)
    gpus = re.search(r"gpu_ids\s*=\s*range\(\s*0\s*,\s*(\d+)\s*\)", cfg)
    if not (train and batch) or train[1] not in _MMCLS_TRAIN_SIZES or int(batch[1]) < 1:
        return None
    world = int(gpus[1]) if gpus and int(gpus[1]) > 0 else 1
    return -(-_MMCLS_TRAIN_SIZES[train[1]] // (int(batch[1]) * world))


def read_records(path: str | Path, name: str | None = None, iters_per_epoch: int | None = None) -> RunRecords:
    """One log (ours, MMCls 0.x, MMEngine) as records with a global iteration axis.

    `iters_per_epoch` places MMCls 0.x epochs exactly (see `mmcls_iters_per_epoch`); without it
    and without a header that tells, each epoch counts up to its last logged iteration, so the
    axis may run behind by up to the log interval per epoch."""
    if iters_per_epoch is not None and iters_per_epoch < 1:
        raise DataError(f"--iters-per-epoch {iters_per_epoch}: must be >= 1")
    p = resolve_log(path)
    return records_from(_lines(p), p, name, iters_per_epoch)


def records_from(recs: list[dict[str, Any]], p: Path, name: str | None = None,
                 iters_per_epoch: int | None = None) -> RunRecords:
    """`read_records` on JSON records already read from log file `p` (`parse_jsonl`).

    Raises:
        DataError: no records, an unknown format, or no train or val records."""
    if not recs:
        raise DataError(f"{p}: no JSON records found; expected log.jsonl, an MMCls *.log.json or scalars.json")
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
            elif r.get("type") == "summary":
                out.summary = r
    elif fmt == "mmcls":
        header = next((r for r in recs if "env_info" in r or "CLASSES" in r), {})
        out.header = header
        # iterations per epoch: given, or from the header's config, else the last logged train
        # `iter` of each epoch (a val record's `iter` counts validation batches, not training ones)
        exact = iters_per_epoch or mmcls_iters_per_epoch(header)
        per_epoch: dict[int, int] = {}
        for r in recs:
            if r.get("mode") == "train" and r.get("epoch") is not None:
                per_epoch[r["epoch"]] = exact or max(per_epoch.get(r["epoch"], 0), r.get("iter") or 0)
        default = exact or max(per_epoch.values(), default=0)
        # global iteration offset of epoch e: the iterations of epochs 1..e-1 (an epoch that logged
        # nothing counts `default`); prefix sums, so a hostile epoch of 10^12 costs no loop
        known = sorted(e for e in per_epoch if e >= 1)
        prefix = [0]
        for e in known:
            prefix.append(prefix[-1] + per_epoch[e])

        def offset_of(ep: int) -> int:
            n = bisect.bisect_left(known, ep)
            return prefix[n] + default * max(0, ep - 1 - n)

        for r in recs:
            mode, ep = r.get("mode"), r.get("epoch")
            if mode not in ("train", "val") or ep is None:
                continue
            offset = offset_of(ep)
            if mode == "train":
                out.train.append(_rec("train", epoch=ep, iter=offset + (r.get("iter") or 0), lr=r.get("lr"),
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
    # records that cannot be placed on an axis (no iteration / no epoch) are left out
    out.train = [t for t in out.train if t["iter"] is not None]
    out.val = [v for v in out.val if v["epoch"] is not None]
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
