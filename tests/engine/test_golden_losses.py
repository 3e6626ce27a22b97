"""The first 20 training losses of the shipped recipes, bitwise, against values recorded before
the engine v2 refactor (tests/fixtures/golden_losses.json).

Why: a refactor of the training step must not change a single float. The fast recipe covers
Muon, the whitening-bias schedule, bf16 autocast and channels_last; airbench94 adds SGD with
lookahead. Run on the CPU with deterministic kernels on a tiny dataset (500 images, batch 100,
so 20 steps cross 4 epoch boundaries and the whitening bias freezing after epoch 3).
Regenerate only on purpose: CIFARKIT_REGEN_GOLDEN=1 pytest tests/engine/test_golden_losses.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cifarkit.config import load_config
from cifarkit.engine.train import fit
from cifarkit.logs import read_jsonl

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden_losses.json"


def first_losses(recipe: str, root: Path, run: Path) -> list[float]:
    cfg = load_config(CONFIGS / f"{recipe}.yaml",
                      [f"data.root={root}", "train.batch_size=100", "train.epochs=4", "train.device=cpu",
                       "train.deterministic=true", "log.interval=1", "log.plots=false", "eval.interval=4",
                       "eval.tta=none", "eval.batch_size=100", "checkpoint.interval=4"])
    fit(cfg, work_dir=run, quiet=True)
    return [r["loss"] for r in read_jsonl(run / "log.jsonl") if r.get("type") == "train"][:20]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["cifar10_fast", "cifar10_airbench94"])
def test_first_20_losses_are_bitwise_the_recorded_ones(recipe: str, cifar10_small: Path, tmp_path: Path):
    losses = first_losses(recipe, cifar10_small, tmp_path / "run")
    assert len(losses) == 20
    if os.environ.get("CIFARKIT_REGEN_GOLDEN"):
        data = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
        data[recipe] = losses
        GOLDEN.write_text(json.dumps(data, indent=1) + "\n")
    assert losses == json.loads(GOLDEN.read_text())[recipe]  # ==, not approx: bitwise the same floats
