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

Modules: `space` (reading and checking the space), `liveness` (process identity, heartbeats,
stale trials), `study` (the storage, OUT and the loop of trials), `report` (trials.csv,
best.yaml, figures, the summary lines). The names below are the API.
"""

from cifarkit.tune.report import TuneResult, format_result
from cifarkit.tune.space import Dist, load_space, parse_dist
from cifarkit.tune.study import tune

__all__ = ["Dist", "TuneResult", "load_space", "tune", "format_result", "parse_dist"]
