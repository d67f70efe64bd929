"""Next best action in the live path: the service with an NBA model ranks real actions,
and the one-customer scorer path (no pandas) gives the batch scorer's numbers.

The NBA model is fitted for the tests (``nba_ws`` in conftest: :func:`bench.serving.fit_demo_nba`,
a quick uplift model on the demo campaign log) and bundled with the churn / value champions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import httpx
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving_harness import Server, Workspace, serving

from features.batch import build
from features.control import NO_CONTROL, ControlGroup
from features.online.materialize import META_SEGMENTS
from features.online.store import open_store
from features.segments import SegmentModel
from features.tables.control import change_control, control_path, read_control
from features.warehouse import connect
from models.bundle import load_for_serving
from models.policy import arbitrate
from models.registry import build_scorer
from models.scorer import CONTROL_REASON, Scorer
from models.targeting import TargetDefinition, select_targets
from rapport.settings import Settings
from serving.auth import add_key


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
def customers(ws: Workspace) -> list[tuple[dict[str, Any], datetime]]:
    """Every customer of the workspace as of now and as of 45 days ago (~3,000 scores)."""
    con = connect(Settings(home=ws.home).warehouse_path, read_only=True)
    now = datetime.now(UTC)
    out = []
    try:
        for as_of in (now, now - timedelta(days=45)):
            for row in build(con, as_of).to_dict("records"):
                row = {k: (None if v is pd.NA or v is pd.NaT else v) for k, v in row.items()}
                out.append(({**row, "as_of": as_of}, as_of))
    finally:
        con.disconnect()
    return out


def test_live_scores_equal_the_unscreened_path_exactly(
    scorers: dict[str, Scorer], customers: list[tuple[dict[str, Any], datetime]]
) -> None:
    """The live scorer predicts uplift only for the actions the catalog's rules allow;
    its reasons, ranked actions (every figure), exclusions, chosen action and logged
    propensity equal -- exactly -- those of the unoptimised path: every action's uplift
    predicted, then :func:`models.policy.arbitrate` screening as the batch does, for
    thousands of scores, with and without a control group."""
    scorer = scorers["nba"]
    catalog = scorer.catalog
    compared = offered = screened_out = 0
    for control in (NO_CONTROL, ControlGroup(0.2, "equality")):
        scorer.control = control
        try:
            for i, (features, _) in enumerate(customers):
                live = scorer.score_one(
                    features, top_k=len(catalog.ids), rng=np.random.default_rng(i)
                )
                # the unoptimised path, from the same public pieces, all uplift predicted
                columns, X = scorer.scores(features)
                row = {**features, **{name: values[0] for name, values in columns.items()}}
                drivers = scorer.churn.explain_array(X, spec=scorer.spec)[0]
                assert scorer.nba is not None
                result = arbitrate(row, catalog, scorer.nba.predict(row))
                policy = scorer.policy.probabilities(result)[0]
                probs = control.logging_probabilities(policy)
                held = control.contains(str(features["customer_id"]))
                chosen = 0 if held else int(np.random.default_rng(i).choice(len(policy), p=policy))
                expected_actions = [] if held else result.offers(probs)
                excluded = (
                    {a: CONTROL_REASON for a in result.actions[1:]}
                    if held
                    else result.exclusions(0)
                )
                assert [r.model_dump() for r in live.churn.reasons] == drivers["up"] + drivers[
                    "down"
                ]
                assert [a.model_dump() for a in live.actions] == expected_actions
                assert {e.action: e.reason for e in live.excluded} == excluded
                assert live.chosen.action == result.actions[chosen]
                assert live.chosen.propensity == float(probs[chosen])
                compared += 1
                offered += live.chosen.action != "no_action"
                screened_out += sum(
                    r.reason.startswith(("not eligible", "no consent", "contact", "cool-down"))
                    for r in live.excluded
                )
        finally:
            scorer.control = NO_CONTROL
    assert compared >= 2 * 2000 and offered > 0 and screened_out > 0


@pytest.fixture(scope="module")
def http(ws: Workspace) -> Iterator[tuple[httpx.Client, Server]]:
    with (
        serving(ws.home, env={"RAPPORT_ONLINE_STORE": ""}) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        yield client, server


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
        if score["group"] == "control":  # the control group: see the test below
            continue
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


#: hypothesis: customer ids, salts and shares of a control group
IDS = st.lists(st.text(min_size=1, max_size=12), min_size=30, max_size=30, unique=True)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ids=IDS, salt=st.text(min_size=1, max_size=10), share=st.floats(0.1, 0.5))
def test_no_control_customer_ever_gets_an_action_on_any_path(
    scorers: dict[str, Scorer],
    frame: tuple[pd.DataFrame, datetime],
    ids: list[str],
    salt: str,
    share: float,
) -> None:
    """Property: for any customers and any control group, batch scores, the live scorer
    and target lists give a control customer no_action (and only the scores' numbers)."""
    scorer, (features, as_of) = scorers["nba"], frame
    features = features.head(len(ids)).assign(customer_id=ids)
    control = ControlGroup(share, salt)
    held = control.mask(ids)
    scorer.control = control
    try:
        batch = scorer.score_frame(features, as_of)
        lives = [
            scorer.score_one({**row, "as_of": as_of}, top_k=6, rng=np.random.default_rng(0))
            for row in features.to_dict("records")
        ]
    finally:
        scorer.control = NO_CONTROL
    assert (batch["group"] == np.where(held, "control", "treated")).all()
    assert (batch.loc[held, "best_action"] == "no_action").all()
    for live, is_control in zip(lives, held, strict=True):
        assert (live.group == "control") == is_control
        if is_control:
            assert live.actions == [] and live.chosen.action == "no_action"
            assert {e.reason for e in live.excluded} == {CONTROL_REASON}
            assert 0 < live.chosen.propensity <= 1
    candidates = batch.merge(features, on="customer_id", suffixes=("", "_feature"))
    for definition in (TargetDefinition(), TargetDefinition(action="cross_sell")):
        chosen = select_targets(candidates, scorer.catalog, definition, control=control)
        assert not set(chosen.members.customer_id) & set(np.asarray(ids)[held])
        assert chosen.removed["control group"] == held.sum()


def _logged(home: Any, decision_ids: set[str], timeout: float = 15.0) -> dict[str, dict]:
    """The decisions' campaign-log rows the service wrote to its outbox (open or sealed)."""
    found: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and set(found) != decision_ids:
        for path in (home / "outbox" / "campaign_log").rglob("*.jsonl*"):
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    if row["decision_id"] in decision_ids:
                        found[row["decision_id"]] = row
        time.sleep(0.2)
    return found


def test_control_customers_get_no_action_over_http_and_their_decisions_say_so(
    http: tuple[httpx.Client, Server], ws: Workspace
) -> None:
    """The real server: /score and /score_batch give the workspace's control customers
    (default share, salt) churn, value and reasons but no action, and log the group."""
    client, _ = http
    headers = {"Authorization": f"Bearer {ws.keys['score']}"}
    control = read_control(ws.home).group
    held = control.mask(ws.customers)
    in_control = [c for c, h in zip(ws.customers, held, strict=True) if h][:6]
    treated = [c for c, h in zip(ws.customers, held, strict=True) if not h][:6]
    assert in_control, "the sample holds no control customer"
    groups: dict[str, str] = {}
    for customer in in_control + treated:
        response = client.post("/score", json={"customer_id": customer}, headers=headers)
        assert response.status_code == 200, response.text
        score = response.json()
        groups[score["decision_id"]] = score["group"]
        if customer in in_control:
            assert score["group"] == "control" and score["actions"] == []
            assert score["chosen"]["action"] == "no_action"
            assert 0 < score["churn"]["probability"] < 1 and score["churn"]["reasons"]
            assert score["value"]["p90"] >= score["value"]["p10"]
        else:
            assert score["group"] in ("treated", "explore") and score["actions"]
    body = {"customers": [{"customer_id": c} for c in in_control + treated]}
    response = client.post("/score_batch", json=body, headers=headers)
    assert response.status_code == 200, response.text
    for score in response.json()["results"]:
        groups[score["decision_id"]] = score["group"]
        is_control = score["customer_id"] in in_control
        assert (score["group"] == "control") == is_control
        if is_control:
            assert score["actions"] == [] and score["chosen"]["action"] == "no_action"
    logged = _logged(ws.home, set(groups))
    assert {d: row["group"] for d, row in logged.items()} == groups
    for row in logged.values():
        if row["group"] == "control":
            assert row["action"] == "no_action" and row["propensity"] >= control.share


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


def test_the_service_follows_a_recorded_control_change_without_a_restart(
    http: tuple[httpx.Client, Server], ws: Workspace
) -> None:
    """`rapport control --share/--reshuffle` writes <home>/control.json; the running
    service picks the new group up within a few seconds (its periodic check)."""
    client, _ = http
    headers = {"Authorization": f"Bearer {ws.keys['score']}"}
    history = duckdb.connect()  # the change's record; the file is what the service reads
    try:
        setting = change_control(history, ws.home, share=0.5, reshuffle=True)
        wanted = setting.group.mask(ws.customers[:20])
        deadline = time.monotonic() + 20
        got: list[bool] = []
        while time.monotonic() < deadline:
            got = []
            for customer in ws.customers[:20]:
                body = {"customer_id": customer}
                score = client.post("/score", json=body, headers=headers).json()
                got.append(score["group"] == "control")
            if got == wanted.tolist():
                break
            time.sleep(1.0)
        assert got == wanted.tolist()
    finally:
        control_path(ws.home).unlink()  # back to the default for the other tests
        history.close()


def test_the_champions_are_warm_when_the_service_starts(ws: Workspace) -> None:
    """:meth:`serving.reload.Reloader.start` scores a made-up customer: the churn reasons'
    TreeSHAP port (its compiled code loaded, ~1 s) and the churn and value models'
    compiled forests exist before the first request, which would otherwise wait for them."""
    from serving_harness import environment

    from features.spec import default_spec
    from models.fastpredict import fast_predictor
    from rapport.settings import get_settings
    from serving.reload import Reloader

    with environment(RAPPORT_HOME=str(ws.home), MLFLOW_TRACKING_URI=None):
        settings = get_settings()
        store = open_store(settings.online_store_url)
        try:
            scorer = Reloader(settings, default_spec(), store).start().scorer
        finally:
            store.close()
    assert scorer is not None
    churn = fast_predictor(scorer.churn, scorer.churn.booster_)
    value = fast_predictor(scorer.value, scorer.value.booster_)
    assert churn._shap is not None and churn._raw is not None and value._raw is not None
