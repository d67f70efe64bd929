"""``POST /targets`` over HTTP: the scope, the list, errors pointing at the token.

A served demo workspace (trained champions, materialized store) plus one batch scoring
run; the server reads the warehouse read-only per request.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from bench.serving import Server, Workspace, prepare_workspace, start_service, stop, wait_ready

pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    from features.warehouse import connect
    from rapport.settings import Settings
    from training.scoring import score_all

    ws = prepare_workspace(tmp_path_factory.mktemp("targets"), customers=1500, seed=11)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAPPORT_HOME", str(ws.home))
        from rapport.settings import reset_settings

        reset_settings()
        con = connect(Settings(home=ws.home).warehouse_path)
        score_all(con)
        con.disconnect()
    reset_settings()
    return ws


@pytest.fixture(scope="module")
def server(ws: Workspace) -> Iterator[Server]:
    running = start_service(ws.home, env={"RAPPORT_ONLINE_STORE": ""})
    wait_ready(running)
    yield running
    stop(running)


def post(server: Server, ws: Workspace, body: object, scope: str = "targets") -> httpx.Response:
    headers = {"Authorization": f"Bearer {ws.keys[scope]}"}
    return httpx.post(f"{server.url}/targets", json=body, headers=headers, timeout=60)


def test_targets_over_http(server: Server, ws: Workspace) -> None:
    assert post(server, ws, {"top": 3}, scope="score").status_code == 403
    body = {"filter": "abc_tier in ['A', 'B']", "budget": 50, "max_rows": 10_000}
    response = post(server, ws, body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["count"] == len(data["members"]) and data["total_cost"] <= 50
    assert {m["abc_tier"] for m in data["members"]} <= {"A", "B"}
    assert data["run_id"].startswith("sr-") and data["meta"]["models"]["churn"] == "1"
    small = post(server, ws, {"action": "cross_sell", "max_rows": 0}).json()
    assert small["members"] is None and small["download_path"].endswith(".parquet")
    bad = post(server, ws, {"filter": "abc_tier = 'A'"})
    assert bad.status_code == 422 and "use '=='" in bad.json()["error"]
    unknown = post(server, ws, {"name": "nope"})
    assert unknown.status_code == 422 and "no saved list" in unknown.json()["error"]
