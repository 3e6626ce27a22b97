"""Training throughput (images/s) of each shipped config on this machine, through `fit` itself.

    python benchmarks/train_throughput.py [--data CIFAR_DIR] [--iters N]

For each config, two runs that differ only in `train.max_iters` (warm-up W, then W + N); the
difference of their training seconds over N x batch images is the steady-state throughput, so
data loading, model build and evaluation are excluded. Writes benchmarks/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import full_cifar10, save

from cifarkit.config import load_config
from cifarkit.engine.train import fit

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PLAN = {  # config -> (warm-up iterations, timed iterations)
    "cifar10_fast": (2, 6),
    "cifar10_airbench94": (3, 10),
    "cifar10_resnet18": (3, 20),
    "cifar10_mobilenetv2_finetune": (3, 15),
}


def throughput(name: str, data: Path, warm: int, iters: int, work: Path) -> dict:
    base = [f"data.root={data}", "data.subset_per_class=1000", "log.plots=false", "eval.interval=1000",
            "checkpoint.interval=1000", "model.pretrained="]
    if name == "cifar10_mobilenetv2_finetune":
        base[1] = "data.subset_per_class=200"  # evaluation at 224 px is slow; keep it small
    cfg_a = load_config(CONFIGS / f"{name}.yaml", base + [f"train.max_iters={warm}"])
    cfg_b = load_config(CONFIGS / f"{name}.yaml", base + [f"train.max_iters={warm + iters}"])
    a = fit(cfg_a, work_dir=work / f"{name}_a", quiet=True)
    b = fit(cfg_b, work_dir=work / f"{name}_b", quiet=True)
    secs = b["train_seconds"] - a["train_seconds"]
    imgs = iters * cfg_b.train.batch_size
    return {"batch_size": cfg_b.train.batch_size, "iters": iters, "seconds": secs, "img_per_s": imgs / secs,
            "amp": cfg_b.train.amp, "model": cfg_b.model.name}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--configs", nargs="+", default=list(PLAN))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cifarkit-tp-"))
    data = args.data or full_cifar10(Path(tempfile.gettempdir()) / "cifarkit-bench")
    if data is None:
        raise SystemExit("no data: pass --data CIFAR_DIR (../shared/datasets is absent)")
    results = {}
    for name in args.configs:
        warm, iters = PLAN[name]
        r = throughput(name, data, warm, iters, work)
        results[name] = r
        print(f"{name:<32} {r['model']:<16} batch {r['batch_size']:>5}  {r['img_per_s']:8.1f} img/s "
              f"({r['iters']} iterations in {r['seconds']:.1f} s, amp {r['amp']})", flush=True)
    save("train_throughput", {"results": results})


if __name__ == "__main__":
    main()
