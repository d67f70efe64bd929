"""The scoring service as a user runs it: ``bentoml serve`` on a free local port, over HTTP.

One demo workspace (trained and promoted champions, materialized online store, one key
per scope) and one server serve the whole module; the server runs with small limits
(20 kB bodies, batches of 50) so that the limits are cheap to hit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from contract_rows import interaction, order
from openapi_spec_validator import validate
from serving_harness import Server, Workspace, serving, workspace_fixture

from features.online.events import OPEN_SUFFIX
from features.spec import default_spec

MAX_BODY = 20_000
MAX_BATCH = 50


#: bentoml's own import warns (pathspec 1.x); nothing we can act on


ws = workspace_fixture("service", customers=3000, seed=7)


@pytest.fixture(scope="module")
def server(ws: Workspace) -> Iterator[Server]:
    limits = {
        "RAPPORT_MAX_BODY_BYTES": str(MAX_BODY),
        "RAPPORT_MAX_BATCH_SIZE": str(MAX_BATCH),
        "RAPPORT_ONLINE_STORE": "",
    }
    with serving(ws.home, env=limits) as running:
        yield running


def post(
    http: httpx.Client, ws: Workspace, path: str, body: Any, scope: str = "admin"
) -> httpx.Response:
    return http.post(path, json=body, headers={"Authorization": f"Bearer {ws.keys[scope]}"})


def outbox_rows(ws: Workspace, table: str) -> list[dict[str, Any]]:
    """Every line the service wrote to the outbox so far (open and sealed segments)."""
    folder = ws.home / "outbox" / table
    paths = [*folder.glob(f"*{OPEN_SUFFIX}"), *folder.glob("*.jsonl")]
    return [json.loads(line) for path in paths for line in path.read_text().splitlines()]


def logged_decisions(ws: Workspace, ids: set[str], timeout: float = 10.0) -> list[dict[str, Any]]:
    """Campaign-log rows of these decisions, once all are written (behind the answers)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in outbox_rows(ws, "campaign_log") if r["decision_id"] in ids]
        if {r["decision_id"] for r in rows} >= ids or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def scored(http: httpx.Client, ws: Workspace, customer_id: str) -> dict[str, Any]:
    """A score with its features (which logs a decision, like any score)."""
    body = {"customer_id": customer_id, "include_features": True, "explain": False}
    response = post(http, ws, "/score", body, "score")
    assert response.status_code == 200, response.text
    return dict(response.json())


def features(http: httpx.Client, ws: Workspace, customer_id: str) -> dict[str, Any]:
    return dict(scored(http, ws, customer_id)["features"])


# --------------------------------------------------------------------------- health
def test_health_and_versions_on_every_response(http: httpx.Client, ws: Workspace) -> None:
    for path in ("/livez", "/readyz"):
        response = http.get(path)
        assert response.status_code == 200, path
        assert response.headers["x-rapport-feature-set"] == default_spec().version
        assert response.headers["x-rapport-models"] == "churn=1,value=1"
    refused = http.post("/score", json={"customer_id": ws.customers[0]})
    assert refused.headers["x-rapport-models"] == "churn=1,value=1"
    document = http.get("/docs.json").json()
    validate(document)  # OpenAPI 3 (BentoML's own was invalid: issue 22)
    assert {"/score", "/score_batch", "/events", "/feedback", "/targets"} <= set(document["paths"])
    assert http.get("/metrics").status_code == 404 and "/metrics" not in document["paths"]


def test_score(http: httpx.Client, ws: Workspace) -> None:
    body = {"customer_id": ws.customers[0], "context": {"channel": "call"}, "top_k": 2}
    response = post(http, ws, "/score", body, "score")
    assert response.status_code == 200, response.text
    score = response.json()
    assert score["customer_id"] == ws.customers[0] and not score["cold_start"]
    assert 0.0 <= score["churn"]["probability"] <= 1.0
    assert score["churn"]["reasons"] and all(r["phrase"] for r in score["churn"]["reasons"])
    value = score["value"]
    assert value["p10"] <= value["p50"] <= value["p90"]
    assert score["abc_tier"] in {"A", "B", "C"} and score["rfm_segment"]
    assert 1 <= len(score["actions"]) <= 2
    assert 0.0 < score["chosen"]["propensity"] <= 1.0
    assert score["decision_id"] and score["features"] is None
    assert score["meta"].pop("segments")  # the segment model version the store was loaded with
    assert score["meta"] == {
        "models": {"churn": "1", "value": "1"},
        "feature_set": default_spec().version,
        "catalog": score["meta"]["catalog"],
    }
    logged = logged_decisions(ws, {score["decision_id"]})
    assert len(logged) == 1
    assert logged[0]["action"] == score["chosen"]["action"]
    assert logged[0]["propensity"] == score["chosen"]["propensity"]


# --------------------------------------------------------------------------- safety
@pytest.mark.parametrize(
    ("path", "header", "status"),
    [
        ("/score", None, 401),
        ("/score", "Bearer nope", 401),
        ("/score", "score", 200),
        ("/score", "events", 403),
        ("/events", "score", 403),
        ("/feedback", "events", 403),
        ("/feedback", "feedback", 200),
        ("/score", "admin", 200),
    ],
)
def test_keys_and_scopes(
    http: httpx.Client, ws: Workspace, path: str, header: str | None, status: int
) -> None:
    bodies = {
        "/score": {"customer_id": ws.customers[1]},
        "/events": {"orders": []},
        "/feedback": {"decision_id": "d-x", "outcome": False},
    }
    headers = {}
    if header is not None:
        headers["Authorization"] = f"Bearer {ws.keys[header]}" if header in ws.keys else header
    response = http.post(path, json=bodies[path], headers=headers)
    assert response.status_code == status, response.text
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    if status == 403:
        assert "scope" in response.json()["error"]


def test_invalid_payload_is_422_per_field(http: httpx.Client, ws: Workspace) -> None:
    body = {"customer_id": "", "top_k": 0, "explain": "maybe", "colour": "red"}
    response = post(http, ws, "/score", body, "score")
    assert response.status_code == 422
    fields = {f["field"]: f for f in response.json()["fields"]}
    assert set(fields) == {"customer_id", "top_k", "explain", "colour"}
    assert "greater than or equal to 1" in fields["top_k"]["message"]
    assert fields["colour"]["type"] == "extra_forbidden"
    bad_json = http.post(
        "/events", content=b"{not json", headers={"Authorization": f"Bearer {ws.keys['events']}"}
    )
    assert bad_json.status_code == 422 and bad_json.json()["fields"][0]["type"] == "json_invalid"
    # numbers are bounded: a budget of 1e307 was a 500 (OverflowError), issue 22
    huge = post(http, ws, "/targets", {"budget": 1e307, "top": 10**12}, "targets")
    assert huge.status_code == 422, huge.text
    assert {f["field"] for f in huge.json()["fields"]} == {"budget", "top"}
    too_much = order("X", "C", "2024-01-01", 1e300)
    assert post(http, ws, "/events", {"orders": [too_much]}, "events").status_code == 422


def test_limits(http: httpx.Client, ws: Workspace) -> None:
    huge = {"customer_id": ws.customers[0], "context": {"note": "x" * MAX_BODY}}
    response = post(http, ws, "/score", huge, "score")
    assert response.status_code == 413 and "20,000 bytes" in response.json()["error"]
    batch = {"customers": [{"customer_id": c} for c in ws.customers[: MAX_BATCH + 1]]}
    response = post(http, ws, "/score_batch", batch, "score")
    assert response.status_code == 413 and "limit of 50" in response.json()["error"]


def test_no_personal_data_in_logs(http: httpx.Client, ws: Workspace, server: Server) -> None:
    email, phone = "alice.martin@example.com", "+33 6 12 34 56 78"
    body = {"customer_id": ws.customers[0], "context": {"email": email}, "phone": phone}
    assert post(http, ws, "/score", body, "score").status_code == 422
    leaky = order("O-pii", email, phone, 1.0)  # personal data where ids and times go
    assert post(http, ws, "/events", {"orders": [leaky]}, "events").status_code == 422
    log = server.log_text()
    assert "invalid request on /score" in log  # the failure is logged, one line
    assert email not in log and phone not in log


# --------------------------------------------------------------------------- customers
def test_unknown_customer_is_404_or_cold_start(http: httpx.Client, ws: Workspace) -> None:
    missing = post(http, ws, "/score", {"customer_id": "NEW-1"}, "score")
    assert missing.status_code == 404 and "NEW-1" in missing.json()["error"]
    body = {
        "customer_id": "NEW-1",
        "include_features": True,
        "cold_start": {"attributes": {"region": "north", "email_opt_in": True}},
    }
    cold = post(http, ws, "/score", body, "score")
    assert cold.status_code == 200, cold.text
    score = cold.json()
    assert score["cold_start"] is True and score["rfm_segment"] == "prospect"
    assert score["features"]["tenure_days"] == pytest.approx(0.0, abs=1e-6)
    assert score["features"]["region"] == "north" and score["features"]["orders_all"] == 0


def test_score_batch(http: httpx.Client, ws: Workspace) -> None:
    body = {
        "customers": [{"customer_id": c} for c in ws.customers[:3]] + [{"customer_id": "NEW-2"}]
    }
    response = post(http, ws, "/score_batch", body, "score")
    assert response.status_code == 200, response.text
    data = response.json()
    assert [r["customer_id"] for r in data["results"]] == ws.customers[:3]
    assert data["errors"] == [
        {"customer_id": "NEW-2", "status": 404, "error": "unknown customer", "item": 3}
    ]
    assert all(r["churn"]["reasons"] == [] for r in data["results"])  # explain is off by default


def test_as_of_needs_admin(http: httpx.Client, ws: Workspace) -> None:
    as_of = (datetime.now(UTC) - timedelta(days=30)).isoformat()
    body = {"customer_id": ws.customers[2], "as_of": as_of}
    assert post(http, ws, "/score", body, "score").status_code == 403
    response = post(http, ws, "/score", body, "admin")
    assert response.status_code == 200
    assert datetime.fromisoformat(response.json()["as_of"]) == datetime.fromisoformat(as_of)


# --------------------------------------------------------------------------- writes
def test_events_change_the_next_score(http: httpx.Client, ws: Workspace) -> None:
    customer = ws.customers[3]
    before = features(http, ws, customer)
    now = datetime.now(UTC)
    ordered_at, occurred_at = [(now - timedelta(minutes=n)).isoformat() for n in (5, 1)]
    complaint = interaction("I-live-1", customer, occurred_at, "call", "complaint")
    complaint |= {"direction": "inbound", "satisfaction": 1, "resolved": False}
    body = {
        "orders": [order("O-live-1", customer, ordered_at, 80.0)],
        "interactions": [complaint],
    }
    response = post(http, ws, "/events", body, "events")
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 2 and response.json()["new"] == 2
    # durable: on disk in the outbox before the answer
    assert "O-live-1" in {r["order_id"] for r in outbox_rows(ws, "orders")}
    assert "I-live-1" in {r["interaction_id"] for r in outbox_rows(ws, "interactions")}
    after = features(http, ws, customer)  # read-your-writes: the very next score
    assert after["orders_30d"] == before["orders_30d"] + 1
    assert after["spend_30d"] == pytest.approx(before["spend_30d"] + 80.0)
    assert after["complaints_30d"] == before["complaints_30d"] + 1
    assert after["unresolved_complaints_30d"] == before["unresolved_complaints_30d"] + 1
    assert after["days_since_last_complaint"] < 0.01
    again = post(http, ws, "/events", body, "events").json()
    assert (again["new"], again["duplicates"]) == (0, 2)
    body["orders"][0]["amount"] = 81.0
    conflict = post(http, ws, "/events", {"orders": body["orders"]}, "events")
    assert conflict.status_code == 409 and "different amount" in conflict.json()["error"]


def test_events_for_unknown_customers_are_404(http: httpx.Client, ws: Workspace) -> None:
    nobodys = order("O-nobody", "NOBODY", "2024-01-01", 1)
    response = post(http, ws, "/events", {"orders": [nobodys]}, "events")
    assert response.status_code == 404 and "NOBODY" in response.json()["error"]
    assert "O-nobody" not in {r["order_id"] for r in outbox_rows(ws, "orders")}


# --------------------------------------------------------------------------- identifiers
def held_once(ws: Workspace, kind: str, skip: tuple[str, ...] = ()) -> tuple[str, str]:
    """A customer and the identifier of ``kind`` (as stored) that only they hold."""
    from features.identity import normalise
    from features.warehouse import connect
    from rapport.settings import Settings

    con = connect(Settings(home=ws.home).warehouse_path, read_only=True)
    try:
        frame = con.con.execute(
            "SELECT customer_id, email, phone, loyalty_card, cookie_id FROM customers "
            "ORDER BY customer_id"
        ).df()
    finally:
        con.disconnect()
    normal = normalise(frame).frame[kind]
    once = normal.map(normal.value_counts()).eq(1).to_numpy(dtype=bool)
    free = ~frame["customer_id"].isin([*ws.customers[:10], *skip]).to_numpy()
    row = frame[once & free].iloc[0]
    return str(row["customer_id"]), str(row[kind])


def test_events_by_email_or_phone_reach_the_customers_next_score(
    http: httpx.Client, ws: Workspace, server: Server
) -> None:
    """Issue 20's done-when: events posted with only an e-mail or a phone reach the right
    customer's next score; an unknown e-mail makes a provisional customer; /score takes
    an identifier; no identifier reaches the log."""
    ann, email = held_once(ws, "email")
    bob, phone = held_once(ws, "phone", skip=(ann,))
    before_ann, before_bob = features(http, ws, ann), features(http, ws, bob)
    now = datetime.now(UTC)
    ordered_at, occurred_at = [(now - timedelta(minutes=n)).isoformat() for n in (3, 2)]
    by_email = order("O-by-email", None, ordered_at, 42.0, email=f"  {email.upper()} ")
    body = {  # the e-mail is normalised as the index was
        "orders": [by_email],
        "interactions": [
            interaction("I-by-phone", None, occurred_at, "call", "complaint", phone=phone)
        ],
    }
    response = post(http, ws, "/events", body, "events")
    assert response.status_code == 200, response.text
    routes = {r["id"]: r for r in response.json()["routes"]}
    assert routes["O-by-email"] == {
        "table": "orders",
        "id": "O-by-email",
        "customer_id": ann,
        "matched_by": "email",
        "provisional": False,
    }
    assert (routes["I-by-phone"]["customer_id"], routes["I-by-phone"]["matched_by"]) == (
        bob,
        "phone",
    )
    after_ann, after_bob = features(http, ws, ann), features(http, ws, bob)
    assert after_ann["orders_30d"] == before_ann["orders_30d"] + 1
    assert after_ann["spend_30d"] == pytest.approx(before_ann["spend_30d"] + 42.0)
    assert after_bob["complaints_30d"] == before_bob["complaints_30d"] + 1
    # the outbox holds the customer, not the identifier
    (line,) = [r for r in outbox_rows(ws, "orders") if r["order_id"] == "O-by-email"]
    assert line["customer_id"] == ann and "email" not in line
    by_phone = post(http, ws, "/score", {"phone": phone, "include_features": True}, "score")
    assert by_phone.status_code == 200, by_phone.text
    assert by_phone.json()["customer_id"] == bob
    assert by_phone.json()["features"]["complaints_30d"] == after_bob["complaints_30d"]

    # nobody holds this e-mail: a provisional customer, the same one for the next event
    new = f"new.person.{now.timestamp():.0f}@example.org"
    ids = []
    for n in (1, 2):
        at = (now - timedelta(minutes=n)).isoformat()
        event = order(f"O-new-{n}", None, at, 10.0 * n, email=new)
        answer = post(http, ws, "/events", {"orders": [event]}, "events")
        assert answer.status_code == 200, answer.text
        ids.append(answer.json()["routes"][0])
    pid = ids[0]["customer_id"]
    assert pid.startswith("anon-") and ids[0]["matched_by"] == "provisional"
    assert ids[1]["customer_id"] == pid and ids[1]["matched_by"] == "email"
    assert all(route["provisional"] for route in ids)
    rows = [r for r in outbox_rows(ws, "customers") if r["customer_id"] == pid]
    assert len(rows) == 1 and rows[0]["email"] == new  # for ingest, then rapport resolve
    score = post(http, ws, "/score", {"email": new, "include_features": True}, "score").json()
    assert score["customer_id"] == pid and score["features"]["orders_all"] == 2

    missing = post(http, ws, "/score", {"email": "nobody.else@example.org"}, "score")
    assert missing.status_code == 404 and "nobody" not in missing.json()["error"]
    log = server.log_text()
    assert all(value not in log for value in (email, phone, new, "nobody.else"))


def test_decisions_feed_the_contact_policy(http: httpx.Client, ws: Workspace) -> None:
    customer = ws.customers[4]
    first = scored(http, ws, customer)
    second = post(http, ws, "/score", {"customer_id": customer}, "score").json()
    third = scored(http, ws, customer)
    offers = [
        s["chosen"]["action"] for s in (first, second) if s["chosen"]["action"] != "no_action"
    ]
    assert third["features"]["offers_30d"] == first["features"]["offers_30d"] + len(offers)
    if offers:
        assert third["features"]["days_since_last_offer"] < 0.01
    ids = {first["decision_id"], second["decision_id"], third["decision_id"]}
    assert {r["decision_id"] for r in logged_decisions(ws, ids)} == ids


def test_feedback_is_durable(http: httpx.Client, ws: Workspace) -> None:
    decision = post(http, ws, "/score", {"customer_id": ws.customers[5]}, "score").json()
    body = {"decision_id": decision["decision_id"], "outcome": True, "revenue": 42.5}
    response = post(http, ws, "/feedback", body, "feedback")
    assert response.status_code == 200, response.text
    (row,) = [r for r in outbox_rows(ws, "feedback") if r["decision_id"] == decision["decision_id"]]
    assert row["outcome"] is True and row["revenue"] == 42.5
    assert row["responded_at"] == row["recorded_at"]
