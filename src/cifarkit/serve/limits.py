"""`cifarkit serve`'s limits, and their checks, kept apart from the app so the command line can
check its options at parse time without importing FastAPI or torch.

Every limit is refused at start when it cannot work (`limit_problem`): a zero or negative upload
limit would start a server that answers every request 413, NaN or infinity would compare false
with everything, a port outside 0..65535 would end in an OverflowError traceback from `bind`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from cifarkit.errors import ConfigError

MAX_WAIT_MS = 10_000.0  # --batch-wait-ms: longer would hold every lone request that long


@dataclass
class Limits:
    """Bounds on what one client may send, on what all requests together may hold, and on the
    batching; all configurable on the command line (and checked there, and here for library use)."""
    max_upload_mb: float = 20.0  # whole request body [MiB]
    max_files: int = 64  # image files in one request
    max_batch: int = 64  # images in one batched forward pass
    wait_ms: float = 5.0  # how long the batcher keeps collecting after the first request [ms]
    max_queue: int = 256  # requests waiting for the model; more are refused with 503
    max_decoded_mpx: float = 64.0  # decoded pixels all requests together hold at once [Mpx of 2^20 px]

    def __post_init__(self) -> None:
        check_limits(self)

    @property
    def pixel_budget(self) -> int:
        """`max_decoded_mpx` in pixels: a Mpx here is 2^20 px, one upload decoded at DECODE_MAX_SIDE
        (1024^2), so the default 64 lets one request of 64 images at that size run in one go."""
        return max(1, int(self.max_decoded_mpx * 2**20))


# the command-line option each Limits field is set by, for the error line
LIMIT_OPTIONS = {"max_upload_mb": "--max-upload-mb", "max_files": "--max-files", "max_batch": "--max-batch",
                 "wait_ms": "--batch-wait-ms", "max_queue": "--max-queue", "max_decoded_mpx": "--max-decoded-mpx"}


def limit_problem(name: str, value: Any) -> str | None:
    """Why `value` cannot be Limits field `name` (a phrase), or None when it can: a whole number
    >= 1 for counts, a finite number > 0 for sizes (a zero upload limit would answer every request
    413), 0..MAX_WAIT_MS for the batch wait."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "must be a number"
    if name in ("max_files", "max_batch", "max_queue"):
        return None if isinstance(value, int) and value >= 1 else "must be a whole number >= 1"
    if not math.isfinite(value):
        return "must be a finite number"
    if name == "wait_ms":
        return None if 0 <= value <= MAX_WAIT_MS else f"must be from 0 to {MAX_WAIT_MS:g} ms"
    return None if value > 0 else "must be > 0"


def check_limits(limits: Limits) -> Limits:
    """`limits`, or a ConfigError naming the first option out of range (see `limit_problem`)."""
    for f in fields(limits):
        value = getattr(limits, f.name)
        problem = limit_problem(f.name, value)
        if problem:
            raise ConfigError(f"{LIMIT_OPTIONS[f.name]} {value}: {problem}")
    return limits


def check_port(port: Any) -> int:
    """`port` if it is a TCP port (1..65535) or 0 (any free one), else a ConfigError."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: must be a whole number from 1 to 65535 (or 0 for any free port)")
    return port
