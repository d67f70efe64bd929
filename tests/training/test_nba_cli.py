"""The NBA commands end to end on a small trained workspace: train (on the stored segment
model), evaluate, promote (the gate), explain, with MLflow's registry as the source of truth.

Tests run in file order and share one workspace (churn and value champions present).
"""

from __future__ import annotations

from click.testing import CliRunner
from sample_data import trained_home

from features.tables.segments import load_version
from features.warehouse import connect, raw
from models import registry
from rapport.cli import main
from rapport.settings import get_settings

home, shared_home = trained_home("nba-home", customers=2000, seed=5)


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_evaluate_before_any_training_is_a_clean_error() -> None:
    result = CliRunner().invoke(main, ["nba", "evaluate"])
    assert result.exit_code != 0
    assert "Traceback" not in result.output and "nba" in result.output


def test_train_needs_the_segment_model_of_a_snapshot() -> None:
    result = CliRunner().invoke(main, ["train", "nba"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "run `rapport score` or `rapport features` first" in result.output
    assert "stored segments " in run("features")


def test_train_registers_a_challenger_and_first_promotion_crowns_it() -> None:
    out = run("train", "nba")
    assert "registered as nba v1 @challenger" in out
    con = connect(get_settings().warehouse_path, read_only=True)
    try:
        current = load_version(raw(con)).version
    finally:
        con.disconnect()
    run_tags = registry.run_of(registry.get_version("nba", version="1")).data.tags
    assert run_tags["rapport.segments_version"] == current
    for row in ("candidate", "random", "always no_action", "always winback_email"):
        assert row in out
    assert registry.aliases("nba").get("challenger") == "1"
    out = run("promote", "nba")
    assert "promoted to @champion" in out
    model, version = registry.load_model("nba")
    assert version == "1"
    # the registered object is the native model the service and batch scoring load
    assert model.catalog.ids[0] == "no_action" and model.feature_names


def test_evaluate_prints_estimates_with_intervals_for_every_policy() -> None:
    out = run("nba", "evaluate")
    lines = [line for line in out.splitlines() if line.strip().startswith(("candidate", "always"))]
    assert len(lines) >= 6  # the candidate and one single-action policy per catalog action
    assert all(line.count("[") == 3 for line in lines)  # IPS, SNIPS and DR intervals


def test_second_model_goes_through_the_gate() -> None:
    run("train", "nba")
    out = run("promote", "nba")
    version = registry.load_model("nba")[1]
    aliases = registry.aliases("nba")
    if "promoted to @champion" in out:
        assert version == "2"
    else:  # kept as challenger with the reason: its DR lower bound vs the champion's DR
        assert version == "1" and aliases.get("challenger") == "2"
        assert "lower" in out and "champion" in out


def test_explain_ranks_actions_with_components_and_exclusions() -> None:
    con = connect(get_settings().warehouse_path, read_only=True)
    try:
        customer = raw(con).execute("select customer_id from customers limit 1").fetchone()[0]
    finally:
        con.disconnect()
    out = run("nba", "explain", customer)
    assert customer in out
    assert "no_action" in out
    for component in ("uplift", "value", "cost", "weight"):
        assert component in out
    unknown = CliRunner().invoke(main, ["nba", "explain", "NOPE-404"])
    assert unknown.exit_code != 0 and "NOPE-404" in unknown.output
    assert "Traceback" not in unknown.output
