"""`cifarkit tune` on the fast recipe: ASHA pruning vs none, and whether the best config found at a
reduced budget beats the shipped recipe at the shipped budget.

    python benchmarks/tune.py [--trials 16] [--per-class 1200] [--seeds 2] [--out DIR]

1. Two searches of `--trials` trials each over the fast recipe's conv-filter lr (`optim.muon_lr`,
   log-uniform 0.05..1), weight decay (`optim.weight_decay`, log-uniform 1e-3..0.02; per step, as
   the recipe's 0.004) and label smoothing (0..0.4), same TPE seed, one with `--pruner asha` and
   one with `--pruner none`, each on a reduced budget: the first `--per-class` training images of
   each class, 20% of them held out as the validation split the trials are scored on (never the
   test split), the recipe's 8 epochs, evaluated after every epoch (the pruner's input), no TTA.
   Wall time and best validation top-1 of each.
2. The best config of the two searches, retrained at the shipped budget (all 50,000 training
   images, scored on the 10,000 test images, TTA as shipped) vs the shipped recipe, `--seeds`
   seeds each (train.seed 0, 1, ...).

Data: the shared CIFAR-10 copy (JPEG re-encodings, ~3.4 points below clean-pixel accuracies),
converted once to the python batch layout. Prints a table and writes results/tune.json with the
machine (CPU model, kind, precision); times are only comparable within one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import full_cifar10, machine, save  # noqa: E402

SPACE = {
    "optim.muon_lr": {"log_uniform": [0.05, 1.0]},
    "optim.weight_decay": {"log_uniform": [1.0e-3, 0.02]},
    "train.label_smoothing": {"uniform": [0.0, 0.4]},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--per-class", type=int, default=1200, help="training images per class in the searches")
    ap.add_argument("--seeds", type=int, default=2, help="seeds of each shipped-budget run")
    ap.add_argument("--epochs", type=float, default=None, help="search epochs (default: the recipe's)")
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--smoke", action="store_true", help="shipped-budget runs of 2 steps: checks the script only")
    a = ap.parse_args()

    from cifarkit.config import config_to_dict, load_config
    from cifarkit.engine.train import fit
    from cifarkit.tune import load_space, tune

    work = Path(a.out or tempfile.mkdtemp(prefix="cifarkit-tune-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    root = full_cifar10(work)
    if root is None:
        sys.exit("needs ../shared/datasets (the CIFAR-10 copy); not found")
    info = machine()
    print(f"machine: {info['cpu']} ({info['cpu_kind']}, {info['precision']}, {info['torch_threads']} threads)")
    (work / "space.yaml").write_text(yaml.safe_dump(SPACE))
    # eval.interval=1: the recipe evaluates once, at the end; a pruner needs every epoch's score
    search = [f"data.root={root}", f"data.subset_per_class={a.per_class}", "data.val_fraction=0.2", "eval.tta=none",
              "eval.interval=1", "log.plots=false", "checkpoint.save_best=false"]
    if a.epochs:
        search.append(f"train.epochs={a.epochs}")
    base = load_config("fast", search)
    space = load_space(work / "space.yaml", base)
    result: dict = {"machine": info, "space": SPACE, "trials": a.trials, "per_class": a.per_class,
                    "search_budget": {"train_images": int(a.per_class * 10 * 0.8), "val_images": int(a.per_class * 2),
                                      "epochs": base.train.epochs}, "searches": {}}
    for pruner in ("asha", "none"):
        t0 = time.perf_counter()
        r = tune(base, space, a.trials, work / f"search-{pruner}", pruner=pruner, seed=0, quiet=False)
        wall = time.perf_counter() - t0
        result["searches"][pruner] = {"wall_s": round(wall, 1), "best_val_top1": r.best_value,
                                      "best_params": r.best_params, "complete": r.complete, "pruned": r.pruned,
                                      "failed": r.failed, "best_trial": r.best_number}
        print(f"{pruner}: {wall:.0f} s, best val top1 {r.best_value:.2f} ({r.complete} complete, {r.pruned} pruned)")
    s = result["searches"]
    s["asha"]["time_vs_none"] = round(s["asha"]["wall_s"] / s["none"]["wall_s"], 3)
    winner = max(("asha", "none"), key=lambda k: s[k]["best_val_top1"])
    best_params = s[winner]["best_params"]
    result["retrained"] = {"from": winner, "params": best_params}

    shipped = [f"data.root={root}", "log.plots=false", "checkpoint.save_best=false",
               *(["train.max_iters=2"] if a.smoke else [])]
    runs: dict[str, list[float]] = {"shipped": [], "tuned": []}
    for seed in range(a.seeds):
        for name, extra in (("shipped", []), ("tuned", [f"{k}={v}" for k, v in best_params.items()])):
            cfg = load_config("fast", [*shipped, f"train.seed={seed}", *extra])
            t0 = time.perf_counter()
            summ = fit(cfg, work / f"{name}-seed{seed}", quiet=True)
            runs[name].append(summ["final"]["top1"])
            print(f"{name} seed {seed}: test top1 {summ['final']['top1']:.2f} ({time.perf_counter() - t0:.0f} s)")
    result["retrained"]["config_tuned"] = config_to_dict(load_config("fast", [f"{k}={v}" for k, v in
                                                                                best_params.items()]))["optim"]
    for name, v in runs.items():
        result["retrained"][name] = {"top1": v, "mean": round(statistics.mean(v), 2)}
    path = save("tune", result)
    print()
    print("| search (16 trials unless said) | wall [s] | best val top-1 | complete / pruned |")
    print("|---|---|---|---|")
    for k in ("asha", "none"):
        print(f"| {k} | {s[k]['wall_s']:.0f} | {s[k]['best_val_top1']:.2f} | {s[k]['complete']} / {s[k]['pruned']} |")
    print(f"ASHA / none wall time: {s['asha']['time_vs_none']:.2f}")
    print(f"shipped budget, test top-1 over {a.seeds} seeds: shipped recipe {runs['shipped']} "
          f"(mean {statistics.mean(runs['shipped']):.2f}) vs tuned ({winner}'s best {best_params}) {runs['tuned']} "
          f"(mean {statistics.mean(runs['tuned']):.2f})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
