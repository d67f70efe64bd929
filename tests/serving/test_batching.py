"""Micro-batched scoring gives every request the answer it gets alone.

The models run once per batch of concurrent ``/score`` requests (``serving/batching.py``,
:meth:`models.scorer.Scorer.score_many`); these tests hold the batched answers equal to the
unbatched ones, exactly: the scorer over thousands of live feature vectors of the NBA
workspace, and the service itself under a burst of concurrent requests, decisions logged
included.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import bentoml
import numpy as np
import pytest
from serving_harness import Workspace, direct_service, granted, outbox_rows, sample_customers

from features.control import NO_CONTROL, ControlGroup
from features.online.record import evaluate
from models.fastpredict import fast_predictor
from models.results import CustomerScore
from serving import service as service_module
from serving.batching import Batcher
from serving.schemas import EventsRequest, OrderEvent, ScoreRequest

pytestmark = [
    pytest.mark.filterwarnings("ignore:The `__get_pydantic_core_schema__`:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def service(nba_ws: Workspace) -> Iterator[Any]:
    with direct_service(nba_ws.home) as instance:
        yield instance


# --------------------------------------------------------------------------- the scorer
def test_score_many_equals_score_one_exactly(service: Any, nba_ws: Workspace) -> None:
    """Every customer's online record, as of now and 45 days ago (~3,000 scores), in
    batches of 1 to 16 with mixed ``top_k`` / ``explain``, with and without a control
    group: each batched score is byte for byte the score of that customer alone, the
    chosen actions drawn from the same generator in the same order."""
    scorer = service.scorer
    assert scorer.nba is not None
    records = service.store.get_many(sample_customers(nba_ws.home, 1500))
    now = datetime.now(UTC)
    rows = [
        {**evaluate(record, as_of, service.spec), "as_of": as_of}
        for as_of in (now, now - timedelta(days=45))
        for record in records.values()
    ]
    draw = np.random.default_rng(3)
    top_k = [int(k) for k in draw.integers(1, len(scorer.catalog.ids) + 1, len(rows))]
    explain = [bool(e) for e in draw.random(len(rows)) < 0.8]
    sizes = [1, 2, 3, 5, 8, 16, 13, 7, 4]
    compared = offered = 0
    for control in (NO_CONTROL, ControlGroup(0.2, "batching")):
        scorer.control = control
        try:
            alone_rng, batch_rng = np.random.default_rng(11), np.random.default_rng(11)
            alone = [
                scorer.score_one(row, top_k=top_k[i], explain=explain[i], rng=alone_rng)
                for i, row in enumerate(rows)
            ]
            batched: list[CustomerScore] = []
            start = 0
            while start < len(rows):
                end = start + sizes[len(batched) % len(sizes)]
                batched += scorer.score_many(
                    rows[start:end], top_k[start:end], explain[start:end], rng=batch_rng
                )
                start = end
        finally:
            scorer.control = NO_CONTROL
        assert len(batched) == len(alone) == len(rows)
        for one, many in zip(alone, batched, strict=True):
            assert many.model_dump_json() == one.model_dump_json()
        compared += len(rows)
        offered += sum(s.chosen.action != "no_action" for s in alone)
    assert compared >= 2 * 2800 and offered > 0


def test_score_many_checks_its_arguments(service: Any) -> None:
    with pytest.raises(ValueError, match="as many top_k"):
        service.scorer.score_many([{}, {}], [3], [True, True])
    assert service.scorer.score_many([], [], []) == []


# --------------------------------------------------------------------------- the service
class _Clock(datetime):
    """The service's clock stopped at one instant: both runs log their decisions then."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return NOW


NOW = datetime.now(UTC)


def test_concurrent_requests_are_batched_and_answered_as_alone(
    service: Any, nba_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of concurrent ``/score`` requests (eight customers twice: the second waits
    for the first's decision, whose contact it then counts) against the same requests one
    after another, from the same records and the same generator: the same answers
    (features included) and the same decisions logged, in batches of several."""
    monkeypatch.setattr(service_module, "datetime", _Clock)
    # the last customers: the session's other NBA tests log decisions for the first ones,
    # and their recent contacts would make the contact policy answer no_action throughout
    customers = nba_ws.customers[-40:]
    as_of = NOW + timedelta(minutes=10)  # after the decisions: they count
    requests = [
        ScoreRequest(customer_id=c, as_of=as_of, top_k=1 + i % 6, include_features=True)
        for i, c in enumerate([*customers, *customers[:8]])
    ]
    before = service.store.get_many(customers)

    async def one_by_one() -> list[Any]:
        return [await service.score(request, ctx=ctx) for request in requests]

    async def burst() -> list[Any]:
        return await asyncio.gather(*(service.score(request, ctx=ctx) for request in requests))

    ctx = bentoml.Context()
    answers = {}
    for name, run in (("alone", one_by_one), ("burst", burst)):
        service.store.put_many(before.items())  # the same records for both runs
        service.rng = np.random.default_rng(5)
        batches = service.batcher.batches
        with ctx.in_request(granted(frozenset({"score", "admin"}))):
            answers[name] = asyncio.run(run())
        service.decisions.flush()
        answers[f"{name} batches"] = service.batcher.batches - batches
    assert answers["alone batches"] == len(requests)  # each scored at once, alone
    assert answers["burst batches"] <= len(requests) / 4  # several per batch
    logged = {row["decision_id"]: row for row in outbox_rows(nba_ws.home, "campaign_log")}
    repeated = 0
    for i, (alone, burst) in enumerate(zip(answers["alone"], answers["burst"], strict=True)):
        assert burst.customer_id == alone.customer_id == requests[i].customer_id
        keep = set(CustomerScore.model_fields) | {"features", "as_of", "cold_start", "meta"}
        assert burst.model_dump_json(include=keep) == alone.model_dump_json(include=keep)
        decisions = [logged[alone.decision_id], logged[burst.decision_id]]
        fields = ("customer_id", "action", "channel", "propensity", "group")
        assert [{f: d[f] for f in fields} for d in decisions] == [
            {f: d[f] for f in fields} for d in decisions[:1]
        ] * 2
        if i >= len(customers):  # the repeat saw the first score's decision
            first = answers["alone"][i - len(customers)]
            repeated += burst.features != first.features
    assert repeated > 0, "no repeated customer's features counted the first decision"


# --------------------------------------------------------------------------- the batcher
def test_batcher_isolates_a_failing_request_and_bounds_batches() -> None:
    """A request whose scoring raises fails alone (the others are scored one by one
    again); no batch exceeds ``max_size``; a request alone is scored without a batch."""
    sizes: list[int] = []

    def score(features: Any, top_k: Any, explain: Any) -> list[int]:
        sizes.append(len(features))
        if any(f["n"] < 0 for f in features):
            raise ValueError("bad row")
        return [f["n"] * 10 for f in features]

    batcher = Batcher(score, max_size=4)

    async def burst() -> list[Any]:
        jobs = [batcher.score({"n": n}, 3, True) for n in [1, 2, -3, 4, 5, 6, 7]]
        return await asyncio.gather(*jobs, return_exceptions=True)

    results = asyncio.run(burst())
    assert results[:2] == [10, 20] and results[3:] == [40, 50, 60, 70]
    assert isinstance(results[2], ValueError)
    assert max(sizes) == 4 and sizes[0] == 4  # the first batch, then each of it alone
    sizes.clear()

    async def alone() -> int:
        return await batcher.score({"n": 8}, 3, True)

    assert asyncio.run(alone()) == 80 and sizes == [1]
    with pytest.raises(ValueError, match="at least one"):
        Batcher(score, max_size=0)


# --------------------------------------------------------------------------- kept reasons
def _bits(value: Any) -> Any:
    return struct.pack("<d", value) if isinstance(value, float) else value


def test_kept_reasons_equal_fresh_ones_and_a_posted_event_renews_them(
    service: Any, nba_ws: Workspace
) -> None:
    """What a repeat score reuses -- the record's raw aggregates
    (:mod:`features.online.kept`) and the churn reasons' contributions, kept per split key
    (:meth:`models.fastpredict.FastPredictor.contributions`) -- is read back a second
    later, and every feature and answer equals the one computed with nothing kept; an
    order posted through ``/events`` in between changes the record and moves the
    customer's features across the model's splits, so the next score computes both again
    -- and its answer is again the fresh one, never the kept answer of the record before."""
    scorer = service.scorer
    churn = scorer.churn
    kept = fast_predictor(churn, churn.booster_)
    customers = nba_ws.customers[-70:-40]  # none of the burst test's
    as_of = datetime.now(UTC) + timedelta(minutes=20)

    def rows(at: datetime) -> list[dict[str, Any]]:
        """The customers' features as the service computes them (aggregates kept), each
        checked bit for bit against the evaluator over the record as stored now."""
        records = service.store.get_many(customers)
        out = []
        for c in customers:
            served, cold = service._features(c, None, at)
            fresh = evaluate(records[c], at, service.spec)
            assert not cold and list(served) == list(fresh)
            assert all(_bits(served[k]) == _bits(fresh[k]) for k in fresh), c
            out.append({**served, "as_of": at})
        return out

    def scores(batch: list[dict[str, Any]]) -> list[str]:
        generator = np.random.default_rng(9)
        return [scorer.score_one(row, rng=generator).model_dump_json() for row in batch]

    def fresh(batch: list[dict[str, Any]]) -> list[str]:
        kept.forget()  # nothing kept: every contribution computed
        return scores(batch)

    first = rows(as_of)
    before = fresh(first)
    computed, aggregated = kept.contrib_computed, service.kept.computed
    later = rows(as_of + timedelta(seconds=1))
    assert service.kept.computed - aggregated < len(customers) // 2  # most aggregates kept
    repeat = scores(later)
    read_back = len(customers) - (kept.contrib_computed - computed)
    assert read_back >= len(customers) // 2, "a repeat score should read its reasons back"
    assert repeat == fresh(later)
    assert scores(first) == before  # kept again by fresh(): read back, the same answers

    orders = [
        OrderEvent(
            order_id=f"O-kept-{i}",
            customer_id=c,
            ordered_at=datetime.now(UTC) - timedelta(minutes=1),
            amount=40.0 + i,
        )
        for i, c in enumerate(customers)
    ]
    ctx = bentoml.Context()
    with ctx.in_request(granted(frozenset({"events"}))):
        asyncio.run(service.events(EventsRequest(orders=orders), ctx=ctx))
        assert ctx.response.status_code == 200
    scores(later)  # every reason of the records before the order kept
    computed, aggregated = kept.contrib_computed, service.kept.computed
    stamps = service.kept.read_stamps
    after = rows(as_of + timedelta(seconds=2))
    # every record changed: aggregated anew, or read from the stamp /events wrote with it
    records_renewed = service.kept.computed - aggregated + service.kept.read_stamps - stamps
    assert records_renewed == len(customers)
    answered = scores(after)
    renewed = kept.contrib_computed - computed
    assert renewed >= len(customers) // 2, "an order should change most customers' keys"
    assert answered == fresh(after)
    changed = sum(
        json.loads(a)["churn"]["reasons"] != json.loads(b)["churn"]["reasons"]
        for a, b in zip(answered, repeat, strict=True)
    )
    assert changed >= len(customers) // 2
