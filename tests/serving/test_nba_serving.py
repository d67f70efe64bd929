"""Next best action in the live path: the service with an NBA model ranks real actions,
and the one-customer scorer path (no pandas) gives the batch scorer's numbers.

The NBA model is fitted for the tests (``nba_ws`` in conftest: :func:`bench.serving.fit_demo_nba`,
a quick uplift model on the demo campaign log) and bundled with the churn / value champions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from serving_harness import Server, Workspace, start_service, stop, wait_ready

from features.batch import build
from features.online.materialize import META_SEGMENTS
from features.online.store import open_store
from features.segments import SegmentModel
from features.warehouse import connect
from models.bundle import load_for_serving
from models.registry import build_scorer
from models.scorer import Scorer
from rapport.settings import Settings
from serving.auth import add_key

pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")


@pytest.fixture(scope="module")
def ws(nba_ws: Workspace) -> Workspace:
    return nba_ws


@pytest.fixture(scope="module")
def scorers(ws: Workspace) -> dict[str, Scorer]:
    settings = Settings(home=ws.home)
    champions = load_for_serving(settings)
    assert champions.versions.get("nba") == "demo"
    store = open_store(settings.online_store_url)
    segments = SegmentModel.from_json(store.get_meta(META_SEGMENTS) or "")
    store.close()
    with_nba = build_scorer(champions, segments)
    champions.models.pop("nba")
    return {"nba": with_nba, "none": build_scorer(champions, segments)}


@pytest.fixture(scope="module")
def frame(ws: Workspace) -> tuple[pd.DataFrame, datetime]:
    con = connect(Settings(home=ws.home).warehouse_path, read_only=True)
    as_of = datetime.now(UTC)
    try:
        features = build(con, as_of)
    finally:
        con.disconnect()
    return features.sample(60, random_state=0).reset_index(drop=True), as_of


@pytest.mark.parametrize("kind", ["nba", "none"])
def test_score_one_equals_score_frame(
    scorers: dict[str, Scorer], frame: tuple[pd.DataFrame, datetime], kind: str
) -> None:
    scorer = scorers[kind]
    features, as_of = frame
    batch = scorer.score_frame(features, as_of)
    records: list[dict[str, Any]] = features.to_dict("records")
    offered = 0
    for i, row in enumerate(records):
        row = {k: (None if v is pd.NA or v is pd.NaT else v) for k, v in row.items()}
        live = scorer.score_one({**row, "as_of": as_of}, top_k=6, rng=np.random.default_rng(i))
        expected = batch.iloc[i]
        assert live.churn.probability == pytest.approx(expected["churn_probability"])
        for part in ("mean", "p10", "p50", "p90"):
            assert getattr(live.value, part) == pytest.approx(expected[f"value_{part}"])
        assert live.abc_tier == expected["abc_tier"]
        assert live.rfm_segment == expected["rfm_segment"]
        best = live.actions[0]
        assert best.action == expected["best_action"]
        assert best.expected_value == pytest.approx(expected["expected_value"])
        listed = {a.action for a in live.actions}
        excluded = {e.action for e in live.excluded}
        assert listed.isdisjoint(excluded)
        assert listed | excluded == set(scorer.catalog.ids)
        assert sum(a.propensity for a in live.actions) == pytest.approx(1.0)
        assert live.chosen.action in listed and live.chosen.propensity > 0
        offered += best.action != "no_action"
        if kind == "none":
            assert listed == {"no_action"}
            reasons = {e.reason for e in live.excluded}
            assert reasons == {"no uplift estimate for this action"}
    if kind == "nba":
        assert offered > 0, "the fitted NBA model never beat doing nothing"


@pytest.fixture(scope="module")
def http(ws: Workspace) -> Iterator[tuple[httpx.Client, Server]]:
    server = start_service(ws.home, env={"RAPPORT_ONLINE_STORE": ""})
    wait_ready(server)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client, server
    stop(server)


def test_score_ranks_actions_with_propensities_and_exclusions(
    http: tuple[httpx.Client, Server], ws: Workspace
) -> None:
    client, _ = http
    headers = {"Authorization": f"Bearer {ws.keys['score']}"}
    offers, reasons = 0, set()
    for customer in ws.customers[:40]:
        body = {"customer_id": customer, "top_k": 6, "context": {"channel": "call"}}
        response = client.post("/score", json=body, headers=headers)
        assert response.status_code == 200, response.text
        score = response.json()
        assert score["meta"]["models"]["nba"] == "demo"
        assert "nba=demo" in response.headers["x-rapport-models"]
        actions = score["actions"]
        assert actions and all(0.0 < a["propensity"] <= 1.0 for a in actions)
        assert sum(a["propensity"] for a in actions) == pytest.approx(1.0)
        scores = [a["weight"] * a["expected_value"] - a["cost"] for a in actions]
        assert scores == sorted(scores, reverse=True)
        listed = {a["action"] for a in actions}
        assert score["chosen"]["action"] in listed
        assert listed.isdisjoint(e["action"] for e in score["excluded"])
        reasons |= {e["reason"].split(":")[0] for e in score["excluded"]}
        offers += actions[0]["action"] != "no_action"
    assert offers > 0
    assert "not eligible" in reasons


def test_a_key_added_while_serving_works_without_a_restart(
    http: tuple[httpx.Client, Server], ws: Workspace
) -> None:
    client, server = http
    key = add_key(ws.home, ["score"], name="added while serving")
    body = {"customer_id": ws.customers[0]}
    deadline = time.monotonic() + 15  # the service checks the key file every 2 s
    status = 0
    while time.monotonic() < deadline and status != 200:
        status = client.post(
            "/score", json=body, headers={"Authorization": f"Bearer {key}"}
        ).status_code
        time.sleep(0.3)
    assert status == 200
    assert "API keys reloaded" in server.log_text()
