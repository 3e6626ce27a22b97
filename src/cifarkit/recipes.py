"""The recipes shipped inside the package (`cifarkit/configs/*.yaml`), by name or path.

`pip install cifarkit` gives them too: `cifarkit configs` lists them, `cifarkit configs show fast`
prints one to copy and edit, and `cifarkit train fast` runs one like a path. A recipe is named
by its file name without `.yaml`, with or without the `cifar10_` prefix (`fast`,
`cifar10_fast`, `cifar10_fast.yaml`). A path that exists always wins over a recipe name.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from cifarkit.errors import ConfigError

PREFIX = "cifar10_"


def shipped_configs() -> dict[str, Path]:
    """Short name -> file of every shipped recipe, sorted by name."""
    folder = Path(str(resources.files("cifarkit").joinpath("configs")))
    files = sorted(folder.glob("*.yaml"))
    return {f.stem.removeprefix(PREFIX): f for f in files}


def describe(path: Path) -> str:
    """The first comment line of a recipe: what it is, in one line."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").rstrip()
    return ""


def resolve_config(name_or_path: str | Path) -> Path:
    """An existing file, else a shipped recipe's file; one sentence listing the recipes otherwise."""
    p = Path(name_or_path)
    if p.exists():
        return p
    shipped = shipped_configs()
    key = p.name.removesuffix(".yaml").removesuffix(".yml").removeprefix(PREFIX)
    if str(name_or_path) == p.name and key in shipped:
        return shipped[key]
    near = difflib.get_close_matches(key, list(shipped), n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise ConfigError(f"{name_or_path}: no such config file or shipped recipe{hint} (recipes: "
                      f"{', '.join(shipped)}; `cifarkit configs` lists them)")
