"""``rapport score`` and ``rapport targets`` on a small trained workspace.

One workspace (demo data to today, churn and value trained fast and promoted) serves the
module; the tests run in file order: score twice (history kept), then lists.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from sample_data import trained_home
from sample_data import warehouse_query as query

from features.spec import default_spec
from features.tables.control import read_control
from features.tables.lists import WarehouseLists, add_suppressions
from features.tables.scores import RUNS, SCORES, latest_run
from features.tables.segments import SEGMENT_MODELS
from features.warehouse import connect, raw
from models.scorer import SCORE_COLUMNS
from rapport.cli import main
from rapport.settings import get_settings

home, shared_home = trained_home("scoring-home", customers=1500, seed=3)


def test_score_appends_a_stamped_run_and_keeps_history() -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["score", "--chunk-rows", "400"])
    assert first.exit_code == 0, first.output
    assert "scored 1,500 customers" in first.output and "churn v1, value v1" in first.output
    second = runner.invoke(main, ["score", "--as-of", "2024-06-01"])
    assert second.exit_code == 0, second.output
    runs = query(f"SELECT * FROM {RUNS} ORDER BY scored_at")
    assert len(runs) == 2 and runs.feature_set.unique().tolist() == [default_spec().version]
    # each run fitted its snapshot's segment model once, stored it and recorded its version
    models = query(f"SELECT * FROM {SEGMENT_MODELS}").set_index("version")
    assert set(runs.segments_version) == set(models.index) and len(models) == 2
    assert models.loc[runs.segments_version[1], "as_of"] == pd.Timestamp("2024-06-01", tz="UTC")
    assert f"segments {runs.segments_version[1]}" in second.output
    scores = query(f"SELECT * FROM {SCORES}")
    per_run = scores.groupby("run_id").customer_id.agg(["count", "nunique"])
    assert per_run.loc[runs.run_id[0], "count"] == 1500
    assert (per_run["count"] == per_run["nunique"]).all()
    assert per_run.loc[runs.run_id[1], "count"] < 1500  # fewer customers known in 2024
    assert set(SCORE_COLUMNS) <= set(scores.columns)
    stamps = ["run_id", "as_of", "scored_at", "customer_id"]
    assert list(scores.columns[: 4 + len(SCORE_COLUMNS)]) == [*stamps, *SCORE_COLUMNS]
    first_run = scores[scores.run_id == runs.run_id[0]]
    assert first_run.churn_version.eq("1").all() and first_run.value_version.eq("1").all()
    assert first_run.nba_version.isna().all() and first_run.best_action.eq("no_action").all()
    assert first_run.churn_probability.between(0, 1).all()
    assert (first_run.value_p10 <= first_run.value_p90).all()
    assert set(first_run.abc_tier) <= {"A", "B", "C"}
    # the latest run is the one scored last, whatever its as-of
    con = connect(get_settings().warehouse_path, read_only=True)
    assert latest_run(raw(con)).run_id == runs.run_id[1]
    con.disconnect()


def test_targets_budget_export_and_audit(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["score"]).exit_code == 0
    con = connect(get_settings().warehouse_path)
    scores = raw(con).execute(f"SELECT * FROM {SCORES}").to_arrow_table().to_pandas()
    run = latest_run(raw(con))
    at_risk = scores[(scores.run_id == run.run_id) & (scores.churn_probability > 0.3)]
    blocked = at_risk.customer_id.head(5).tolist()
    add_suppressions(con, blocked)
    con.disconnect()
    out = tmp_path / "list.csv"
    result = runner.invoke(
        main,
        [
            "targets",
            "--filter",
            "churn_probability > 0.3 and (days_since_last_contact is null "
            "or days_since_last_contact >= 14)",
            "--action",
            "retention_discount",
            "--budget",
            "100",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "budget: exact" in result.output and "5 suppressed" in result.output
    members = pd.read_csv(out, dtype={"customer_id": str})
    assert 0 < len(members) <= 12 and members.cost.sum() <= 100
    assert not set(members.customer_id) & set(blocked)
    assert (members.action == "retention_discount").all()
    assert members.churn_probability.gt(0.3).all()
    lists = query("SELECT * FROM target_lists")
    assert len(lists) == 1 and lists.customers[0] == len(members)
    assert lists.run_id[0] == run.run_id and "retention_discount" in lists.definition[0]
    audit = query("SELECT * FROM target_list_members ORDER BY rank")
    assert audit.customer_id.tolist() == members.customer_id.tolist()


def test_saved_list_and_clean_errors() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["targets", "--list", "at_risk_high_value", "--top", "3"])
    assert result.exit_code == 0, result.output
    assert "at_risk_high_value:" in result.output
    bad = runner.invoke(main, ["targets", "--filter", "churn_prob > 0.5"])
    assert bad.exit_code == 1 and "unknown field 'churn_prob'" in bad.output
    assert "^^^^^^^^^^" in bad.output and "Traceback" not in bad.output
    bad = runner.invoke(main, ["targets", "--list", "nope"])
    assert bad.exit_code == 1 and "no saved list 'nope'" in bad.output
    bad = runner.invoke(main, ["targets", "--action", "free_lunch"])
    assert bad.exit_code == 1 and "unknown action" in bad.output


def test_service_targets_give_the_cli_selection() -> None:
    """``POST /targets`` runs serving/targets.py: same selection as ``rapport targets``."""
    from models.targeting import definition_from, make_list
    from serving.schemas import TargetsRequest
    from serving.targets import build_targets, export_path

    assert CliRunner().invoke(main, ["score"]).exit_code == 0
    settings, spec = get_settings(), default_spec()
    options = {"filter": "abc_tier in ['A', 'B']", "budget": 60.0}
    request = TargetsRequest(**options, max_rows=5)  # type: ignore[arg-type]
    body = build_targets(request, settings, spec)
    con = connect(settings.warehouse_path, read_only=True)
    control = read_control(settings.home).group  # the workspace's, as the service reads it
    cli = make_list(
        WarehouseLists(con), definition_from(options), spec, datetime.now(UTC), control=control
    ).selection
    con.disconnect()
    assert body["count"] == cli.count and body["total_cost"] == pytest.approx(cli.total_cost)
    assert body["total_expected_value"] == pytest.approx(cli.total_expected_value)
    if cli.count > 5:
        assert body["members"] is None
        path = export_path(settings, body["list_id"], "parquet")
        assert body["download_url"] == f"/targets/download?list_id={body['list_id']}&format=parquet"
        assert pd.read_parquet(path).customer_id.tolist() == cli.members.customer_id.tolist()
    small = build_targets(TargetsRequest(top=3, action="cross_sell"), settings, spec)
    assert small["members"] is not None and len(small["members"]) == small["count"] <= 3
    assert set(small["members"][0]) >= {"customer_id", "action", "expected_value", "cost"}


def test_champions_of_another_feature_set_are_refused_before_scoring() -> None:
    from models.registry import load_champions
    from training.scoring import score_all

    runs_before = len(query(f"SELECT * FROM {RUNS}"))
    champions = load_champions()
    champions.feature_sets["value"] = "fs-retired"
    con = connect(get_settings().warehouse_path)
    try:
        with pytest.raises(ValueError, match="value v1 was trained on feature set fs-retired"):
            score_all(con, champions=champions)
    finally:
        con.disconnect()
    assert len(query(f"SELECT * FROM {RUNS}")) == runs_before
