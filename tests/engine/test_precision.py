"""The precision rule (infer/device.py): bf16 on a CPU only where it is in hardware, fp32 elsewhere;
inference picks its own precision on the machine it runs on; an emulated precision asked for
explicitly runs after one warning line; the precision used is recorded everywhere."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifarkit.config import load_config
from cifarkit.engine.train import fit
from cifarkit.infer import device
from cifarkit.infer.checkpoint import load_checkpoint
from cifarkit.infer.device import amp_dtype, kind_of, slow_precision_warning
from cifarkit.infer.inference import Inference, evaluate_checkpoint
from conftest import NARROW, needs_bf16

FAST = Path(__file__).resolve().parents[2] / "configs" / "cifar10_fast.yaml"
CPU = torch.device("cpu")


def tiny_cfg(root: Path, *extra: str):
    return load_config(FAST, [f"data.root={root}", "train.batch_size=100", "train.epochs=1", "eval.interval=1",
                              "eval.batch_size=50", "log.interval=1", "log.plots=false", "eval.tta=none", NARROW,
                              *extra])


@pytest.mark.parametrize(("flags", "amx", "avx512bf16", "cap", "kind"), [
    ({"avx2", "fma"}, False, False, "AVX2", "AVX2"),                           # AMD EPYC Zen 1-3, most laptops
    ({"avx512f", "avx512bw"}, False, False, "AVX512", "AVX512"),               # Skylake-SP: bf16 emulated
    ({"avx512f", "avx512_bf16"}, False, False, "AVX512", "AVX512-BF16"),       # Zen 4, Cooper Lake
    ({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, False, False, "AVX512", "AMX"),  # Sapphire Rapids
    (set(), True, False, "AVX512", "AMX"),                                     # no /proc/cpuinfo: torch's probe
    (set(), False, True, "AVX512", "AVX512-BF16"),
    (set(), False, False, "DEFAULT", "DEFAULT"),                               # e.g. ARM
])
def test_cpu_kind_from_flags_or_torch_probe(flags, amx, avx512bf16, cap, kind):
    assert kind_of(frozenset(flags), amx, avx512bf16, cap) == kind


@pytest.mark.parametrize(("kind", "auto"), [("AVX2", None), ("AVX512", None), ("DEFAULT", None),
                                            ("AVX512-BF16", torch.bfloat16), ("AMX", torch.bfloat16)])
def test_auto_is_bf16_only_on_hardware_bf16(monkeypatch, kind, auto):
    monkeypatch.delenv(device.BF16_ENV, raising=False)
    monkeypatch.setattr(device, "cpu_kind", lambda: kind)
    monkeypatch.setattr(device, "onednn_bf16", lambda: True)  # what torch reports on such CPUs
    assert amp_dtype("auto", CPU) is auto
    # explicit choices are kept on every kind; fp32 spelled either way
    assert amp_dtype("bf16", CPU) is torch.bfloat16 and amp_dtype("fp16", CPU) is torch.float16
    assert amp_dtype("none", CPU) is None and amp_dtype("fp32", CPU) is None
    warning = slow_precision_warning(torch.bfloat16, CPU, "train.amp=bf16")
    if auto is None:
        assert warning.startswith("warning: train.amp=bf16: ") and kind in warning and "slower than fp32" in warning
        assert "\n" not in warning and "auto" in warning  # one line that says how to switch
    else:
        assert warning is None
    assert slow_precision_warning(None, CPU, "train.amp=fp32") is None


def test_env_overrides_detection_both_ways(monkeypatch):
    monkeypatch.setattr(device, "cpu_kind", lambda: "AVX2")
    monkeypatch.setenv(device.BF16_ENV, "1")
    assert amp_dtype("auto", CPU) is torch.bfloat16
    monkeypatch.setattr(device, "cpu_kind", lambda: "AMX")
    monkeypatch.setenv(device.BF16_ENV, "0")
    assert amp_dtype("auto", CPU) is None
    monkeypatch.setenv(device.BF16_ENV, "")  # empty: the hardware decides
    assert amp_dtype("auto", CPU) is (torch.bfloat16 if device.hardware_bf16() else None)


def test_shipped_recipes_let_the_machine_choose():
    for path in sorted(FAST.parent.glob("*.yaml")):
        assert load_config(path).train.amp == "auto", path.name


def test_precision_is_recorded_in_header_val_and_checkpoint(cifar10_small: Path, tmp_path: Path, capsys):
    fit(tiny_cfg(cifar10_small, "train.max_iters=2"), work_dir=tmp_path / "r")
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("training airnet on cpu (") and " in fp32: " in first  # printed at the start
    recs = [json.loads(x) for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert recs[0]["precision"] == "fp32" and recs[0]["versions"]["cpu_kind"] == device.cpu_kind()
    assert all(r["precision"] == "fp32" for r in recs if r["type"] == "val")
    ck = load_checkpoint(tmp_path / "r" / "last.pt")
    assert ck["precision"] == "fp32" and ck["device"] == "cpu"


def test_inference_precision_is_this_machines_not_the_runs(cifar10_small: Path, tmp_path: Path, monkeypatch):
    """A run that trained in bf16 (say on an AMX machine) is evaluated in fp32 on an AVX2 one: the
    checkpoint's train.amp is not what inference uses; --precision overrides."""
    fit(tiny_cfg(cifar10_small, "train.max_iters=1", "train.amp=fp32"), work_dir=tmp_path / "r", quiet=True)
    ck = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    ck["config"]["train"]["amp"] = "bf16"  # as if trained on a bf16 machine (inference must not follow it)
    torch.save(ck, tmp_path / "r" / "bf16run.pt")
    assert Inference.from_checkpoint(tmp_path / "r" / "bf16run.pt", device="cpu").precision == "fp32"
    monkeypatch.setattr(device, "cpu_kind", lambda: "AMX")
    monkeypatch.setattr(device, "onednn_bf16", lambda: True)
    monkeypatch.delenv(device.BF16_ENV)
    assert Inference.from_checkpoint(tmp_path / "r" / "last.pt", device="cpu").precision == "bf16"  # auto, here
    assert Inference.from_checkpoint(tmp_path / "r" / "last.pt", device="cpu", precision="fp32").precision == "fp32"


def test_explicit_bf16_on_a_cpu_without_it_runs_with_one_warning(cifar10_small: Path, tmp_path: Path, monkeypatch):
    real_bf16 = device.hardware_bf16()  # what the child process will find: read before the patch below
    monkeypatch.setattr(device, "cpu_kind", lambda: "AVX2")
    fit(tiny_cfg(cifar10_small, "train.max_iters=1", "train.amp=fp32"), work_dir=tmp_path / "r", quiet=True)
    r = subprocess.run([sys.executable, "-m", "cifarkit", "eval", str(tmp_path / "r" / "last.pt"), "--json",
                        "--precision", "bf16"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["precision"] == "bf16"
    if not real_bf16:  # the child process reads this machine's own CPU
        lines = [x for x in r.stderr.splitlines() if x.startswith("warning:")]
        assert len(lines) == 1 and "--precision bf16" in lines[0] and "slower than fp32" in lines[0]
    r = subprocess.run([sys.executable, "-m", "cifarkit", "eval", str(tmp_path / "r" / "last.pt"),
                        "--precision", "fp64"], capture_output=True, text=True)
    assert r.returncode == 2 and "--precision" in r.stderr and "Traceback" not in r.stderr


def test_fit_warns_once_for_emulated_bf16(cifar10_small: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setattr(device, "hardware_bf16", lambda: False)
    monkeypatch.setattr(device, "cpu_kind", lambda: "AVX2")
    # one step of 20 images: emulated bf16 is slow, so the test keeps the work tiny
    fit(tiny_cfg(cifar10_small, "train.max_iters=1", "train.amp=bf16", "train.batch_size=20", "eval.interval=100",
                 "train.epochs=0.05"), work_dir=tmp_path / "r", quiet=True)
    err = capsys.readouterr().err
    assert err.count("warning: train.amp=bf16: this CPU (AVX2)") == 1
    assert json.loads((tmp_path / "r" / "log.jsonl").read_text().splitlines()[0])["precision"] == "bf16"


@pytest.mark.slow
@needs_bf16()
def test_bf16_trained_checkpoint_evaluated_in_fp32_gives_the_same_top1(cifar10_small: Path, tmp_path: Path):
    """Documented tolerance (docs/workflow/training.md, "Precision and CPU kinds"): the top-1 of one
    checkpoint in bf16 and in fp32 differs by at most 1 point; on these 100 toy test images that is
    at most 1 image."""
    fit(tiny_cfg(cifar10_small, "train.epochs=3", "train.amp=bf16"), work_dir=tmp_path / "r", quiet=True)
    ck = tmp_path / "r" / "last.pt"
    bf16 = evaluate_checkpoint(ck, precision="bf16")
    fp32 = evaluate_checkpoint(ck, precision="fp32")
    assert (bf16["precision"], fp32["precision"]) == ("bf16", "fp32")
    assert bf16["top1"] > 30 and abs(bf16["top1"] - fp32["top1"]) <= 1.0
    last_val = [json.loads(x) for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()
                if '"val"' in x][-1]
    assert last_val["precision"] == "bf16" and last_val["top1"] == bf16["top1"]  # eval reproduces training's
