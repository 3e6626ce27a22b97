"""The search itself: the study opened in its storage (a journal file or an RDB, with retries while
workers started together create it), OUT claimed for it, and the loop of trials, each an ordinary
`fit` run with the pruner hook."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cifarkit.analysis.after_run import plot_writers
from cifarkit.config import Config, config_to_dict
from cifarkit.engine.loggers import summary_writer_class
from cifarkit.engine.step import TrainingDiverged
from cifarkit.engine.tracking import require_mlflow
from cifarkit.engine.train import fit
from cifarkit.errors import CifarkitError, ConfigError
from cifarkit.extras import require
from cifarkit.infer.device import resolve_device
from cifarkit.safepath import safe_component, write_text_atomic
from cifarkit.tune.liveness import Heartbeat, fail_stale_trials, process_identity
from cifarkit.tune.report import TuneResult, show, summarize_study
from cifarkit.tune.space import Dist, set_values
from cifarkit.userfile import check_user_file, open_user_file

PRUNERS = ("asha", "median", "none")
METRICS = {"top1": "maximize", "loss": "minimize"}
MAX_ERRORS_IN_A_ROW = 3  # a worker stops after this many trials fail with an error (not divergence) in a row
STUDY_FILE = "study.json"  # OUT/study.json: which study and storage this output folder belongs to
DEFAULT_STORAGE = "study.journal"  # the journal file inside OUT when no --storage is given
OPEN_ATTEMPTS = 6  # opening an RDB storage that other workers are creating: ~13 s of retries at most
JOURNAL_TAIL = 1 << 20  # check_journal reads this much of the end: one journal line is far shorter


def is_counted(t: Any) -> bool:
    """Whether trial `t` counts towards the study's total: complete, pruned, running, or failed
    by what it tried (diverged, NaN, values the config refuses); not a trial whose worker died, a
    surplus one a worker gave back, or one of a run of errors that stopped its worker."""
    state = t.state.name
    return state in ("COMPLETE", "PRUNED", "RUNNING") or (state == "FAIL" and t.user_attrs.get("counts", True))


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
            if sum(map(is_counted, now)) >= trials:
                if not any(t.state == TrialState.RUNNING for t in now):
                    break
                time.sleep(min(5.0, heartbeat))  # other workers' last trials: they may die and need running again
                continue
            trial = st.ask()
            ahead = sum(is_counted(t) for t in st.get_trials(deepcopy=False) if t.number < trial.number)
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
        summary = fit(cfg, work_dir=run_dir, quiet=True, device=device,
                      after_run=plot_writers(cfg.log.plots, calibrate=cfg.train.calibrate), on_eval=report)
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
