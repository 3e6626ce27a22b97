"""`log.mlflow` against real MLflow, no mocks: a sqlite store read back with MlflowClient and
compared value by value with log.jsonl, a live `mlflow server` over HTTP, kill -9 and --resume
(one MLflow run, no step twice), an unreachable server (training goes on, one warning), and a
missing extra (one line before training)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import NARROW, cli_run

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

KEYS = {"train": {"loss": "train/loss", "lr": "train/lr"},
        "val": {"top1": "val/top1", "top5": "val/top5", "loss": "val/loss"}}


def sets(root: Path, uri: str, *extra: str) -> list[str]:
    out = []
    for s in (f"data.root={root}", "train.batch_size=100", "eval.tta=none", "eval.batch_size=100", "log.interval=1",
              "train.device=cpu", "eval.interval=1", f"log.mlflow={uri}", NARROW, *extra):
        out += ["--set", s]
    return out


def train(args: list[str], cwd: Path, wait: bool = True):
    cmd = [sys.executable, "-m", "cifarkit", "train", "fast", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


def records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def assert_same_as_log(client: MlflowClient, run_id: str, run: Path) -> None:
    """Every train / val value of log.jsonl is in MLflow at its iteration, once, and nothing else."""
    recs = records(run)
    for kind, fields in KEYS.items():
        rows = [r for r in recs if r["type"] == kind]
        assert rows, kind
        for field, key in fields.items():
            hist = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
            assert [m.step for m in hist] == [r["iter"] for r in rows], key  # each step once, none missing
            assert [m.value for m in hist] == pytest.approx([r[field] for r in rows], rel=1e-9, abs=1e-12), key
    timed = [r["iter"] for r in recs if r["type"] == "train" and r.get("time")]
    speed = sorted(m.step for m in client.get_metric_history(run_id, "train/images_per_s"))
    assert speed == timed  # each step once here too


def the_run(client: MlflowClient, experiment: str = "cifarkit"):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


@pytest.mark.slow
def test_sqlite_store_holds_the_run_value_by_value(cifar10_small: Path, tmp_path: Path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)  # the run starts inside a git checkout
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "x"],
                   cwd=tmp_path, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = train(sets(cifar10_small, uri, "train.epochs=2", "log.mlflow_experiment=exp one")
              + ["--work-dir", "run"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "warning: MLflow" not in r.stderr
    client = MlflowClient(uri)
    run = the_run(client, "exp one")
    assert run.info.status == "FINISHED" and run.info.run_name == "cifar10_fast"
    assert json.loads((tmp_path / "run" / "mlflow.json").read_text())["run_id"] == run.info.run_id
    assert_same_as_log(client, run.info.run_id, tmp_path / "run")
    header, summary = records(tmp_path / "run")[0], records(tmp_path / "run")[-1]
    p = run.data.params
    assert p["optim.lr"] == str(header["config"]["optim"]["lr"]) and p["data.root"] == str(cifar10_small)
    assert p["model.kwargs.widths"] == "[32, 64, 64]" and p["train.epochs"] == "2.0"
    assert run.data.metrics["summary/final_top1"] == pytest.approx(summary["final_top1"])
    assert run.data.metrics["summary/best_top1"] == pytest.approx(summary["best_top1"])
    tags = run.data.tags
    assert tags["cifarkit.version"] == header["versions"]["cifarkit"] and tags["device"] == "cpu"
    assert tags["precision"] == header["precision"] and tags["mlflow.source.git.commit"] == commit
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "log.jsonl", "curves.png", "report.html"} <= arts
    assert not {"last.pt", "best.pt"} & arts  # checkpoints only with log.mlflow_checkpoints


@pytest.mark.slow
def test_live_mlflow_server_over_http(cifar10_small: Path, tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2).close()
                break
            except OSError:
                assert server.poll() is None, server.stderr.read()[-3000:]
                assert time.time() < deadline, "mlflow server did not start in 120 s"
                time.sleep(0.5)
        r = train(sets(cifar10_small, uri, "train.epochs=2", "log.mlflow_checkpoints=true", "log.plots=false")
                  + ["--work-dir", "run"], tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "warning: MLflow" not in r.stderr
        client = MlflowClient(uri)
        run = the_run(client)
        assert run.info.status == "FINISHED"
        assert_same_as_log(client, run.info.run_id, tmp_path / "run")
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "log.jsonl", "last.pt", "best.pt"} <= arts  # uploaded through the server
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


@pytest.mark.slow
def test_kill_9_then_resume_is_one_mlflow_run_without_a_step_twice(cifar10_small: Path, tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = sets(cifar10_small, uri, "train.epochs=8", "log.plots=false", "train.deterministic=true")
    args += ["--work-dir", "run"]
    victim = train(args, tmp_path, wait=False)
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:  # two epochs checkpointed, then kill somewhere inside the third
        if log.exists() and sum('"type": "val"' in ln for ln in log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    time.sleep(0.4)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    client = MlflowClient(uri)
    run_id = json.loads((tmp_path / "run" / "mlflow.json").read_text())["run_id"]
    assert client.get_run(run_id).info.status == "RUNNING"  # killed: nobody could end it
    killed_steps = max(m.step for m in client.get_metric_history(run_id, "train/loss"))
    assert killed_steps < 40, "the run finished before it could be killed; make it longer"
    r = train(args + ["--resume"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    run = the_run(client)  # the same MLflow run continued, not a second one
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert_same_as_log(client, run_id, tmp_path / "run")  # each step exactly once, values as in log.jsonl
    assert max(m.step for m in client.get_metric_history(run_id, "train/loss")) == 40


@pytest.mark.slow
def test_unreachable_server_warns_once_and_training_goes_on(cifar10_small: Path, tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    r = train(sets(cifar10_small, f"http://127.0.0.1:{port}", "train.epochs=2", "log.plots=false")
              + ["--work-dir", "run"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [ln for ln in r.stderr.splitlines() if "MLflow" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("warning: MLflow: cannot log to http://127.0.0.1")
    assert "every record stays in log.jsonl" in warnings[0]
    recs = records(tmp_path / "run")
    assert sum(x["type"] == "val" for x in recs) == 2 and recs[-1]["type"] == "summary"
    assert not (tmp_path / "run" / "mlflow.json").exists()  # no MLflow run was ever made for it


def test_missing_extra_is_one_line_before_training(cifar10_small: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    r = cli_run("train", "fast", *sets(cifar10_small, "sqlite:///x.db"), "--work-dir", str(tmp_path / "run"))
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: log.mlflow needs the mlflow package, which is not installed: "
                                "pip install 'cifarkit[mlflow]' (or set log.mlflow='')")
    assert not (tmp_path / "run").exists()  # nothing started


def test_folder_store_that_mlflow_refuses_is_one_line_before_training(cifar10_small: Path, tmp_path: Path,
                                                                      monkeypatch):
    if not hasattr(pytest.importorskip("mlflow.environment_variables"), "MLFLOW_ALLOW_FILE_STORE"):
        pytest.skip("this MLflow takes folder stores as they are")  # MLflow 3 made them opt-in
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    r = cli_run("train", "fast", *sets(cifar10_small, str(tmp_path / "mlruns")), "--work-dir", str(tmp_path / "run"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "this MLflow keeps folder stores in maintenance mode" in r.stderr and "sqlite:///mlflow.db" in r.stderr
    assert not (tmp_path / "run").exists()


def test_finish_sends_what_the_store_missed_before_closing_the_run(trained_run: Path, tmp_path: Path, monkeypatch):
    # a store that was down for part of a run: at the end, the records it lacks go there first
    import shutil

    monkeypatch.chdir(tmp_path)  # MLflow keeps a sqlite store's artifacts in ./mlruns

    from cifarkit.config import config_from_dict
    from cifarkit.engine.tracking import finish_mlflow

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    first = next(r for r in records(run) if r["type"] == "train")
    client.log_metric(run_id, "train/loss", first["loss"], step=first["iter"])  # what it got before going down
    (run / "mlflow.json").write_text(json.dumps({"tracking_uri": uri, "run_id": run_id}))
    cfg = config_from_dict(records(run)[0]["config"], [f"log.mlflow={uri}"])
    finish_mlflow(run, cfg)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert_same_as_log(client, run_id, run)  # every record once, the one it had not twice
    assert client.get_run(run_id).data.metrics["summary/final_top1"] == pytest.approx(records(run)[-1]["final_top1"])
