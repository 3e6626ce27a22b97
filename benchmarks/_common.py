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

        from cifarkit.infer.device import amp_dtype, cpu_kind, hardware_bf16, precision_name

        info["torch"] = str(torch.__version__)
        info["torch_threads"] = torch.get_num_threads()
        info["cpu_kind"] = cpu_kind()  # AMX / AVX512-BF16 / AVX512 / AVX2: every figure says which
        info["hardware_bf16"] = hardware_bf16()
        # what `train.amp: auto` computes in here (a benchmark that measures others says so per row)
        info["precision"] = precision_name(amp_dtype("auto", torch.device("cpu")))
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def _cpuinfo(key: str) -> str:
    with contextlib.suppress(OSError, StopIteration):
        return next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.split(":")[0].strip() == key)
    return ""


def fp32_peak() -> tuple[float, str]:
    """The machine's fp32 peak [GFLOP/s] = cores x FMA units x fp32 lanes x 2 x clock, and how it
    was worked out. FMA units and vector width are not in /proc/cpuinfo: they come from the vendor,
    family and flags (AMD Zen 1 has two 128-bit FMA pipes, Zen 2-4 two 256-bit ones, Zen 5 two
    512-bit; Intel with AVX-512 two 512-bit units on server parts, with AVX2 two 256-bit ones);
    the clock is /proc/cpuinfo's "cpu MHz" (a VM often shows the base clock: turbo makes the real
    peak higher and the share of it lower). An estimate, labelled as one."""
    from cifarkit.infer.device import cpu_flags

    flags = cpu_flags()
    vendor, family = _cpuinfo("vendor_id"), int(_cpuinfo("cpu family") or 0)
    model = int(_cpuinfo("model") or 0)
    if vendor == "AuthenticAMD":
        if family == 0x17 and model < 0x30:
            units, lanes, arch = 2, 4, "AMD Zen 1/Zen+: 2 x 128-bit FMA"
        elif family >= 0x1A:
            units, lanes, arch = 2, 16, "AMD Zen 5: 2 x 512-bit FMA"
        else:
            units, lanes, arch = 2, 8, "AMD Zen 2-4: 2 x 256-bit FMA"
    elif "avx512f" in flags:
        units, lanes, arch = 2, 16, "Intel AVX-512: 2 x 512-bit FMA"
    elif "fma" in flags:
        units, lanes, arch = 2, 8, "AVX2: 2 x 256-bit FMA"
    else:
        units, lanes, arch = 1, 4, "no FMA flags: 1 x 128-bit assumed"
    ghz = float(_cpuinfo("cpu MHz") or 0) / 1000 or 2.0
    cores = os.cpu_count() or 1
    peak = cores * units * lanes * 2 * ghz
    return peak, f"{cores} cores x {arch} x 2 x {ghz:.2f} GHz (/proc/cpuinfo)"


def matmul_roof(n: int = 2048, reps: int = 5) -> float:
    """fp32 GFLOP/s of a large square matmul (oneDNN/MKL sgemm): the practical ceiling, which checks
    `fp32_peak` (a share of the estimate above 100% means the estimate is too low)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


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
