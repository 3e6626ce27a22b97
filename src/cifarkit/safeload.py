"""`safe_torch_load`: read a torch file without running code in it.

`torch.load(weights_only=True)` only rebuilds tensors and plain containers; a file that asks
for anything else is refused with one sentence naming what it asked for, and a truncated or
corrupt file is one `CheckpointError`. It sits below models and engine because both read
weights files with it (pretrained weights, run checkpoints).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from cifarkit.errors import CheckpointError


def safe_torch_load(path: str | Path) -> Any:
    """Load a torch file onto the CPU with `weights_only=True`: tensors and plain containers only.

    Args:
        path: a checkpoint or weights file.

    Returns:
        What the file holds (a state dict, or a checkpoint dict).

    Raises:
        CheckpointError: the file is missing; it asks to import a global (it may carry code; none of
            it runs); or it is truncated or corrupt.
    """
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
