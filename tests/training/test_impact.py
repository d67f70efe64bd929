"""``rapport impact`` on a warehouse whose decisions carry a known incremental value."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sample_data import use_home

from features.control import ControlGroup
from features.tables.impact import IMPACT, IMPACT_ACTIONS, history
from features.warehouse import connect, ensure_contract_tables, raw
from models.catalog import default_catalog
from rapport.cli import main
from training import impact
from training.nba_evaluation import default_margin_rate

START = datetime(2026, 9, 1, tzinfo=UTC)
CATALOG = default_catalog()


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield from use_home(tmp_path, monkeypatch)


def world(seed: int, n: int = 6000, effect: float = 20.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decisions over two months for n customers (5% control by the hash) and the orders
    before them; treated customers' revenue gains ``effect`` on average. Returns
    (decisions, pre-period orders)."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"C{i:05d}" for i in range(n)])
    held = ControlGroup(0.05, f"salt{seed}").mask(ids)
    actions = [a.id for a in CATALOG.actions if a.id != "no_action"]
    pre = rng.gamma(0.7, 80.0, n)
    rows = []
    for month in (0, 1):
        at = START + timedelta(days=30 * month + 3)
        chosen = np.where(held, "no_action", rng.choice(actions, n))
        base = 0.5 * pre + rng.gamma(0.5, 60.0, n)
        revenue = base + np.where(held, 0.0, rng.exponential(effect, n))
        converted = revenue > 0
        rows.append(
            pd.DataFrame(
                {
                    "decision_id": [f"d{month}-{c}" for c in ids],
                    "customer_id": ids,
                    "decided_at": pd.Timestamp(at) + pd.to_timedelta(rng.integers(0, 20, n), "D"),
                    "action": chosen,
                    "channel": "email",
                    "propensity": 0.5,
                    "group": np.where(held, "control", "treated"),
                    "outcome": converted,
                    "revenue": revenue,
                    "responded_at": pd.NaT,
                }
            )
        )
    orders = pd.DataFrame(
        {
            "order_id": [f"o{c}" for c in ids],
            "customer_id": ids,
            "ordered_at": pd.Timestamp(START - timedelta(days=30)),
            "amount": pre,
        }
    )
    return pd.concat(rows, ignore_index=True), orders


def _warehouse(home: Path, orders: pd.DataFrame):  # type: ignore[no-untyped-def]
    con = connect(home / "warehouse.duckdb")
    ensure_contract_tables(con)
    db = raw(con)
    db.register("o", orders)
    db.execute("INSERT INTO orders BY NAME SELECT * FROM o")
    db.unregister("o")
    return con


def test_impact_measures_the_known_value_appends_and_logs(home: Path) -> None:
    decisions, orders = world(0)
    con = _warehouse(home, orders)
    try:
        now = datetime(2026, 11, 20, tzinfo=UTC)
        result = impact.measure(con, decisions=decisions, now=now).record(con)
        table = result.table.set_index("period")
        assert list(table.index) == ["2026-09", "2026-10", "all"]
        truth = 20.0 * default_margin_rate(CATALOG)  # margin on the revenue effect ...
        costs = {a.id: a.cost for a in CATALOG.actions}
        treated = decisions[decisions.group == "treated"]
        truth_all = 2 * truth - treated.action.map(costs).sum() / treated.customer_id.nunique()
        overall = table.loc["all"]
        assert overall.method == "cuped" and overall.variance_reduction > 0.2
        assert overall.incremental_value_lo <= truth_all <= overall.incremental_value_hi
        assert overall.treated_customers + overall.control_customers == 6000
        assert set(result.actions.action) == set(treated.action)
        assert "no nba champion" in " ".join(result.notes)
        assert result.mlflow_run_id
        again = impact.measure(con, decisions=decisions, by="action")
        assert "appended" not in again.summary()  # measured only: nothing written yet
        assert history(raw(con)).run_id.nunique() == 1
        again.record(con, log_to_mlflow=False)
        assert f"appended to `impact` and `impact_actions` (run {again.run_id})" in (
            again.summary()
        )
        assert len(again.table) > 3 and "not a randomised comparison" in " ".join(again.notes)
        runs = history(raw(con))
        assert runs.run_id.nunique() == 2 and set(runs["by"]) == {"", "action"}
        assert history(raw(con), IMPACT_ACTIONS).run_id.nunique() == 2
        assert IMPACT == "impact"
        summary = result.summary()
        assert "incr value/cust" in summary and "per action" in summary
    finally:
        con.disconnect()


def test_without_control_decisions_impact_says_what_to_run(home: Path) -> None:
    decisions, orders = world(1, n=300)
    con = _warehouse(home, orders)
    try:
        with pytest.raises(impact.NoImpactDataError, match="rapport ingest --outbox"):
            impact.measure(con, decisions=decisions[decisions.group == "treated"])
        with pytest.raises(ValueError, match="--by must be one of"):
            impact.measure(con, decisions=decisions, by="weather")
    finally:
        con.disconnect()
    result = CliRunner().invoke(main, ["impact"])
    assert result.exit_code == 1 and "nothing to compare yet" in result.output
    assert CliRunner().invoke(main, ["impact", "--by", "weather"]).exit_code == 2


def test_by_tier_reads_the_latest_scores_before_each_decision(home: Path) -> None:
    decisions, orders = world(2, n=3000)
    con = _warehouse(home, orders)
    try:
        with pytest.raises(LookupError, match="rapport score"):
            impact.measure(con, decisions=decisions, by="abc_tier")
        ids = decisions.customer_id.unique()
        old = pd.DataFrame(
            {
                "customer_id": ids,
                "as_of": pd.Timestamp(START - timedelta(days=60)),
                "abc_tier": "C",
                "rfm_segment": "lost",
                "uplift_conversion_retention_discount": 0.9,
                "uplift_revenue_cross_sell": 9.0,
            }
        )
        new = old.assign(
            as_of=pd.Timestamp(START - timedelta(days=1)),
            abc_tier=np.where(np.arange(len(ids)) % 2, "A", "B"),
            uplift_conversion_retention_discount=0.1,
            uplift_revenue_cross_sell=3.0,
        )
        db = raw(con)
        db.register("s", pd.concat([old, new]))
        db.execute("CREATE TABLE scores AS SELECT * FROM s")
        db.unregister("s")
        result = impact.measure(con, decisions=decisions, by="abc_tier")
        assert set(result.table.key) == {"A", "B"}  # the newer scores, never the old "C"
        actions = result.actions.set_index("action")
        assert actions.loc["retention_discount", "predicted_conversion"] == pytest.approx(0.1)
        assert actions.loc["cross_sell", "predicted_revenue"] == pytest.approx(3.0)
        assert np.isnan(actions.loc["winback_email", "predicted_conversion"])
    finally:
        con.disconnect()


def test_rapport_control_shows_changes_and_records_them(home: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["control"])
    assert first.exit_code == 0 and "control share 5.00%" in first.output
    assert "no warehouse yet" in first.output
    _warehouse(home, world(3, n=500)[1]).disconnect()
    changed = runner.invoke(main, ["control", "--share", "0.2", "--reshuffle"])
    assert changed.exit_code == 0, changed.output
    assert "changed: control share 20.00%" in changed.output
    shown = runner.invoke(main, ["control", "--history"])
    assert "share 0.05 -> 0.2; reshuffle" in shown.output
    assert runner.invoke(main, ["control", "--share", "0.9"]).exit_code == 2
