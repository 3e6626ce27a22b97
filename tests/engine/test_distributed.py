"""torchrun with 2 CPU processes (gloo on 127.0.0.1): same accuracy as 1 process, and resume."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import NARROW

FAST = Path(__file__).resolve().parents[2] / "configs" / "cifar10_airbench94.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(n: int, args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "cifarkit", "train", str(FAST), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def _sets(root: Path, *extra: str) -> list[str]:
    out = []
    for s in (f"data.root={root}", "train.batch_size=100", "train.epochs=4", "eval.interval=1", "log.plots=false",
              "eval.tta=none", NARROW, *extra):
        out += ["--set", s]
    return out


def _vals(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["type"] == "val"]


@pytest.mark.slow
def test_two_processes_match_one_and_resume(cifar10_small: Path, tmp_path: Path):
    one = _torchrun(1, _sets(cifar10_small) + ["--work-dir", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    mlflow = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # cwd: MLflow keeps a sqlite store's artifacts in ./mlruns
    two = _torchrun(2, _sets(cifar10_small, f"log.mlflow={mlflow}") + ["--work-dir", str(tmp_path / "two")],
                    cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow)
    (run,) = client.search_runs([client.get_experiment_by_name("cifarkit").experiment_id])  # rank 0 alone logs
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/top1")] == [5, 10, 15, 20]
    header = json.loads((tmp_path / "two" / "log.jsonl").read_text().splitlines()[0])
    assert header["world_size"] == 2
    v1, v2 = _vals(tmp_path / "one"), _vals(tmp_path / "two")
    assert len(v2) == 4  # rank 0 alone logs: one val record per epoch, not two
    assert abs(v1[-1]["top1"] - v2[-1]["top1"]) <= 10  # same global batch: same accuracy within noise
    assert v2[-1]["top1"] > 50
    # resume in distributed mode: stop after 2 epochs (10 global iterations), then continue
    part = _torchrun(2, _sets(cifar10_small, "train.max_iters=10") + ["--work-dir", str(tmp_path / "r")])
    assert part.returncode == 0, part.stderr[-3000:]
    res = _torchrun(2, _sets(cifar10_small) + ["--work-dir", str(tmp_path / "r"), "--resume"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stdout
    ck = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert ck["epoch"] == 4 and ck["iter"] == 20
    assert [v["epoch"] for v in _vals(tmp_path / "r")] == [1, 2, 3, 4]
