"""Which workers of a shared study are alive: a process's identity from /proc (boot, pid namespace,
pid, start time), the heartbeat thread that stamps a running trial, and failing the trials whose
worker is gone so that they are run again."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any


def _proc_stat_start(pid: int | str) -> str | None:
    """Field 22 of /proc/PID/stat (the process's start time in clock ticks since boot); None when
    there is no such process or it has exited (a zombie its parent has not reaped yet); "?" when
    /proc will not tell (hidepid)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except PermissionError:
        return "?"
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") or len(fields) < 20 else fields[19]


def process_identity(pid: int | None = None) -> str | None:
    """"boot id/pid namespace/pid/start time" of a process (default this one): equal only for the
    same process on the same boot of the same machine, even across containers sharing a host name
    and after its pid is reused. None where /proc does not tell (not Linux)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    pid = os.getpid() if pid is None else pid
    start = _proc_stat_start(pid)
    return None if start is None else f"{boot}/{ns}/{pid}/{start}"


def worker_gone(attrs: dict[str, Any], now: float, heartbeat: float, started: float | None = None) -> bool:
    """Whether the worker that runs a RUNNING trial is gone: its process no longer exists or has
    exited (when it ran in this boot and pid namespace), or it has not stamped its heartbeat for 3
    of *its own* intervals (this worker's when it did not say; counted from the trial's start,
    `started`, when it never stamped: a worker killed between asking for the trial and its first
    stamp)."""
    ident = attrs.get("process")
    mine = process_identity()
    if isinstance(ident, str) and mine is not None and ident.rsplit("/", 2)[0] == mine.rsplit("/", 2)[0]:
        pid = ident.rsplit("/", 2)[1]
        if not pid.isdigit() or _proc_stat_start(pid) is None:
            return True
        if _proc_stat_start(pid) != "?":  # readable: the same process, or its pid reused by another
            return process_identity(int(pid)) != ident
    interval = attrs.get("heartbeat_s") if isinstance(attrs.get("heartbeat_s"), (int, float)) else heartbeat
    beat = attrs.get("heartbeat") if isinstance(attrs.get("heartbeat"), (int, float)) else started
    return now - (now if beat is None else beat) > 3 * interval


def fail_stale_trials(study: Any, heartbeat: float) -> list[int]:
    """Mark RUNNING trials whose worker is gone (`worker_gone`) as failed, not counted (they are
    run again). Returns their numbers."""
    from optuna.trial import TrialState

    now, failed, mine = time.time(), [], process_identity()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = t.datetime_start.timestamp() if t.datetime_start else None
        # between trials this worker runs none: one still RUNNING under its own name was left by
        # an error (a failed tell, Ctrl-C in a notebook) and would be waited on forever
        own = mine is not None and t.user_attrs.get("process") == mine
        if not own and not worker_gone(t.user_attrs, now, heartbeat, started):
            continue
        try:  # Optuna offers no public call to finish another process's trial; its storage does
            study._storage.set_trial_user_attr(t._trial_id, "failure", "left running by this worker" if own
                                               else "worker died (no heartbeat)")
            study._storage.set_trial_user_attr(t._trial_id, "counts", False)
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            failed.append(t.number)
        except Exception:  # noqa: BLE001 - another worker failed it first, or it just finished
            pass
    return failed


class Heartbeat:
    """A thread that stamps the trial's `heartbeat` user attribute every `interval` seconds."""

    def __init__(self, study: Any, trial_id: int, interval: float):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, args=(study, trial_id, interval), daemon=True)
        self.thread.start()

    def _beat(self, study: Any, trial_id: int, interval: float) -> None:
        while not self.stop.wait(interval):
            # the trial may have finished meanwhile, or the store be briefly down: the next beat retries
            with contextlib.suppress(Exception):
                study._storage.set_trial_user_attr(trial_id, "heartbeat", time.time())

    def close(self) -> None:
        """Stop stamping (the trial is told)."""
        self.stop.set()
        self.thread.join()
