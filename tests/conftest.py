"""Shared fixtures: tiny datasets in the real on-disk formats, made fresh in each test session.

`write_py2_pickle` reproduces the byte layout of the 2009 CIFAR files (Python-2 `str` opcodes,
protocol 2, numpy's reconstructor under its historical `numpy.core` name), so the reader is
tested against the real format without shipping or downloading it.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

# Every test trains and infers in fp32 on any CPU kind (`train.amp: auto` and inference's default
# follow this): the suite's time and numbers must not depend on whether the CPU has hardware bf16
# (on AVX2 it is emulated, ~12x slower). Tests of bf16 itself ask for it explicitly and are
# skipped where the CPU lacks it (`needs_bf16`). Set at import, before any session fixture trains.
os.environ["CIFARKIT_CPU_BF16"] = "0"
# Tests that train airnet only to exercise the engine use it at a quarter of its widths (32/64/64
# channels instead of 64/256/256): ~5.5x less compute per step (batch 100 on the 2-core AVX2 CPU:
# 0.20 s vs 1.11 s), the same code paths. Recipe-level tests (golden losses, model registry) keep
# the real network.
NARROW = "model.kwargs.widths=[32,64,64]"
# `scripts/test.sh` runs the suite in 2 pytest-xdist workers (most of its time is single-threaded:
# CLI start-ups, decoding, checks): each worker, and every command it starts, then computes on
# one thread, so the two never fight over the 2 cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
NARROW_SET = ["--set", NARROW]

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class Py2Pickler(pickle._Pickler):
    def save_bytes(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin1"))

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", None)
        name = name or obj.__qualname__
        if module and module.startswith("numpy._core"):
            module = module.replace("numpy._core", "numpy.core", 1)
        self.write(pickle.GLOBAL + module.encode() + b"\n" + name.encode() + b"\n")
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def write_py2_pickle(obj, path: Path) -> None:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def make_images(labels: np.ndarray, seed: int = 0, size: int = 32) -> np.ndarray:
    """Learnable toy images (N, H, W, 3): each class has its own colour and stripe direction."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    base = np.array([[(c * 37) % 256, (c * 91) % 256, (c * 151) % 256] for c in range(10)], dtype=np.float32)
    img = np.empty((n, size, size, 3), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    for i, y in enumerate(labels):
        stripes = ((xx if y % 2 else yy) // (2 + y % 4)) % 2
        img[i] = base[y] * 0.6 + stripes[..., None] * 80
    img += rng.normal(0, 20, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def cifar_batch(labels: np.ndarray, name: str, seed: int) -> dict:
    images = make_images(labels, seed)
    return {"batch_label": f"{name}", "labels": labels.tolist(),
            "data": images.transpose(0, 3, 1, 2).reshape(len(labels), -1),
            "filenames": [f"{CLASSES[y]}_s_{seed:02d}{i:04d}.png" for i, y in enumerate(labels)]}


def make_cifar10(root: Path, per_batch: int = 20, test: int = 40, py2: bool = True) -> Path:
    """`root/cifar-10-batches-py` with 5 train batches of `per_batch` and one test batch."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    write = write_py2_pickle if py2 else (lambda o, p: p.write_bytes(pickle.dumps(o, protocol=4)))
    for b in range(1, 6):
        labels = np.arange(per_batch) % 10
        write(cifar_batch(labels, f"training batch {b} of 5", b), d / f"data_batch_{b}")
    write(cifar_batch(np.arange(test) % 10, "testing batch 1 of 1", 9), d / "test_batch")
    write({"num_cases_per_batch": per_batch, "label_names": CLASSES, "num_vis": 3072}, d / "batches.meta")
    return d


def needs_bf16():
    """skipif mark for tests of bf16 itself: they run only where the CPU has it in hardware."""
    from cifarkit.infer.device import cpu_kind, hardware_bf16

    return pytest.mark.skipif(not hardware_bf16(), reason=f"bf16 test: this CPU ({cpu_kind()}) has no hardware "
                              "bf16 (AMX or AVX512-BF16), where it would be emulated ~12x slower than fp32")


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    return make_cifar10(tmp_path / "c10")


@pytest.fixture(scope="session")
def cifar10_small(tmp_path_factory) -> Path:
    """A session-wide tiny CIFAR-10 (500 train, 100 test) for training tests."""
    return make_cifar10(tmp_path_factory.mktemp("c10s"), per_batch=100, test=100)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CIFARKIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def trained_run(cifar10_small: Path, tmp_path_factory) -> Path:
    """A tiny airnet run (3 epochs on 500 toy images): run dir with last.pt/best.pt/log.jsonl."""
    from cifarkit.config import load_config
    from cifarkit.engine.train import fit

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "cifar10_fast.yaml",
                      [f"data.root={cifar10_small}", "train.batch_size=100", "train.epochs=3", "eval.interval=1",
                       "log.interval=1", "log.plots=false", "eval.tta=none", NARROW])
    run = tmp_path_factory.mktemp("trained") / "run"
    fit(cfg, work_dir=run, quiet=True)
    return run


def make_checkpoint(model_name: str, path: Path, input_size: int = 32, num_classes: int = 10) -> Path:
    """An untrained but complete cifarkit checkpoint for `model_name` (no training needed)."""
    import torch

    from cifarkit.config import config_to_dict, load_config
    from cifarkit.models import create_model

    torch.manual_seed(0)
    cfg = load_config(None, [f"model.name={model_name}", f"model.num_classes={num_classes}", "train.amp=fp32"])
    model = create_model(model_name, num_classes)
    torch.save({"model": model.state_dict(), "config": config_to_dict(cfg), "classes": CLASSES[:num_classes],
                "preprocess": {"mean": [125.0] * 3, "std": [60.0] * 3, "input_size": input_size,
                               "eval_resize": 0, "eval_crop": 0}, "epoch": 0}, path)
    return path


def cli_run(*args: str) -> subprocess.CompletedProcess:
    """The real CLI (`cifarkit.cli.main`: the same parser, handlers and top-level error handling as
    `python -m cifarkit`) in this process, without a fresh interpreter's seconds of imports: for the
    many one-error-line cases. Tests of the process itself (exit codes, signals) use a subprocess."""
    import contextlib

    from cifarkit import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(args))
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    """Headless Chromium (Debian's `chromium`, which `.ci/run` installs) on a fresh profile in `tmp`,
    offline: for the tests that render our HTML pages (`--dump-dom`, `--screenshot`)."""
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", f"--user-data-dir={tmp / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)
