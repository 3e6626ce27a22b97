"""Checkpoints: written atomically, read without running code.

Save: temporary file in the same folder, flush + fsync, rename over the final name; a crash in
the middle never leaves a broken `last.pt`. Load: `torch.load(weights_only=True)`, which only
rebuilds tensors and plain containers; a file that asks for anything else is refused with one
sentence, and its code never runs.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from cifarkit.errors import CheckpointError


def atomic_save(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
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


def safe_torch_load(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint or weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        if m:
            raise CheckpointError(f"{path}: refused, it asks to import {m[1]}, which a weights file never "
                                  "needs (it may carry code); nothing from it was run") from None
        first = next((ln.strip() for ln in str(e).splitlines() if "error" in ln.lower()), str(e)[:160])
        raise CheckpointError(f"{path}: not a valid checkpoint ({first[:200]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError,
            AttributeError, TypeError, MemoryError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None


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
