"""Dynamic batching: requests arriving within a short window run as one batched forward.

A batched forward costs far less per frame than one forward per frame, so the server trades at most
`max_wait_ms` of latency for throughput. The queue is bounded: when it is full the caller gets
`Overloaded` (the app answers 503 with Retry-After) instead of an ever-growing backlog.

Per-request errors are isolated: the app validates each request before it enters the queue, and if a
batch still fails, its items are retried one by one so only the faulty one fails.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatchConfig:
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64  # requests waiting (not yet in a batch); beyond this -> Overloaded
    pipeline: int = 1  # batches in flight at once: 2 lets one batch's per-frame work overlap the next forward
    max_queue_s: float = 30.0  # a request that waited longer than this for a batch is answered 503 instead of computed

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or not 0 <= self.max_wait_ms <= 10_000 or not 1 <= self.pipeline <= 8 \
                or not self.max_queue_s > 0:
            raise ValueError(f"invalid batching config {self}: max_batch, max_queue >= 1, 0 <= max_wait_ms <= 10000, 1 <= pipeline <= 8, "
                             "max_queue_s > 0")


class Overloaded(Exception):
    """The queue is full; try again after `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"server overloaded; retry after {retry_after:.0f} s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The batcher stopped before the request ran."""


class QueueTimeout(Overloaded):
    """The request waited in the queue past `max_queue_s`; it was not computed (the device has moved on)."""

    def __init__(self, waited: float, retry_after: float) -> None:
        Exception.__init__(self, f"waited {waited:.1f} s in the queue (limit reached); not computed, retry after {retry_after:.0f} s")
        self.retry_after = retry_after


class MicroBatcher(Generic[T, R]):
    """Collects items into batches of up to `max_batch`, waiting at most `max_wait_ms` after the first.

    `fn(items) -> results` runs in a worker thread (it is a blocking model forward) and must return one
    result per item, in order. Use from one event loop: `await start()`, `await submit(x)`, `await stop()`.
    """

    def __init__(
        self, fn: Callable[[list[T]], Sequence[R]], config: BatchConfig = BatchConfig(),
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.fn, self.config, self.on_batch = fn, config, on_batch
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R], float]] | None = None
        self._workers: list[asyncio.Task] = []
        self._collecting: asyncio.Lock | None = None  # one worker gathers a batch at a time: no split batches
        self._batch_seconds = 0.05  # running estimate of one batch's duration, for Retry-After

    @property
    def depth(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    async def start(self) -> None:
        if not self._workers:
            self._queue = asyncio.Queue(self.config.max_queue)
            self._collecting = asyncio.Lock()
            self._workers = [asyncio.create_task(self._run(), name=f"micro-batcher-{i}") for i in range(self.config.pipeline)]

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            try:
                await worker
            except asyncio.CancelledError:
                pass
        self._workers = []
        while self._queue is not None and not self._queue.empty():
            _, fut, _ = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(ShuttingDown("the server is shutting down"))

    def retry_after(self) -> float:
        """Seconds until the current queue has likely drained (at least 1, the Retry-After granularity)."""
        batches = math.ceil(max(self.depth, 1) / self.config.max_batch)
        return float(max(1, math.ceil(batches * self._batch_seconds)))

    async def submit(self, item: T) -> R:
        if self._queue is None or not self._workers:
            raise ShuttingDown("the batcher is not running")
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, fut, time.monotonic()))
        except asyncio.QueueFull:
            raise Overloaded(self.retry_after()) from None
        return await fut

    async def _collect(self) -> list[tuple[T, asyncio.Future[R]]]:
        """Block for the first item, then gather more until max_batch or max_wait after the first."""
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.config.max_wait_ms / 1000.0
        while len(batch) < self.config.max_batch:
            try:
                batch.append(self._queue.get_nowait())  # already queued: no need to wait
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        now, fresh = time.monotonic(), []
        for item, fut, queued in batch:
            if fut.cancelled():  # a client that hung up needs no work
                continue
            if now - queued > self.config.max_queue_s:  # past its deadline: say so rather than compute it late
                _resolve(fut, error=QueueTimeout(now - queued, self.retry_after()))
                continue
            fresh.append((item, fut))
        return fresh

    async def _run(self) -> None:
        assert self._collecting is not None
        while True:
            async with self._collecting:
                batch = await self._collect()
            if not batch:
                continue
            start = time.perf_counter()
            await self._execute(batch)
            seconds = time.perf_counter() - start
            self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds
            if self.on_batch:
                self.on_batch(len(batch), seconds)

    async def _execute(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        items = [item for item, _ in batch]
        try:
            results = await asyncio.to_thread(self._call, items)
        except Exception as e:  # noqa: BLE001 - delivered to the request(s) that caused it
            if len(batch) == 1:
                _resolve(batch[0][1], error=e)
            else:  # isolate the failure by halves: a good half runs once, a bad half splits again (O(log n) forwards per bad item)
                mid = len(batch) // 2
                await self._execute(batch[:mid])
                await self._execute(batch[mid:])
            return
        for (_, fut), result in zip(batch, results, strict=True):
            _resolve(fut, result=result)

    def _call(self, items: list[T]) -> Sequence[R]:
        results = self.fn(items)
        if len(results) != len(items):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        return results


def _resolve(fut: asyncio.Future, result: object = None, error: BaseException | None = None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
