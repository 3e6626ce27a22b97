"""Readers stay inside the folder they were pointed at.

A dataset folder, a manifest's folder, a CIFAR batches folder or a folder given to `predict` is
the boundary of what cifarkit reads from it: a symlink in it that leads out (to `/usr/share`, to
someone's home) is not followed, and a manifest row naming a file outside its folder (through
`../`, an absolute path or a symlink) is refused. Otherwise `data stats` of a downloaded folder
holding `photos -> /home` reads the home folder, and an export or a trained model carries its
pixels away. Links that stay inside are fine (a dataset de-duplicated with symlinks keeps
working), and so is a folder that is itself a link: the boundary is the folder the user named,
resolved once.

`Within(root)` is the one test every reader uses. It compares real paths (`os.path.realpath`),
so `..`, absolute paths and chains of links are judged by where they end, not how they read.
"""

from __future__ import annotations

import os
from pathlib import Path

from cifarkit.errors import DataError


class Within:
    """The folder `root` (resolved once) as a boundary: which paths lead out of it."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.real = os.path.realpath(self.root)

    def target(self, path: str | Path) -> str:
        """Where `path` really is (links, `..` and relative parts resolved)."""
        return os.path.realpath(path)

    def holds(self, path: str | Path) -> bool:
        """Whether `path` resolves to the root or to something below it."""
        real = self.target(path)
        return real == self.real or real.startswith(self.real.rstrip(os.sep) + os.sep)

    def link_out(self, path: Path) -> bool:
        """Whether `path`, an entry found by listing a folder already inside the root, leads out:
        only a symlink can (the cheap test first, so a scan of 60,000 plain files costs one lstat each)."""
        return path.is_symlink() and not self.holds(path)

    def check(self, path: str | Path, what: str = "") -> None:
        """Refuse `path` unless it resolves inside the root.

        Raises:
            DataError: one sentence naming `path` (and `what` it is), where it leads and what to do.
        """
        if not self.holds(path):
            raise DataError(f"{what or path}: leads outside {self.root} (to {self.target(path)}); cifarkit reads "
                            f"only files inside the folder it was given: copy the file in, or point at a folder "
                            f"that holds it")
