"""Open the files a user names (configs, space files, CSV lists, journals, stdin) without hanging or
filling memory.

Every file a command reads because the user named it goes through here, so a hostile or mistaken
path is refused the same way everywhere, before any memory or time is spent on it:

- only a regular file (after symlinks) is opened: a FIFO would block `open` until someone writes
  to it (for ever, in a script), a device such as /dev/zero never ends, a folder or socket is
  never a file. The kind is checked with `stat` before opening and again with `fstat` on what was
  opened (opened with O_NONBLOCK, so a FIFO swapped in between cannot block the open either);
- at most `max_bytes` are ever read (`read_user_bytes` reads max + 1 to notice more), and
  `open_user_file` refuses a file whose size is already over the bound;
- every refusal is one `DataError` (or the caller's error class, e.g. `ConfigError` for config
  and space files) naming the path, what it should have been and what to do.

`read_user_lines` bounds a stream that cannot be checked by kind (stdin, which may be a pipe fed
from /dev/zero): a cap on the number of lines and on each line's length.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import IO

from cifarkit.errors import CifarkitError, DataError

MiB = 1 << 20


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, in words, for an error line (`mode` from stat or
    lstat): every reader and writer that refuses special files names them the same way."""
    return ("a symbolic link" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode)
            else "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")


def _size(n: int) -> str:
    return f"{n / MiB:g} MiB" if n >= MiB else f"{n:,} bytes"


def check_user_file(path: str | Path, what: str, error: type[CifarkitError] = DataError,
                    missing_ok: bool = False) -> os.stat_result | None:
    """Refuse `path` unless it is a regular file (symlinks followed), without opening it.

    Args:
        path: the file the user named.
        what: what it should be, for the message ("config file", "duplicates.csv", ...).
        error: the exception class raised.
        missing_ok: a path that does not exist is fine (returns None): a file a library will create.

    Returns:
        Its stat, or None when it is missing and `missing_ok`.

    Raises:
        error: it is missing (unless `missing_ok`), unreadable, or a FIFO, device, socket or folder.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise error(f"{path}: no such {what}") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the name
        raise error(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: is {file_kind(st.st_mode)}, not a {what}; give the path of the file itself")
    return st


def open_user_file(path: str | Path, what: str, max_bytes: int, error: type[CifarkitError] = DataError,
                   encoding: str | None = "utf-8", newline: str | None = None) -> IO:
    """Open a regular file the user named, refusing other kinds and one over `max_bytes` (by its size).

    For readers that stream (csv); `read_user_bytes` / `read_user_text` read the whole file.
    `encoding=None` opens it in binary.

    Raises:
        error: as `check_user_file`, or it is larger than `max_bytes`.
    """
    check_user_file(path, what, error)
    try:
        # O_NONBLOCK: if a FIFO replaced the file since the stat, opening it returns at once
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: is {file_kind(st.st_mode)}, not a {what}; give the path of the file itself")
        if st.st_size > max_bytes:
            raise error(f"{path}: larger than {_size(max_bytes)} ({_size(st.st_size)}), which no {what} is; "
                        "check the path")
        os.set_blocking(fd, True)  # no effect on a regular file's reads; restores ordinary semantics
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    if encoding is None:
        return f
    return io.TextIOWrapper(f, encoding=encoding, newline=newline)


def read_user_bytes(path: str | Path, what: str, max_bytes: int, error: type[CifarkitError] = DataError) -> bytes:
    """The whole file, at most `max_bytes` (a file that grew past it since the check is refused too).

    Raises:
        error: as `open_user_file`.
    """
    with open_user_file(path, what, max_bytes, error, encoding=None) as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise error(f"{path}: cannot be read ({e.strerror or e})") from None
    if len(data) > max_bytes:
        raise error(f"{path}: larger than {_size(max_bytes)}, which no {what} is; check the path")
    return data


def read_user_text(path: str | Path, what: str, max_bytes: int, error: type[CifarkitError] = DataError,
                   encoding: str = "utf-8-sig") -> str:
    """`read_user_bytes` decoded (default UTF-8, a spreadsheet's byte-order mark dropped).

    Raises:
        error: as `read_user_bytes`, or the bytes are not text in `encoding`.
    """
    data = read_user_bytes(path, what, max_bytes, error)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise error(f"{path}: not a {what} (not {encoding.removesuffix('-sig').upper()} text at byte "
                    f"{e.start})") from None


def read_user_lines(stream: IO[str], what: str, max_lines: int, max_line: int = 4096,
                    error: type[CifarkitError] = DataError) -> list[str]:
    """The non-empty, stripped lines of `stream` (stdin), refusing more than `max_lines` or a line
    longer than `max_line` characters: a pipe from /dev/zero ends in one error, not a MemoryError.

    Raises:
        error: too many lines, or one too long.
    """
    out: list[str] = []
    while True:
        line = stream.readline(max_line + 1)  # bounded: never a whole endless "line"
        if not line:
            return out
        if len(line) > max_line and not line.endswith("\n"):
            raise error(f"{what}: a line longer than {max_line:,} characters, which no path is; check what is "
                        "piped in")
        line = line.strip()
        if line:
            if len(out) >= max_lines:
                raise error(f"{what}: more than {max_lines:,} lines; split the list into several runs")
            out.append(line)
