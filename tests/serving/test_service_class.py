"""The service class called directly, in this process (BentoML's advice: unit-test the
service class; ``test_service.py`` runs the same service as a server over HTTP).

One demo workspace and one ``Rapport`` instance serve the module; each endpoint is called
with its request model and a BentoML request context, as BentoML calls it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import bentoml
import numpy as np
import pytest
from serving_harness import Workspace, direct_service, granted, outbox_rows, workspace_fixture
from starlette.responses import JSONResponse

from features.online.materialize import META_FEATURE_SET
from features.online.record import evaluate
from features.spec import default_spec
from models.results import CustomerScore
from serving.runtime import GC_THRESHOLDS
from serving.schemas import (
    BatchItem,
    ColdStart,
    CustomerAttributes,
    EventsRequest,
    EventsResponse,
    FeedbackRequest,
    FeedbackResponse,
    OrderEvent,
    ScoreBatchRequest,
    ScoreBatchResponse,
    ScoreRequest,
    ScoreResponse,
)

#: bentoml's own import (pathspec 1.x) and its request models (pydantic 2.11) warn;
#: nothing we can act on
pytestmark = [
    pytest.mark.filterwarnings("ignore:The `__get_pydantic_core_schema__`:DeprecationWarning"),
]


ws = workspace_fixture("direct", customers=1000, seed=3)


@pytest.fixture(scope="module")
def service(ws: Workspace) -> Iterator[Any]:
    """A ``Rapport`` over the workspace, stopped (decisions flushed, files closed) after."""
    with direct_service(ws.home) as instance:
        yield instance


def call(endpoint: Any, request: Any, scopes: frozenset[str] = frozenset({"score"})) -> Any:
    """``endpoint(request, ctx=...)`` inside a request context granting ``scopes``; returns
    the result and the status code the endpoint set."""
    ctx = bentoml.Context()
    with ctx.in_request(granted(scopes)):
        result = asyncio.run(endpoint(request, ctx=ctx))
        status = ctx.response.status_code
    if isinstance(result, JSONResponse):
        assert result.status_code == status
    return result, status


def error(result: Any) -> str:
    assert isinstance(result, JSONResponse)
    return str(json.loads(result.body)["error"])


def test_loaded_ready_and_stamped(service: Any) -> None:
    assert service.ready and service.__is_ready__()
    assert service.meta.models == {"churn": "1", "value": "1"}
    assert service.meta.feature_set == default_spec().version
    assert dict(service.version_headers) == {
        b"x-rapport-models": b"churn=1,value=1",
        b"x-rapport-feature-set": default_spec().version.encode(),
    }


def test_the_loaded_heap_is_frozen_and_full_collections_rarer(service: Any) -> None:
    """A worker's heap after loading stays out of full collections, which run at most
    every GC_THRESHOLDS[2] middle ones (serving.runtime: they were ~8% of a busy worker)."""
    assert gc.get_threshold() == GC_THRESHOLDS and GC_THRESHOLDS[2] > 10
    assert gc.get_freeze_count() > 10_000  # the imports' and the models' objects


def test_score_is_the_scorers_result_plus_identity_and_a_logged_decision(
    service: Any, ws: Workspace
) -> None:
    customer = ws.customers[0]
    as_of = datetime.now(UTC) - timedelta(days=3)
    request = ScoreRequest(customer_id=customer, as_of=as_of, include_features=True)
    result, status = call(service.score, request, frozenset({"score", "admin"}))
    assert status == 200 and isinstance(result, ScoreResponse)
    assert isinstance(result, CustomerScore)  # the scorer's type, not a copy of it
    assert (result.customer_id, result.as_of, result.cold_start) == (customer, as_of, False)
    features = evaluate(service.store.get(customer), as_of, service.spec)
    expected = service.scorer.score_one({**features, "as_of": as_of}, rng=np.random.default_rng(0))
    assert result.churn == expected.churn and result.churn.reasons
    assert result.value == expected.value
    assert (result.abc_tier, result.rfm_segment) == (expected.abc_tier, expected.rfm_segment)
    assert result.actions == expected.actions and result.excluded == expected.excluded
    assert result.features is not None and result.features["orders_all"] == features["orders_all"]
    assert result.meta == service.meta
    (row,) = [
        r for r in outbox_rows(ws.home, "campaign_log") if r["decision_id"] == result.decision_id
    ]
    assert row["customer_id"] == customer and row["action"] == result.chosen.action
    assert row["propensity"] == result.chosen.propensity


def test_score_errors_are_json_with_their_status(service: Any, ws: Workspace) -> None:
    result, status = call(service.score, ScoreRequest(customer_id="NOBODY"))
    assert status == 404 and "NOBODY" in error(result)
    as_of = datetime.now(UTC) - timedelta(days=1)
    result, status = call(service.score, ScoreRequest(customer_id=ws.customers[1], as_of=as_of))
    assert status == 403 and "admin" in error(result)
    too_many = ScoreBatchRequest(
        customers=[
            BatchItem(customer_id=f"C{i}") for i in range(service.settings.max_batch_size + 1)
        ]
    )
    result, status = call(service.score_batch, too_many)
    assert status == 413 and "batch limit" in error(result)


def test_not_ready_is_503_until_the_store_matches(service: Any, ws: Workspace) -> None:
    version = service.store.get_meta(META_FEATURE_SET)
    service.store.set_meta(META_FEATURE_SET, "another-feature-set")
    try:
        service._refresh()
        assert not service.ready
        result, status = call(service.score, ScoreRequest(customer_id=ws.customers[1]))
        assert status == 503 and "another-feature-set" in error(result)
    finally:
        service.store.set_meta(META_FEATURE_SET, version)
        service._refresh()
    assert service.ready


def test_cold_start_and_batch(service: Any, ws: Workspace) -> None:
    cold = ScoreRequest(
        customer_id="NEW-9",
        cold_start=ColdStart(attributes=CustomerAttributes(region="north")),
        include_features=True,
    )
    result, status = call(service.score, cold)
    assert status == 200 and result.cold_start and result.rfm_segment == "prospect"
    assert result.features is not None and result.features["region"] == "north"
    assert service.store.get("NEW-9") is None  # scored, never stored
    batch = ScoreBatchRequest(
        customers=[BatchItem(customer_id=c) for c in [*ws.customers[2:4], "NEW-10"]]
    )
    result, status = call(service.score_batch, batch)
    assert status == 200 and isinstance(result, ScoreBatchResponse)
    assert [s.customer_id for s in result.results] == ws.customers[2:4]
    assert all(s.churn.reasons == [] for s in result.results)  # explain is off in batches
    assert [(e.customer_id, e.status) for e in result.errors] == [("NEW-10", 404)]


def test_events_and_feedback(service: Any, ws: Workspace) -> None:
    customer = ws.customers[4]
    order = OrderEvent(
        order_id="O-direct-1",
        customer_id=customer,
        ordered_at=datetime.now(UTC) - timedelta(minutes=2),
        amount=12.5,
    )
    result, status = call(service.events, EventsRequest(orders=[order]), frozenset({"events"}))
    assert status == 200 and isinstance(result, EventsResponse)
    assert (result.accepted, result.new, result.customers) == (1, 1, [customer])
    assert "O-direct-1" in {r["order_id"] for r in outbox_rows(ws.home, "orders")}
    stranger = order.model_copy(update={"order_id": "O-direct-2", "customer_id": "NOBODY"})
    result, status = call(service.events, EventsRequest(orders=[stranger]))
    assert status == 404 and "NOBODY" in error(result)
    changed = order.model_copy(update={"amount": 13.0})
    result, status = call(service.events, EventsRequest(orders=[changed]))
    assert status == 409
    feedback = FeedbackRequest(decision_id="d-direct", outcome=True, revenue=3.0)
    result, status = call(service.feedback, feedback, frozenset({"feedback"}))
    assert status == 200 and isinstance(result, FeedbackResponse)
    (row,) = [r for r in outbox_rows(ws.home, "feedback") if r["decision_id"] == "d-direct"]
    assert row["outcome"] is True and row["revenue"] == 3.0


def test_champions_of_another_feature_set_leave_the_old_ones_serving(
    service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A new bundle whose churn was trained on another feature set is refused (logged
    once, the old champions keep serving); the next good bundle is taken."""
    from models.bundle import bundle_champions, load_for_serving

    good = load_for_serving(service.settings)
    before = service.meta
    stale = load_for_serving(service.settings)
    stale.feature_sets = {**stale.feature_sets, "churn": "another-feature-set"}
    stale.versions = {**stale.versions, "churn": "9"}
    tag = bundle_champions(stale, service.settings)
    with caplog.at_level(logging.ERROR, logger="bentoml.rapport"):
        service._refresh()
        service._refresh()
    refused = [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage()]
    assert len(refused) == 1 and tag in refused[0] and "another-feature-set" in refused[0]
    assert "still serving churn=1,value=1" in refused[0]
    assert service.meta == before and service.ready
    good.versions = {**good.versions, "churn": "1"}
    again = bundle_champions(good, service.settings)
    service._refresh()
    assert service.live.champions.source == f"bentoml:{again}"
    assert service.meta.models == before.models and service.ready


def test_batch_items_by_identifier(service: Any, ws: Workspace) -> None:
    """/score_batch takes identifiers as /score does; a household's shared phone is a 409
    for its item (never one of the persons), and no error quotes an identifier."""
    from features.identity import normalise
    from features.warehouse import connect
    from rapport.settings import Settings

    con = connect(Settings(home=ws.home).warehouse_path, read_only=True)
    try:
        frame = con.con.execute("SELECT customer_id, email, phone FROM customers ORDER BY 1").df()
    finally:
        con.disconnect()
    normal = normalise(frame).frame
    once = normal["email"].map(normal["email"].value_counts()).eq(1).to_numpy(dtype=bool)
    someone, email = frame[once].iloc[0][["customer_id", "email"]]
    shared = normal["phone"].dropna().value_counts()
    landline = next(p for p in shared[shared > 1].index if p.startswith("+442"))
    raw_phone = frame.loc[normal["phone"] == landline, "phone"].iloc[0]
    batch = ScoreBatchRequest(
        customers=[
            BatchItem(email=f" {str(email).upper()} "),
            BatchItem(phone=raw_phone),
            BatchItem(customer_id=ws.customers[2]),
            BatchItem(email="nobody.at.all@example.org"),
        ]
    )
    result, status = call(service.score_batch, batch)
    assert status == 200 and isinstance(result, ScoreBatchResponse)
    assert [s.customer_id for s in result.results] == [someone, ws.customers[2]]
    assert [(e.item, e.customer_id, e.status) for e in result.errors] == [
        (1, None, 409),
        (3, None, 404),
    ]
    assert "more than one customer" in result.errors[0].error
    for e in result.errors:
        assert "nobody" not in e.error and landline[3:] not in e.error.replace(" ", "")


def test_score_by_name_with_postcode(service: Any, ws: Workspace) -> None:
    """/score takes a name with postcode, written any way, as one identifier (issue 20);
    a name without its postcode is refused without quoting it."""
    from pydantic import ValidationError

    from features.identity import normalise
    from features.warehouse import connect
    from rapport.settings import Settings

    con = connect(Settings(home=ws.home).warehouse_path, read_only=True)
    try:
        frame = con.con.execute("SELECT customer_id, name, postcode FROM customers ORDER BY 1").df()
    finally:
        con.disconnect()
    normal = normalise(frame).frame["name_postcode"]
    once = normal.map(normal.value_counts()).eq(1).to_numpy(dtype=bool)
    row = frame[once].iloc[0]
    name, postcode = f"  {str(row['name']).upper()} ", str(row["postcode"]).replace(" ", "")
    result, status = call(service.score, ScoreRequest(name=name, postcode=postcode))
    assert status == 200 and isinstance(result, CustomerScore), result
    assert result.customer_id == row["customer_id"]
    with pytest.raises(ValidationError, match="name and postcode go together") as info:
        ScoreRequest(name=name)
    assert name.strip().lower() not in str(info.value).lower()
