"""Where and in what precision a run computes, and what software it runs on.

`resolve_device` turns the user's `train.device` into a torch device (one sentence when CUDA is
asked for and missing); `amp_dtype` picks the autocast dtype; `versions` is recorded in every
log header and checkpoint so a run can be reproduced.

The precision rule (`train.amp: auto`, the default of every recipe, and inference's default):
- CUDA: bf16 where the GPU has it, else fp16.
- CPU: bf16 only where the CPU computes it in hardware, i.e. it has AMX-BF16 (Intel Sapphire
  Rapids and later) or AVX512-BF16 (Intel Cooper Lake, AMD Zen 4 and later) *and* torch's oneDNN
  reports bf16 support; fp32 everywhere else. Why: without those instructions oneDNN emulates
  bf16, and training is an order of magnitude slower than in fp32 (airnet, batch 500, on a 2-core
  AMD EPYC with AVX2 only: 87.5 img/s in fp32, 7.7 in bf16, 11.4x; `benchmarks/cpu_precision.py`),
  while on AMX / AVX512-BF16 bf16 is several times faster than fp32.
- The features are read twice and either may say yes: torch's own CPU probe (cpuinfo, works on
  every OS) and the Linux `/proc/cpuinfo` flags (`amx_bf16`, `avx512_bf16`). A CPU that hides
  its flags (some hypervisors do) gets fp32: slower than it could be, never 15x slower.
- `CIFARKIT_CPU_BF16=1` (or `0`) overrides the detection; the tests set `0` so every CPU kind
  trains them in the same fp32 arithmetic.
An explicit `bf16` (or `fp16`) on a CPU without it still runs, after one `warning:` line.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import platform
import sys

import torch

from cifarkit import __version__
from cifarkit.errors import ConfigError

BF16_ENV = "CIFARKIT_CPU_BF16"
PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def resolve_device(spec: str = "auto") -> torch.device:
    """The torch device for `train.device` / --device; "auto" is CUDA when available, else the CPU.

    Raises:
        ConfigError: CUDA is asked for and not available, or `spec` names no device.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r}: CUDA is not available on this machine; use --device cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"device {spec!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type != "cpu":
        # torch.device("mps") is accepted on any machine; the first tensor put there fails much
        # later with a traceback. An empty tensor asks the backend now, for every device kind.
        try:
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError, ValueError) as e:  # not built in / no such device index
            line = (str(e).strip().splitlines() or [""])[0]
            why = f" ({line})" if 0 < len(line) <= 80 else ""  # torch's short reasons only, not its essays
            raise ConfigError(f"device {spec!r}: not available on this machine or in this PyTorch build{why}; "
                              "use --device cpu or auto") from None
    return dev


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (Linux; empty elsewhere)."""
    with contextlib.suppress(OSError, StopIteration, UnicodeDecodeError), open("/proc/cpuinfo") as f:
        line = next(ln for ln in f if ln.startswith(("flags", "Features")))
        return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _torch_probe(name: str) -> bool:
    """torch.cpu's private cpuinfo probe `name` (False where this torch lacks it)."""
    fn = getattr(torch.cpu, name, None)
    try:
        return bool(fn()) if fn is not None else False
    except Exception:  # a probe that fails on an unusual CPU says "no"
        return False


def kind_of(flags: frozenset[str] | set[str], amx: bool = False, avx512_bf16: bool = False,
            capability: str = "DEFAULT") -> str:
    """The CPU kind from /proc/cpuinfo `flags`, torch's cpuinfo probes (`amx`, `avx512_bf16`) and
    torch's vector `capability`; either source saying yes is enough."""
    if "amx_bf16" in flags or amx:
        return "AMX"
    if "avx512_bf16" in flags or avx512_bf16:
        return "AVX512-BF16"
    return capability


@functools.cache
def cpu_kind() -> str:
    """What this CPU computes fast, as figures are labelled: AMX, AVX512-BF16, AVX512, AVX2 or
    torch's capability name (e.g. DEFAULT on ARM)."""
    return kind_of(cpu_flags(), _torch_probe("_is_amx_tile_supported"), _torch_probe("_is_avx512_bf16_supported"),
                   str(torch.backends.cpu.get_cpu_capability()))


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo, else platform.processor())."""
    with contextlib.suppress(OSError, StopIteration, UnicodeDecodeError), open("/proc/cpuinfo") as f:
        return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    return platform.processor() or platform.machine()


def onednn_bf16() -> bool:
    """True where torch's oneDNN (mkldnn) is built in and reports bf16 support on this CPU."""
    if not torch.backends.mkldnn.is_available():
        return False
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return probe is None or bool(probe())


def hardware_bf16() -> bool:
    """True where this CPU computes bf16 convolutions and matmuls in hardware (AMX or AVX512-BF16)
    and torch's oneDNN can use it (module docstring); `CIFARKIT_CPU_BF16` does not change this."""
    return cpu_kind() in ("AMX", "AVX512-BF16") and onednn_bf16()


def cpu_has_bf16() -> bool:
    """`hardware_bf16()`, unless `CIFARKIT_CPU_BF16` is 0 or 1: what `auto` decides by on a CPU."""
    forced = os.environ.get(BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return hardware_bf16()


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.amp` / --precision on `device`, or None for fp32.

    "none"/"fp32" is None, "fp16" float16, "bf16" bfloat16. "auto": on CUDA bfloat16 where the GPU
    supports it, else float16; on a CPU bfloat16 only where `cpu_has_bf16()`, else fp32; fp32 on
    any other device."""
    if amp in ("none", "fp32"):
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    """fp32, bf16 or fp16: how logs, checkpoints and results name an autocast dtype."""
    return PRECISION_NAMES[dtype]


def slow_precision_warning(dtype: torch.dtype | None, device: torch.device, key: str) -> str | None:
    """The one-line warning for a precision this CPU only emulates (None when it is fine).

    `key` is how the user asked for it ("train.amp=bf16", "--precision bf16")."""
    if device.type != "cpu" or dtype is None:
        return None
    if dtype == torch.bfloat16 and not hardware_bf16():
        what = "bf16"
    elif dtype == torch.float16 and not _torch_probe("_is_amx_fp16_supported"):
        what = "fp16"
    else:
        return None
    return (f"warning: {key}: this CPU ({cpu_kind()}) has no hardware {what} (AMX or AVX512-BF16), so it is "
            f"emulated and expected to run about 10-15x slower than fp32 (airnet training on AVX2: 11.4x); "
            f"use auto (fp32 here) or none to switch")


def warn_slow_precision(dtype: torch.dtype | None, device: torch.device, key: str) -> None:
    """Print `slow_precision_warning` on stderr when there is one."""
    msg = slow_precision_warning(dtype, device, key)
    if msg:
        print(msg, file=sys.stderr, flush=True)


def torchvision_version() -> str:
    """torchvision's version from its package metadata: importing torchvision costs ~2 s on a small
    CPU (its ops import torch._dynamo), which every command would pay for one string."""
    try:
        return importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        import torchvision

        return str(torchvision.__version__)


def versions() -> dict[str, str]:
    """cifarkit, torch, torchvision and Python versions, the platform and the CPU, for log headers and checkpoints."""
    return {"cifarkit": __version__, "torch": str(torch.__version__), "torchvision": torchvision_version(),
            "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_model(),
            "cpu_kind": cpu_kind()}
