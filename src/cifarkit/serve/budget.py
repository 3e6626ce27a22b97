"""A process-wide budget on decoded pixels, shared by every request the server is handling.

Each request's images are bounded on their own (reduced to DECODE_MAX_SIDE a side while
decoding), but nothing bounded how many requests hold such images at once: one `/api/predict`
of 64 huge PNGs grew the server by 1.6 GB and four at once by 3.6 GB. Now a request reserves
pixels before it decodes anything and returns them when its forward pass is done; a request
that would go over the budget waits (in arrival order, so a big one is not starved by small
ones). A request reserves the worst case (DECODE_MAX_SIDE^2 per image) and gives back the
difference once its images are decoded, so small images never wait for big ones' worst case.

No request holds part of the budget while waiting for more (it reserves all it needs for a chunk
at once, and runs that chunk before reserving again), so requests cannot deadlock each other.
Everything runs on the event loop's thread: no lock is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class Held:
    """Pixels a request holds; `shrink` gives back what it turned out not to need."""

    def __init__(self, budget: PixelBudget, pixels: int):
        self.budget, self.pixels = budget, pixels

    def shrink(self, pixels: int) -> None:
        """Keep only `pixels` (<= what is held) and give the rest back at once."""
        pixels = max(0, min(pixels, self.pixels))
        self.budget._release(self.pixels - pixels)
        self.pixels = pixels


class PixelBudget:
    """At most `total` decoded pixels held by all requests together (module docstring)."""

    def __init__(self, total: int):
        if total < 1:
            raise ValueError(f"pixel budget {total} must be >= 1")
        self.total = self.free = total
        self._waiting: deque[tuple[int, asyncio.Future]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[Held]:
        """Reserve `pixels` (at most the whole budget: a larger request runs alone), waiting in
        line while others hold too much; given back when the block ends, however it ends."""
        pixels = max(0, min(pixels, self.total))
        await self._acquire(pixels)
        held = Held(self, pixels)
        try:
            yield held
        finally:
            self._release(held.pixels)

    async def _acquire(self, pixels: int) -> None:
        if not self._waiting and self.free >= pixels:
            self.free -= pixels
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append((pixels, fut))
        try:
            await fut
        except asyncio.CancelledError:  # the client left while waiting
            if fut.done() and not fut.cancelled():
                self._release(pixels)  # granted just as it was cancelled: give it back
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove((pixels, fut))
                self._wake()
            raise

    def _release(self, pixels: int) -> None:
        self.free += pixels
        self._wake()

    def _wake(self) -> None:
        """Grant waiting requests in arrival order while the first in line fits."""
        while self._waiting:
            pixels, fut = self._waiting[0]
            if fut.done():  # cancelled
                self._waiting.popleft()
                continue
            if self.free < pixels:
                return
            self._waiting.popleft()
            self.free -= pixels
            fut.set_result(None)
