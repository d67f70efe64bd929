"""Live parity: features served by ``/score`` after a sequence of posted events equal a
batch build over the warehouse once the service's outbox is ingested, at the same as_of.

Runs against both online-store backends: the default SQLite file, and Redis (a
``redis-server`` the test starts on a free port; missing, the test fails and says so).
Stopping the server is part of the test: a graceful stop seals the outbox segments, so
everything the service acknowledged reaches the warehouse.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pandas as pd
import pytest
import redis
from sample_data import assert_features_equal
from serving_harness import Workspace, environment, free_port, serving, workspace_fixture

from features.batch import build
from features.online.events import OPEN_SUFFIX
from features.online.materialize import materialize
from features.online.store import open_store
from features.outbox_ingest import ingest_outbox
from features.spec import default_spec
from features.warehouse import connect

#: bentoml's own import warns (pathspec 1.x); nothing we can act on


ws = workspace_fixture("parity", customers=2000, seed=11)


@pytest.fixture
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not on PATH: install the Debian package redis-server")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            *(binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)),
            *("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield url
    client.close()
    process.terminate()
    process.wait(10)


def events_for(customers: list[str], now: datetime, tag: str) -> dict[str, list[dict[str, Any]]]:
    """A varied sequence: orders and returns, complaints solved or not, emails, calls."""
    orders, interactions = [], []
    for i, customer in enumerate(customers):
        at = now - timedelta(days=40 - 7 * i, minutes=i)
        orders.append(
            {
                "order_id": f"O-{tag}-{i}a",
                "customer_id": customer,
                "ordered_at": at.isoformat(),
                "amount": 19.99 + i,
                "margin": 4.25,
                "category": "books",
            }
        )
        orders.append(
            {
                "order_id": f"O-{tag}-{i}b",
                "customer_id": customer,
                "ordered_at": (at + timedelta(days=2)).isoformat(),
                "amount": -(5.5 + i),
            }
        )
        kinds = [
            (
                "call",
                "complaint",
                {"direction": "inbound", "duration_s": 310.0, "satisfaction": 2, "resolved": False},
            ),
            ("email", "sent", {"direction": "outbound"}),
            ("email", "open", {"direction": "inbound"}),
            ("chat", "inquiry", {"direction": "inbound", "satisfaction": 4, "resolved": True}),
        ]
        for j, (channel, kind, extra) in enumerate(kinds[: 1 + i % len(kinds)]):
            when = now - timedelta(days=3 * j + i, hours=1)
            interactions.append(
                {
                    "interaction_id": f"I-{tag}-{i}-{j}",
                    "customer_id": customer,
                    "occurred_at": when.isoformat(),
                    "channel": channel,
                    "kind": kind,
                    **extra,
                }
            )
    return {"orders": orders, "interactions": interactions}


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_live_features_equal_the_batch_build(
    backend: str, ws: Workspace, request: pytest.FixtureRequest
) -> None:
    env = {"RAPPORT_ONLINE_STORE": ""}
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
        with environment(RAPPORT_HOME=str(ws.home)):
            con = connect(ws.home / "warehouse.duckdb", read_only=True)
            materialize(con, open_store(url))
            con.disconnect()
        env["RAPPORT_ONLINE_STORE"] = url
    customers = ws.customers[:6] if backend == "sqlite" else ws.customers[6:12]
    with serving(ws.home, env=env) as server:
        admin = {"Authorization": f"Bearer {ws.keys['admin']}"}
        with httpx.Client(base_url=server.url, headers=admin, timeout=30) as http:
            for customer in customers[:3]:  # decisions logged before the events
                assert http.post("/score", json={"customer_id": customer}).status_code == 200
            response = http.post("/events", json=events_for(customers, datetime.now(UTC), backend))
            assert response.status_code == 200, response.text
            time.sleep(0.01)
            as_of = datetime.now(UTC)
            served = []
            for customer in customers:
                body = {
                    "customer_id": customer,
                    "include_features": True,
                    "as_of": as_of.isoformat(),
                }
                reply = http.post("/score", json=body)
                assert reply.status_code == 200, reply.text
                served.append({"customer_id": customer, **reply.json()["features"]})
    assert not list((ws.home / "outbox").glob(f"*/*{OPEN_SUFFIX}")), "a graceful stop seals"

    con = connect(ws.home / "warehouse.duckdb")
    report = ingest_outbox(con, ws.home / "outbox", datetime.now(UTC))
    assert report.quarantined == 0, report.summary()
    assert report.tables["orders"].inserted == 2 * len(customers)
    batch = build(con, as_of).set_index("customer_id").loc[customers].reset_index()
    con.disconnect()
    live = pd.DataFrame(served, columns=["customer_id", *default_spec().names])
    live = live.astype({"customer_id": "string"})
    assert_features_equal(live, batch, f"{backend} live vs batch")
