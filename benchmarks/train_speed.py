"""The speed recipe end to end vs the pure compute of a plain eager airbench loop, same run.

    python benchmarks/train_speed.py [--data CIFAR_DIR] [--seeds 0 1 2] [--plain-steps 12] [--name NAME]

(a) `cifarkit train configs/cifar10_fast.yaml` as a user runs it (a subprocess: start-up, data
    load, whitening init, 8 epochs, TTA evaluation, run directory), once per seed: wall time,
    per-phase times and TTA top-1 on the test split; mean and sd.
(b) The baseline from the issue: a plain eager loop of the same network in airbench's style
    (weights and activations in the precision `train.amp: auto` picks on this machine: bf16 with
    fp32 BatchNorm where the CPU has hardware bf16, else fp32; channels_last, batch 1024,
    Nesterov SGD) on random data, timed for a fixed number of steps after warm-up in a fresh process and projected
    to the recipe's 476 steps (9.9 epochs of 48 steps). Pure compute: no data pipeline, no
    evaluation. It runs before (a)'s first seed and after each seed, since this machine's speed
    drifts; the mean of those runs is the denominator of the ratio (a)/(b).
(b') The same loop with the allocator setting that cifarkit's CPU training applies
    (`train.hold_memory`, engine/memory.py: freed memory stays in the process), measured next to
    each (b): what our engine gains from that setting is not counted as a gain over the loop.
(c) Achieved GFLOP/s of (a)'s training phase and of (b), against the machine's fp32 peak
    (cores x FMA units x vector width x 2 x clock, `_common.fp32_peak`); FLOPs of one training
    image counted by torch.utils.flop_counter.
Every figure is printed and saved with the CPU model, its kind (AMX / AVX512-BF16 / AVX2) and the
precision. Writes benchmarks/results/train_speed.json.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import fp32_peak, full_cifar10, matmul_roof, save

from cifarkit.logs import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
STEPS_9_9_EPOCHS = math.ceil(9.9 * (50000 // 1024))  # 476


def plain_eager_seconds_per_step(steps: int, warmup: int = 3, batch: int = 1024) -> float:
    """Median step time, weighted like airbench94: the whitening bias trains (and back-propagates
    into the first conv) for 3 of the 9.9 epochs only."""
    with_bias = _plain_step(steps, warmup, batch, whiten_bias=True)
    without = _plain_step(steps, warmup, batch, whiten_bias=False)
    return (3 * with_bias + 6.9 * without) / 9.9


def _plain_step(steps: int, warmup: int, batch: int, whiten_bias: bool) -> float:
    from cifarkit.models.airnet import AirNet

    torch.manual_seed(0)
    from cifarkit.infer.device import amp_dtype

    dtype = amp_dtype("auto", torch.device("cpu")) or torch.float32
    net = AirNet(10).to(memory_format=torch.channels_last)
    net.whiten.bias.requires_grad_(whiten_bias)
    net = net.to(dtype)
    for m in net.modules():  # airbench keeps BatchNorm in fp32
        if isinstance(m, torch.nn.BatchNorm2d):
            m.float()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0015, momentum=0.85, nesterov=True, weight_decay=1e-3)
    x = torch.randn(batch, 3, 32, 32).to(dtype).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(x).float(), y, label_smoothing=0.2, reduction="sum")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def train_flop_per_image() -> float:
    """FLOPs of one airnet training image: 3 x its forward (forward + the two backward products),
    counted by torch.utils.flop_counter on a batch of 8 (the same rule as cpu_precision.py)."""
    from torch.utils.flop_counter import FlopCounterMode

    from cifarkit.models.airnet import AirNet

    net = AirNet(10).eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(torch.randn(8, 3, 32, 32))
    return 3 * fc.get_total_flops() / 8


def plain_in_fresh_process(steps: int, hold: bool) -> float:
    """(b) or (b') in a new interpreter, so neither inherits the other's (or a run's) heap."""
    r = subprocess.run([sys.executable, __file__, "--plain-only", str(steps)] + (["--hold"] if hold else []),
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"plain loop failed:\n{r.stderr[-2000:]}")
    return float(r.stdout.strip().splitlines()[-1])


def run_recipe(data: Path, seed: int, work: Path) -> dict:
    run = work / f"seed{seed}"
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cifarkit", "train", str(ROOT / "configs/cifar10_fast.yaml"),
                        "--set", f"data.root={data}", "--set", f"train.seed={seed}", "--set", "log.plots=false",
                        "--work-dir", str(run)], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"training failed:\n{r.stderr[-2000:]}")
    recs = read_jsonl(run / "log.jsonl")
    s = next(x for x in recs if x["type"] == "summary")
    val = [x for x in recs if x["type"] == "val"][-1]
    return {"seed": seed, "wall_s": wall, "top1_tta": val["top1"], "top5": val["top5"],
            "phases_s": {"startup_and_other": wall - s["seconds"], "data_load": s["data_seconds"],
                         "whitening_init": s["init_seconds"], "training": s["train_seconds"],
                         "tta_eval": s["eval_seconds"]},
            "train_img_per_s": s["train_img_per_s"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--plain-steps", type=int, default=12)
    ap.add_argument("--name", default="train_speed",
                    help="results file benchmarks/results/NAME.json (e.g. train_speed_avx2: one file per CPU kind)")
    ap.add_argument("--plain-only", type=int, default=0, help=argparse.SUPPRESS)  # child: time (b), print s/step
    ap.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)  # child: (b') instead of (b)
    args = ap.parse_args()
    if args.plain_only:
        if args.hold:
            from cifarkit.engine.memory import hold_freed_memory

            hold_freed_memory()
        print(plain_eager_seconds_per_step(args.plain_only))
        return
    data = args.data or full_cifar10(Path(tempfile.gettempdir()) / "cifarkit-bench")
    if data is None:
        raise SystemExit("no data: pass --data CIFAR_DIR (../shared/datasets is absent)")
    work = Path(tempfile.mkdtemp(prefix="cifarkit-speed-"))
    from cifarkit.infer.device import amp_dtype, cpu_kind, cpu_model, precision_name

    prec = precision_name(amp_dtype("auto", torch.device("cpu")))
    peak, peak_note = fp32_peak()
    flop = train_flop_per_image()
    print(f"CPU {cpu_model()} ({cpu_kind()}), precision {prec} (train.amp auto); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; data {data}", flush=True)
    print(f"fp32 peak {peak:.0f} GFLOP/s ({peak_note}); airnet training image {flop / 1e9:.3f} GFLOP", flush=True)

    plain, held = [], []

    def baselines(when: str) -> None:
        plain.append(plain_in_fresh_process(args.plain_steps, hold=False))
        held.append(plain_in_fresh_process(args.plain_steps, hold=True))
        print(f"(b) plain eager loop {when}: {plain[-1]:.3f} s/step -> {plain[-1] * STEPS_9_9_EPOCHS:.0f} s for "
              f"9.9 epochs; (b') with memory held: {held[-1]:.3f} s/step", flush=True)

    if args.plain_steps:
        baselines("before")
    runs = []
    for seed in args.seeds:
        r = run_recipe(data, seed, work)
        runs.append(r)
        ph = ", ".join(f"{k} {v:.1f}" for k, v in r["phases_s"].items())
        print(f"(a) seed {seed}: {r['wall_s']:.1f} s wall, top-1 (TTA) {r['top1_tta']:.2f}%  [{ph}]", flush=True)
        if args.plain_steps:
            baselines(f"after seed {seed}")

    walls = [r["wall_s"] for r in runs]
    accs = [r["top1_tta"] for r in runs]
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(f"(a) mean wall {statistics.mean(walls):.1f} s; top-1 (TTA) mean {statistics.mean(accs):.2f}% "
          f"sd {sd:.2f} over {len(accs)} seeds")
    plain_s = held_s = ratio = b_gflops = None
    if plain:  # --plain-steps 0 skips the plain loop (it takes minutes per measurement on an fp32 CPU)
        plain_s = statistics.mean(plain) * STEPS_9_9_EPOCHS
        held_s = statistics.mean(held) * STEPS_9_9_EPOCHS
        ratio = statistics.mean(walls) / plain_s
        b_gflops = 1024 / statistics.mean(plain) * flop / 1e9
        print(f"(b) plain eager loop, 9.9 epochs projected: {plain_s:.1f} s (b') memory held: {held_s:.1f} s")
        print(f"ratio (a)/(b) = {ratio:.2f}  (target <= 0.80); (a)/(b') = {statistics.mean(walls) / held_s:.2f}")
    a_gflops = statistics.mean(r["train_img_per_s"] for r in runs) * flop / 1e9
    roof = matmul_roof()
    print(f"(c) achieved: (a) training {a_gflops:.1f} GFLOP/s = {a_gflops / peak:.0%} of the fp32 peak"
          + (f"; (b) {b_gflops:.1f} GFLOP/s = {b_gflops / peak:.0%}" if b_gflops else "")
          + f"; a 2048^3 sgemm here: {roof:.1f} GFLOP/s ({prec}, {cpu_kind()})")
    save(args.name, {"runs": runs, "plain_s_per_step": plain, "plain_held_s_per_step": held,
                         "plain_9_9_epochs_s": plain_s, "plain_held_9_9_epochs_s": held_s,
                         "mean_wall_s": statistics.mean(walls), "top1_tta_mean": statistics.mean(accs),
                         "top1_tta_sd": sd, "ratio": ratio,
                         "ratio_vs_held": statistics.mean(walls) / held_s if held_s else None, "sgemm_gflops": roof,
                         "precision": prec, "cpu_kind": cpu_kind(), "fp32_peak_gflops": peak, "peak_note": peak_note,
                         "train_flop_per_image": flop, "achieved_gflops": {"recipe_training": a_gflops,
                                                                           "plain_loop": b_gflops}})


if __name__ == "__main__":
    main()
