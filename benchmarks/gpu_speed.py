"""GPU figures for issue 4, in one invocation on one GPU:

    python benchmarks/gpu_speed.py --data CIFAR_DIR [--seeds 0 1 2 3 4] [--mnv2-steps 300]

(a) The fast recipe (configs/cifar10_fast.yaml as shipped) through `cifarkit.engine.train.fit`,
    timed as airbench times itself:
    whitening init + training + TTA evaluation, excluding the data upload and a first warm-up
    run (CUDA context, cuDNN autotuning). fit already synchronises at each phase's end (the
    epoch's deferred NaN check, the logits copied to the host), so its phase clocks are GPU time.
    Per seed: timed seconds, wall of the whole fit call, TTA top-1; mean and sd over seeds.
(b) Tutorial-recipe throughput (configs/cifar10_mobilenetv2_finetune.yaml: MobileNetV2 at
    224 px, batch 32): our engine (uint8 train set on the GPU, batched RandomResizedCrop/flip
    there, bf16 autocast, channels_last, compiled with CUDA graphs as the config ships) vs the
    tutorial's per-image pipeline (PIL image -> RandomResizedCrop(224) -> RandomHorizontalFlip
    -> ToTensor -> Normalize in DataLoader workers, fp32 model), same model, optimiser and batch,
    images/s after warm-up.
Writes benchmarks/results/gpu_speed.json (or --out).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import machine, save

from cifarkit.logs import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def fast_run(data: str, seed: int, work: Path, extra: list[str], device: str) -> dict:
    from cifarkit.config import load_config
    from cifarkit.engine.train import fit

    cfg = load_config(ROOT / "configs/cifar10_fast.yaml",
                      [f"data.root={data}", f"train.seed={seed}", f"train.device={device}", "log.plots=false",
                       *extra])
    t = time.perf_counter()
    s = fit(cfg, work / f"fast_seed{seed}", quiet=True)
    wall = time.perf_counter() - t
    timed = s["init_seconds"] + s["train_seconds"] + s["eval_seconds"]
    return {"seed": seed, "timed_s": timed, "fit_wall_s": wall, "top1_tta": s["final"]["top1"],
            "phases_s": {"data_upload": s["data_seconds"], "whitening_init": s["init_seconds"],
                         "training": s["train_seconds"], "tta_eval": s["eval_seconds"]}}


def engine_throughput(data: str, steps: int, work: Path, device: str, extra: list[str]) -> float:
    """images/s of cifarkit's own loop on the tutorial config, from its log's per-iteration times."""
    from cifarkit.config import load_config
    from cifarkit.engine.train import fit

    cfg = load_config(ROOT / "configs/cifar10_mobilenetv2_finetune.yaml",
                      [f"data.root={data}", "model.pretrained=", f"train.device={device}", f"train.max_iters={steps}",
                       "log.interval=20", "log.plots=false", "eval.interval=100", *extra])
    run = Path(tempfile.mkdtemp(dir=work, prefix="mnv2_"))
    fit(cfg, run, quiet=True)
    times = [r["time"] for r in read_jsonl(run / "log.jsonl") if r.get("type") == "train"]
    times = times[min(3, len(times) - 1):]  # skip the warm-up/autotune records
    return cfg.train.batch_size / statistics.median(times)


class _PilDataset(torch.utils.data.Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def tutorial_throughput(data: str, steps: int, workers: int, device: str, batch: int = 32, warmup: int = 30) -> float:
    """The per-image PIL + DataLoader pipeline with the tutorial's transforms, fp32 model."""
    import torchvision
    from torchvision import transforms as T

    from cifarkit.data.sources import load_dataset

    train = load_dataset(data, "train")
    tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    dl = torch.utils.data.DataLoader(_PilDataset(train.images, train.labels, tf), batch_size=batch, shuffle=True,
                                     num_workers=workers, pin_memory=True, drop_last=True,
                                     persistent_workers=True)
    dev = torch.device(device)
    model = torchvision.models.mobilenet_v2(num_classes=10).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, weight_decay=4e-5)
    batches = (b for _ in range(1_000_000) for b in dl)  # epochs back to back
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            _sync(dev)
            t0 = time.perf_counter()
        x, y = next(batches)
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(dev)
    return steps * batch / (time.perf_counter() - t0)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="CIFAR-10 in any form `cifarkit` reads (train + test)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--mnv2-steps", type=int, default=300)
    ap.add_argument("--skip-mnv2", action="store_true")
    ap.add_argument("--skip-fast", action="store_true")
    ap.add_argument("--mnv2-batch", type=int, default=32, help="32 is the tutorial's (and the config's) batch")
    ap.add_argument("--mnv2-variant", action="append", default=[], metavar="K=V,K=V",
                    help="engine config overrides to measure (repeat; empty string = the config as shipped)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--device", default="cuda", help="cpu only for a dry run of the script itself")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for the fast runs (a dry run: --set train.epochs=1)")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark measures the GPU figures")
    work = Path(tempfile.mkdtemp(prefix="cifarkit-gpu-"))
    result: dict = {}
    print(f"{machine().get('gpu')}  torch {torch.__version__}", flush=True)

    if not args.skip_fast:
        _fast(args, work, result)
    if not args.skip_mnv2:
        _mnv2(args, work, result)


def _fast(args: argparse.Namespace, work: Path, result: dict) -> None:
    warm = fast_run(args.data, 99, work, args.set, args.device)
    print(f"(a) warm-up run: {warm['timed_s']:.2f} s timed, top-1 {warm['top1_tta']:.2f}", flush=True)
    runs = []
    for seed in args.seeds:
        r = fast_run(args.data, seed, work, args.set, args.device)
        runs.append(r)
        ph = ", ".join(f"{k} {v:.2f}" for k, v in r["phases_s"].items())
        print(f"(a) seed {seed}: {r['timed_s']:.2f} s timed (fit wall {r['fit_wall_s']:.2f}), "
              f"top-1 (TTA) {r['top1_tta']:.2f}%  [{ph}]", flush=True)
    accs = [r["top1_tta"] for r in runs]
    timed = [r["timed_s"] for r in runs]
    result["fast"] = {"runs": runs, "warmup": warm, "timed_mean_s": statistics.mean(timed),
                      "top1_tta_mean": statistics.mean(accs),
                      "top1_tta_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0}
    print(f"(a) mean {statistics.mean(timed):.2f} s timed; top-1 (TTA) mean {statistics.mean(accs):.2f}% "
          f"sd {result['fast']['top1_tta_sd']:.2f} over {len(accs)} seeds  (target <= 3 s on an H100)", flush=True)
    save("gpu_speed", result, args.out)


def _mnv2(args: argparse.Namespace, work: Path, result: dict) -> None:
    base = {}
    for w in (2, 8):  # the tutorial's workers_per_gpu=2, and a generous 8
        base[w] = tutorial_throughput(args.data, args.mnv2_steps, w, args.device, args.mnv2_batch)
        print(f"(b) per-image PIL + DataLoader ({w} workers), fp32: {base[w]:.0f} img/s", flush=True)
    variants = {}
    for v in args.mnv2_variant or [""]:  # each a comma-separated set of config overrides
        name = v or "default"
        sets = [f"train.batch_size={args.mnv2_batch}", *(x for x in v.split(",") if x)]
        try:
            variants[name] = r = engine_throughput(args.data, args.mnv2_steps, work, args.device, sets)
        except Exception as e:  # noqa: BLE001 - one failing variant must not lose the others' numbers
            print(f"(b) cifarkit engine [{name}] failed: {type(e).__name__}: {str(e)[:500]}", flush=True)
            variants[name] = None
            continue
        print(f"(b) cifarkit engine [{name}], mobilenetv2 224 px batch {args.mnv2_batch}: {r:.0f} img/s -> ratio "
              f"{r / base[2]:.2f}x vs 2 workers, {r / base[8]:.2f}x vs 8", flush=True)
        headline = next(x for x in variants.values() if x is not None)  # the first that ran
        result["mobilenetv2_throughput"] = {
            "cifarkit_img_s": headline, "cifarkit_variants_img_s": variants,
            "tutorial_pipeline_img_s": {str(k): v for k, v in base.items()},
            "ratio_vs_2_workers": headline / base[2], "ratio_vs_8_workers": headline / base[8]}
        save("gpu_speed", result, args.out)  # after each variant, so a timed-out device run keeps what it measured


if __name__ == "__main__":
    main()
