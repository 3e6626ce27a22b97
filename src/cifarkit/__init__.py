"""cifarkit: from the raw CIFAR-10 download to a trained, explained image classifier.

The notebook API and the CLI share one code path: every `cifarkit <command>` is a thin wrapper
over a function importable from here or from the subpackages. Heavy imports (torch) are deferred
so that `import cifarkit` and `cifarkit --help` stay instant.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__version__ = "0.1.0"


def cache_dir() -> Path:
    """Where cifarkit keeps what it can rebuild (decoded image folders, model sizes):
    `$CIFARKIT_CACHE`, default `~/.cache/cifarkit`. Here, below every package, because data
    and models both keep files in it."""
    return Path(os.environ.get("CIFARKIT_CACHE", Path.home() / ".cache" / "cifarkit"))


# name -> module that defines it; resolved on first attribute access (PEP 562)
_LAZY = {
    "read_cifar": "cifarkit.data.cifar",
    "open_cifar": "cifarkit.data.cifar",
    "to_dataframe": "cifarkit.data.cifar",
    "load_dataset": "cifarkit.data.sources",
    "ImageSet": "cifarkit.data.imageset",
    "export_dataset": "cifarkit.data.export",
    "create_model": "cifarkit.models",
    "list_models": "cifarkit.models",
    "load_config": "cifarkit.config",
    "fit": "cifarkit.engine.train",
    "evaluate_checkpoint": "cifarkit.infer.inference",
    "load": "cifarkit.predict",
    "show_result": "cifarkit.predict",
}


_SUBMODULES = {"logs", "data", "models", "infer", "engine", "analysis", "predict", "cam", "export", "config", "tune",
               "options"}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"cifarkit.{name}")
    raise AttributeError(f"module 'cifarkit' has no attribute {name!r}")


__all__ = ["__version__", "cache_dir", *_LAZY]
