"""Server-side batching: many small concurrent requests, one forward pass.

A request puts its decoded images on a bounded asyncio queue and awaits a future. One worker
task takes the first waiting request, keeps collecting for up to `wait_ms` (or until `max_batch`
images are in hand), then runs a single `Inference.logits` call for all of them in the model's
executor and hands each request its own rows. A full queue is refused at once (`Overloaded`,
HTTP 503) instead of letting latency grow without bound.

Batching never changes a result: `Inference.logits` pads every forward to a fixed minimum batch
and each image's row depends only on that image (tests/test_serve.py checks this against
`cifarkit predict --json`). Requests are grouped by their TTA mode, since a batch runs one mode.

A forward pass holds at most `max_pixels` input pixels (FORWARD_PIXELS): more are run as several
forwards, one after the other, because the evaluation transform turns a whole batch into float
at once (64 images of 1024^2 px were 0.8 GB of float32 in one forward).

The model runs in a one-thread executor shared with Grad-CAM (`run_exclusive`): Grad-CAM hooks
the network's layers, so no batched forward may run while a CAM is computed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from cifarkit.infer.inference import Inference

FORWARD_PIXELS = 4 << 20  # input pixels in one forward pass (4 Mpx: 48 MB as float32 RGB)


class Overloaded(Exception):
    """The request queue is full: the server is busy and says so (HTTP 503)."""


@dataclass
class _Job:
    images: list[torch.Tensor]  # (3, H, W) uint8 each
    tta: str | None
    future: asyncio.Future = field(repr=False)


@dataclass
class BatchStats:
    """What the batcher did so far (reported by /api/health)."""
    requests: int = 0
    images: int = 0
    batches: int = 0
    largest_batch: int = 0  # images in the largest forward so far (> 1 proves requests were merged)


class Batcher:
    """Collects concurrent requests for a few ms and runs them as one forward pass on one thread."""
    def __init__(self, inference: Inference, max_batch: int = 64, wait_ms: float = 5.0, max_queue: int = 256,
                 max_pixels: int = FORWARD_PIXELS):
        self.inference = inference
        self.max_batch = max_batch
        self.max_pixels = max_pixels
        self.wait = wait_ms / 1000.0
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(max_queue)
        self.stats = BatchStats()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="cifarkit-model")
        self._worker: asyncio.Task | None = None

    # ---- lifecycle (the app's lifespan) --------------------------------------------------------
    def start(self) -> None:
        """Start the worker task on the running event loop (call from the app's startup)."""
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while not self.queue.empty():
            job = self.queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(Overloaded("the server is shutting down"))
        self.executor.shutdown(wait=True)

    # ---- requests ------------------------------------------------------------------------------
    async def logits(self, images: list[torch.Tensor], tta: str | None = None) -> torch.Tensor:
        """Float32 logits (len(images), C), computed in a batch with whatever else is waiting."""
        job = _Job(images, tta, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise Overloaded(f"the server is busy ({self.queue.maxsize} requests waiting); retry shortly") from None
        return await job.future

    async def logits_alone(self, images: list[torch.Tensor], tta: str | None = None) -> torch.Tensor:
        """The unbatched path (a forward for this request only), kept for comparison."""
        return await self._forward(images, tta)

    async def run_exclusive(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on the model's thread, between batches (Grad-CAM, the unbatched path)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _forward(self, images: list[torch.Tensor], tta: str | None) -> torch.Tensor:
        """`Inference.logits` of `images`, in forwards of at most `max_pixels` input pixels each
        (at least one image each); each image's row does not depend on its company."""
        parts: list[list[torch.Tensor]] = [[]]
        pixels = 0
        for im in images:
            n = im.shape[-2] * im.shape[-1]
            if parts[-1] and pixels + n > self.max_pixels:
                parts.append([])
                pixels = 0
            parts[-1].append(im)
            pixels += n
        outs = [await self.run_exclusive(self.inference.logits, part, tta) for part in parts]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    # ---- the worker ----------------------------------------------------------------------------
    async def _collect(self) -> list[_Job]:
        jobs = [await self.queue.get()]
        n = len(jobs[0].images)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while n < self.max_batch:
            try:
                job = self.queue.get_nowait()  # whatever arrived during the last forward: no waiting
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
            jobs.append(job)
            n += len(job.images)
        return jobs

    async def _run(self) -> None:
        while True:
            await self._serve(await self._collect())

    async def _serve(self, jobs: list[_Job]) -> None:
        """Run one collection of jobs, a forward per TTA mode. A method of its own so that its
        images are dropped when it returns, not kept alive by the worker's locals until the next
        request arrives."""
        for tta in dict.fromkeys(j.tta for j in jobs):
            group = [j for j in jobs if j.tta == tta and not j.future.cancelled()]
            images = [im for j in group for im in j.images]
            if not images:
                continue
            try:
                logits = await self._forward(images, tta)  # (N, C)
            except Exception as e:  # noqa: BLE001 - handed to every waiting request
                for j in group:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            self.stats.batches += 1
            self.stats.requests += len(group)
            self.stats.images += len(images)
            self.stats.largest_batch = max(self.stats.largest_batch, len(images))
            start = 0
            for j in group:
                if not j.future.done():
                    j.future.set_result(logits[start:start + len(j.images)])
                start += len(j.images)
