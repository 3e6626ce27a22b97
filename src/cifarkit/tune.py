"""`cifarkit tune`: hyperparameter search over a config with Optuna, one ordinary run per trial.

    load_space -> study (storage) -> loop of (fail stale trials, ask, fit with a pruner hook, tell)
    -> trials.csv, best.yaml, history.png, importance.png

A search space is a YAML mapping from config keys to distributions:

    optim.lr: {log_uniform: [1.0e-3, 1.0]}
    train.label_smoothing: {uniform: [0, 0.3]}
    train.batch_size: {int: [128, 512], step: 128}

Every key and both ends of every range are checked against the config schema before any trial
runs (a typo gets the nearest key, as `--set` does). Each trial is a run directory
`OUT/trials/NNNN` made by the ordinary `fit` (log, checkpoints, report), with the trial's values
in its config.yaml and a `trial.json` saying how it ended. The engine's per-epoch evaluation is
reported to the trial, and the pruner (ASHA = Optuna's asynchronous successive halving, or the
median rule) stops hopeless ones through `fit(on_eval=...)`: their log ends with a `stopped`
record.

Several workers share one study through its storage: by default the journal file
`OUT/study.journal` (Optuna's JournalFileBackend: processes on one machine, or machines sharing a
disk), or any RDB URL (`postgresql://...`, `mysql://...`, `sqlite:///...`). The study stops at
`trials` trials counted in the storage (complete, pruned, running, and failed by the trial's own
values), so N workers run N distinct trials in all. A worker killed mid-trial leaves a RUNNING
trial with a stale heartbeat; the next worker to start a trial marks it failed (at once when the
dead worker was on the same machine, after `3 x heartbeat` seconds otherwise) and it is run again.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import io
import json
import math
import os
import random
import socket
import sys
import threading
import time
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cifarkit.analysis.after_run import plot_writers
from cifarkit.config import (
    Config,
    all_keys,
    config_from_dict,
    config_to_dict,
    read_config_text,
    unknown_key_message,
    yaml_load,
)
from cifarkit.engine.device import resolve_device
from cifarkit.engine.loggers import summary_writer_class
from cifarkit.engine.step import TrainingDiverged
from cifarkit.engine.tracking import require_mlflow
from cifarkit.engine.train import fit
from cifarkit.errors import CifarkitError, ConfigError
from cifarkit.extras import require
from cifarkit.models import list_models
from cifarkit.plotting import pyplot, save
from cifarkit.safecsv import csv_row, looks_numeric
from cifarkit.safepath import safe_component, temp_beside, write_text_atomic
from cifarkit.userfile import check_user_file, open_user_file

KINDS = ("uniform", "log_uniform", "int", "choice")
PRUNERS = ("asha", "median", "none")
METRICS = {"top1": "maximize", "loss": "minimize"}
MAX_CHOICES = 1000  # values of one choice in a space file (each is validated as a config before any trial)
MAX_ERRORS_IN_A_ROW = 3  # a worker stops after this many trials fail with an error (not divergence) in a row
STUDY_FILE = "study.json"  # OUT/study.json: which study and storage this output folder belongs to
DEFAULT_STORAGE = "study.journal"  # the journal file inside OUT when no --storage is given
OPEN_ATTEMPTS = 6  # opening an RDB storage that other workers are creating: ~13 s of retries at most
JOURNAL_TAIL = 1 << 20  # check_journal reads this much of the end: one journal line is far shorter


@dataclass(frozen=True)
class Dist:
    """One key's distribution: `kind` in KINDS, `low`/`high` for ranges, `step` and `log` for
    ints, `choices` for a choice."""
    kind: str
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial: Any, key: str) -> Any:
        """The trial's value for `key` (Optuna's suggest_* for this kind)."""
        if self.kind == "choice":
            return trial.suggest_categorical(key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(key, self.low, self.high, log=self.kind == "log_uniform", step=self.step)

    def ends(self) -> list[Any]:
        """The values that must each make a valid config: both ends of a range, every choice."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


def _number(v: Any, key: str, where: str) -> float:
    if isinstance(v, str):  # YAML 1.1 reads 1e-4 (no dot) as a string; the config takes it as a number too
        with contextlib.suppress(ValueError):
            v = float(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{where}{key}: {v!r} is not a finite number")
    return float(v)


def set_values(base: dict[str, Any], values: dict[str, Any], where: str = "") -> Config:
    """`base` (a config dict) with each dotted key set to its value, as a validated `Config`.

    The values go into the dict as they are (no text round trip that could turn 1e-05 into a
    string or re-read a string as a number)."""
    d = copy.deepcopy(base)
    for key, value in values.items():
        cur = d
        *parents, last = key.split(".")
        for part in parents:
            cur = cur.setdefault(part, {})
            if not isinstance(cur, dict):
                raise ConfigError(f"{where}{key}: {part} is not a section of the config")
        cur[last] = value
    return config_from_dict(d, where=where)


def parse_dist(key: str, spec: Any, where: str) -> Dist:
    """One entry of a space file -> `Dist`, checked for shape and range (not yet against the config).

    Raises:
        ConfigError: not a mapping with one known kind, an empty range, the log of a value <= 0, ...
    """
    if not isinstance(spec, dict) or len([k for k in spec if k in KINDS]) != 1:
        raise ConfigError(f"{where}{key}: expected one of {{uniform: [lo, hi]}}, {{log_uniform: [lo, hi]}}, "
                          f"{{int: [lo, hi], step: 1}}, {{choice: [a, b, ...]}}; got {spec!r}")
    kind = next(k for k in spec if k in KINDS)
    extra = set(spec) - {kind} - ({"step", "log"} if kind == "int" else {"step"} if kind == "uniform" else set())
    if extra:
        raise ConfigError(f"{where}{key}: {kind} takes no {', '.join(sorted(map(str, extra)))}")
    v = spec[kind]
    if kind == "choice":
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{where}{key}: choice needs a non-empty list of values")
        if any(isinstance(c, (dict, list)) for c in v):
            raise ConfigError(f"{where}{key}: choice values must be plain values (numbers, strings, true/false)")
        if len(v) > MAX_CHOICES:  # each is checked against the config below; a range says more in one line
            raise ConfigError(f"{where}{key}: choice lists {len(v):,} values, more than {MAX_CHOICES:,}; use "
                              "{int: [lo, hi]} or {uniform: [lo, hi]} for a range")
        # Optuna finds a choice by ==, so 1 is True and 1.0: a set (hash agrees with ==) sees those as one
        if len(set(v)) != len(v):
            raise ConfigError(f"{where}{key}: choice lists a value twice (or two that compare equal, like 1 and true)")
        if key.startswith("model.kwargs."):  # no schema converts them later: YAML 1.1 reads 1e-3 as a string
            v = [_number(c, key, where) if isinstance(c, str) and looks_numeric(c) else c for c in v]
        return Dist("choice", choices=tuple(v))
    if not isinstance(v, list) or len(v) != 2:
        raise ConfigError(f"{where}{key}: {kind} needs [low, high], got {v!r}")
    lo, hi = (_number(x, key, where) for x in v)
    if not lo < hi:
        raise ConfigError(f"{where}{key}: the range [{v[0]}, {v[1]}] is empty (low must be below high)")
    step = spec.get("step")
    step = None if step is None else _number(step, key, where)
    if step is not None and (_number(step, key, where) <= 0 or _number(step, key, where) > hi - lo):
        raise ConfigError(f"{where}{key}: step {spec['step']!r} must be above 0 and at most high - low")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}{key}: log must be true or false")
    if kind == "int":
        if not (float(lo).is_integer() and float(hi).is_integer() and (step is None or float(step).is_integer())):
            raise ConfigError(f"{where}{key}: int needs whole numbers, got {spec!r}")
        if log and step not in (None, 1):
            raise ConfigError(f"{where}{key}: an int range is either log or stepped, not both")
    if (kind == "log_uniform" or log) and lo <= 0:
        raise ConfigError(f"{where}{key}: a log range needs low > 0 (the log of {v[0]} is undefined)")
    if kind == "log_uniform" and step is not None:
        raise ConfigError(f"{where}{key}: log_uniform takes no step")
    return Dist(kind, lo, hi, step, log)


def _field_type(key: str) -> Any:
    obj: Any = Config()
    for part in key.split(".")[:-1]:
        obj = getattr(obj, part)
    return typing.get_type_hints(type(obj)).get(key.split(".")[-1])


def load_space(path: str | Path, base: Config | dict[str, Any]) -> dict[str, Dist]:
    """Read and check a search space file against the config it will vary.

    Args:
        path: the space YAML (key -> distribution).
        base: the config the trials start from (its values fill every key the space leaves).

    Raises:
        ConfigError: the file is unreadable or empty; a key unknown (with the nearest one); a
            distribution malformed; or an end of a range / a choice that the key cannot take.
    """
    p = Path(path)
    where = f"{p}: "
    try:
        d = yaml_load(read_config_text(p, "search space file"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict) or not d:
        raise ConfigError(f"{p}: a search space is a non-empty mapping of config keys to distributions, "
                          "e.g. `optim.lr: {log_uniform: [1.0e-3, 1.0]}`")
    base_dict = config_to_dict(base) if isinstance(base, Config) else base
    space: dict[str, Dist] = {}
    for key, spec in d.items():
        key = str(key)
        if key not in all_keys() and not key.startswith("model.kwargs."):
            raise ConfigError(unknown_key_message(key, where))
        dist = parse_dist(key, spec, where)
        ftype = None if key.startswith("model.kwargs.") else _field_type(key)  # kwargs: any number
        if dist.kind in ("uniform", "log_uniform") and ftype is int:
            raise ConfigError(f"{where}{key}: takes whole numbers; use {{int: [{int(dist.low)}, {int(dist.high)}]}}")
        if dist.kind != "choice" and ftype not in (int, float) and not key.startswith("model.kwargs."):
            raise ConfigError(f"{where}{key}: is not a number; use {{choice: [...]}}")
        for value in dist.ends():
            if key == "model.name" and not (str(value) in list_models(include_torchvision=True)
                                            or str(value).startswith("timm/")):
                raise ConfigError(f"{where}model.name: {value!r} is not a model cifarkit knows (`cifarkit models`)")
            try:
                set_values(base_dict, {key: value})
            except ConfigError as e:
                raise ConfigError(f"{where}{key}: the value {value!r} is not valid for it ({e})") from None
        space[key] = dist
    return space


# ---- storage and liveness -------------------------------------------------------------------------
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


def counts(t: Any) -> bool:
    """Whether trial `t` counts towards the study's total: complete, pruned, running, or failed
    by what it tried (diverged, NaN, values the config refuses); not a trial whose worker died, a
    surplus one a worker gave back, or one of a run of errors that stopped its worker."""
    state = t.state.name
    return state in ("COMPLETE", "PRUNED", "RUNNING") or (state == "FAIL" and t.user_attrs.get("counts", True))


# ---- the search ------------------------------------------------------------------------------------
@dataclass
class TuneResult:
    """What a `tune` call leaves: the study's numbers and the files written."""
    out: Path
    study: str
    trials: int = 0
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    ran_here: int = 0
    best_number: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    files: dict[str, Path] = dataclasses.field(default_factory=dict)


def make_pruner(name: str) -> Any:
    """asha: asynchronous successive halving with rungs at 1, 3, 9, ... epochs (the top third go
    on); median: stop a trial below the median of earlier ones at the same epoch (after 4 trials
    and its first epoch); none: never stop."""
    optuna = require("optuna", "cifarkit tune")
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def check_out(out: Path, study_name: str, storage: str) -> None:
    """OUT belongs to one study in one storage: a rerun of the same continues it; anything else there
    is refused (nothing is written here; `claim_out` writes once the study is open)."""
    f = out / STUDY_FILE
    if f.is_file():
        try:
            prev = json.loads(f.read_text(encoding="utf-8"))
        except ValueError:
            prev = {}
        if prev.get("study") != study_name:
            raise ConfigError(f"{out}: holds the search {prev.get('study')!r}, not {study_name!r}; choose another "
                              "--out (or --study to continue that one)")
        if prev.get("storage") != storage:
            have = "its own study.journal" if prev.get("storage") == DEFAULT_STORAGE else repr(prev.get("storage"))
            how = "no --storage" if prev.get("storage") == DEFAULT_STORAGE else f"--storage {prev.get('storage')}"
            raise ConfigError(f"{out}: its search lives in {have}; continue it with {how}, or choose another --out")
    elif out.exists() and any(not _own_name(p.name) for p in out.iterdir()):
        raise ConfigError(f"{out}: exists and is not a cifarkit tune folder; choose another --out")


def _own_name(name: str) -> bool:
    """What a worker starting beside another may already find in a new OUT (study.json and the
    journal are written first; temporary files are hidden and per process)."""
    return name in ("study.json", "trials") or name.startswith(DEFAULT_STORAGE) or (
        name.startswith(".") and ".tmp" in name)


def claim_out(out: Path, study_name: str, storage: str) -> None:
    """Write OUT/study.json (workers started together on one --out write the same, atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / STUDY_FILE, json.dumps({"study": study_name, "storage": storage}))


def check_environment(base: Config, space: dict[str, Dist], device: str | None) -> None:
    """What every trial needs and no value changes, checked once before the first: the device,
    the extras the config's loggers need, the dataset path. (Otherwise each trial would fail the
    same way, and a search would end with nothing tried.)

    Raises:
        ConfigError / MissingExtra: one line, before any trial.
    """
    resolve_device(device or base.train.device)
    if base.log.mlflow and "log.mlflow" not in space:
        require_mlflow(base.log.mlflow)
    if base.log.tensorboard:
        summary_writer_class()
    if "data.root" not in space and not Path(base.data.root).exists():
        raise ConfigError(f"data.root {base.data.root!r}: no such dataset; set --set data.root=PATH")


def describe_space(space: dict[str, Dist], metric: str) -> dict[str, Any]:
    """What a study is searching (kept in the study, so a worker with another space or metric is refused)."""
    return {"metric": metric, "space": {k: [d.kind, d.low, d.high, d.step, d.log, [repr(c) for c in d.choices]]
                                        for k, d in sorted(space.items())}}


def _lost_schema_race(e: BaseException) -> bool:
    """Whether opening an RDB storage failed because another worker was creating the same schema
    or study at that moment (sqlite: `UNIQUE constraint failed: alembic_version.version_num`,
    `table ... already exists`, `database is locked`; other databases: an IntegrityError)."""
    seen: BaseException | None = e
    while seen is not None:
        text = str(seen)
        if type(seen).__name__ == "IntegrityError" or any(
                s in text for s in ("UNIQUE constraint failed", "already exists", "database is locked")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def check_journal(path: str | Path) -> None:
    """A journal storage must be a regular file (or not exist yet: Optuna creates it) whose last
    line is whole. A FIFO would block Optuna's open for ever, /dev/zero fill memory; and a line cut
    off by a worker killed while writing it makes Optuna fail with a JSONDecodeError as soon as
    anything is written after it.

    Raises:
        ConfigError: one line naming the file and what to do.
    """
    st = check_user_file(path, "tune journal file", ConfigError, missing_ok=True)
    if st is None or st.st_size == 0:
        return
    optuna = require("optuna", "cifarkit tune")
    lock = optuna.storages.journal.JournalFileSymlinkLock(str(path))  # Optuna's own: no half-written append
    try:
        locked = lock.acquire()
    except OSError:  # a read-only folder: nobody can append meanwhile either
        locked = False
    try:
        with open_user_file(path, "tune journal file", 1 << 62, ConfigError, encoding=None) as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - JOURNAL_TAIL))
            tail = f.read(JOURNAL_TAIL)
    finally:
        if locked:
            lock.release()
    damaged = not tail.endswith(b"\n")
    lines = tail[:-1].split(b"\n")
    if not damaged and (len(lines) > 1 or size <= JOURNAL_TAIL):  # else the tail starts inside its last line
        try:
            json.loads(lines[-1])
        except ValueError:
            damaged = True
    if damaged:
        raise ConfigError(journal_damaged(path))


def journal_damaged(path: str | Path) -> str:
    """The one line for a journal whose last line is cut off, and what to do about it."""
    return (f"--storage {path}: its last line is cut off (a worker killed while writing it?), so the study cannot "
            f"be read on; delete that line (`sed -i '$d' {path}`) and start again")


def open_study(storage: str, name: str, space: dict[str, Dist], metric: str, pruner: str,
               seed: int | None) -> Any:
    """Create or load the study; refuse one that searches another space or metric.

    Raises:
        ConfigError: the storage cannot be opened, or the study there differs from this command's.
    """
    optuna = require("optuna", "cifarkit tune")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if "://" not in storage:
        check_journal(storage)
    for attempt in range(OPEN_ATTEMPTS):
        try:
            if "://" in storage:
                store = optuna.storages.RDBStorage(storage)
            else:
                Path(storage).parent.mkdir(parents=True, exist_ok=True)
                store = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
            st = optuna.create_study(storage=store, study_name=name, direction=METRICS[metric],
                                     pruner=make_pruner(pruner), load_if_exists=True)
            break
        except Exception as e:  # noqa: BLE001 - a bad URL, a missing driver, an unreachable database
            if attempt + 1 < OPEN_ATTEMPTS and _lost_schema_race(e):
                # workers started together on a new database each create its schema; the loser's
                # insert fails, and a moment later the winner's schema is there to load
                time.sleep(0.2 * 2 ** attempt * (1 + random.random()))
                continue
            line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ConfigError(f"--storage {storage}: cannot open the study there ({type(e).__name__}: "
                              f"{line})") from None
    want = describe_space(space, metric)
    have = st.user_attrs.get("cifarkit")
    if have is None:
        st.set_user_attr("cifarkit", want)
    elif have != want:
        what = "--metric" if have.get("metric") != metric else "--space"
        raise ConfigError(f"study {name!r} in {storage} was started with another {what} ({have.get('metric')}, "
                          f"keys {', '.join(have.get('space', {}))}); continue it with the same, or name a new --study")
    # a seed continues where the study is: a rerun with --seed S must not propose the first values again
    if seed is not None:  # mixed with the study's size: (S, n) never repeats another (S', n')'s stream
        import numpy as np

        seed = int(np.random.SeedSequence([seed, len(st.get_trials(deepcopy=False))]).generate_state(1)[0])
    st.sampler = optuna.samplers.TPESampler(seed=seed)
    return st


def tune(base: Config, space: dict[str, Dist], trials: int, out: str | Path, storage: str | None = None,
         study: str | None = None, pruner: str = "asha", metric: str = "top1", seed: int | None = None,
         heartbeat: float = 30.0, quiet: bool = False, device: str | None = None,
         progress: Callable[[str], None] | None = None) -> TuneResult:
    """Search `space` around `base` until the study holds `trials` trials; write its outputs.

    Args:
        base: the config every trial starts from.
        space: key -> `Dist` (`load_space`).
        trials: the study's total number of trials, over every worker sharing it.
        out: the search's folder: trials/NNNN run directories, trials.csv, best.yaml, figures.
        storage: an RDB URL or a journal file shared by workers (default OUT/study.journal).
        study: the study's name (default: the config's name).
        pruner: asha | median | none.
        metric: top1 (maximised) or loss (minimised), of each trial's final evaluation.
        seed: the TPE sampler's seed, offset by the study's trial count (None: fresh; workers
            sharing a study: different seeds or none).
        heartbeat: seconds between a running trial's liveness stamps (1 to 3600).
        quiet: no per-trial lines.
        device: the device to train on (default: each config's train.device).
        progress: where per-trial lines go (default print).

    Raises:
        ConfigError: a bad argument, OUT belongs to another search, the storage cannot be opened,
            or the study there searches another space or metric.
        CifarkitError: 3 trials in a row failed with an error (a missing dataset, not a bad lr).
    """
    require("optuna", "cifarkit tune")
    from optuna.trial import TrialState

    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    if pruner not in PRUNERS:
        raise ConfigError(f"--pruner {pruner!r} is not one of {', '.join(PRUNERS)}")
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r} is not one of {', '.join(METRICS)}")
    if not 1 <= heartbeat <= 3600:
        raise ConfigError(f"--heartbeat must be 1 to 3600 seconds, got {heartbeat}")
    say = progress or (lambda s: None if quiet else print(s, flush=True))
    t0 = time.perf_counter()
    out = Path(out)
    name = study or base.name
    default = str((out / DEFAULT_STORAGE).resolve())
    where = str(Path(storage).resolve()) if storage and "://" not in storage else storage or default
    recorded = DEFAULT_STORAGE if where == default else where  # the default moves with the folder
    check_out(out, name, recorded)
    check_environment(base, space, device)
    st = open_study(where, name, space, metric, pruner, seed)
    claim_out(out, name, recorded)
    if base.data.val_fraction == 0:
        say(f"note: trials are scored on the {base.data.test_split!r} split, so the best one's score is optimistic; "
            "hold out a validation split with --set data.val_fraction=0.1")
    if pruner != "none" and base.eval.interval > 1:
        say(f"note: the pruner sees a score every {base.eval.interval} epochs (eval.interval); --set eval.interval=1 "
            "lets it stop hopeless trials after their first epoch")
    try:
        ran, streak = 0, []
        while True:
            for n in fail_stale_trials(st, heartbeat):
                say(f"trial {n}: its worker died; marked failed, to be run again")
            now = st.get_trials(deepcopy=False)
            if sum(map(counts, now)) >= trials:
                if not any(t.state == TrialState.RUNNING for t in now):
                    break
                time.sleep(min(5.0, heartbeat))  # other workers' last trials: they may die and need running again
                continue
            trial = st.ask()
            ahead = sum(counts(t) for t in st.get_trials(deepcopy=False) if t.number < trial.number)
            if ahead >= trials:  # another worker took the last trial between our count and our ask
                trial.set_user_attr("failure", "surplus: the study had its trials")
                trial.set_user_attr("counts", False)
                st.tell(trial, state=TrialState.FAIL)
                continue
            error = run_trial(st, trial, base, space, out, metric, heartbeat, device, say)
            ran += 1
            streak = [*streak, trial] if error is not None else []
            if len(streak) >= MAX_ERRORS_IN_A_ROW:  # not the values: the data, the disk, a missing package
                raise CifarkitError(f"{MAX_ERRORS_IN_A_ROW} trials in a row failed with an error (not counted towards "
                                    f"--trials); the last: {error}") from None
        res = summarize_study(st, out, name, metric)
    except json.JSONDecodeError:  # the journal was damaged while this worker ran (another one killed mid-write)
        raise ConfigError(journal_damaged(where)) from None
    res.ran_here, res.seconds = ran, time.perf_counter() - t0
    return res


def _absolute(cfg: Config) -> None:
    """Paths in the trial's config made absolute, so best.yaml works from any folder."""
    if cfg.data.root:
        cfg.data.root = str(Path(cfg.data.root).resolve())
    if cfg.model.pretrained and cfg.model.pretrained != "torchvision" and Path(cfg.model.pretrained).exists():
        cfg.model.pretrained = str(Path(cfg.model.pretrained).resolve())


def run_trial(st: Any, trial: Any, base: Config, space: dict[str, Dist], out: Path, metric: str,
              heartbeat: float, device: str | None, say: Callable[[str], None]) -> CifarkitError | None:
    """One trial: its values into the config, `fit` into OUT/trials/NNNN with the pruner hook, told.

    A trial that diverges, ends without a finite score or whose values the config refuses is a
    failed trial that counts (its values did it). One that fails with another cifarkit error (the
    data, the disk, a package) does not count, and the error is returned so that the worker can
    stop when every trial fails. Anything else (Ctrl-C, a bug) fails the trial, uncounted, and
    propagates."""
    from optuna.trial import TrialState

    run_dir = out / "trials" / f"{trial.number:04d}"
    if run_dir.exists():  # never write into a run this trial did not make
        trial.set_user_attr("counts", False)
        trial.set_user_attr("failure", f"{run_dir} exists from another search")
        st.tell(trial, state=TrialState.FAIL)
        raise ConfigError(f"{run_dir}: exists from another search; choose another --out")
    for k, v in {"run_dir": str(run_dir.resolve()), "host": socket.gethostname(), "process": process_identity(),
                 "heartbeat": time.time(), "heartbeat_s": heartbeat}.items():
        trial.set_user_attr(k, v)
    beat = Heartbeat(st, trial._trial_id, heartbeat)
    state, value, note, error, values = TrialState.FAIL, None, "", None, {}

    def report(val: dict[str, Any]) -> str | None:
        try:
            trial.report(float(val[metric]), int(val["epoch"]))
            if trial.should_prune():
                return f"pruned by the search at epoch {val['epoch']} ({metric} {val[metric]:.4g})"
        except Exception as e:  # noqa: BLE001 - e.g. another worker judged this one dead and failed the trial
            return f"the study no longer takes this trial's scores ({type(e).__name__})"
        return None

    try:
        values = {key: dist.suggest(trial, key) for key, dist in space.items()}
        say(f"trial {trial.number}: {show(values)}")
        cfg = set_values(config_to_dict(base), values, f"trial {trial.number}: ")
        cfg.name = f"{safe_component(st.study_name)}-trial{trial.number:04d}"
        _absolute(cfg)
        trial.set_user_attr("config", config_to_dict(cfg))
        summary = fit(cfg, work_dir=run_dir, quiet=True, device=device, after_run=plot_writers(cfg.log.plots),
                      on_eval=report)
        value = (summary.get("final") or {}).get(metric)
        if summary.get("stopped"):
            state, note = TrialState.PRUNED, summary["stopped"]
        elif value is not None and math.isfinite(value):
            state = TrialState.COMPLETE
        else:
            note = f"no finite final {metric} ({value})"
    except TrainingDiverged as e:  # the trial's values make it diverge: a result, not an error
        note = f"diverged: {str(e).splitlines()[0][:200]}"
    except ConfigError as e:  # values each valid alone, not together (or not inside a range's ends)
        note = " ".join(str(e).split())[:300]
    except CifarkitError as e:  # the data, the disk, a package: nothing about the values, so not counted
        note, error = " ".join(str(e).split())[:300], e
        with contextlib.suppress(Exception):
            trial.set_user_attr("counts", False)
    except BaseException as e:
        beat.close()
        with contextlib.suppress(Exception):
            trial.set_user_attr("counts", False)
            trial.set_user_attr("failure", f"{type(e).__name__}: {str(e)[:200]}")
            st.tell(trial, state=TrialState.FAIL)
        raise
    beat.close()
    for attempt in range(3):  # a shared database can be briefly locked
        try:
            if note:
                trial.set_user_attr("pruned" if state == TrialState.PRUNED else "failure", note)
            st.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
            break
        except Exception as e:  # noqa: BLE001 - e.g. another worker marked it failed meanwhile
            if attempt == 2 or "finished" in str(e).lower():
                note = f"{note}; not recorded in the study ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
                break
            time.sleep(1.0)
    run_dir.mkdir(parents=True, exist_ok=True)  # also for a trial that failed before its run began
    (run_dir / "trial.json").write_text(json.dumps({
        "study": st.study_name, "number": trial.number, "state": state.name, metric: value, "params": values,
        "note": note}, default=str), encoding="utf-8")
    say(f"trial {trial.number}: {state.name.lower()}" + (f", {metric} {value:.4g}" if value is not None else "")
        + (f" ({note})" if note else ""))
    return error


# ---- outputs -----------------------------------------------------------------------------------------
def summarize_study(st: Any, out: Path, name: str, metric: str) -> TuneResult:
    """trials.csv, best.yaml and the two figures from the study as the storage holds it now (every
    worker's trials), rewritten whole each time."""
    from optuna.trial import TrialState

    all_trials = st.get_trials(deepcopy=False)
    res = TuneResult(out=out, study=name, trials=len(all_trials))
    res.complete = sum(t.state == TrialState.COMPLETE for t in all_trials)
    res.pruned = sum(t.state == TrialState.PRUNED for t in all_trials)
    res.failed = sum(t.state == TrialState.FAIL for t in all_trials)
    keys = sorted({k for t in all_trials for k in t.params})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["number", "state", metric, *keys, "epochs", "seconds", "note", "run_dir", "host"])
    for t in all_trials:
        secs = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start \
            else None
        epochs = max(t.intermediate_values) if t.intermediate_values else None
        note = t.user_attrs.get("pruned") or t.user_attrs.get("failure") or ""
        w.writerow(csv_row([t.number, t.state.name, t.value, *[t.params.get(k) for k in keys], epochs,
                            None if secs is None else round(secs, 1), note, t.user_attrs.get("run_dir", ""),
                            t.user_attrs.get("host", "")]))
    write_text_atomic(out / "trials.csv", buf.getvalue())
    res.files["trials"] = out / "trials.csv"
    if res.complete:
        best = st.best_trial
        res.best_number, res.best_value, res.best_params = best.number, best.value, dict(best.params)
        cfg = dict(best.user_attrs["config"])
        cfg["name"] = f"{safe_component(name)}-best"
        cfg["data"] = {**cfg["data"], "root": str(Path(cfg["data"]["root"]).resolve()) if cfg["data"]["root"] else ""}
        head = (f"# best of search {name!r}: trial {best.number}, {metric} {best.value:.4g}\n"
                f"# its values: {json.dumps(best.params)}\n# reproduce: cifarkit train {out / 'best.yaml'}\n")
        write_text_atomic(out / "best.yaml", head + yaml.safe_dump(cfg, sort_keys=False))
        res.files["best"] = out / "best.yaml"
        res.files.update(draw_figures(st, out))
    return res


def draw_figures(st: Any, out: Path) -> dict[str, Path]:
    """history.png (each trial's value and the best so far) and importance.png (PED-ANOVA
    importance of each varied key: numpy only, works from a handful of trials); a figure that
    cannot be drawn yet (too few complete trials) is skipped with a note."""
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    plt = pyplot()
    files = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        for key, fname, draw in (
                ("history", "history.png", lambda: plot_optimization_history(st)),
                ("importance", "importance.png",
                 lambda: plot_param_importances(st, evaluator=PedAnovaImportanceEvaluator()))):
            try:
                save(draw().figure, temp_beside(out / fname), dpi=100)  # workers on one --out: whole files
                temp_beside(out / fname).replace(out / fname)
                files[key] = out / fname
            except Exception as e:  # noqa: BLE001 - a figure must never cost the search its results
                print(f"note: {fname} not drawn yet ({str(e).splitlines()[0][:120]})", file=sys.stderr)
                plt.close("all")
    return files


def show(values: dict[str, Any]) -> str:
    """A trial's values as one short line: `optim.lr=0.01234, model.name=airnet`."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def format_result(r: TuneResult, metric: str) -> str:
    """The summary line(s) `cifarkit tune` prints."""
    head = (f"search {r.study!r}: {r.trials} trials ({r.complete} complete, {r.pruned} pruned, {r.failed} failed; "
            f"{r.ran_here} run by this worker in {r.seconds:.0f} s)")
    if r.best_number is None:
        return head + f"; no complete trial yet -> {r.files.get('trials', r.out)}"
    return (f"{head}\nbest: trial {r.best_number}, {metric} {r.best_value:.4g} ({show(r.best_params)}) -> "
            f"{r.files['best']}; all trials in {r.files['trials']}")


__all__ = ["Dist", "TuneResult", "load_space", "tune", "format_result", "parse_dist"]
