"""Checkpoints: written atomically, read without running code.

Save: temporary file in the same folder, flush + fsync, rename over the final name; a crash in
the middle never leaves a broken `last.pt`. Load: `torch.load(weights_only=True)`, which only
rebuilds tensors and plain containers; a file that asks for anything else is refused with one
sentence, and its code never runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from cifarkit.config import Config
from cifarkit.errors import CheckpointError
from cifarkit.safeload import safe_torch_load
from cifarkit.safepath import temp_beside

__all__ = ["atomic_save", "check_resume_compatible", "load_checkpoint", "newest_valid_checkpoint",
           "safe_torch_load"]


def atomic_save(obj: Any, path: str | Path) -> Path:
    """`torch.save` `obj` to `path` so that a crash leaves the old file or the new one, never a torn one.

    Written to a hidden temporary file in the same folder, fsynced and renamed over `path`; the
    folder is fsynced too, so the rename itself survives a power loss. Returns `path`."""
    path = Path(path)
    tmp = temp_beside(path)  # random, created exclusively: nothing planted under its name is followed
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """One of our run checkpoints (a dict with `model`, `config`, `classes`, `preprocess`)."""
    ck = safe_torch_load(path)
    if not isinstance(ck, dict) or "model" not in ck or "config" not in ck:
        raise CheckpointError(f"{path}: not a cifarkit checkpoint (no 'model'/'config' entries); for "
                              "plain weights use model.pretrained instead")
    return ck


def newest_valid_checkpoint(run_dir: str | Path) -> Path | None:
    """The most recently written checkpoint in `run_dir` that loads cleanly."""
    cands = sorted(Path(run_dir).glob("*.pt"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for p in cands:
        if p.name == "best.pt":
            continue  # best.pt may be older than last.pt; resume continues the latest state
        try:
            ck = load_checkpoint(p)
        except CheckpointError:
            continue
        if "optimizer" in ck:
            return p
    return None


def check_resume_compatible(ck: dict[str, Any], cfg: Config, path: Path) -> None:
    """One sentence naming what differs, instead of a state-dict traceback."""
    old = ck.get("config", {}).get("model", {})
    for key, new in (("name", cfg.model.name), ("num_classes", cfg.model.num_classes)):
        if old.get(key) != new:
            raise CheckpointError(f"{path}: was trained with model.{key}={old.get(key)!r}, the config asks for "
                                  f"{new!r}; resume with the same model, or start a new --work-dir")
    if "optimizer" not in ck:
        raise CheckpointError(f"{path}: holds no optimizer state (an exported or best-only file?); resume from "
                              "last.pt or epoch_N.pt")
    groups = ck["optimizer"].get("param_groups", [])
    if cfg.optim.name == "muon" and not any(g.get("muon") for g in groups):
        raise CheckpointError(f"{path}: was trained with another optimizer than optim.name=muon")
