"""Model quality against the demo's ground truth (quality, not timing), fixed seeds.

On the truth cutoff (the holdout) every churn scorer -- the model, the true probability
of no order (the oracle), days since the last order, BG/NBD's 1 - P(alive) -- is scored
against the same realised labels, so "model AUC / oracle AUC" says how much of the
recoverable signal the model found. Value predictions are compared with the true
expected spend (Spearman and MAE), next to BG/NBD + Gamma-Gamma fitted on the same
history. The truth comes in through :mod:`rapport.truth` (``compare_holdout``), the one
module that compares with it. Run with ``-s`` to see the table and the ratios.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from features.warehouse import connect
from rapport.demo_data import generate, write
from rapport.truth import compare_holdout, ingest_demo
from training.datasets import Window, build_training_set
from training.jobs import HoldoutEvaluation, evaluate_holdout, fit_model

END = datetime(2025, 1, 1, tzinfo=UTC)  # the holdout horizon is October to December
#: a holdout horizon from late August to November, where spend is not seasonal and the
#: baseline's level is right (the demo's own holdout when run in November)
QUIET_END = datetime(2026, 11, 23, tzinfo=UTC)
CUSTOMERS, SEED = 8000, 7
#: defaults except the thread count, so a busy CI machine does not oversubscribe
PARAMS = {"num_threads": 1}


def _evaluate(folder: Path, end: datetime, kinds: tuple[str, ...]) -> dict[str, HoldoutEvaluation]:
    data = generate(CUSTOMERS, seed=SEED, end=end)
    con = connect(folder / "warehouse.duckdb")
    ingest_demo(con, write(data, folder / "files")["customers"].parent, now=end)
    ts = build_training_set(con, Window(horizon_days=data.horizon_days))
    assert ts.plan.test == data.truth_as_of
    out = {}
    for kind in kinds:
        model = fit_model(kind, ts, PARAMS, seed=0)
        out[kind] = evaluate_holdout(
            kind, {"model": model}, ts.part("test"), con, 90, compare=compare_holdout
        )[0]
        print(f"\n{out[kind].summary()}")
    return out


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory: pytest.TempPathFactory) -> dict[str, HoldoutEvaluation]:
    return _evaluate(tmp_path_factory.mktemp("quality"), END, ("churn", "value"))


@pytest.fixture(scope="module")
def quiet_season(tmp_path_factory: pytest.TempPathFactory) -> HoldoutEvaluation:
    return _evaluate(tmp_path_factory.mktemp("quiet"), QUIET_END, ("value",))["value"]


def test_churn_model_clearly_beats_both_baselines_near_the_oracle(
    evaluations: dict[str, HoldoutEvaluation],
) -> None:
    churn = evaluations["churn"]
    truth = churn.comparison
    assert truth is not None
    auc = {name: m["auc"] for name, m in truth.metrics.items()}
    assert auc["model"] > auc["recency"] + 0.01
    assert auc["model"] > auc["btyd_p_alive"] + 0.05
    assert auc["oracle"] > auc["model"]  # the truth is not beaten: the labels are noisy
    assert truth.ratios["model_auc_over_oracle"] > 0.92
    assert churn.metrics["model"]["top_decile_lift"] >= churn.metrics["recency"]["top_decile_lift"]


def test_value_model_beats_bgnbd_against_the_true_expected_spend(
    evaluations: dict[str, HoldoutEvaluation],
) -> None:
    value = evaluations["value"]
    assert value.comparison is not None
    model, btyd = value.comparison.metrics["model"], value.comparison.metrics["btyd"]
    assert model["spearman"] > btyd["spearman"] and model["spearman"] > 0.8
    assert model["mae"] < 0.95 * btyd["mae"]
    assert abs(model["total_error"]) < abs(btyd["total_error"])
    # and on the realised spend of the same customers
    assert value.metrics["model"]["mae"] < value.metrics["btyd"]["mae"]
    assert value.metrics["model"]["mae"] < value.metrics["last_90d_again"]["mae"]


def test_value_model_beats_bgnbd_out_of_season_too(quiet_season: HoldoutEvaluation) -> None:
    """Out of the holidays the baseline's level is right, so the model wins on the
    individual error (MAE, RMSE) and the ranking, not only on the total."""
    truth = quiet_season.comparison
    assert truth is not None
    model, btyd = truth.metrics["model"], truth.metrics["btyd"]
    assert model["spearman"] > btyd["spearman"]
    assert model["mae"] < btyd["mae"]
    assert model["rmse"] < btyd["rmse"]
    assert model["top_decile_capture"] > btyd["top_decile_capture"]
