"""Names from input become one safe path component; outputs stay inside the folder the user named.

Class names (`batches.meta`, a manifest's `label_name`), split names (a manifest's `split`) and
per-image file names (a batch's `filenames`) come from files nobody vouches for. Before any of
them touches the filesystem, `safe_component` maps it to one path component:

- injective: different names give different components, so nothing silently overwrites
  anything (two classes `a/b` and `a%2Fb` stay two folders);
- `%` and every character that is a separator, reserved on Windows or a control character
  become `%XX` (their UTF-8 bytes, upper-case hex), as in URL encoding;
- a leading `.` becomes `%2E` (so `.` / `..` / hidden names cannot appear; our folder reader
  skips hidden entries), a trailing `.` or space too (Windows drops them); a leading `__`
  becomes `%5F_`, because the folder reader also skips `__pycache__`-style names, so a class
  called `__init__` would vanish when an export is read back;
- the empty name becomes `%` alone (no encoded name is a bare `%`);
- longer than `MAX_COMPONENT` bytes: the first bytes plus `~` and 16 hex of the name's SHA-256
  (a literal `~` is always escaped, so a short name can never spell a shortened one).

Names that are already safe (every CIFAR-10/100 class, ordinary file names) come back unchanged.
The original name is always kept where it matters (the export's manifest has `label_name` and
`split` as given), so nothing is lost. `inside` is the last line of defence: it refuses any path
that would resolve outside its base folder. `write_text_atomic` replaces a file whole, so a
reader (or a second process writing the same file) never sees half of it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cifarkit.errors import DataError

MAX_COMPONENT = 120  # bytes; ext4/APFS/NTFS allow 255, leave room for suffixes such as "_12.png"
_RESERVED = set('/\\:*?"<>|%~') | {chr(c) for c in range(32)} | {"\x7f"}


def _quote(ch: str) -> str:
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))


def safe_component(name: object) -> str:
    """One safe, non-empty path component for `name` (see the module docstring); injective."""
    s = str(name)
    if s == "":
        return "%"
    out = [_quote(ch) if ch in _RESERVED or 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in s]
    if out[0] == "." or s.startswith("__"):
        out[0] = _quote(out[0])
    if out[-1] in (".", " "):
        out[-1] = _quote(out[-1])
    safe = "".join(out)
    raw = safe.encode("utf-8")
    if len(raw) > MAX_COMPONENT:
        digest = hashlib.sha256(s.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        head = raw[:MAX_COMPONENT - 17].decode("utf-8", "ignore")
        head = head[:head.rfind("%")] if "%" in head[-2:] else head  # never cut an escape in half
        safe = f"{head}~{digest}"
    return safe


def inside(base: str | Path, *parts: str) -> Path:
    """`base / parts...`, refused with a DataError if it would resolve outside `base`."""
    base_r = Path(base).resolve()
    p = base_r.joinpath(*parts).resolve()
    if p != base_r and base_r not in p.parents:
        raise DataError(f"{Path(*parts)}: would be written outside {base}; refused")
    return p


def output_dir(path: str | Path, overwrite: bool = False, flag: str = "--overwrite") -> Path:
    """Create the output folder `path`; an existing non-empty one is refused unless `overwrite`,
    so no earlier result in it is silently replaced."""
    from cifarkit.errors import CifarkitError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CifarkitError(f"{path}: exists and is not a folder; choose another output folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise CifarkitError(f"{path}: folder is not empty; pass {flag} to write into it or choose another")
    path.mkdir(parents=True, exist_ok=True)
    return path


def temp_beside(path: Path) -> Path:
    """A hidden temporary name next to `path`, this process's own (two processes may write the same
    file at once), keeping the suffix (matplotlib picks the format from it)."""
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through `temp_beside(path)` and one rename."""
    tmp = temp_beside(path)
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
