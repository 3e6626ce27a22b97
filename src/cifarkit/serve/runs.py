"""The runs view's data: run directories under `--runs`, their curves and reports.

Clients never name a path. The server scans the runs folder itself and gives each run an id
(its path relative to the folder); a request names an id, which is looked up in the scan's own
table, so only files the server found under the folder can be served.

Every file is opened once, relative to a descriptor of the runs folder held for the server's
life (`RunsFolder`): each component is opened with O_NOFOLLOW, so a symlink anywhere on the way
(planted, or swapped in by another process between the scan and the open) is refused by the
kernel instead of followed, and what was opened is checked with `fstat` (a regular file only; a
FIFO is opened non-blocking and refused) and then read from that same descriptor. There is no
check-then-open-again window to race.

Logs are read in a bounded way (`read_log`): the header line from the first LOG_HEAD_BYTES and
the records in the last LOG_TAIL_BYTES, whatever the file's size (a 3.86 GB log.jsonl got the
server killed when it was read whole), at most MAX_POINTS train and val records kept for the
curves, and what was made of a log cached by its identity, size and mtime, so polling the list
re-reads only the logs that changed.

Accuracies leave the server rounded to 2 decimals (`pct`), as the page prints them, so the API
and the page agree (no float32 noise such as 61.19999694824219 in the JSON).
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifarkit.errors import CifarkitError, DataError
from cifarkit.logs import RunRecords, parse_jsonl, records_from
from cifarkit.safepath import safe_component

MAX_DEPTH = 3  # runs folder / group / run: deep enough for work_dirs/<experiment>/<run>
MAX_SCAN_DIRS = 10_000  # folders looked at per scan: a runs folder pointed at / still answers
PCT_DECIMALS = 2  # accuracies [%] as the page prints them
LOG_HEAD_BYTES = 1 << 20  # the header line (the run's config) must end within the first 1 MiB
LOG_TAIL_BYTES = 4 << 20  # the records shown: those in the last 4 MiB (~40,000 records; a whole 200-epoch run)
MAX_POINTS = 2000  # train (and val) records kept per log for the curves; more are thinned evenly
CHUNK = 1 << 18  # bytes per read when streaming a report

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO must not block the open


def pct(value: Any) -> float | None:
    """An accuracy [%] rounded as the page shows it, or None when it is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return round(float(value), PCT_DECIMALS)


def eval_split(config: dict[str, Any], *recorded: Any) -> str:
    """The split a run's top-1 was measured on: the first name the log recorded, else what the
    config implies ("val" when data.val_fraction > 0, else data.test_split, "test" by default)."""
    for name in recorded:
        if isinstance(name, str) and name:
            return name
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    fraction = data.get("val_fraction")
    if isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and fraction > 0:
        return "val"
    test = data.get("test_split")
    return test if isinstance(test, str) and test else "test"


# ---- opening files without following links ---------------------------------------------------
def _open_dir_beneath(root_fd: int, parts: list[str]) -> int:
    """A new descriptor of folder root/parts..., no component a symlink (OSError otherwise)."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            if part in ("", ".", ".."):
                raise OSError(f"{part!r} is not a plain name")
            nxt = os.open(part, _DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(name: str, dir_fd: int | None = None) -> int | None:
    """A read descriptor of `name` (relative to `dir_fd`) when it is a regular file that is no
    symlink, else None: opened with O_NOFOLLOW | O_NONBLOCK and checked with `fstat` on the opened
    descriptor, so what is read is what was checked."""
    try:
        if not stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            return None  # a device or FIFO is not even opened (opening some devices does something)
        fd = os.open(name, _FILE, dir_fd=dir_fd)
    except (OSError, ValueError):  # ELOOP: a symlink; ENOENT; ValueError: a NUL in the name
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for something else since the stat
        os.close(fd)
        return None
    return fd


def open_beneath(root_fd: int, parts: list[str]) -> int | None:
    """`open_regular` of root/parts... (["a", "b", "report.html"]) under the folder `root_fd`, walking
    every component with O_NOFOLLOW: None unless each folder on the way and the file itself is real."""
    *dirs, name = parts
    if name in ("", ".", ".."):
        return None
    try:
        fd = _open_dir_beneath(root_fd, dirs)
    except OSError:
        return None
    try:
        return open_regular(name, fd)
    finally:
        os.close(fd)


def read_at_most(fd: int, size: int, offset: int = 0) -> bytes:
    """Up to `size` bytes of `fd` from `offset` (fewer at its end)."""
    parts, got = [], 0
    while got < size:
        b = os.pread(fd, min(size - got, 1 << 20), offset + got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def stream_fd(fd: int) -> Iterator[bytes]:
    """The bytes of the opened file `fd` in CHUNK pieces, up to the size it had when opened (a file
    growing meanwhile does not stream for ever); closes `fd` when done or abandoned."""
    try:
        left = os.fstat(fd).st_size
        offset = 0
        while left > 0:
            b = os.pread(fd, min(CHUNK, left), offset)
            if not b:
                break
            offset += len(b)
            left -= len(b)
            yield b
    finally:
        os.close(fd)


def _is_regular(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _subfolders(fd: int) -> list[str]:
    """Sorted names of the real (not symlinked), not hidden folders in folder `fd`."""
    try:
        with os.scandir(fd) as it:
            return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
    except OSError:
        return []


# ---- the runs folder -------------------------------------------------------------------------
@dataclass
class Run:
    """One run directory found under the runs folder; `id` is the only handle a client gets."""
    id: str  # path relative to the runs folder, with "/" separators (`display_name` of each folder)
    path: Path  # the runs folder / id, for messages only: nothing is opened by this path
    parts: tuple[str, ...] = ()  # the folders' real names, from the runs folder down


def display_name(name: str) -> str:
    """A folder name as it appears in a run id: itself, unless it is not UTF-8 (Linux names are
    bytes; such a name cannot go into JSON or a URL), then `safe_component` of it (its odd bytes
    as %XX)."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return safe_component(name)


class RunsFolder:
    """The `--runs` folder, held open by descriptor; every run and file is found and opened
    relative to it (module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (OSError, ValueError):
            raise CifarkitError(f"--runs {path}: no such folder; give the folder holding your run "
                                "directories") from None

    def close(self) -> None:
        """Let go of the folder's descriptor (the server's shutdown)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def scan(self) -> dict[str, Run]:
        """Every folder under the runs folder (at most MAX_DEPTH deep, not hidden, no symlink on the
        way) holding a regular `log.jsonl`, by id, in sorted breadth-first order."""
        found: dict[str, Run] = {}
        level: list[tuple[str, ...]] = [()]
        seen = 0
        for depth in range(MAX_DEPTH + 1):
            nxt: list[tuple[str, ...]] = []
            for parts in level:
                seen += 1
                if seen > MAX_SCAN_DIRS:
                    return found
                try:
                    fd = _open_dir_beneath(self.fd, list(parts))
                except OSError:
                    continue  # gone, or swapped for a symlink since its parent was listed
                try:
                    rid = "/".join(display_name(p) for p in parts)
                    if parts and rid not in found and _is_regular("log.jsonl", fd):
                        found[rid] = Run(rid, self.path / rid, parts)
                    if depth < MAX_DEPTH:
                        nxt += [(*parts, n) for n in _subfolders(fd)]
                finally:
                    os.close(fd)
            level = nxt
        return found

    def open(self, run: Run, name: str) -> int | None:
        """A descriptor of the regular file `name` in `run` (`open_beneath`), or None."""
        return open_beneath(self.fd, [*run.parts, name])

    def has(self, run: Run, name: str) -> bool:
        """Whether `run` holds `name` as a regular file that `open` would serve."""
        fd = self.open(run, name)
        if fd is None:
            return False
        os.close(fd)
        return True


# ---- bounded log reading ---------------------------------------------------------------------
def read_log_lines(fd: int, name: str | Path) -> tuple[list[dict[str, Any]], bool]:
    """The JSON records of the log open as `fd` (`name` for messages), read in a bounded way: the
    whole file when it is at most LOG_HEAD_BYTES + LOG_TAIL_BYTES, else its first line (the header)
    and the whole lines of its last LOG_TAIL_BYTES; True when records in between were left out.

    Raises:
        DataError: not UTF-8 text."""
    size = os.fstat(fd).st_size
    cut = size > LOG_HEAD_BYTES + LOG_TAIL_BYTES
    if not cut:
        data = read_at_most(fd, size)
    else:
        head = read_at_most(fd, LOG_HEAD_BYTES)
        tail = read_at_most(fd, LOG_TAIL_BYTES + 1, size - LOG_TAIL_BYTES - 1)  # + the byte before it
        first = head[:head.find(b"\n") + 1] if b"\n" in head else b""  # a header over 1 MiB is left out
        data = first + tail[tail.find(b"\n") + 1:]  # the tail may start mid-line: drop up to the first end
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{name}: cannot be read as a text log ({e})") from None
    del data
    return parse_jsonl(text, name), cut


def read_log(fd: int, name: str | Path, most: int | None = None) -> tuple[RunRecords, bool]:
    """`read_log_lines` as records (`logs.records_from`); True when part of the log was left out.
    With `most`, train and val records are thinned to that many each (evenly, keeping the last).

    Raises:
        DataError: not UTF-8 text, or no usable records in what was read."""
    lines, cut = read_log_lines(fd, name)
    rec = records_from(lines, Path(name))
    if most is not None:
        rec.train, rec.val = thin(rec.train, most), thin(rec.val, most)
    return rec, cut


def thin(records: list[dict[str, Any]], most: int) -> list[dict[str, Any]]:
    """At most `most` of `records`, evenly spaced, always including the last one."""
    if len(records) <= most:
        return records
    step = len(records) / most
    picked = [records[int(i * step)] for i in range(most - 1)]
    return picked + [records[-1]]


class _Cache:
    """A small thread-safe LRU of what was made of a log, keyed by the opened file's identity,
    size and mtime (so a log that grows is read again, one that does not is not)."""

    def __init__(self, size: int):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key: tuple, make: Callable[[], Any]) -> Any:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = make()
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value


_SUMMARIES = _Cache(4096)  # a few hundred bytes each
_CURVES = _Cache(16)  # up to 2 x MAX_POINTS records each


def _log_key(fd: int, what: str) -> tuple:
    st = os.fstat(fd)
    return what, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def log_summary(fd: int, name: str | Path) -> dict[str, Any]:
    """What the runs list shows from a log open as `fd` (cached): name, model, best top-1 and its
    split, running, date, error (a sentence, when the log cannot be used)."""
    def make() -> dict[str, Any]:
        info: dict[str, Any] = {"name": None, "model": None, "best_top1": None, "split": None, "running": False,
                                "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(os.fstat(fd).st_mtime)),
                                "error": None}
        try:
            rec, _ = read_log(fd, name)
        except CifarkitError as e:
            info["error"] = str(e)
            return info
        cfg = rec.header.get("config") if isinstance(rec.header.get("config"), dict) else {}
        if isinstance(cfg.get("name"), str) and cfg["name"].strip():
            info["name"] = cfg["name"].strip()[:200]  # the config's name ("demo"), not the folder's ("run")
        model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
        info["model"] = model.get("name")[:200] if isinstance(model.get("name"), str) else None
        best = rec.summary.get("best_top1")
        tops = [v["top1"] for v in rec.val if v["top1"] is not None]
        info["best_top1"] = pct(best if isinstance(best, (int, float)) and best >= 0 else max(tops, default=None))
        info["split"] = eval_split(cfg, rec.summary.get("eval_split"), rec.header.get("eval_split"))
        info["running"] = not rec.summary  # the closing record is written when training ends
        return info

    return _SUMMARIES.get(_log_key(fd, str(name)), make)


def run_summary(folder: RunsFolder, run: Run) -> dict[str, Any]:
    """name (the config's `name`; the id is the folder), model, best top-1 [%] and the split it was
    measured on, date, whether it is still training, and whether it has a report."""
    info: dict[str, Any] = {"id": run.id, "name": run.id, "model": None, "best_top1": None, "split": None,
                            "date": None, "running": False, "report": folder.has(run, "report.html"),
                            "error": None}
    fd = folder.open(run, "log.jsonl")
    if fd is None:  # gone or swapped since the scan
        info["error"] = f"{run.id}/log.jsonl: no longer a regular file"
        return info
    try:
        found = log_summary(fd, f"{run.id}/log.jsonl")
    finally:
        os.close(fd)
    info.update({k: v for k, v in found.items() if v is not None or k != "name"})
    return info


def run_curves(folder: RunsFolder, run: Run) -> dict[str, Any]:
    """Train and val records (iter, epoch, loss, top1, ...) for drawing the curves; top-1/top-5 rounded
    (`pct`); `partial` when the log is longer than what is read of it (its last LOG_TAIL_BYTES).

    Raises:
        DataError: the log is gone or cannot be used."""
    fd = folder.open(run, "log.jsonl")
    if fd is None:
        raise DataError(f"run {run.id!r}: its log.jsonl is no longer a regular file")

    def rounded(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, "top1": pct(r.get("top1")), "top5": pct(r.get("top5"))} for r in records]

    def make() -> dict[str, Any]:
        rec, cut = read_log(fd, f"{run.id}/log.jsonl", MAX_POINTS)
        return {"train": rounded(rec.train), "val": rounded(rec.val), "running": not rec.summary, "partial": cut}

    try:
        return {"id": run.id, **_CURVES.get(_log_key(fd, run.id), make)}
    finally:
        os.close(fd)
