"""The run in an MLflow tracking store (`log.mlflow: URI`): one more view of `log.jsonl`.

`MlflowSink` is a `RunLog` sink like the TensorBoard and CSV ones: every train and val record
becomes MLflow metrics at its iteration (`train/loss`, `train/lr`, `train/images_per_s`,
`val/top1`, `val/top5`, `val/loss`, the names TensorBoard gets), the summary becomes final
metrics, the flattened config the run's params, and cifarkit version / git commit / device /
precision its tags. `finish_mlflow` runs after the run's figures and report are written (the
CLI's `after_run` hooks) and uploads them, with the config and log (and `last.pt` / `best.pt`
when `log.mlflow_checkpoints`), then closes the MLflow run.

Resume continues the same MLflow run: its id is kept in `RUN/mlflow.json`. A killed run may have
logged steps past its last checkpoint; the resumed run logs only the steps MLflow does not have
yet (per metric), so no step appears twice, and replays kept records MLflow never got (the store
was down). The tracking store is never allowed to cost the run: an unreachable store or a failed
call prints one warning line and the sink goes quiet; `log.jsonl` keeps every record, and
`finish_mlflow` sends what the store missed once it answers again. Only rank 0 writes (`RunLog`
exists there alone).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from cifarkit.errors import ConfigError
from cifarkit.extras import MissingExtra, require
from cifarkit.logs import read_jsonl
from cifarkit.safepath import write_text_atomic
from cifarkit.userfile import check_user_file

STATE_FILE = "mlflow.json"  # RUN/mlflow.json: {"tracking_uri", "experiment_id", "run_id"}
# record type -> (record field, MLflow metric key)
METRICS = {
    "train": (("loss", "train/loss"), ("lr", "train/lr")),
    "val": (("top1", "val/top1"), ("top5", "val/top5"), ("loss", "val/loss")),
}
SUMMARY_METRICS = ("best_top1", "final_top1", "final_top5", "best_epoch", "seconds", "train_img_per_s")
ALL_KEYS = ([key for pairs in METRICS.values() for _, key in pairs] + ["train/images_per_s"]
            + [f"summary/{k}" for k in SUMMARY_METRICS])  # every metric key a run logs
ARTIFACTS = ("config.yaml", "log.jsonl", "curves.png", "report.html", "train_batch.png", "metrics.csv")
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
PARAMS_PER_BATCH = 100  # MLflow's limit of params in one log_batch call
METRICS_PER_BATCH = 1000  # ... and of metrics


def require_mlflow(uri: str) -> None:
    """Fail before training when `log.mlflow` is set and MLflow is not installed, or names a
    folder store that this MLflow refuses.

    Raises:
        MissingExtra: one line naming the extra (or how to turn the logger off).
        ConfigError: a folder store while MLflow (3.x) keeps them behind MLFLOW_ALLOW_FILE_STORE.
    """
    try:
        require("mlflow", "log.mlflow")
    except MissingExtra as e:
        raise MissingExtra(f"{e} (or set log.mlflow='')") from None
    if uri.startswith("sqlite:///"):
        check_sqlite_store(uri)
    folder = ("://" not in uri and not uri.startswith("databricks")) or uri.startswith("file:")
    if folder:
        try:
            from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
        except ImportError:  # an MLflow from before the file store's maintenance mode takes folders as they are
            return
        if not MLFLOW_ALLOW_FILE_STORE.get():
            raise ConfigError(f"log.mlflow {uri!r}: this MLflow keeps folder stores in maintenance mode and refuses "
                              "them; use a database store such as log.mlflow=sqlite:///mlflow.db, or set "
                              "MLFLOW_ALLOW_FILE_STORE=true")


def check_sqlite_store(uri: str) -> None:
    """An `sqlite:///PATH` store must be a database file that can be opened for writing (created
    if missing). Otherwise MLflow retries its connection for about two minutes, dozens of log
    lines, before the one warning: a store that can never work is refused before training.

    Raises:
        ConfigError: the path is a folder or another non-file, or cannot be created or written.
    """
    import sqlite3

    path = uri[len("sqlite:///"):].split("?", 1)[0]
    if not path or path == ":memory:":
        return
    try:
        st = check_user_file(path, "SQLite database file", ConfigError, missing_ok=True)
    except ConfigError as e:
        raise ConfigError(f"log.mlflow {uri!r}: {e}") from None
    try:
        con = sqlite3.connect(path, timeout=5)
        try:
            con.execute("BEGIN IMMEDIATE")  # opens (or creates) the file for writing, as MLflow will
            con.rollback()
        finally:
            con.close()
    except sqlite3.Error as e:
        raise ConfigError(f"log.mlflow {uri!r}: cannot open {path} as a database for writing ({e}); use a "
                          "store in a folder you can write, e.g. log.mlflow=sqlite:///mlflow.db") from None
    if st is None:  # created by this check: MLflow makes its own in a moment, leave nothing behind meanwhile
        with contextlib.suppress(OSError):
            if os.path.getsize(path) == 0:
                os.unlink(path)


_WARNED: set[str] = set()  # (store, run directory) pairs already warned about: one line per run


def warn(key: str, msg: str) -> None:
    """One warning line on stderr (once per `key`: a store and run): the tracking store never stops a run."""
    if key in _WARNED:
        return
    _WARNED.add(key)
    print(f"warning: MLflow: {msg}; training goes on and every record stays in log.jsonl", file=sys.stderr,
          flush=True)


def _short(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f"{type(e).__name__}: {line[:160]}"


def _bound_http_retries() -> None:
    # MLflow retries an HTTP call 7 times with exponential backoff by default (minutes per call
    # while a server is down); a training step must not wait that long. A user's own setting wins.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def probe(uri: str, timeout: float = 5.0) -> None:
    """Raise OSError when a plain-http tracking server does not answer its /health page in
    `timeout` s (https is left to MLflow's own client, which knows the user's TLS settings)."""
    if uri.startswith("http://"):
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):  # noqa: S310 - the user's URI
            pass


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": "0.1"}: the config as MLflow params."""
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:MAX_PARAM_CHARS]
    return out


def git_commit(cwd: Path | None = None) -> str | None:
    """The commit of the git checkout the run was started in, or None outside one (or without git)."""
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def read_state(run_dir: Path) -> dict[str, str] | None:
    """RUN/mlflow.json, or None when the run was never logged to MLflow (or the file is damaged)."""
    try:
        d = json.loads((run_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(d, dict) and all(isinstance(d.get(k), str) for k in ("tracking_uri", "run_id"))
    return d if ok else None


def get_experiment_id(client: Any, name: str) -> str:
    """The id of experiment `name`, created when missing (two processes creating it at once: the
    loser finds the winner's)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # noqa: BLE001 - MLflow raises its own RESOURCE_ALREADY_EXISTS error
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class MlflowSink:
    """Log a run's records to MLflow (see the module docstring).

    Args:
        cfg: the run's config (its `log.mlflow*` keys, and the params to log).
        run_dir: the run directory (`mlflow.json` is kept there).
        header: the run's log header (device, precision, versions) for the tags.
        resume_iter: the iteration a resumed run continues from, or None for a fresh run.
    """

    def __init__(self, cfg: Any, run_dir: Path, header: dict[str, Any] | None, resume_iter: int | None,
                 open_run: bool = True):
        self.uri, self.run_dir, self.batch_size = cfg.log.mlflow, run_dir, cfg.train.batch_size
        self.client: Any = None
        self.run_id = ""
        self.last_step: dict[str, int] = {}  # metric key -> highest step MLflow already holds
        if not open_run:
            return
        _bound_http_retries()
        try:
            self._open(cfg, header or {}, resume_iter)
        except Exception as e:  # noqa: BLE001 - whatever the store says, the run goes on
            self.client = None
            warn(f"{self.uri}|{self.run_dir}", f"cannot log to {self.uri} ({_short(e)})")

    def attach(self, client: Any, run_id: str) -> None:
        """Continue MLflow run `run_id`: note the last step it holds of every metric key."""
        self.client, self.run_id = client, run_id
        for key in ALL_KEYS:
            steps = [m.step for m in client.get_metric_history(run_id, key)]
            if steps:
                self.last_step[key] = max(steps)

    def _open(self, cfg: Any, header: dict[str, Any], resume_iter: int | None) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        probe(self.uri)
        client = MlflowClient(tracking_uri=self.uri)
        state = read_state(self.run_dir) if resume_iter is not None else None
        if state is not None and state["tracking_uri"] == self.uri:
            try:
                client.update_run(state["run_id"], status="RUNNING")
                self.attach(client, state["run_id"])
                return
            except Exception:  # noqa: BLE001 - the run is gone (deleted, or a relative sqlite path from elsewhere)
                self.last_step = {}
        # a fresh run, or a resume whose earlier attempt never reached this store: a new MLflow run
        exp_id = get_experiment_id(client, cfg.log.mlflow_experiment)
        versions = header.get("versions", {})
        tags = {"cifarkit.version": versions.get("cifarkit", ""), "cifarkit.run_dir": str(self.run_dir.resolve()),
                "device": str(header.get("device", "")), "precision": str(header.get("precision", "")),
                "cpu_kind": str(versions.get("cpu_kind", "")), "mlflow.source.name": "cifarkit"}
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        run_id = client.create_run(exp_id, run_name=cfg.name, tags=tags).info.run_id
        try:
            params = [Param(k, v) for k, v in flatten(header.get("config", {})).items()]
            for i in range(0, len(params), PARAMS_PER_BATCH):
                client.log_batch(run_id, params=params[i:i + PARAMS_PER_BATCH])
            write_text_atomic(self.run_dir / STATE_FILE,
                              json.dumps({"tracking_uri": self.uri, "experiment_id": exp_id, "run_id": run_id}))
        except BaseException:
            with contextlib.suppress(Exception):  # no orphaned RUNNING run left behind
                client.set_terminated(run_id, status="FAILED")
            raise
        self.client, self.run_id = client, run_id

    def _metrics(self, rec: dict[str, Any]) -> list[Any]:
        from mlflow.entities import Metric

        kind, step = rec.get("type"), rec.get("iter")
        if kind not in METRICS or not isinstance(step, int):
            return []
        now = int(time.time() * 1000)
        out = []
        pairs = list(METRICS[kind])
        if kind == "train" and rec.get("time"):
            rec = {**rec, "images_per_s": self.batch_size / rec["time"]}
            pairs.append(("images_per_s", "train/images_per_s"))
        for field, key in pairs:
            v = rec.get(field)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and step > self.last_step.get(key, -1):
                out.append(Metric(key, float(v), now, step))
        return out

    def write(self, rec: dict[str, Any]) -> None:
        """Log a train / val record's metrics at its iteration (steps MLflow already has are skipped)."""
        if self.client is None:
            return
        try:
            if rec.get("type") == "summary":
                self._summary(rec)
                return
            metrics = self._metrics(rec)
            if metrics:
                self.client.log_batch(self.run_id, metrics=metrics)
                for m in metrics:
                    self.last_step[m.key] = m.step
        except Exception as e:  # noqa: BLE001
            self.client = None
            warn(f"{self.uri}|{self.run_dir}",
                 f"logging to {self.uri} failed ({_short(e)}); no more records go there in this run")

    replay = write  # on resume: the kept records MLflow does not have yet (a store that was down)

    def _summary(self, rec: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(rec.get("iters") or 0)
        metrics = [Metric(f"summary/{k}", float(rec[k]), now, step) for k in SUMMARY_METRICS
                   if isinstance(rec.get(k), (int, float)) and not isinstance(rec.get(k), bool)
                   and step > self.last_step.get(f"summary/{k}", -1)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
            for m in metrics:
                self.last_step[m.key] = m.step

    def close(self) -> None:
        """Nothing: `finish_mlflow` uploads the files and ends the MLflow run once the figures exist."""


def finish_mlflow(run_dir: Path, cfg: Any, status: str = "FINISHED") -> None:
    """End the run's MLflow run with `status`: first the records of `log.jsonl` MLflow does not
    hold yet (the store was down for a while), then the run's files (config, log, curves, report;
    checkpoints when `log.mlflow_checkpoints`). A failure is one warning line (none when this
    run has already had its warning)."""
    state = read_state(run_dir)
    if not cfg.log.mlflow or state is None or state["tracking_uri"] != cfg.log.mlflow:
        return
    try:
        from mlflow.tracking import MlflowClient

        probe(cfg.log.mlflow)
        client = MlflowClient(tracking_uri=cfg.log.mlflow)
        if status != "FINISHED" and client.get_run(state["run_id"]).info.status != "RUNNING":
            return  # this attempt never reopened the MLflow run (e.g. --resume of a finished run)
        sink = MlflowSink(cfg, run_dir, None, None, open_run=False)
        sink.attach(client, state["run_id"])
        records = read_jsonl(run_dir / "log.jsonl") if (run_dir / "log.jsonl").is_file() else []
        missed = [m for rec in records for m in sink._metrics(rec)]  # usually none: the sink sent them live
        for i in range(0, len(missed), METRICS_PER_BATCH):
            client.log_batch(state["run_id"], metrics=missed[i:i + METRICS_PER_BATCH])
        for rec in records:
            if rec.get("type") == "summary":
                sink._summary(rec)
        names = list(ARTIFACTS) + (["last.pt", "best.pt"] if cfg.log.mlflow_checkpoints else [])
        for name in names:
            p = run_dir / name
            if p.is_file() and not p.is_symlink():
                client.log_artifact(state["run_id"], str(p))
        client.set_terminated(state["run_id"], status=status)
    except Exception as e:  # noqa: BLE001
        warn(f"{cfg.log.mlflow}|{run_dir}", f"could not finish run {state['run_id']} at {cfg.log.mlflow} ({_short(e)})")
