"""The run log: `log.jsonl`, one JSON object per line, flushed as written.

First line: a header (config, versions, device, seed, classes). Then `{"type": "train", ...}`
every `log.interval` iterations and `{"type": "val", ...}` after each evaluation. Every later
tool (plot, report, eval comparisons) reads this one schema. `sinks` (engine/loggers.py:
TensorBoard, CSV) receive every record too; on resume the kept records are `replay`ed to them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cifarkit.logs import read_jsonl


def _clean(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return str(v)
    return v


class RunLog:
    """The writer of a run's `log.jsonl`: one JSON record per line, flushed, copied to `sinks`.

    Non-finite floats are written as the strings "nan" / "inf", which JSON has no numbers for.

    Args:
        path: the log file; it is (re)written.
        header: the header record of a fresh run (config, versions, device, ...), written first.
        resume_iter: when resuming from a checkpoint at this iteration (and the log exists): the
            log is rewritten with its header and its records up to that iteration, the summary
            dropped, each kept record replayed to the sinks.
        sinks: extra views (`engine.loggers`) given every record by `write`, `replay` and `close`.
    """
    def __init__(self, path: str | Path, header: dict[str, Any] | None = None, resume_iter: int | None = None,
                 sinks: Sequence[Any] = ()):
        self.path = Path(path)
        self.sinks = list(sinks)
        if resume_iter is not None and self.path.is_file():
            # keep the header and every record up to the checkpoint we resume from, so the log of
            # a resumed run reads exactly like an uninterrupted one
            # (a torn last line from a crash is dropped by the reader)
            kept = [r for r in read_jsonl(self.path) if r.get("type") == "header"
                    or (r.get("type") != "summary" and (r.get("iter") or 0) <= resume_iter)]
            self.f = open(self.path, "w", encoding="utf-8")
            for rec in kept:
                self._write_line(rec)
                for sink in self.sinks:
                    sink.replay(rec)
        else:
            self.f = open(self.path, "w", encoding="utf-8")
            if header is not None:
                self.write({"type": "header", **header})

    def write(self, rec: dict[str, Any]) -> None:
        """Append `rec` to the log and pass it to every sink."""
        self._write_line(rec)
        for sink in self.sinks:
            sink.write(rec)

    def _write_line(self, rec: dict[str, Any]) -> None:
        self.f.write(json.dumps({k: _clean(v) for k, v in rec.items()}, default=str) + "\n")
        self.f.flush()

    def close(self) -> None:
        """Close the log file, then every sink."""
        self.f.close()
        for sink in self.sinks:
            sink.close()
