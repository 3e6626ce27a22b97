"""The first 20 training losses of the shipped recipes, bitwise, against recorded values
(tests/fixtures/golden_losses.json, keyed "precision/CPU kind").

Why: a refactor of the training step must not change a single float. The fast recipe covers
Muon, the whitening-bias schedule, autocast and channels_last; airbench94 adds SGD with lookahead.
Run on the CPU with deterministic kernels on a tiny dataset (500 images, batch 100, so 20 steps
cross 4 epoch boundaries and the whitening bias freezing after epoch 3).
Bitwise equality holds only for the same kernels, so values are kept per precision and CPU kind
(`infer.device.cpu_kind`: AMX, AVX512-BF16, AVX512, AVX2): fp32 runs everywhere (the tests' rule),
bf16 where the CPU has it in hardware; a kind with no recorded values is skipped with the command
that records them. Regenerate only on purpose:
CIFARKIT_REGEN_GOLDEN=1 pytest tests/engine/test_golden_losses.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cifarkit.config import load_config
from cifarkit.engine.train import fit
from cifarkit.infer.device import cpu_kind
from cifarkit.logs import read_jsonl
from conftest import needs_bf16

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden_losses.json"


def first_losses(recipe: str, root: Path, run: Path, amp: str) -> list[float]:
    cfg = load_config(CONFIGS / f"{recipe}.yaml",
                      [f"data.root={root}", "train.batch_size=100", "train.epochs=4", "train.device=cpu",
                       "train.deterministic=true", "log.interval=1", "log.plots=false", "eval.interval=4",
                       "eval.tta=none", "eval.batch_size=100", "checkpoint.interval=4", f"train.amp={amp}"])
    fit(cfg, work_dir=run, quiet=True)
    return [r["loss"] for r in read_jsonl(run / "log.jsonl") if r.get("type") == "train"][:20]


def check_golden(recipe: str, amp: str, root: Path, run: Path) -> None:
    key = f"{'fp32' if amp == 'none' else amp}/{cpu_kind()}"
    data = json.loads(GOLDEN.read_text())
    if not os.environ.get("CIFARKIT_REGEN_GOLDEN") and recipe not in data.get(key, {}):
        pytest.skip(f"no golden losses recorded for {key}; record them on such a CPU with "
                    "CIFARKIT_REGEN_GOLDEN=1 pytest tests/engine/test_golden_losses.py")
    losses = first_losses(recipe, root, run, amp)
    assert len(losses) == 20
    if os.environ.get("CIFARKIT_REGEN_GOLDEN"):
        data.setdefault(key, {})[recipe] = losses
        GOLDEN.write_text(json.dumps(data, indent=1) + "\n")
    assert losses == data[key][recipe]  # ==, not approx: bitwise the same floats


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["cifar10_fast", "cifar10_airbench94"])
def test_first_20_losses_are_bitwise_the_recorded_ones_fp32(recipe: str, cifar10_small: Path, tmp_path: Path):
    check_golden(recipe, "none", cifar10_small, tmp_path / "run")


@pytest.mark.slow
@needs_bf16()
@pytest.mark.parametrize("recipe", ["cifar10_fast", "cifar10_airbench94"])
def test_first_20_losses_are_bitwise_the_recorded_ones_bf16(recipe: str, cifar10_small: Path, tmp_path: Path):
    check_golden(recipe, "bf16", cifar10_small, tmp_path / "run")
