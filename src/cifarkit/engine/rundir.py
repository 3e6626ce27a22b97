"""Who may write a run directory, and what happens to an earlier run found in it.

Two runs writing one directory tear `log.jsonl` and overwrite each other's checkpoints, and a
fresh run started over a finished one would mix its `best.pt` with the old `epoch_N.pt`. So:
- a run holds an exclusive `fcntl.flock` on `RUN_DIR/.lock` (its pid written inside) while it
  uses the directory; the OS drops the lock when the process exits, also on a crash or kill -9,
  so a stale lock never blocks anyone;
- a fresh run refuses a directory that already holds a run (`log.jsonl` or `*.pt`) unless
  forced; forcing *moves* the old run's files into `RUN_DIR/.replaced-<UTC time>/` instead of
  deleting them, because a mistyped --work-dir must not cost anyone a finished run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from cifarkit.errors import CifarkitError

LOCK_NAME = ".lock"
# what a run writes into its directory; only these move aside, so a --work-dir that also holds
# the user's own files keeps them in place
RUN_OUTPUTS = ("config.yaml", "log.jsonl", "metrics.csv", "tb", "curves.png", "report.html", "analysis",
               "data_stats", "mlflow.json")


class RunDirBusy(CifarkitError):
    """Another process holds the run directory's lock."""


class RunDirTaken(CifarkitError):
    """A fresh run was asked to start in a directory that holds an earlier run."""


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock for the duration of the block, or fail at once."""
    path = run_dir / LOCK_NAME
    f = open(path, "a+", encoding="utf-8")  # "a+": never truncates the holder's pid before we own the lock
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read(32).strip() or "unknown"
            raise RunDirBusy(f"{run_dir}: another cifarkit run (pid {holder}) is using this run directory; "
                             "wait for it to finish, or choose another --work-dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
    finally:
        f.close()  # closing the file releases the flock


def earlier_run_files(run_dir: Path) -> list[Path]:
    """The files of an earlier run in `run_dir` ([] when it holds no log.jsonl and no checkpoint)."""
    pts = sorted(run_dir.glob("*.pt"))
    if not pts and not (run_dir / "log.jsonl").is_file():
        return []
    return [run_dir / n for n in RUN_OUTPUTS if (run_dir / n).exists()] + pts


def claim_fresh(run_dir: Path, force: bool) -> Path | None:
    """Make `run_dir` ready for a new run: refuse an earlier run there, or (force) move it into
    `.replaced-<UTC time>/`; returns that folder, or None when there was nothing to move."""
    old = earlier_run_files(run_dir)
    if not old:
        return None
    if not force:
        names = ", ".join(p.name for p in old[:4]) + (", ..." if len(old) > 4 else "")
        raise RunDirTaken(f"{run_dir}: holds an earlier run ({names}); continue it with --resume, set it aside "
                          "with --force (moved into a .replaced-<time> subfolder), or choose another --work-dir")
    dest = run_dir / time.strftime(".replaced-%Y%m%dT%H%M%SZ", time.gmtime())
    n = 1
    while dest.exists():  # two forced restarts within one second
        dest, n = dest.with_name(f"{dest.name.split('+')[0]}+{n}"), n + 1
    dest.mkdir()
    for p in old:
        os.replace(p, dest / p.name)
    return dest


def check_work_dir(path: Path, need_bytes: int = 50 << 20) -> None:
    """Make sure `path` can hold a run: create it, probe it with a write, and check its free space.

    Args:
        path: the run directory.
        need_bytes: the free space required [bytes]; 50 MiB by default, for checkpoints.

    Raises:
        CifarkitError: `path` is a file, is not writable, or has less than `need_bytes` free.
    """
    if path.exists() and not path.is_dir():
        raise CifarkitError(f"{path}: is a file, not a folder; choose another --work-dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        raise CifarkitError(f"{path}: the work directory is not writable ({e.strerror}); choose another "
                            "with --work-dir") from None
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise CifarkitError(f"{path}: only {free >> 20} MiB free, need at least {need_bytes >> 20} MiB for "
                            "checkpoints; free some space or choose another --work-dir")
