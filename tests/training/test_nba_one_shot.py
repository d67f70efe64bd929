"""Next best action from a one-shot randomised e-mail campaign, as customers export it: one
past order per customer, three arms in one week, no propensities logged, and no churn or
value model (churn cannot even be trained on one order per customer). The catalog reads no
score, so ``rapport train nba`` trains from features alone, estimates the propensities,
splits the single week at random and says all of it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from features.ingest import ingest
from features.warehouse import connect
from models.catalog import default_catalog
from rapport.cli import main
from rapport.settings import get_settings
from training.nba import train_nba
from training.nba_data import enricher_for

NOW = datetime(2024, 7, 1, tzinfo=UTC)
CUSTOMERS = 1500
ARMS = ("no_action", "email_discount", "email_news")
#: chance of an order in the response window per arm: the discount works, the news less
CONVERT = {"no_action": 0.04, "email_discount": 0.16, "email_news": 0.07}
CATALOG = """
actions:
  - id: email_discount
    channel: email
    consent_field: email_opt_in
    cost: 1.0
    margin_rate: 0.3
  - id: email_news
    channel: email
    consent_field: email_opt_in
    cost: 0.1
    margin_rate: 0.3
"""


def one_shot_campaign(folder: Path, targeting: float = 0.0) -> dict[str, Path]:
    """``targeting`` > 0: the discount goes to big spenders and the news to small ones,
    the more surely the larger it is (0: uniform at random)."""
    rng = np.random.default_rng(3)
    ids = [f"C{i}" for i in range(CUSTOMERS)]
    signup = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(
        rng.integers(0, 120, CUSTOMERS), "D"
    )
    customers = pd.DataFrame({"customer_id": ids, "signup_at": signup, "email_opt_in": True})
    ordered = signup + pd.to_timedelta(rng.integers(1, 20, CUSTOMERS), "D")
    amount = np.round(rng.lognormal(3.5, 0.6, CUSTOMERS), 2)
    orders = pd.DataFrame(
        {
            "order_id": [f"O{i}" for i in range(CUSTOMERS)],
            "customer_id": ids,
            "ordered_at": ordered,
            "amount": amount,
        }
    )
    spend = np.log(amount) - 3.5
    logits = np.stack([np.zeros(CUSTOMERS), targeting * spend, -targeting * spend], axis=1)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    drawn = np.minimum((p.cumsum(axis=1) < rng.random(CUSTOMERS)[:, None]).sum(axis=1), 2)
    arm = np.asarray(ARMS)[drawn]
    converted = rng.random(CUSTOMERS) < np.array([CONVERT[a] for a in arm])
    decided = pd.Timestamp("2024-06-04 09:00", tz="UTC") + pd.to_timedelta(
        rng.integers(0, 3600, CUSTOMERS), "s"
    )
    campaign = pd.DataFrame(
        {
            "decision_id": [f"D{i}" for i in range(CUSTOMERS)],
            "customer_id": ids,
            "decided_at": decided,
            "action": arm,
            "channel": np.where(arm == "no_action", "none", "email"),
            "outcome": converted,
            "revenue": np.where(converted, np.round(rng.lognormal(3.5, 0.5, CUSTOMERS), 2), 0.0),
        }
    )  # no propensity column: nobody logged one
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, frame in (("customers", customers), ("orders", orders), ("campaign_log", campaign)):
        files[name] = folder / f"{name}.csv"
        frame.to_csv(files[name], index=False)
    return files


@pytest.fixture
def warehouse(tmp_path: Path, workspace: Path, request: pytest.FixtureRequest) -> Path:

    con = connect(get_settings().warehouse_path)
    targeting = getattr(request, "param", 0.0)
    report = ingest(con, one_shot_campaign(tmp_path / "export", targeting), NOW)
    assert report.quarantined == 0, report.summary()
    (tmp_path / "catalog.yaml").write_text(CATALOG)
    return tmp_path / "catalog.yaml"


def test_a_one_shot_campaign_trains_from_features_alone(warehouse: Path) -> None:

    con = connect(get_settings().warehouse_path)
    result = train_nba(con, catalog=warehouse, compare_methods=False, n_boot=100)
    model = result.model
    assert (
        "churn_probability" not in model.feature_names and "value_mean" not in model.feature_names
    )
    assert set(model.uplift.actions_) == {"email_discount", "email_news"}
    values = result.policy_values
    assert values.overlap is not None and values.overlap.estimated == values.n
    assert not values.overlap.poor
    summary = result.summary()
    assert f"estimated for {values.n:,} of {values.n:,} decisions" in summary
    # the single week is split at random, about a fifth held out
    assert 0.15 < result.counts["decisions_test"] / CUSTOMERS < 0.25
    dr = {name: r["dr"] for name, r in values.results.items()}
    assert dr["always email_discount"].estimate > dr["always no_action"].estimate
    assert dr["candidate"].estimate > dr["always no_action"].estimate
    print(f"\n{summary}")


def test_the_cli_trains_and_the_first_promotion_passes_the_overlap_check(warehouse: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["train", "nba", "--catalog", str(warehouse)])
    assert out.exit_code == 0, out.output
    assert "no churn / value champions" in out.output or "estimated for" in out.output
    promoted = runner.invoke(main, ["promote", "nba"])
    assert promoted.exit_code == 0 and "promoted to @champion" in promoted.output, promoted.output
    # a policy from features alone predicts on what `rapport features --out` writes
    import mlflow

    from training import tracking

    out = warehouse.parent / "features.parquet"
    written = runner.invoke(main, ["features", "--as-of", "2024-06-10", "--out", str(out)])
    assert written.exit_code == 0, written.output
    tracking.configure()
    uplift = mlflow.pyfunc.load_model("models:/nba@champion").predict(pd.read_parquet(out))
    assert len(uplift) == CUSTOMERS and "uplift_revenue_email_discount" in uplift.columns


def test_a_catalog_that_reads_scores_names_each_action_and_champion(warehouse: Path) -> None:
    con = connect(get_settings().warehouse_path)
    try:
        with pytest.raises(LookupError) as error:
            enricher_for(con, default_catalog())
    finally:
        con.disconnect()
    message = str(error.value)
    assert "action 'retention_discount' needs churn@champion and value@champion" in message
    assert "action 'loyalty_upgrade' needs churn@champion" in message
    assert "`rapport train churn`" in message and "`rapport train value`" in message
    result = CliRunner().invoke(main, ["train", "nba"])
    assert result.exit_code != 0 and "retention_discount" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("warehouse", [12.0], indirect=True)
def test_the_gate_refuses_a_policy_resting_on_estimated_propensities_without_overlap(
    warehouse: Path,
) -> None:
    """Targeted by spend almost deterministically and logged without propensities: the few
    customers who got the other arm carry the whole estimate, and the gate says so."""
    runner = CliRunner()
    out = runner.invoke(main, ["train", "nba", "--catalog", str(warehouse)])
    assert out.exit_code == 0, out.output
    assert "POOR" in out.output
    promoted = runner.invoke(main, ["promote", "nba"])
    assert promoted.exit_code == 0, promoted.output
    assert "promoted to @champion" not in promoted.output
    assert "estimated propensities with poor overlap" in promoted.output
