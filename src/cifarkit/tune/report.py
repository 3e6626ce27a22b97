"""A search's outputs from the study as its storage holds them: trials.csv, best.yaml,
history.png and importance.png, and the summary lines `cifarkit tune` prints."""

from __future__ import annotations

import csv
import io
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cifarkit.plotting import pyplot, save
from cifarkit.safecsv import csv_row
from cifarkit.safepath import safe_component, write_text_atomic


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
    best_params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    files: dict[str, Path] = field(default_factory=dict)


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
                save(draw().figure, out / fname, dpi=100)  # through a temporary file: workers on one --out
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
