"""Shared option helpers of the `cifarkit` commands: argparse types (`positive_int`, `seed_int`,
`diverge_factor`, `port_number`, `serve_limit`, `finite_tau`), the options many commands take
(`add_device_option`, `add_tta_option`, `add_logit_adjust_option`, `add_precision_option`, their choices
read from `cifarkit.options`) and `json_line` for every --json output."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from cifarkit.options import DEVICE_DEFAULT, DEVICES, PRECISIONS, TTA_ALONE, TTA_LEVELS
from cifarkit.serve.limits import limit_problem


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (so `--topk 0` or `--batch-size -1` fail with one line)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be >= 1")
    return v


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def json_line(obj: Any) -> str:
    """`obj` as one line of strict JSON for --json output: NaN and infinities (which json.dumps
    writes as the invalid `NaN` / `Infinity`) become null; anything else not JSON becomes its str."""
    return json.dumps(_finite(obj), default=str, allow_nan=False)


def seed_int(text: str) -> int:
    """argparse type for every --seed: a whole number 0..2^31-1 (what train.seed takes; numpy and
    torch refuse negative seeds with a traceback)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= v <= 2**31 - 1:
        raise argparse.ArgumentTypeError(f"{v} is not a seed; use a whole number from 0 to 2147483647")
    return v


def diverge_factor(text: str) -> float:
    """argparse type for lr-find --diverge: a finite factor above 1 (the smoothed loss over its
    minimum; at 1 or below every sweep stops at once, NaN never stops it)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(v) and 1 < v <= 1e6):
        raise argparse.ArgumentTypeError(f"{v} must be a number above 1 (the loss over its minimum, e.g. 4)")
    return v


def port_number(text: str) -> int:
    """argparse type for `serve --port`: 1..65535, or 0 for any free port."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"{v} must be from 1 to 65535 (or 0 for any free port)")
    return v


def serve_limit(field: str):
    """argparse type for the serve option that sets `serve.app.Limits` field `field`: the same
    check as the library's (`limit_problem`), at parse time, before any model is loaded."""
    def parse(text: str) -> float | int:
        whole = field in ("max_files", "max_batch", "max_queue")
        try:
            v: float | int = int(text) if whole else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if whole else ''}number") from None
        problem = limit_problem(field, v)
        if problem:
            raise argparse.ArgumentTypeError(f"{text} {problem}")
        return v

    parse.__name__ = field  # argparse names the type in some messages
    return parse


def add_device_option(p: argparse.ArgumentParser, config_key: str | None = None) -> None:
    """Add `--device` to `p`: default auto (`options.DEVICE_DEFAULT`), or with `config_key` None =
    that config value (`train.device`, "the recipe's")."""
    if config_key is None:
        p.add_argument("--device", default=DEVICE_DEFAULT)
    else:
        p.add_argument("--device", default=None, help=f"{DEVICES} (default: {config_key})")


def add_tta_option(p: argparse.ArgumentParser, default: str | None = None,
                   default_help: str = "the checkpoint's eval.tta") -> None:
    """Add `--tta none|flip|flip_translate` (default `default`: None = the checkpoint's) to `p`."""
    p.add_argument("--tta", nargs="?", const=TTA_ALONE, default=default, choices=TTA_LEVELS,
                   help=f"test-time augmentation (default: {default_help}; --tta alone = {TTA_ALONE})")


def add_inference_options(p: argparse.ArgumentParser, logit_adjust: bool = False) -> None:
    """Add the options of every command that runs a checkpoint, in one order: `--tta`, (with
    `logit_adjust`) `--logit-adjust`, `--precision`, `--device`."""
    add_tta_option(p)
    if logit_adjust:
        add_logit_adjust_option(p)
    add_precision_option(p)
    add_device_option(p)


def finite_tau(text: str) -> float:
    """argparse type for --logit-adjust: a finite number >= 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"{v} must be a finite number >= 0")
    return v


def add_logit_adjust_option(p: argparse.ArgumentParser) -> None:
    """Add `--logit-adjust TAU` (default: the checkpoint's eval.logit_adjust) to `p`."""
    p.add_argument("--logit-adjust", type=finite_tau, default=None, metavar="TAU",
                   help="post-hoc logit adjustment: logits - TAU * log(training class prior) (Menon et al. 2021); "
                        "default the checkpoint's eval.logit_adjust, 0 = off")


def add_precision_option(p: argparse.ArgumentParser) -> None:
    """Add `--precision auto|fp32|bf16|fp16` (default auto: what this machine is fast at) to `p`."""
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="inference precision (default auto: bf16 on CUDA or a CPU with AMX / AVX512-BF16, else "
                        "fp32, whatever the run trained in)")
