"""``rapport simulate``: the demo's customers answer the decisions made, deterministically,
as contract files that ingest loads, with the period's true value beside them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.ingest import discover_files, ingest
from features.tables.outcomes import decision_outcomes
from features.warehouse import connect
from rapport.demo_data import generate, write
from rapport.simulate import simulate
from rapport.truth import ingest_demo, load_simulated_truth, load_truth_actions

END = datetime(2025, 1, 1, tzinfo=UTC)
DECIDED = END + timedelta(days=1)
AS_OF = END + timedelta(days=31)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, pd.DataFrame]:
    """A demo warehouse and 2,000 decisions made after its end: treated half, control half
    (one of them still in the service's outbox)."""
    home = tmp_path_factory.mktemp("sim")
    data = generate(2500, seed=4, end=END)
    files = write(data, home / "demo")["customers"].parent
    con = connect(home / "warehouse.duckdb")
    ingest_demo(con, files, now=END)
    truth = load_truth_actions(con)
    assert truth is not None
    customers = sorted(set(truth["customer_id"].astype(str)))[:2000]
    rows = pd.DataFrame(
        {
            "decision_id": [f"dx-{i}" for i in range(len(customers))],
            "customer_id": customers,
            "decided_at": DECIDED.isoformat(),
            "action": ["retention_discount" if i % 2 else "no_action" for i in range(2000)],
            "channel": ["email" if i % 2 else "none" for i in range(2000)],
            "propensity": 0.5,
        }
    )
    (home / "log").mkdir()
    rows.iloc[1:].to_csv(home / "log" / "campaign_log.csv", index=False)
    ingest(con, {"campaign_log": home / "log" / "campaign_log.csv"}, now=AS_OF)
    outbox = home / "outbox" / "campaign_log"
    outbox.mkdir(parents=True)
    (outbox / "a.jsonl").write_text(rows.iloc[:1].to_json(orient="records", lines=True))
    return con, home, rows


def _files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.glob("*.csv"))}


def test_simulate_is_deterministic_and_ingestable(world: tuple) -> None:
    con, home, rows = world
    first = simulate(con, home, home / "outbox", 30, AS_OF, seed=1)
    written = _files(first.folder)
    again = simulate(con, home, home / "outbox", 30, AS_OF, seed=1)
    assert _files(again.folder) == written
    assert first.decisions == len(rows) and first.skipped == 0
    outcomes = pd.read_csv(first.folder / "outcomes.csv")
    assert set(outcomes["decision_id"]) == set(rows["decision_id"])  # every window closed
    assert "dx-0" in set(outcomes["decision_id"])  # the outbox decision is played too
    orders = pd.read_csv(first.folder / "orders.csv")
    assert len(orders) == int(outcomes["outcome"].sum()) > 0
    # another seed: other draws
    other = simulate(con, home, home / "outbox", 30, AS_OF, seed=2)
    assert _files(other.folder)["orders.csv"] != written["orders.csv"]
    simulate(con, home, home / "outbox", 30, AS_OF, seed=1)  # the files of seed 1 again
    ingest(con, {"campaign_log": home / "log" / "campaign_log.csv"}, now=AS_OF)
    report = ingest(con, discover_files(first.folder), now=AS_OF)
    assert report.tables["orders"].quarantined == 0
    assert report.tables["outcomes (file)"].quarantined_by_reason == {"unknown decision": 1}
    landed = decision_outcomes(con).set_index("decision_id").loc[rows["decision_id"][1:]]
    assert set(landed["outcome_source"]) == {"file"}


def test_responses_follow_the_truth(world: tuple) -> None:
    con, home, rows = world
    result = simulate(con, home, home / "outbox", 30, AS_OF, seed=1)
    truth = load_truth_actions(con)
    outcomes = pd.read_csv(result.folder / "outcomes.csv").merge(rows, on="decision_id")
    joined = outcomes.merge(truth, on=["customer_id", "action"])
    for action, part in joined.groupby("action"):
        p = part["p_convert_treated"].to_numpy()
        realised, expected = part["outcome"].mean(), p.mean()
        se = np.sqrt((p * (1 - p)).sum()) / len(p)
        assert abs(realised - expected) < 4 * se, (action, realised, expected)
    stated = load_simulated_truth(home)
    assert stated is not None and stated["decisions"] == len(rows)
    incremental = joined["expected_revenue_treated"] - joined["expected_revenue_control"]
    assert stated["true_incremental_revenue"] == pytest.approx(float(incremental.sum()))
    assert stated["by_action"]["no_action"]["true_incremental_revenue"] == pytest.approx(0.0)
    treated = incremental[joined["action"] == "retention_discount"]
    assert treated.abs().sum() > 0  # the action changes what customers buy
    assert stated["by_action"]["retention_discount"]["true_incremental_revenue"] == pytest.approx(
        float(treated.sum())
    )


def test_a_later_run_reveals_the_same_draws(world: tuple) -> None:
    con, home, _ = world
    early = simulate(con, home, home / "outbox", 5, DECIDED + timedelta(days=5), seed=1)
    late = simulate(con, home, home / "outbox", 30, AS_OF, seed=1)
    before = pd.read_csv(early.folder / "orders.csv").set_index("order_id")
    after = pd.read_csv(late.folder / "orders.csv").set_index("order_id")
    assert set(before.index) < set(after.index)
    assert before.equals(after.loc[before.index])
    unknown = pd.read_csv(early.folder / "outcomes.csv")
    assert unknown["outcome"].all()  # before the windows close only conversions are known
    assert json.loads(early.truth_path.read_text())["period_end"].startswith("2025-01-07")
