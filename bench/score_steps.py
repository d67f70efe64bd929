"""In-process cost of one live score, step by step, with the service's own objects.

    uv run python -m bench.score_steps --home DIR      # a workspace like `rapport demo`'s

Builds the scorer as a worker does (:meth:`serving.reload.Reloader.start`: the bundled
champions, the stored segment model, the control group), then runs ``POST /score``'s pipeline
customer after customer (``--customers``, ``--rounds`` passes; one thread, OpenMP limited
to one thread like a worker) and times each step inside it, so every step sees the caches
as a real score leaves them (timing one step over all customers at once made the churn
reasons look 5x cheaper than inside a score on this shared machine):

* ``read record``: :meth:`OnlineStore.get` (SQLite by default);
* ``features``: :func:`features.online.record.evaluate`, as of now (the events
  aggregated); ``read + features, new``: the service's path
  (:class:`features.online.kept.KeptAggregates`) for a customer this worker has not
  scored: the stored bytes read, the aggregates the record's writer stamped checked and
  finished (computed when the stamp no longer holds, or the record has none);
  ``read + features, repeat``: the same for a customer scored a moment before, its
  record's raw aggregates kept in the worker;
* ``churn + reasons``: encode, the calibrated probability and the TreeSHAP reasons,
  computed (nothing kept); ``reasons read back``: the reasons again, their contributions
  read back from the customer's kept ones (:meth:`FastPredictor.contributions`: a
  repeat score of a customer whose features stayed inside the model's splits);
* ``value``: encode (unless it reads churn's encoding, :attr:`Scorer.shares_encoding`),
  mean and interval;
* ``segments``: RFM and ABC from the stored cut points;
* ``NBA uplift``: :meth:`models.nba.NbaModel.predict` on the enriched row, for the
  actions the catalog's rules allow;
* ``arbitration``: the rules (:func:`models.policy.screen`), :func:`models.policy.arbitrate`,
  the policy's probabilities, the control group, the draw and the exclusion reasons;
* ``decision log``: the decision row queued (:class:`DecisionBuffer.add`) and written
  (``flush`` every 16 decisions, into a scratch outbox and an in-memory store);
* ``response``: the :class:`serving.schemas.ScoreResponse` and its JSON.

``read + features + score_one`` is what the service runs for a request alone, end to end
(the typed result included); ``read + features + score_many (batches of K)`` what it runs
per request when K requests are in flight in a worker (``--batch``, default 8: the
micro-batch of ``serving/batching.py``, :meth:`models.scorer.Scorer.score_many`); each
first for a customer not scored before (``new``: nothing kept), then again a moment later
(``repeat``: the raw aggregates and the reasons' contributions kept by the first). Prints
microseconds per customer (mean and median) and, with ``--profile``, cProfile's top
functions of the one-customer path. Never fails on timing.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tests.serving_harness import environment, sample_customers


class Clock:
    """CPU seconds of this thread per step (``time.thread_time``: on a shared machine wall
    time mostly measured the other processes), over a pipeline run per customer."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = {}
        self._score: dict[str, float] = {}
        self._last = time.thread_time()

    def start(self) -> None:
        self._last = time.thread_time()

    def lap(self, step: str) -> None:
        """Add the time since the last lap to ``step`` (a step may come in two parts)."""
        now = time.thread_time()
        self._score[step] = self._score.get(step, 0.0) + now - self._last
        self._last = now

    def split(self, step: str, count: int) -> None:
        """The time since the last lap, shared by ``count`` scores run together (a batch):
        ``count`` entries of ``step``."""
        now = time.thread_time()
        self.seconds.setdefault(step, []).extend([(now - self._last) / count] * count)
        self._last = now

    def end(self) -> None:
        """One score done: its steps' times join the lists."""
        for step, seconds in self._score.items():
            self.seconds.setdefault(step, []).append(seconds)
        self._score = {}


def worker_scorer(home: Path) -> tuple[Any, Any, Any]:
    """``(spec, online store, Live)`` of the workspace at ``home``, the scorer built as a
    worker builds it (:meth:`serving.reload.Reloader.start`: the bundled champions, the
    stored segment model, the control group, the warm-up score)."""
    from features.online.store import open_store
    from features.spec import default_spec
    from rapport.settings import get_settings
    from serving.reload import Reloader

    with environment(RAPPORT_HOME=str(home), MLFLOW_TRACKING_URI=None):
        settings = get_settings()
        spec = default_spec()
        store = open_store(settings.online_store_url)
        return spec, store, Reloader(settings, spec, store).start()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, required=True, help="Workspace (not modified).")
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="Passes; each item keeps its best.")
    parser.add_argument("--profile", action="store_true", help="cProfile of score_one.")
    parser.add_argument("--batch", type=int, default=8, help="Rows per score_many batch.")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    home = args.home.expanduser().absolute()

    from threadpoolctl import threadpool_limits

    from features.online.events import DecisionBuffer, Outbox, decision_row, new_decision_id
    from features.online.record import evaluate
    from features.online.store import open_store
    from features.segments import assign_segments
    from models.catalog import CHURN_FIELD
    from models.policy import arbitrate, screen
    from models.value import OUTPUT_COLUMNS
    from serving.schemas import Score, ScoreResponse

    customers = sample_customers(home, args.customers)
    spec, store, live = worker_scorer(home)
    scorer = live.scorer
    assert scorer is not None, "the workspace's champions cannot score"
    from models.fastpredict import fast_predictor

    kept = fast_predictor(scorer.churn, scorer.churn.booster_)  # the reasons' contributions
    forget_reasons = getattr(kept, "forget", lambda: None)  # (code before: nothing kept)
    try:  # the service's path: the record's bytes, its raw aggregates kept between scores
        from features.online.kept import KeptAggregates

        aggregates = KeptAggregates(spec)

        def features_of(c: str, now: datetime) -> dict[str, Any]:
            encoded = store.get_encoded(c)
            assert encoded is not None, c  # the sample holds stored customers only
            return aggregates.evaluate(c, encoded, now)

        forget_aggregates = aggregates.forget
    except ImportError:  # the code before kept aggregates: read and evaluate every time

        def features_of(c: str, now: datetime) -> dict[str, Any]:
            return evaluate(stored(c), now, spec)

        def forget_aggregates() -> None:
            pass

    def stored(c: str) -> dict[str, Any]:
        record = store.get(c)
        assert record is not None, c  # the sample holds stored customers only
        return record

    def forget() -> None:
        """Nothing kept: the next score of any customer computes everything."""
        forget_reasons()
        forget_aggregates()

    threadpool_limits(limits=1)
    ids = [c for c in customers if c in store.get_many(customers)]
    rounds = args.rounds
    rng = np.random.default_rng(0)
    scratch = tempfile.TemporaryDirectory(prefix="rapport-steps-")
    memory = open_store("sqlite:///:memory:")
    memory.put_many(store.get_many(ids).items())
    buffer = DecisionBuffer(memory, Outbox(Path(scratch.name) / "outbox"), spec)
    context = {"channel": "call"}

    def pipeline(c: str, clock: Clock, logged: int) -> None:
        """One /score as the service runs it, the steps of Scorer.score_one spelled out."""
        forget()
        clock.start()
        record = stored(c)
        clock.lap("read record")
        now = datetime.now(UTC)
        features = {**evaluate(record, now, spec), "as_of": now}
        clock.lap("features")
        clock.start()
        features_of(c, now)  # the service's path, nothing kept in this worker
        clock.lap("read + features, new")
        features_of(c, datetime.now(UTC))
        clock.lap("read + features, repeat")
        X = scorer.churn.encode(features)
        churn = scorer.churn.predict_proba_array(X)
        drivers = scorer.churn.explain_array(X, spec=scorer.spec, owners=[c])[0]
        clock.lap("churn + reasons")
        drivers = scorer.churn.explain_array(X, spec=scorer.spec, owners=[c])[0]
        clock.lap("reasons read back")
        X_value = X if scorer.shares_encoding else scorer.value.encode(features)
        values = scorer.value.predict_array(X_value, now)
        clock.lap("value")
        row = {**features, CHURN_FIELD: churn[0]}
        row.update({name: values[0, j] for j, name in enumerate(OUTPUT_COLUMNS)})
        row.update({k: v[0] for k, v in assign_segments(row, scorer.segments).items()})
        clock.lap("segments")
        screened = screen(row, scorer.catalog)  # the rules first: uplift of allowed only
        clock.lap("arbitration")
        allowed = {
            a.id for a, code in zip(scorer.catalog.actions, screened[0], strict=True) if not code
        }
        uplift = scorer.nba.predict(row, allowed) if scorer.nba is not None else None
        clock.lap("NBA uplift")
        result = arbitrate(row, scorer.catalog, uplift, screened)
        policy = scorer.policy.probabilities(result)[0]
        probs = scorer.control.logging_probabilities(policy)
        ranking = result.ranking()[0]
        held_out = scorer.control.contains(c)
        chosen = int(rng.choice(len(policy), p=policy))
        result.exclusions(0)
        clock.lap("arbitration")
        score = scorer.score_one(features, context, rng=rng)  # the typed result, for the log
        clock.start()
        decision_id = new_decision_id()
        buffer.add(
            [
                decision_row(
                    decision_id,
                    c,
                    now,
                    score.chosen.action,
                    score.chosen.channel,
                    score.chosen.propensity,
                    score.group,
                )
            ],
            {c},
        )
        if logged % 16 == 15:
            buffer.flush()
        clock.lap("decision log")
        response = Score(**dict(score), customer_id=c, decision_id=decision_id, as_of=now)
        ScoreResponse(**dict(response), meta=live.meta).model_dump_json()
        clock.lap("response")
        clock.end()
        del drivers, probs, ranking, held_out, chosen

    def service(c: str, clock: Clock) -> None:
        """What the service's _score does: features, then score_one; for a new customer
        (nothing kept), then again (the reasons' contributions kept)."""
        forget()
        for step in ("new", "repeat"):
            clock.start()
            now = datetime.now(UTC)
            features = features_of(c, now)
            scorer.score_one({**features, "as_of": now}, context, rng=rng)
            clock.lap(f"read + features + score_one, {step}")
        clock.end()

    def service_batch(chunk: list[str], clock: Clock) -> None:
        """What the service runs for ``chunk``'s requests in flight together, per request."""
        forget()
        for step in ("new", "repeat"):
            clock.start()
            now = datetime.now(UTC)
            rows = [{**features_of(c, now), "as_of": now} for c in chunk]
            scorer.score_many(rows, [3] * len(rows), [True] * len(rows), rng=rng)
            clock.split(f"read + features + score_many ({args.batch}), {step}", len(chunk))

    for c in ids[:50]:  # warm-up: lazily built prediction handles, caches
        pipeline(c, Clock(), 0)
    steps, total = Clock(), Clock()
    for _ in range(rounds):
        for i, c in enumerate(ids):
            pipeline(c, steps, i)
            service(c, total)
        for start in range(0, len(ids), args.batch):
            service_batch(ids[start : start + args.batch], total)
    buffer.flush()
    print(
        f"{len(ids)} customers of {home.name} x {rounds} passes, each step timed inside "
        f"one /score's pipeline; models {live.meta.models}; NBA "
        f"{'yes' if scorer.nba is not None else 'no'}; load average "
        f"{os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)"
    )
    print(f"| {'step':<36} | {'mean CPU us':>11} | {'median CPU us':>13} |")
    print(f"|{'-' * 38}|{'-' * 13}|{'-' * 15}|")
    for name, seconds in [*steps.seconds.items(), *total.seconds.items()]:
        mean = 1e6 * statistics.fmean(seconds)
        median = 1e6 * statistics.median(seconds)
        print(f"| {name:<36} | {mean:>11.1f} | {median:>13.1f} |")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(rounds):
            for c in ids:
                service(c, Clock())
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    memory.close()
    store.close()
    scratch.cleanup()


if __name__ == "__main__":
    main()
