"""Helpers shared by the benchmarks: machine facts and the results file."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def machine() -> dict:
    cpu = ""
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        import torch

        info["torch"] = str(torch.__version__)
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def save(name: str, result: dict, path: Path | None = None) -> Path:
    """Write `result` with the machine's facts to benchmarks/results/<name>.json (or `path`)."""
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **result}, indent=1))
    print(f"results -> {path}", flush=True)
    return path


def full_cifar10(workdir: Path) -> Path | None:
    """The full CIFAR-10 python batches built from ../shared (None when shared/ is absent)."""
    out = workdir / "cifar10py"
    if (out / "cifar-10-batches-py" / "test_batch").exists():
        return out / "cifar-10-batches-py"
    script = SHARED / "make_cifar10_python.py"
    if not script.exists():
        return None
    subprocess.run([sys.executable, str(script), str(out)], check=True)
    return out / "cifar-10-batches-py"
