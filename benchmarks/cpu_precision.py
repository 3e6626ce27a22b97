"""Which precision and CPU settings are fastest on this machine: training steps and inference of
airnet, ResNet-18 and MobileNetV2, side by side in one run.

    python benchmarks/cpu_precision.py [--models airnet resnet18_cifar mobilenet_v2] [--quick]

For each model a baseline (fp32, channels_last, eager, all threads, the recipe's batch) and one
change at a time: NCHW instead of channels_last, torch.compile (inductor's CPU backend), one
thread, half and double the batch, and bf16 autocast (airnet only on a CPU without hardware bf16,
where one emulated step takes a minute). Every configuration runs in a fresh process (no shared
heap, no inherited compile cache), warms up one step, then times `--steps` steps (the best
counts); the table prints images/s, the ratio to the baseline, achieved GFLOP/s (FLOPs of one
image counted by torch.utils.flop_counter)
and their share of the machine's fp32 peak (`_common.fp32_peak`). Also `auto`, the precision the
recipes now pick here. Writes benchmarks/results/cpu_precision.json, with the CPU model and kind.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _common import fp32_peak, machine, matmul_roof, save

# model -> (input size, training batch, inference batch): the shipped recipes' batches for
# ResNet-18 (128) and MobileNetV2 (32, eval 128); airnet at 500, the micro-batch of the table
MODELS = {"airnet": (32, 500, 500), "resnet18_cifar": (32, 128, 256), "mobilenet_v2": (224, 32, 128)}


def child(model: str, mode: str, prec: str, cl: bool, compiled: bool, threads: int, batch: int, steps: int) -> dict:
    """One configuration, in this (fresh) process: images/s, seconds per step, the first step's time."""
    import torch
    import torch.nn.functional as F

    from cifarkit.infer.device import amp_dtype
    from cifarkit.models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    size = MODELS[model][0]
    net = create_model(model, 10)
    fmt = torch.channels_last if cl else torch.contiguous_format
    net = net.to(memory_format=fmt).train(mode == "train")
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    dtype = amp_dtype(prec, torch.device("cpu"))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    fn = torch.compile(net) if compiled else net

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            if mode == "train":
                loss = F.cross_entropy(fn(x).float(), y)
            else:
                with torch.no_grad():
                    fn(x)
                return
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    opt.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    step()  # warm-up (and, compiled, the compilation)
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"img_s": batch / best, "s_per_step": best, "first_step_s": first}


def flop_per_image(model: str, mode: str) -> float:
    """FLOPs of one image's forward (infer) or forward + backward (train, 3 x the forward: the usual
    count, since torch.utils.flop_counter overcounts the backward of grouped convolutions: 12.3
    GFLOP instead of ~1.8 for a MobileNetV2 training image at 224 px), counted by
    torch.utils.flop_counter on a batch of 2 in fp32 (the count does not depend on the precision)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cifarkit.models import create_model

    size = MODELS[model][0]
    net = create_model(model, 10).eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(torch.randn(2, 3, size, size))
    return fc.get_total_flops() / 2 * (3 if mode == "train" else 1)


def run_config(**cfg) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    ap.add_argument("--steps", type=int, default=2, help="timed steps per configuration, after one warm-up (best of)")
    ap.add_argument("--quick", action="store_true", help="baseline, auto and bf16 only")
    ap.add_argument("--name", default="cpu_precision",
                    help="results file benchmarks/results/NAME.json (e.g. cpu_precision_amx: one file per CPU kind)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(**json.loads(args.child))))
        return

    import torch

    from cifarkit.infer.device import cpu_kind, hardware_bf16

    info = machine()
    threads = torch.get_num_threads()
    peak, peak_note = fp32_peak()
    roof = matmul_roof()
    print(f"CPU {info['cpu']} ({cpu_kind()}, hardware bf16: {hardware_bf16()}), {threads} threads, "
          f"torch {torch.__version__}; fp32 peak {peak:.0f} GFLOP/s ({peak_note}); 2048^3 sgemm: "
          f"{roof:.0f} GFLOP/s ({roof / peak:.0%} of that peak)", flush=True)
    rows = []
    for model in args.models:
        _, train_b, infer_b = MODELS[model]
        for mode in args.modes:
            batch = train_b if mode == "train" else infer_b
            flop = flop_per_image(model, mode)
            base = {"model": model, "mode": mode, "prec": "fp32", "cl": True, "compiled": False,
                    "threads": threads, "batch": batch, "steps": args.steps}
            variants = [("baseline fp32, channels_last, eager", {}), ("auto (what the recipes pick)", {"prec": "auto"})]
            if not args.quick:
                variants += [("NCHW", {"cl": False}), ("torch.compile", {"compiled": True}),
                             ("1 thread", {"threads": 1}), ("batch / 2", {"batch": batch // 2}),
                             ("batch x 2", {"batch": batch * 2})]
            if hardware_bf16() or model == "airnet":
                # emulated bf16 is ~12x slower: one timed step is enough to show it
                variants.append(("bf16", {"prec": "bf16", "steps": args.steps if hardware_bf16() else 1}))
            ref = None
            for label, change in variants:
                if change.get("prec") == "auto" and not hardware_bf16():
                    r = dict(ref or {})  # auto is fp32 here: the baseline itself
                    label += " = fp32"
                else:
                    r = run_config(**{**base, **change})
                ref = ref or r
                row = {"model": model, "mode": mode, "variant": label, **base, **change, **r, "flop_per_img": flop}
                if "img_s" in r:
                    gflops = r["img_s"] * flop / 1e9
                    row.update(gflops=gflops, peak_share=gflops / peak, vs_baseline=r["img_s"] / ref["img_s"])
                    print(f"{model:<15} {mode:<5} {label:<40} {r['img_s']:8.1f} img/s  x{row['vs_baseline']:5.2f}  "
                          f"{gflops:6.1f} GFLOP/s ({gflops / peak:4.0%} of fp32 peak)  first step "
                          f"{r['first_step_s']:.1f} s", flush=True)
                else:
                    print(f"{model:<15} {mode:<5} {label:<40} failed: {r['error']}", flush=True)
                rows.append(row)
    save(args.name, {"cpu_kind": cpu_kind(), "hardware_bf16": hardware_bf16(), "threads": threads,
                           "fp32_peak_gflops": peak, "peak_note": peak_note, "sgemm_gflops": roof,
                           "rows": rows})


if __name__ == "__main__":
    main()
