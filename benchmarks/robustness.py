"""Corruption robustness (CIFAR-10-C protocol) of the recipes we ship, side by side, and its cost.

    python benchmarks/robustness.py [--data CIFAR_DIR] [--limit N] [--resnet18-epochs 3]
                                    [--rows fast mixup cutmix cutout resnet18] [--name robustness]

Trains each row from scratch in this run, on this machine, then runs `cifarkit robustness` (15
corruptions x 5 severities, plain evaluation as the protocol, generated with seed 0) on it:
- fast: `configs/cifar10_fast.yaml` as shipped;
- mixup / cutmix / cutout: the fast recipe with one augmentation we ship switched on
  (data.mixup=1.0, data.cutmix=1.0 as in their papers for CIFAR; data.cutout=8, a quarter side);
- resnet18: `configs/cifar10_resnet18.yaml`, cut to --resnet18-epochs of its 200 (a full run does not
  fit a 2-core CPU: say so next to the number).
The table gives clean top-1 (plain, no TTA), mean corruption accuracy (mCA), and mCE / relative mCE
with the fast recipe as the reference (the paper's definitions, from the tables; 100 = as fast).
`--limit N` evaluates every row on the first N test images (the same N for all rows).

The speed promise (#23): the full 15 x 5 table (750,000 corrupted images, generation included) of
the fast recipe's checkpoint takes at most one `cifarkit train fast` run on the same machine. Both
are timed here, in fresh processes, one after the other: the ratio is printed with the CPU kind.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import full_cifar10, machine, save  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROWS = {
    "fast": ("configs/cifar10_fast.yaml", []),
    "mixup": ("configs/cifar10_fast.yaml", ["data.mixup=1.0"]),
    "cutmix": ("configs/cifar10_fast.yaml", ["data.cutmix=1.0"]),
    "cutout": ("configs/cifar10_fast.yaml", ["data.cutout=8"]),
    "resnet18": ("configs/cifar10_resnet18.yaml", ["eval.interval=1000"]),
}


def cifarkit(*args: str) -> tuple[str, float]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cifarkit", *args], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"cifarkit {' '.join(args[:2])} failed:\n{r.stderr[-3000:]}")
    return r.stdout, wall


def train(row: str, data: Path, work: Path, rn18_epochs: int) -> tuple[Path, float]:
    cfg, sets = ROWS[row]
    if row == "resnet18":
        sets = [*sets, f"train.epochs={rn18_epochs}"]
    args = ["train", str(ROOT / cfg), "--set", f"data.root={data}", "--set", "log.plots=false",
            "--work-dir", str(work / row)]
    for s in sets:
        args += ["--set", s]
    _, wall = cifarkit(*args)
    print(f"trained {row} in {wall:.0f} s", flush=True)
    return work / row / "last.pt", wall


def table(ckpt: Path, out: Path, limit: int | None) -> tuple[dict, float]:
    args = ["robustness", str(ckpt), "--out", str(out), "--json"] + (["--limit", str(limit)] if limit else [])
    stdout, wall = cifarkit(*args)
    return json.loads(stdout), wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=None, help="test images per row (default: all 10,000)")
    ap.add_argument("--resnet18-epochs", type=int, default=3)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--name", default="robustness", help="results file benchmarks/results/NAME.json")
    args = ap.parse_args()
    data = args.data or full_cifar10(Path(tempfile.gettempdir()) / "cifarkit-bench")
    if data is None:
        raise SystemExit("no data: pass --data CIFAR_DIR (../shared/datasets is absent)")
    if "fast" not in args.rows:
        raise SystemExit("--rows needs fast: it is the reference of mCE and of the speed ratio")
    info = machine()
    print(f"CPU {info['cpu']} ({info['cpu_kind']}), {info['precision']}; torch {info.get('torch')}; data {data}",
          flush=True)
    work = Path(tempfile.mkdtemp(prefix="cifarkit-robustness-"))
    from cifarkit.analysis.robustness import corruption_errors

    ckpts, train_s = {}, {}
    # the speed promise first, back to back: training fast, then the whole table of its checkpoint
    ckpts["fast"], train_s["fast"] = train("fast", data, work, args.resnet18_epochs)
    full, full_s = table(ckpts["fast"], work / "fast_full", None)
    ratio = full_s / train_s["fast"]
    print(f"fast: full 15 x 5 table {full_s:.0f} s (750,000 images, {full['images_per_s']:.0f} img/s inside) vs "
          f"train fast {train_s['fast']:.0f} s: ratio {ratio:.2f} (target <= 1)", flush=True)
    for row in args.rows:
        if row != "fast":
            ckpts[row], train_s[row] = train(row, data, work, args.resnet18_epochs)
    rows = {}
    for row in args.rows:
        r = full if (row == "fast" and not args.limit) else table(ckpts[row], work / f"{row}_rb", args.limit)[0]
        rows[row] = r
    ref = rows["fast"]
    results = []
    print(f"\n{'row':10s} {'train s':>8s} {'clean':>7s} {'mCA':>7s} {'mCE':>7s} {'rel mCE':>8s}   n={ref['n']}")
    for row, r in rows.items():
        e = corruption_errors(r["table"], r["clean_top1"], ref["table"], ref["clean_top1"])
        rel = "n/a" if e["relative_mce"] is None else f"{e['relative_mce']:.1f}"
        label = row if row != "resnet18" else f"resnet18 ({args.resnet18_epochs} ep)"
        print(f"{label:10s} {train_s[row]:8.0f} {r['clean_top1']:7.2f} {r['mca']:7.2f} {e['mce']:7.1f} {rel:>8s}")
        results.append({"row": row, "config": ROWS[row][0], "sets": ROWS[row][1], "train_s": train_s[row],
                        "clean_top1": r["clean_top1"], "mca": r["mca"], "mce_vs_fast": e["mce"],
                        "relative_mce_vs_fast": e["relative_mce"], "per_corruption": r["per_corruption"],
                        "n": r["n"]})
    path = save(args.name, {"machine": info, "limit": args.limit, "resnet18_epochs": args.resnet18_epochs,
                            "speed": {"table_s": full_s, "train_fast_s": train_s["fast"], "ratio": ratio,
                                      "images_per_s": full["images_per_s"]},
                            "rows": results, "command": " ".join(sys.argv)})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
