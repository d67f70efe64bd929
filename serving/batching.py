"""Micro-batches of the ``/score`` requests in flight in one worker.

Each ``/score`` request reads its customer's record and computes the features itself, as
before; the models then run once per *batch* of the requests in flight
(:meth:`models.scorer.Scorer.score_many`): one prediction call per booster on a k-row
matrix instead of k one-row calls, the value, segment and uplift arithmetic over all k
rows. Every answer is the one the request would get alone (``tests/serving/test_batching.py``).

How a batch forms, without a timer: a request hands its features to :class:`Batcher` and
awaits a future; the batch runs on the event loop one turn later. A request alone is
scored at that turn (no wait: the sequential path stays as fast). While other callbacks are
ready to run -- requests the loop has read and is still parsing, the tail of the last
batch's answers -- the batch gives them up to ``turns`` more turns of the loop to join it
(each turn also reads the sockets again), at most ``max_size`` requests. Under load the
requests that arrive while one batch runs make up the next.

Why the service's own batcher and not BentoML's adaptive batching
(``@bentoml.api(batchable=True)``, its ``CorkDispatcher``): that one batches the endpoint
itself, so the endpoint would take a list of requests and lose its per-request context
(the caller's scopes for ``as_of``, the status of each answer: 403, 404, 409, 503), and it
dispatches through a controller task woken by a condition and polling in 1 ms ticks (with
a latency model trained on the first requests), cancelling requests it predicts to be late
(503 "process is overloaded") instead of queueing them. Measured in one process, one
awaited call at a time: 20 us CPU and ~90 us wall per call through the dispatcher, 8 us
and ~35-50 us through this batcher's queued path, nothing through its alone path (README,
"Cost per score"). And why not a thread running the batches: the work is Python holding
the GIL, so a thread adds two wake-ups per batch and contention with the loop for nothing
(the service's notes: a thread hop per request cost more than the work).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: loop turns a batch waits at most for requests still on their way (only while the loop
#: has other callbacks ready; alone, a request is scored at the first turn)
TURNS = 4

#: scores ``(features, top_k, explain)`` of several requests, one result per request
ScoreMany = Callable[[Sequence[Mapping[str, Any]], Sequence[int], Sequence[bool]], list[T]]


@dataclass(slots=True)
class _Job(Generic[T]):
    features: Mapping[str, Any]
    top_k: int
    explain: bool
    future: asyncio.Future[T]


class Batcher(Generic[T]):
    """Scores the requests of one event loop together (see the module doc).

    ``score``: the batch function (its results in the order of its rows); ``max_size``:
    requests per batch at most (1: each alone, at the next loop turn).
    """

    def __init__(self, score: ScoreMany[T], max_size: int, turns: int = TURNS) -> None:
        if max_size < 1:
            raise ValueError(f"a batch holds at least one request, got max_size={max_size}")
        self._score = score
        self.max_size = max_size
        self.turns = turns
        self._jobs: list[_Job[T]] = []
        self._scheduled = False
        #: batches run and requests scored (the mean batch size, for the logs and tests)
        self.batches = 0
        self.scored = 0

    async def score(self, features: Mapping[str, Any], top_k: int, explain: bool) -> T:
        """This request's result, scored with the others in flight."""
        loop = asyncio.get_running_loop()
        if not self._jobs and not getattr(loop, "_ready", True):
            # alone: no other callback is ready to run, so no request could join a batch
            # now (asyncio's private ready queue; uvloop has none: the batch path then)
            self.batches += 1
            self.scored += 1
            return self._score([features], [top_k], [explain])[0]
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.append(_Job(features, top_k, explain, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._run, loop, 0)
        return await future

    def _run(self, loop: asyncio.AbstractEventLoop, turns: int) -> None:
        """Run a batch now, or give requests still on their way another loop turn."""
        ready = getattr(loop, "_ready", None)
        if ready and turns < self.turns and len(self._jobs) < self.max_size:
            loop.call_soon(self._run, loop, turns + 1)
            return
        jobs = [job for job in self._jobs[: self.max_size] if not job.future.done()]
        del self._jobs[: self.max_size]
        if self._jobs:
            loop.call_soon(self._run, loop, 0)
        else:
            self._scheduled = False
        if jobs:
            self._finish(jobs)

    def _finish(self, jobs: list[_Job[T]]) -> None:
        try:
            results = self._score(
                [job.features for job in jobs],
                [job.top_k for job in jobs],
                [job.explain for job in jobs],
            )
        except Exception as exc:
            if len(jobs) > 1:  # one request's failure stays its own: each alone, as unbatched
                for job in jobs:
                    self._finish([job])
            elif not jobs[0].future.done():
                jobs[0].future.set_exception(exc)
            return
        self.batches += 1
        self.scored += len(jobs)
        for job, result in zip(jobs, results, strict=True):
            if not job.future.done():
                job.future.set_result(result)
