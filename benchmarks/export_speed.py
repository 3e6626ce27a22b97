"""Export speed: `cifarkit data export` vs a plain one-`Image.save`-per-image loop, same data, same run.

    python benchmarks/export_speed.py [--data CIFAR_DIR] [--workdir DIR]

Uses the full 60,000-image CIFAR-10 batches built from ../shared/datasets (or --data). Prints
both wall times and the ratio, and writes benchmarks/results/export_speed.json.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import full_cifar10, save
from PIL import Image

from cifarkit.data.cifar import read_cifar
from cifarkit.data.export import export_dataset


def plain_loop(splits: dict, out: Path) -> None:
    """What a notebook does: one PIL save per image, single process."""
    for split, ds in splits.items():
        for c in ds.classes:
            (out / split / c).mkdir(parents=True, exist_ok=True)
        for img, y, name in zip(ds.images, ds.labels.tolist(), ds.filenames):
            Image.fromarray(img).save(out / split / ds.classes[y] / name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cifarkit-bench")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = args.data or full_cifar10(args.workdir)
    if data is None:
        raise SystemExit("no data: pass --data CIFAR_DIR (../shared/datasets is absent)")
    t = time.perf_counter()
    splits = {s: read_cifar(data, s) for s in ("train", "test")}
    t_read = time.perf_counter() - t
    n = sum(len(d) for d in splits.values())

    # Nothing is deleted between the timed phases: deleting 60,000 files makes this disk (mounted
    # with `discard`) slow for a while afterwards, which would penalise whichever phase ran next.
    for name in ("plain", "ours", "cli"):
        shutil.rmtree(args.workdir / name, ignore_errors=True)
    subprocess.run(["sync"], check=False)
    time.sleep(5)
    base = args.workdir / "plain"
    t = time.perf_counter()
    plain_loop(splits, base)
    t_plain = time.perf_counter() - t

    ours = args.workdir / "ours"
    t = time.perf_counter()
    export_dataset(splits, ours, fmt="png", overwrite=True)
    t_ours = time.perf_counter() - t

    # end to end through the CLI path too (reading the batches included)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cifarkit", "data", "export", str(data), str(args.workdir / "cli")],
                   check=True, capture_output=True)
    t_cli = time.perf_counter() - t
    for name in ("plain", "ours", "cli"):
        shutil.rmtree(args.workdir / name, ignore_errors=True)

    ratio = t_plain / t_ours
    print(f"images                  {n:,}")
    print(f"read batches            {t_read:6.2f} s")
    print(f"plain Image.save loop   {t_plain:6.2f} s")
    print(f"cifarkit export (PNG)   {t_ours:6.2f} s   ratio {ratio:.2f}x")
    print(f"cifarkit data export CLI, end to end {t_cli:6.2f} s")
    save("export_speed", {"images": n, "read_s": t_read, "plain_loop_s": t_plain, "cifarkit_export_s": t_ours,
                          "cli_end_to_end_s": t_cli, "ratio": ratio})


if __name__ == "__main__":
    main()
