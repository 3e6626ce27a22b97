"""Long-tail methods on CIFAR-10-LT (imbalance ratio 100) side by side, over seeds.

    python benchmarks/long_tail.py --data CIFAR_DIR [--seeds 0 1 2] [--epochs E] [--max-iters N]

Every method starts from the shipped recipe configs/cifar10_lt100.yaml (airnet, Muon, R = 100)
and changes only its imbalance handling: plain cross-entropy, effective-number class weights
with deferred re-weighting from 2/3 of training (Cui et al. 2019; LDAM-DRW's schedule), the
class-balanced sampler, the logit-adjusted loss (Menon et al. 2021, tau = 1) and the recipe as
shipped; plus post-hoc logit adjustment (tau = 1) of the plain-CE models, which needs no training.
Methods that resolve to the same config are trained once. Each run is evaluated on the full
(balanced) test split by `cifarkit analyze`'s metrics: top-1, balanced accuracy (mean per-class
recall) and few-shot accuracy (classes with < 20 training images; at R = 100 there are none, so
medium- and many-shot are printed too). Prints mean +- sd per method with the training minutes
per seed, and writes benchmarks/results/long_tail.json (or --out).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path

from _common import save

from cifarkit.analysis.analyze import analyze
from cifarkit.config import config_to_dict, load_config
from cifarkit.engine.train import fit

RECIPE = Path(__file__).resolve().parents[1] / "src" / "cifarkit" / "configs" / "cifar10_lt100.yaml"
PLAIN = ["train.logit_adjust=0", "train.class_weights=none", "data.sampler=uniform"]


def methods(epochs: float) -> dict[str, list[str]]:
    """Method name -> overrides of the recipe."""
    drw = max(1, int(math.ceil(epochs)) * 2 // 3)
    return {"plain CE": PLAIN,
            "class weights (effective, DRW)": [*PLAIN, "train.class_weights=effective",
                                               f"train.class_weights_from_epoch={drw}"],
            "balanced sampler": [*PLAIN, "data.sampler=balanced"],
            "logit adjustment (tau 1)": [*PLAIN, "train.logit_adjust=1.0"],
            "recipe (cifar10_lt100.yaml)": []}


POSTHOC = "plain CE + post-hoc LA (tau 1)"


def row(seed: int, m: dict, train_seconds: float) -> dict:
    """One run's numbers from `analyze`'s metrics."""
    return {"seed": seed, "top1": m["top1"], "balanced_accuracy": m["balanced_accuracy"],
            **{f"{k}_shot": v for k, v in m["shot_accuracy"].items()}, "train_minutes": train_seconds / 60}


def fmt(values: list[float | None]) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "    n/a     "
    return f"{statistics.mean(v):6.2f} +- {statistics.stdev(v) if len(v) > 1 else 0.0:4.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="CIFAR-10 python batches folder (the full, balanced set)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=float, default=None, help="override train.epochs (default: the recipe's)")
    ap.add_argument("--max-iters", type=int, default=0, help="stop each run after N iterations (smoke runs)")
    ap.add_argument("--set", action="append", default=[], help="extra key=value overrides for every run")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/long_tail.json)")
    a = ap.parse_args()
    common = [f"data.root={a.data}", "log.plots=false", f"train.max_iters={a.max_iters}", *a.set]
    if a.epochs is not None:
        common.append(f"train.epochs={a.epochs}")
    epochs = load_config(RECIPE, common).train.epochs
    results: dict[str, list[dict]] = {}
    trained: dict[str, str] = {}  # resolved config (as text) -> the method that trained it
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in methods(epochs).items():
            key = str(config_to_dict(load_config(RECIPE, [*common, *overrides])))
            if key in trained:
                print(f"{name}: the same config as {trained[key]!r}, not trained again", flush=True)
                results[name] = results[trained[key]]
                continue
            trained[key] = name
            results[name] = []
            for seed in a.seeds:
                cfg = load_config(RECIPE, [*common, *overrides, f"train.seed={seed}"])
                run = Path(tmp) / f"{len(trained)}_{seed}"
                summary = fit(cfg, work_dir=run, quiet=True)
                results[name].append(row(seed, analyze(run / "last.pt", run / "analysis"), summary["train_seconds"]))
                print(f"{name} seed {seed}: {results[name][-1]}", flush=True)
                if name == "plain CE":  # post-hoc logit adjustment of the same model: no training
                    results.setdefault(POSTHOC, []).append(
                        row(seed, analyze(run / "last.pt", run / "posthoc", logit_adjust=1.0), 0.0))
                    print(f"{POSTHOC} seed {seed}: {results[POSTHOC][-1]}", flush=True)
    print(f"\nCIFAR-10-LT (R = 100), {len(a.seeds)} seed(s), mean +- sd [%]")
    print(f"{'method':<32} {'top-1':>14} {'balanced':>14} {'many-shot':>14} {'medium-shot':>14} {'few-shot':>14} "
          f"{'train min/seed':>14}")
    for name, runs in results.items():
        cols = [fmt([r[k] for r in runs]) for k in ("top1", "balanced_accuracy", "many_shot", "medium_shot",
                                                      "few_shot", "train_minutes")]
        print(f"{name:<32} " + " ".join(f"{c:>14}" for c in cols))
    save("long_tail", {"recipe": str(RECIPE.name), "seeds": a.seeds, "epochs": epochs, "max_iters": a.max_iters,
                       "overrides": common[1:], "methods": methods(epochs), "results": results}, a.out)


if __name__ == "__main__":
    main()
