"""Hot reload on the real server: a promotion, a rollback, a re-materialized online store
and a broken champion while ``bentoml serve`` runs, and requests under load during swaps.

The workspace has two churn versions (v1 the champion, v2 a challenger); the server checks
for changes every half second (``RAPPORT_RELOAD_SECONDS``).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving_harness import (
    Server,
    Workspace,
    add_churn_version,
    environment,
    prepare_workspace,
    serving,
)

#: how long a swap may take to show on a busy 2-core machine (the check runs every 0.5 s)
WITHIN_S = 60.0


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A served workspace plus a second churn version (trained, not promoted)."""
    workspace = prepare_workspace(tmp_path_factory.mktemp("reload"), customers=1500, seed=11)
    assert add_churn_version(workspace.home) == "2"
    return workspace


def home_env(home: Path) -> Any:
    return environment(RAPPORT_HOME=str(home), RAPPORT_ONLINE_STORE=None, MLFLOW_TRACKING_URI=None)


@pytest.fixture(scope="module")
def server(ws: Workspace) -> Iterator[Server]:
    env = {"RAPPORT_RELOAD_SECONDS": "0.5", "RAPPORT_ONLINE_STORE": ""}
    with serving(ws.home, env=env) as running:
        yield running


def served(http: httpx.Client) -> str:
    response = http.get("/readyz")
    assert response.status_code == 200, response.text
    return response.headers["x-rapport-models"]


def wait_for(what: Callable[[], bool], timeout: float = WITHIN_S) -> float:
    """Seconds until ``what()`` holds; fails after ``timeout``."""
    start = time.monotonic()
    while not what():
        assert time.monotonic() - start < timeout, "not within the time limit"
        time.sleep(0.1)
    return time.monotonic() - start


def score(http: httpx.Client, ws: Workspace, customer: str) -> httpx.Response:
    body = {"customer_id": customer, "explain": False}
    return http.post("/score", json=body, headers={"Authorization": f"Bearer {ws.keys['score']}"})


def set_champion(ws: Workspace, version: str) -> None:
    from models import registry

    with home_env(ws.home):
        registry.set_champion("churn", version)


def test_a_promotion_and_a_rollback_are_served_without_a_restart(
    http: httpx.Client, ws: Workspace, server: Server
) -> None:
    from models import registry

    assert served(http) == "churn=1,value=1"
    pid = server.process.pid
    set_champion(ws, "2")
    wait_for(lambda: served(http) == "churn=2,value=1")
    response = score(http, ws, ws.customers[0])
    assert response.status_code == 200, response.text
    assert response.json()["meta"]["models"] == {"churn": "2", "value": "1"}
    assert response.headers["x-rapport-models"] == "churn=2,value=1"
    with home_env(ws.home):
        registry.rollback("churn")  # back to v1, exactly
    wait_for(lambda: served(http) == "churn=1,value=1")
    assert score(http, ws, ws.customers[1]).json()["meta"]["models"]["churn"] == "1"
    assert server.process.pid == pid and server.process.poll() is None  # never restarted


def test_a_rematerialized_store_brings_its_segments(http: httpx.Client, ws: Workspace) -> None:
    from features.batch import build
    from features.online.materialize import materialize
    from features.online.store import open_store
    from features.spec import default_spec
    from features.tables.segments import snapshot_segments
    from features.warehouse import connect, raw
    from rapport.settings import get_settings

    before = score(http, ws, ws.customers[2]).json()["meta"]["segments"]
    assert before
    with home_env(ws.home):
        settings = get_settings()
        con = connect(settings.warehouse_path)
        now = datetime.now(UTC)
        fitted = snapshot_segments(raw(con), build(con, now), now, default_spec().version, now)
        store = open_store(settings.online_store_url)
        materialize(con, store, now)
        store.close()
        con.disconnect()
    assert fitted.version != before
    wait_for(lambda: score(http, ws, ws.customers[2]).json()["meta"]["segments"] == fitted.version)


def test_a_broken_champion_leaves_the_old_one_serving_and_says_why_once(
    http: httpx.Client, ws: Workspace, server: Server
) -> None:
    import bentoml

    from models.bundle import BENTO_MODEL, CHAMPIONS_FILE, _model_store

    before = served(http)
    with home_env(ws.home):
        with bentoml.models.create(
            BENTO_MODEL, metadata={"versions": {}}, _model_store=_model_store()
        ) as model:
            Path(model.path_of(CHAMPIONS_FILE)).write_bytes(b"not a pickle")
        broken = str(model.tag)
    refused = re.compile(rf"new champions bentoml:{re.escape(broken)} not loaded.*{before}")
    wait_for(lambda: bool(refused.search(server.log_text())))
    time.sleep(2.0)  # four more checks: the reason is logged once
    assert len(refused.findall(server.log_text())) == 1
    assert served(http) == before
    assert score(http, ws, ws.customers[3]).status_code == 200
    set_champion(ws, "2")  # the next good champions are taken again
    wait_for(lambda: served(http) == "churn=2,value=1")
    set_champion(ws, "1")
    wait_for(lambda: served(http) == "churn=1,value=1")


def test_requests_under_load_during_swaps_all_succeed(http: httpx.Client, ws: Workspace) -> None:
    stop_at = threading.Event()
    seen: list[tuple[int, str]] = []

    def client(offset: int) -> None:
        with httpx.Client(base_url=str(http.base_url), timeout=30) as own:
            i = offset
            while not stop_at.is_set():
                response = score(own, ws, ws.customers[i % len(ws.customers)])
                churn = response.json().get("meta", {}).get("models", {}).get("churn", "?")
                seen.append((response.status_code, churn))
                i += 4

    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(client, k) for k in range(4)]
        try:
            for version in ("2", "1", "2", "1"):
                set_champion(ws, version)
                wait_for(lambda v=version: served(http) == f"churn={v},value=1")  # type: ignore[misc]
                time.sleep(0.5)
        finally:
            stop_at.set()
            for future in running:
                future.result()
    failed = [status for status, _ in seen if status != 200]
    assert not failed and len(seen) > 50, (len(seen), failed[:5])
    assert {churn for _, churn in seen} == {"1", "2"}
