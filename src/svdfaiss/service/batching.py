"""Natural batching: `Gatherer`, and its two uses, FAISS searches and the events log's fsyncs."""

import asyncio
import functools
from collections.abc import Callable
from typing import Generic, TypeVar

from fastapi.concurrency import run_in_threadpool

from svdfaiss.errors import UnknownItem
from svdfaiss.events import EventLog
from svdfaiss.recommender import Recommender, Results

P = TypeVar("P")
R = TypeVar("R")


class Gatherer(Generic[P, R]):
    """Gathers the requests that arrive while one batch runs into the next batch (natural
    batching: no timer, so a lone request never waits). Subclasses run a batch."""

    def __init__(self) -> None:
        self._pending: list[tuple[P, asyncio.Future[R]]] = []
        self._running = False

    async def submit(self, payload: P) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((payload, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self._run([payload for payload, _ in batch])
                except Exception as exc:
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._running = False

    async def _run(self, payloads: list[P]) -> list[R | BaseException]:
        """One result (or the exception to raise) per payload, in order."""
        raise NotImplementedError


class SearchBatcher(Gatherer[tuple[Recommender, str, int], Results]):
    """Unfiltered similar-items searches gathered into one FAISS call per model."""

    async def similar_items(self, rec: Recommender, item_id: str, k: int) -> Results:
        return await self.submit((rec, item_id, k))

    async def _run(self, payloads: list[tuple[Recommender, str, int]],
                   ) -> list[Results | BaseException]:
        results: list[Results | BaseException] = [RuntimeError("not searched")] * len(payloads)
        # A reload may swap the model mid-stream: one FAISS call per model.
        for rec in {id(r): r for r, _, _ in payloads}.values():
            rows = [n for n, (r, _, _) in enumerate(payloads) if r is rec]
            ids, ks = [payloads[n][1] for n in rows], [payloads[n][2] for n in rows]
            try:
                found: list[Results | BaseException] = list(
                    await run_in_threadpool(rec.similar_items_batch, ids, ks))
            except UnknownItem:
                # Ids were checked before queueing, so this is a model swap race: answer
                # each on its own.
                found = [_outcome(functools.partial(rec.similar_items, i, k, use_cache=False))
                         for i, k in zip(ids, ks, strict=True)]
            for n, result in zip(rows, found, strict=True):
                results[n] = result
        return results


class EventSink(Gatherer[bytes, None]):
    """Group commit of the events log: the events that arrive while one write and fsync runs
    go into the next, and each request returns once its own line is on disk."""

    def __init__(self, event_log: EventLog) -> None:
        super().__init__()
        self.log = event_log

    async def write(self, line: bytes) -> None:
        await self.submit(line)

    async def _run(self, payloads: list[bytes]) -> list[BaseException | None]:
        await run_in_threadpool(self.log.append, payloads)
        return [None] * len(payloads)


def _outcome(compute: Callable[[], Results]) -> Results | BaseException:
    try:
        return compute()
    except Exception as exc:
        return exc

