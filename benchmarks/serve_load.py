"""`cifarkit serve` under load: N concurrent clients (1, 8, 32) each sending single 32x32 PNGs
to the batched `/api/predict`, next to the same number of images sent one at a time to the
unbatched endpoint (`?batch=false`), against one server in the same run.

    python benchmarks/serve_load.py [--model CKPT] [--clients 1 8 32] [--requests 640]

Without --model it trains the fast recipe (airnet, bf16, channels-last) for 2 iterations on the
shipped sample: the speed does not depend on the weights. Prints requests/s and p50/p99
latency per setting and writes benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from _common import save
from PIL import Image

from cifarkit.config import load_config
from cifarkit.data.cifar import write_cifar_batches
from cifarkit.demo import read_sample
from cifarkit.engine.train import fit
from cifarkit.serve.launch import running_server

ROOT = Path(__file__).resolve().parents[1]


def tiny_checkpoint(work: Path) -> Path:
    """The fast recipe trained for 2 iterations on the shipped sample (the weights do not matter here)."""
    sample = read_sample()
    root = write_cifar_batches(sample["train"], sample["test"], work / "data")
    cfg = load_config(ROOT / "configs/cifar10_fast.yaml", [f"data.root={root}", "train.max_iters=2",
                                                            "log.plots=false", "train.batch_size=200"])
    fit(cfg, work_dir=work / "run", quiet=True)
    return work / "run" / "last.pt"


def pngs(n: int) -> list[bytes]:
    out = []
    for arr in np.random.default_rng(1).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


async def drive(url: str, images: list[bytes], clients: int, total: int, batch: bool) -> dict:
    """`clients` concurrent senders of single-image requests until `total` are answered."""
    latencies: list[float] = []
    errors = 0
    sent = 0

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal sent, errors
        while sent < total:
            i = sent
            sent += 1
            t = time.perf_counter()
            try:
                r = await c.post(f"{url}/api/predict", params={"batch": str(batch).lower()},
                                 files=[("files", (f"{i}.png", images[i % len(images)]))])
                errors += r.status_code != 200
            except httpx.HTTPError:
                errors += 1
            latencies.append(time.perf_counter() - t)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100)
    return {"mode": "batched" if batch else "unbatched", "clients": clients, "requests": total, "errors": errors,
            "rps": total / wall, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000}


def line(r: dict) -> str:
    return (f"{r['mode']:<10} {r['clients']:>7} {r['requests']:>8} {r['errors']:>6} {r['rps']:>9.1f} "
            f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None, help="checkpoint or .onnx (default: a tiny airnet run)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=640, help="requests per setting")
    args = ap.parse_args()
    model = args.model or tiny_checkpoint(Path(tempfile.mkdtemp(prefix="cifarkit-serve-")))
    images = pngs(64)
    rows = []
    with running_server(str(model), "--max-queue", "1024") as srv:
        asyncio.run(drive(srv.url, images, 8, 64, True))  # warm-up: threads, allocator, first batches
        print(f"{'mode':<10} {'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
        for n in args.clients:
            for batch in (True, False):
                # unbatched: the same number of images, sent one at a time
                rows.append(asyncio.run(drive(srv.url, images, n if batch else 1, args.requests, batch)))
                print(line(rows[-1]), flush=True)
        health = httpx.get(srv.url + "/api/health").json()
    unbatched = rows[1]["rps"]
    for r in rows[::2]:
        print(f"{r['clients']:>3} clients: {r['rps'] / unbatched:.1f}x the unbatched requests/s")
    print(f"server: {health['images']} images in {health['batches']} batched forwards "
          f"(mean {health['images'] / max(health['batches'], 1):.1f}, largest {health['largest_batch']})")
    save("serve_load", {"model": str(model), "rows": rows, "server": health})


if __name__ == "__main__":
    main()
