"""The run log: `log.jsonl`, one JSON object per line, flushed as written.

First line: a header (config, versions, device, seed, classes). Then `{"type": "train", ...}`
every `log.interval` iterations and `{"type": "val", ...}` after each evaluation. Every later
tool (plot, report, eval comparisons) reads this one schema.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _clean(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return str(v)
    return v


class RunLog:
    def __init__(self, path: str | Path, header: dict[str, Any] | None = None, resume_iter: int | None = None):
        self.path = Path(path)
        if resume_iter is not None and self.path.is_file():
            # keep the header and every record up to the checkpoint we resume from, so the log of
            # a resumed run reads exactly like an uninterrupted one
            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a crash
                kind = rec.get("type")
                if kind == "header" or (kind != "summary" and rec.get("iter", 0) <= resume_iter):
                    kept.append(line)
            self.path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
            self.f = open(self.path, "a", encoding="utf-8")
        else:
            self.f = open(self.path, "w", encoding="utf-8")
            if header is not None:
                self.write({"type": "header", **header})

    def write(self, rec: dict[str, Any]) -> None:
        self.f.write(json.dumps({k: _clean(v) for k, v in rec.items()}, default=str) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
