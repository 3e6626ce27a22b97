"""How well `cifarkit data audit` finds planted label errors and near-duplicates, and what it costs.

    python benchmarks/audit.py [--data CIFAR_DIR] [--train-per-class N] [--stages sym asym]
                               [--no-reference] [--name audit]

On CIFAR-10 (default: the shared JPEG copy, train + test, 60,000 images), each stage plants
known problems with a recorded seed, runs the audit at its default settings (5 folds of the fast
recipe at a quarter of its epochs) in a fresh process, and scores what it finds:
- sym: 2% of the train labels flipped to another class uniformly at random, and 500 altered
  copies of random (unflipped) train images added to test, a quarter each: a 1-3 px shift in x and
  y (reflect padding), a 26-30 px crop resized back to 32 px, brightness x 0.9 or 1.1, a
  horizontal flip; every copy then JPEG-encoded at quality 60.
  Scores: precision and recall of the flipped images among the
  first K = (number flipped) label issues; near-duplicate recall at 500 (of the 500 most similar
  train/test pairs, how many are a planted copy with its source) and the train/test pairs above
  the threshold that are not planted (CIFAR-10's own near-duplicates among them: the planted
  copies are not the only ones).
- asym: 2% of the train labels flipped between look-alike classes (cat <-> dog,
  automobile <-> truck, bird -> airplane, deer -> horse; Patrini et al. 2017's CIFAR-10 pairs).
The reference, in the same run: one `cifarkit train fast` on the same images (the time the audit
is measured against: target <= 1.5x). Peak memory is the audit process's maximum resident set.
The method is not tuned on any published list of CIFAR-10 label errors or duplicates.
`--fold-study` times one fold's training per budget instead (results/audit_folds.json).
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import full_cifar10, machine, save  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASYM = {"cat": "dog", "dog": "cat", "automobile": "truck", "truck": "automobile", "bird": "airplane",
        "deer": "horse"}
NOISE = 0.02
COPIES = 500


ALTERATIONS = ("shift", "crop", "brightness", "flip")


def alter(img: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    """One altered copy of a (32, 32, 3) uint8 image: `kind`, then JPEG quality 60 (module docstring)."""
    from PIL import Image

    h, w = img.shape[:2]
    x = img
    if kind == "shift":
        dy, dx = (int(rng.integers(1, 4) * rng.choice([-1, 1])) for _ in range(2))
        pad = np.pad(img, ((3, 3), (3, 3), (0, 0)), mode="reflect")
        x = pad[3 + dy:3 + dy + h, 3 + dx:3 + dx + w]
    elif kind == "crop":
        s = int(rng.integers(26, 31))
        top, left = (int(rng.integers(0, h - s + 1)) for _ in range(2))
        x = np.asarray(Image.fromarray(img).crop((left, top, left + s, top + s)).resize((w, h), Image.BILINEAR))
    elif kind == "brightness":
        x = np.clip(img.astype(np.float64) * rng.choice([0.9, 1.1]), 0, 255).round().astype(np.uint8)
    elif kind == "flip":
        x = img[:, ::-1]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(x)).save(buf, format="JPEG", quality=60)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def plant(a, stage: str, seed: int):
    """The audited set with the stage's problems planted: (new Audited, flipped indices, planted pairs)."""
    from cifarkit.audit.findings import Audited
    from cifarkit.data.imageset import ImageSet

    rng = np.random.default_rng(seed)
    ds = a.images
    labels = ds.labels.copy()
    train = np.flatnonzero(a.split == "train")
    n_flip = int(round(NOISE * len(train)))
    if stage == "sym":
        flipped = np.sort(rng.choice(train, n_flip, replace=False))
        labels[flipped] = (labels[flipped] + rng.integers(1, ds.num_classes, n_flip)) % ds.num_classes
    else:
        src = {ds.classes.index(k): ds.classes.index(v) for k, v in ASYM.items()}
        pool = train[np.isin(ds.labels[train], list(src))]
        flipped = np.sort(rng.choice(pool, n_flip, replace=False))
        labels[flipped] = [src[int(y)] for y in ds.labels[flipped]]
    images, split, pairs = ds.images, a.split, []
    sources, indices, filenames = list(ds.sources), ds.indices, list(ds.filenames)
    if stage == "sym":
        donors = rng.choice(np.setdiff1d(train, flipped), COPIES, replace=False)
        kinds = [ALTERATIONS[k % len(ALTERATIONS)] for k in range(COPIES)]
        copies = np.stack([alter(ds.images[i], rng, kind) for i, kind in zip(donors, kinds)])
        first = len(ds)
        images = np.concatenate([ds.images, copies])
        labels = np.concatenate([labels, ds.labels[donors]])
        split = np.concatenate([a.split, np.full(COPIES, "test", dtype=object)])
        sources += [f"planted/{kind}_copy_of_{ds.sources[i]}" for i, kind in zip(donors, kinds)]
        indices = np.concatenate([ds.indices, np.zeros(COPIES, dtype=np.int64)])
        filenames += [f"copy_{k}.jpg" for k in range(COPIES)]
        pairs = [(int(d), first + k) for k, d in enumerate(donors)]
    new = ImageSet(images, labels, list(ds.classes), sources, indices, filenames, ds.origin, "")
    return Audited(new, split, a.splits, a.kind), flipped, pairs


def score(flipped: np.ndarray, pairs: list[tuple[int, int]], found, split: np.ndarray) -> dict:
    issues = found.issues
    k = len(flipped)
    hits = np.isin(issues[:k], flipped).sum()
    out = {"flipped": k, "issues_found": len(issues),
           "precision_at_k": float(hits / max(1, min(k, len(issues)))), "recall_at_k": float(hits / k),
           "precision_all": float(np.isin(issues, flipped).mean()) if len(issues) else 0.0,
           "recall_all": float(np.isin(flipped, issues).mean())}
    if pairs:
        planted = {(min(p), max(p)) for p in pairs}
        cross = [(i, j) for i, j, _, _ in found.pairs if split[i] != split[j]]
        top = cross[:COPIES]
        kind = {p: ALTERATIONS[k % len(ALTERATIONS)] for k, p in enumerate(pairs)}
        found_pairs = {(i, j) for i, j in cross}
        out.update({"planted_pairs": len(planted),
                    "dup_recall_at_500": sum((i, j) in planted for i, j in top) / len(planted),
                    "dup_recall_by_alteration": {
                        a: float(np.mean([(min(p), max(p)) in found_pairs for p in pairs if kind[p] == a]))
                        for a in ALTERATIONS},
                    "dup_recall_above_threshold": sum((i, j) in planted for i, j in cross) / len(planted),
                    "cross_pairs_above_threshold": len(cross),
                    "other_cross_pairs_above_threshold": sum((i, j) not in planted for i, j in cross)})
    return out


def run_stage(stage: str, data: Path, per_class: int, seed: int, out: Path) -> dict:
    """One stage, in this process (called in a fresh one by main)."""
    from cifarkit.audit.audit import audit_set, load_splits

    a = load_splits(data)
    if per_class:
        keep = np.concatenate([np.flatnonzero((a.split == "train") & (a.images.labels == c))[:per_class]
                               for c in range(a.images.num_classes)] + [np.flatnonzero(a.split == "test")])
        keep.sort()
        a = type(a)(a.images.subset(keep), a.split[keep], a.splits, a.kind)
    planted, flipped, pairs = plant(a, stage, seed)
    t = time.perf_counter()
    summary, found = audit_set(planted, out, str(data), quiet=True)
    wall = time.perf_counter() - t
    res = {"stage": stage, "images": len(planted.images), "seconds": wall, "audit": summary,
           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
           **score(flipped, pairs, found, planted.split)}
    return res


FOLD_STUDY = {  # name -> (recipe, --set overrides) of one fold's training
    "default (fast, batch 1000 x 1.6 epochs)": ("fast", []),
    "fast, batch 2000 x 2 epochs": ("fast", ["train.batch_size=2000", "train.epochs=2"]),
    "fast, batch 2000 x 3 epochs": ("fast", ["train.batch_size=2000", "train.epochs=3"]),
    "fast, batch 1000 x 2 epochs": ("fast", ["train.epochs=2"]),
    "fast, batch 1000 x 4 epochs": ("fast", ["train.epochs=4"]),
    "fast, batch 500 x 1.6 epochs": ("fast", ["train.batch_size=500"]),
    "airbench94, batch 1024 x 2 epochs": ("airbench94", ["train.epochs=2"]),
}


def fold_study(data: Path, work: Path) -> dict:
    """One fold (train on 4/5 of train + test, predict the held-out 1/5 with mirror TTA) per setting:
    training time and held-out top-1, side by side: what the folds' default budget follows from."""
    from cifarkit.audit.audit import assign_folds, fold_config, load_splits
    from cifarkit.data.loader import to_chw_tensor
    from cifarkit.engine.train import fit
    from cifarkit.infer.inference import Inference

    a = load_splits(data)
    ds = a.images
    fold = assign_folds(ds.labels, 5, 0)
    held, train = np.flatnonzero(fold == 0), np.flatnonzero(fold != 0)
    sets = (ds.subset(train), ds.subset(held))
    images = to_chw_tensor(sets[1].images)
    rows = {}
    for k, (name, (recipe, overrides)) in enumerate(FOLD_STUDY.items()):
        cfg = fold_config(recipe, overrides, ds.num_classes, str(data))
        t = time.perf_counter()
        run = fit(cfg, work / f"fold_study_{k}", quiet=True, force=True, sets=sets)
        seconds = time.perf_counter() - t
        inf = Inference.from_checkpoint(Path(run["run_dir"]) / "last.pt", device="cpu")
        top1 = 100.0 * float((inf.logits(images, tta="flip").argmax(1).numpy() == sets[1].labels).mean())
        rows[name] = {"epochs": cfg.train.epochs, "batch": cfg.train.batch_size, "train_seconds": seconds,
                      "top1": top1}
        print(f"{name}: {seconds:.0f} s, held-out top-1 {top1:.2f}%", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="CIFAR-10 folder (default: the shared JPEG copy, extracted)")
    ap.add_argument("--train-per-class", type=int, default=0, help="audit only N train images per class (0 = all)")
    ap.add_argument("--stages", nargs="+", default=["sym", "asym"], choices=["sym", "asym"])
    ap.add_argument("--no-reference", action="store_true", help="skip the `cifarkit train fast` reference run")
    ap.add_argument("--fold-study", action="store_true",
                    help="instead: one fold's training time and held-out top-1 per budget (FOLD_STUDY)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="audit")
    ap.add_argument("--work", default=None, help="keep each stage's audit folder here (default: a temporary one)")
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # internal: run one stage here
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    data = Path(args.data) if args.data else full_cifar10(Path(args.work or tempfile.gettempdir()) / "cifar10")
    if data is None:
        raise SystemExit("no CIFAR-10 here: pass --data (CIFAR batches or an image folder with train/ and test/)")
    if args.fold_study:
        with tempfile.TemporaryDirectory() as tmp:
            save(f"{args.name}_folds", {"data": str(data),
                                        "folds": fold_study(data, Path(args.work or tmp))})
        return
    if args.stage:
        res = run_stage(args.stage, data, args.train_per_class, args.seed, Path(args.out) / "audit")
        (Path(args.out) / "result.json").write_text(json.dumps(res))
        return
    results = {"machine": machine(), "data": str(data), "train_per_class": args.train_per_class, "seed": args.seed,
               "noise": NOISE, "copies": COPIES, "stages": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.work or tmp
        if not args.no_reference:
            sets = ["--set", f"data.root={data}", "--set", "log.plots=false"]
            if args.train_per_class:
                sets += ["--set", f"data.subset_per_class={args.train_per_class}"]
            t = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "cifarkit", "train", "fast", *sets, "--work-dir",
                                f"{tmp}/fast"], capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(r.stderr[-2000:])
            results["train_fast_seconds"] = time.perf_counter() - t
            print(f"train fast: {results['train_fast_seconds']:.0f} s", flush=True)
        for stage in args.stages:
            out = Path(tmp) / stage
            out.mkdir(parents=True)
            cmd = [sys.executable, __file__, "--stage", stage, "--out", str(out), "--data", str(data),
                   "--train-per-class", str(args.train_per_class), "--seed", str(args.seed)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(r.stderr[-3000:])
            res = json.loads((out / "result.json").read_text())
            if "train_fast_seconds" in results:
                res["ratio_to_train_fast"] = res["seconds"] / results["train_fast_seconds"]
            results["stages"][stage] = res
            print(json.dumps({k: v for k, v in res.items() if k != "audit"}, indent=1), flush=True)
    save(args.name, results)


if __name__ == "__main__":
    main()
