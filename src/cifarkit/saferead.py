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

Names on Linux are bytes. A file name that is not UTF-8 (`x\xfe.png`) comes to Python with lone
surrogates (surrogateescape) and is read like any other; `printable` is its text form wherever a
name is written as text (CSV cells, figures), since UTF-8 encoders refuse lone surrogates. A
class or split folder name that is not UTF-8 is refused by name (`check_text_name`): class names
go into checkpoints, figures, HTML pages and CSV files, which all need text.
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


def printable(text: str) -> str:
    """`text` with the bytes of a non-UTF-8 name (lone surrogates) written as `\\xff` escapes; other
    text unchanged."""
    if not any("\ud800" <= ch <= "\udfff" for ch in text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name decodes to (from surrogatepass)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_text_name(path: Path, what: str) -> None:
    """Refuse a folder whose name becomes a class or split name unless it is valid UTF-8.

    Raises:
        DataError: one sentence naming the folder (bytes escaped) and what to do.
    """
    if printable(path.name) != path.name:
        raise DataError(f"{printable(str(path))}: the {what} name is not valid UTF-8 (bytes shown as \\x..); "
                        f"rename the folder, since {what} names go into checkpoints, figures and CSV files")
