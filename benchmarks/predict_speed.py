"""Folder prediction: `cifarkit predict` (batched, bf16, threaded decode) vs a plain fp32 eager
one-image-at-a-time loop, on the same 10,000 CIFAR-10 test PNGs in the same run.

    python benchmarks/predict_speed.py [--data CIFAR_DIR]

Writes benchmarks/results/predict_speed.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import full_cifar10, save
from PIL import Image

from cifarkit.config import load_config
from cifarkit.data.cifar import read_cifar
from cifarkit.data.export import export_dataset
from cifarkit.data.loader import eval_transform
from cifarkit.engine.train import fit
from cifarkit.predict import Classifier

ROOT = Path(__file__).resolve().parents[1]


def plain_loop(clf: Classifier, files: list[Path]) -> list[int]:
    """What a notebook does: open, convert, transform, forward one image at a time in fp32."""
    model = clf.model.float().eval().to(memory_format=torch.contiguous_format)
    out = []
    with torch.no_grad():
        for f in files:
            arr = np.asarray(Image.open(f).convert("RGB"))
            x = eval_transform(torch.from_numpy(arr).permute(2, 0, 1)[None], clf.prep)
            out.append(int(torch.softmax(model(x), 1).argmax()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cifarkit-predict-"))
    data = args.data or full_cifar10(Path(tempfile.gettempdir()) / "cifarkit-bench")
    if data is None:
        raise SystemExit("no data: pass --data CIFAR_DIR (../shared/datasets is absent)")
    test = read_cifar(data, "test")
    export_dataset({"test": test}, work / "png")
    files = sorted((work / "png" / "test").rglob("*.png"))
    cfg = load_config(ROOT / "configs/cifar10_fast.yaml", [f"data.root={data}", "train.max_iters=2",
                                                            "data.subset_per_class=100", "log.plots=false",
                                                            "train.batch_size=500", "train.micro_batch=0"])
    fit(cfg, work_dir=work / "run", quiet=True)
    ours = Classifier.from_checkpoint(work / "run" / "last.pt", device="cpu")

    t = time.perf_counter()
    preds = [p.label_id for _, p, _ in ours.predict_files(files)]
    t_ours = time.perf_counter() - t
    base = Classifier.from_checkpoint(work / "run" / "last.pt", device="cpu")
    t = time.perf_counter()
    plain = plain_loop(base, files)
    t_plain = time.perf_counter() - t
    agree = float(np.mean(np.array(preds) == np.array(plain)))
    n = len(files)
    print(f"images                      {n:,}")
    print(f"plain fp32 one-at-a-time    {t_plain:6.2f} s  {n / t_plain:8.0f} img/s")
    print(f"cifarkit predict (batched)  {t_ours:6.2f} s  {n / t_ours:8.0f} img/s   ratio {t_plain / t_ours:.2f}x")
    print(f"top-1 agreement between the two: {agree * 100:.2f}% (bf16 vs fp32)")
    save("predict_speed", {"images": n, "plain_s": t_plain, "cifarkit_s": t_ours, "ratio": t_plain / t_ours,
                           "agreement": agree})


if __name__ == "__main__":
    main()
