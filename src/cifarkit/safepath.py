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
- a Windows device name (`CON`, `PRN`, `AUX`, `NUL`, `COM1`-`COM9`, `LPT1`-`LPT9`, any case, with
  or without an extension: `nul.txt`, `Aux.tar.gz`) gets its first letter escaped (`%43ON`), since
  Windows opens the device instead of a file of that name;
- longer than `MAX_COMPONENT` bytes: the first bytes plus `~` and 16 hex of the name's SHA-256
  (a literal `~` is always escaped, so a short name can never spell a shortened one).

Names that are already safe (every CIFAR-10/100 class, ordinary file names) come back unchanged.
The original name is always kept where it matters (the export's manifest has `label_name` and
`split` as given), so nothing is lost. `inside` is the last line of defence: it refuses any path
that would resolve outside its base folder. `write_text_atomic` replaces a file whole, so a
reader (or a second process writing the same file) never sees half of it.

Outputs (issue #33): an output place is checked before any work and only ever replaces what
cifarkit itself wrote.

- `output_file`: a file the user named (`--out x.pt`, `--write-manifest m.csv`, derived siblings
  such as `x_reliability.png`) may be missing, or, with `--overwrite`, a regular file. A device,
  FIFO, socket, folder or symbolic link is refused in one line: writing through them would feed a
  device, block on a FIFO or replace a device node with a file (as root). Its folder must be
  creatable and writable (probed with a temporary file) before the work starts.
- `output_dir`: an output folder may not be, or be inside, one of the command's inputs (the
  data), nor contain one: `data audit DATA --out DATA` would add a class `folds` to the data and
  its `--overwrite` would clear the data's own `folds` class.
- `OUTPUTS_RECORD` (`OUT/.cifarkit-outputs.json`) lists, relative to the folder, each file and
  folder a command wrote there (`claim_outputs`, written atomically before the files). With
  `--overwrite` a command replaces or removes only entries listed there (`check_replaceable`,
  `remove_outputs`); a file of the same name that it did not write (a folder without a record, a
  file the user put there) is refused in one line, never deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cifarkit.errors import CifarkitError, DataError
from cifarkit.userfile import file_kind

MAX_COMPONENT = 120  # bytes; ext4/APFS/NTFS allow 255, leave room for suffixes such as "_12.png"
_RESERVED = set('/\\:*?"<>|%~') | {chr(c) for c in range(32)} | {"\x7f"}
# Windows device names: reserved whatever the case and whatever extension follows (`nul.txt`), and
# with trailing spaces before the extension (`CON .txt`); superscript digits count too
_DIGIT = "[1-9\u00b9\u00b2\u00b3]"
_WINDOWS_DEVICE = re.compile(rf"(?:CON|PRN|AUX|NUL|COM{_DIGIT}|LPT{_DIGIT}) *", re.IGNORECASE)
OUTPUTS_RECORD = ".cifarkit-outputs.json"


def _quote(ch: str) -> str:
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))


def safe_component(name: object) -> str:
    """One safe, non-empty path component for `name` (see the module docstring); injective."""
    s = str(name)
    if s == "":
        return "%"
    out = [_quote(ch) if ch in _RESERVED or 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in s]
    if out[0] == "." or s.startswith("__") or _WINDOWS_DEVICE.fullmatch(s.split(".", 1)[0]):
        out[0] = _quote(out[0])  # escaping one more character keeps the mapping injective (% is always escaped)
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


def _lstat(path: Path, option: str) -> os.stat_result | None:
    """`os.lstat(path)`, None when nothing is there; a file in place of a parent folder is one line."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise CifarkitError(f"{option} {path}: a part of the path is a file, not a folder; choose another place") \
            from None


def writable_place(folder: str | Path, option: str = "--out") -> None:
    """Refuse (one line) a `folder` that cannot be created, or written to, before any work: its
    nearest existing ancestor must be a folder where a file can be created (probed with a temporary
    file, which also catches read-only and pseudo file systems such as /proc, even for root)."""
    folder = Path(os.path.abspath(folder))
    probe = folder
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise CifarkitError(f"{option} {folder}: {probe} is a file, not a folder; choose another place")
    try:
        fd, name = tempfile.mkstemp(prefix=".cifarkit-probe-", dir=probe)
    except OSError as e:
        raise CifarkitError(f"{option} {folder}: cannot write in {probe} ({e.strerror}); choose a place you may "
                            "write to") from None
    os.close(fd)
    os.unlink(name)


def output_file(path: str | Path, overwrite: bool = False, flag: str | None = "--overwrite",
                option: str = "--out") -> Path:
    """Check the output file `path` before any work: nothing there, or with `overwrite` a regular
    file (not a symbolic link); a device, FIFO, socket, folder or link is refused in one line, and
    its folder must be writable (`writable_place`). `flag`: the option that allows replacing (None:
    the command has none). Write it with `temp_beside` + rename (or
    `write_text_atomic`), never by opening `path` itself.

    Raises:
        CifarkitError: `path` cannot be (re)written."""
    path = Path(path)
    st = _lstat(path, option)
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise CifarkitError(f"{option} {path}: is {file_kind(st.st_mode)}; cifarkit writes only new or regular "
                                "files, so give a new file name")
        if not overwrite:
            fix = f"pass {flag} to replace it or choose another name" if flag else "choose another name"
            raise CifarkitError(f"{option} {path}: exists; {fix}")
    writable_place(path.parent, option)
    return path


def real_path(path: str | Path) -> Path:
    """`path` with every symbolic link resolved (missing parts kept as given)."""
    return Path(os.path.realpath(path))


def check_apart(out: str | Path, inputs: Iterable[str | Path | None], option: str = "--out") -> None:
    """Refuse an output place that is one of `inputs` (the data a command reads), lies inside one, or
    holds one: writing there adds files to the data (a class `folds`), and `--overwrite` would
    clear them. Symbolic links are resolved on both sides.

    Raises:
        CifarkitError: `out` and an input overlap."""
    o = real_path(out)
    for i in inputs:
        if i is None:
            continue
        r = real_path(i)
        if o == r:
            raise CifarkitError(f"{option} {out}: that is the input {i}; choose an output place outside the data")
        if r in o.parents:
            raise CifarkitError(f"{option} {out}: is inside the input {i}; choose an output place outside the data")
        if o in r.parents:
            raise CifarkitError(f"{option} {out}: holds the input {i}; choose an output place that does not "
                                "contain the data")


def output_dir(path: str | Path, overwrite: bool = False, flag: str = "--overwrite",
               inputs: Iterable[str | Path | None] = (), writes: Iterable[str] = (), option: str = "--out",
               create: bool = True) -> Path:
    """Check (and with `create`, create) the output folder `path` before any work.

    Refused: a folder that is or overlaps one of `inputs` (`check_apart`), something that is not a
    folder, a non-empty folder unless `overwrite`, an unwritable place (`writable_place`), and with
    `overwrite` any of the names in `writes` (the command's own file names) already there but not
    written by cifarkit (`check_replaceable`)."""
    path = Path(path)
    check_apart(path, inputs, option)
    st = _lstat(path, option)
    if st is not None and not path.is_dir():
        raise CifarkitError(f"{option} {path}: exists and is not a folder; choose another output folder")
    if st is not None and any(path.iterdir()):
        if not overwrite:
            raise CifarkitError(f"{option} {path}: folder is not empty; pass {flag} to write into it or choose "
                                "another")
        check_replaceable(path, writes, option)
    writable_place(path, option)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def recorded_outputs(folder: str | Path) -> set[str]:
    """The relative paths `OUTPUTS_RECORD` in `folder` lists (empty without a readable record)."""
    p = Path(folder) / OUTPUTS_RECORD
    try:
        if not stat.S_ISREG(os.lstat(p).st_mode) or os.lstat(p).st_size > 16 << 20:
            return set()
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return set()
    entries = data.get("outputs") if isinstance(data, dict) else None
    return {e for e in entries if isinstance(e, str)} if isinstance(entries, list) else set()


def claim_outputs(folder: str | Path, names: Iterable[str], command: str = "cifarkit") -> None:
    """Add `names` (paths relative to `folder`) to its `OUTPUTS_RECORD`, atomically; call it before
    writing them, so an interrupted command's files are still known as its own."""
    folder = Path(folder)
    have = recorded_outputs(folder)
    want = have | {str(n) for n in names}
    if want != have or not (folder / OUTPUTS_RECORD).exists():
        write_text_atomic(folder / OUTPUTS_RECORD,
                          json.dumps({"written_by": command, "outputs": sorted(want)}, indent=0))


def check_replaceable(folder: str | Path, names: Iterable[str], option: str = "--out") -> None:
    """Refuse (one line) if any of `names` exists in `folder` without being listed in its
    `OUTPUTS_RECORD`, or is a symbolic link or special file: `--overwrite` replaces only what
    cifarkit wrote there."""
    folder = Path(folder)
    own = recorded_outputs(folder)
    for n in names:
        p = folder / n
        st = _lstat(p, option)
        if st is None:
            continue
        if n not in own:
            raise CifarkitError(f"{option} {folder}: {n} there was not written by cifarkit (it is not listed in "
                                f"{OUTPUTS_RECORD}), so --overwrite will not replace it; move it away or choose "
                                "another folder")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise CifarkitError(f"{option} {p}: is {file_kind(st.st_mode)}; move it away or choose another folder")


def remove_outputs(folder: str | Path, names: Iterable[str]) -> None:
    """Remove those of `names` in `folder` that its `OUTPUTS_RECORD` lists (a file, or a folder the
    command created, with its content); anything else is left alone."""
    folder = Path(folder)
    own = recorded_outputs(folder)
    for n in names:
        if n not in own:
            continue
        p = folder / n
        st = _lstat(p, "--out")
        if st is None:
            continue
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(p)
        elif stat.S_ISREG(st.st_mode):
            p.unlink()


def temp_beside(path: Path) -> Path:
    """A new, empty, hidden file next to `path` to write and then rename onto it, keeping the suffix
    (matplotlib picks the format from it). Its name is random and it is created here with
    `O_CREAT | O_EXCL | O_NOFOLLOW`, so nobody can plant a symlink or FIFO under the name in advance
    (a predictable name was: the write followed the link out of the folder, or blocked on the
    FIFO); two processes writing the same file get two temporary files."""
    for _ in range(8):
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(6)}.tmp{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
            return tmp
        except FileExistsError:
            continue
    raise CifarkitError(f"{path.parent}: cannot create a temporary file there; something keeps taking the names")


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through `temp_beside(path)` and one rename."""
    tmp = temp_beside(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
