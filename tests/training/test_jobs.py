"""The jobs end to end on a small demo: MLflow runs, registry, the promotion gate, tuning.

One MLflow store serves the whole module (creating one costs seconds), so the tests run
in file order: train, serve from the registry, gate, evaluate, tune.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import optuna
import pytest
from sample_data import module_home

from features.warehouse import connect
from models import registry
from models.churn import ChurnModel
from models.value import ValueModel
from rapport.demo_data import generate, write
from rapport.settings import get_settings
from rapport.truth import compare_holdout, ingest_demo
from training import jobs, tracking
from training.datasets import TrainingSet, Window, build_training_set

END = datetime(2025, 1, 1, tzinfo=UTC)
FAST = {"num_boost_round": 40, "num_threads": 1, "min_data_in_leaf": 40}
WEAK = {"num_boost_round": 2, "num_leaves": 2, "num_threads": 1}


#: one workspace (and MLflow store) for every test of this module
home, shared_home = module_home("rapport-home")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, TrainingSet]:
    folder = tmp_path_factory.mktemp("demo")
    data = generate(2500, seed=5, end=END)
    con = connect(folder / "warehouse.duckdb")
    ingest_demo(con, write(data, folder / "files")["customers"].parent, now=END)
    return con, build_training_set(con, Window(train_cutoffs=2))


def test_train_logs_a_complete_run(demo: tuple) -> None:
    con, data = demo
    result = jobs.train("churn", con, params=FAST, data=data, compare=compare_holdout)
    assert result.version == "1" and registry.aliases("churn") == {"challenger": "1"}
    assert isinstance(result.model, ChurnModel)
    run = registry.run_of(registry.get_version("churn", version="1"))
    assert run.data.params["horizon_days"] == "90"
    assert run.data.params["test_cutoff"] == f"{data.plan.test:%Y-%m-%d}"
    assert run.data.tags["rapport.feature_set"] == data.spec_version
    assert run.data.tags[tracking.HOLDOUT_TAG].startswith(f"{data.plan.test:%Y-%m-%d}|h90|")
    metrics = run.data.metrics
    for key in (
        "test_auc",
        "test_brier",
        "valid_auc",
        "baseline_recency_auc",
        "baseline_btyd_p_alive_auc",
        "truth_oracle_auc",
        "truth_model_auc_over_oracle",
    ):
        assert key in metrics, key
    assert metrics["test_auc"] == pytest.approx(result.evaluation.metrics["model"]["auc"])
    with registry.quiet():
        artifacts = {a.path for a in registry.client().list_artifacts(run.info.run_id)}
    assert {
        "report.html",
        "roc.png",
        "precision_recall.png",
        "calibration.png",
        "gains_lift.png",
        "feature_importance.png",
        "lineage.json",
    } <= artifacts
    artifact_dir = Path(get_settings().mlruns_dir) / "artifacts"
    html = next(artifact_dir.rglob("report.html")).read_text()
    assert html.count("data:image/png;base64,") == 5 and "oracle" in html and "<script" not in html
    text = result.summary()
    assert "recency" in text and "btyd_p_alive" in text and "model_auc_over_oracle" in text


def test_the_first_version_becomes_champion_and_serves_from_the_registry(demo: tuple) -> None:
    import mlflow

    _, data = demo
    promoted = jobs.promote("churn")
    assert promoted.promoted and promoted.reason == "no champion yet"
    assert registry.aliases("churn") == {"champion": "1"}
    test = data.part("test")
    pyfunc = mlflow.pyfunc.load_model("models:/churn@champion")
    native, version = registry.load_model("churn")
    assert version == "1" and isinstance(pyfunc.unwrap_python_model().model, ChurnModel)
    with registry.quiet():
        served = pyfunc.predict(test)["p_churn"].to_numpy()
    np.testing.assert_allclose(served, native.predict_proba(test))


def test_a_worse_challenger_is_held_back_with_the_reason(demo: tuple) -> None:
    con, data = demo
    weak = jobs.train("churn", con, params=WEAK, data=data)
    assert weak.version == "2"
    held = jobs.promote("churn")
    assert not held.promoted and held.alias == "challenger" and held.champion_before == "1"
    assert held.reason.startswith("auc ") and "not better" in held.reason
    assert registry.aliases("churn") == {"champion": "1", "challenger": "2"}
    assert "stays @challenger" in held.summary()
    assert jobs.promote("churn", version=1).reason == "already the champion"


def test_different_holdouts_are_rescored_on_the_same_rows(demo: tuple) -> None:
    con, _ = demo
    champion = registry.get_version("churn", version="1")
    with registry.quiet():
        registry.client().set_tag(champion.run_id, tracking.HOLDOUT_TAG, "another holdout")
    with pytest.raises(ValueError, match="different holdouts"):
        jobs.promote("churn", version="2")
    rescored = jobs.promote("churn", version="2", con=con)
    assert not rescored.promoted and rescored.reason.startswith("auc ")
    assert registry.aliases("churn") == {"champion": "1", "challenger": "2"}


def test_the_gate_needs_more_than_the_margin() -> None:
    assert tracking.gate("churn", 0.80, 0.79, margin=0.005).passed
    assert not tracking.gate("churn", 0.80, 0.79, margin=0.02).passed
    assert not tracking.gate("value", 0.60, 0.60, margin=0.0).passed
    assert "spearman 0.6100 vs champion 0.6000" in tracking.gate("value", 0.61, 0.6, 0.0).reason


def test_value_trains_registers_and_predicts_with_its_season(demo: tuple) -> None:
    import mlflow

    con, data = demo
    result = jobs.train("value", con, params=FAST, data=data, compare=compare_holdout)
    assert isinstance(result.model, ValueModel) and result.model.season_
    run = registry.run_of(registry.get_version("value", version=result.version))
    metrics = run.data.metrics
    for key in (
        "test_spearman",
        "test_mae",
        "baseline_btyd_mae",
        "truth_model_mae",
        "truth_model_mae_over_btyd",
        "test_interval_coverage_p10_p90",
        "valid_rmse_boosted",
        "valid_rmse_prior",
        "valid_rmse_chosen",
    ):
        assert key in metrics, key
    choice = result.model.choice_
    assert run.data.params["value_choice"] == choice.kind
    assert float(run.data.params["value_shrinkage"]) == choice.shrinkage
    assert run.data.tags["rapport.value_choice"] == choice.reason()
    assert metrics["valid_rmse_chosen"] <= metrics["valid_rmse_prior"]
    assert jobs.promote("value").promoted
    test = data.part("test")
    with registry.quiet():
        served = mlflow.pyfunc.load_model("models:/value@champion").predict(test)
    expected = result.model.predict(test[["as_of", *result.model.feature_names]])
    np.testing.assert_allclose(served.to_numpy(), expected.to_numpy())


def test_evaluate_shows_champion_challenger_and_baselines(demo: tuple) -> None:
    con, data = demo
    result = jobs.evaluate(con, as_of=data.plan.test)
    churn, value = result.evaluations
    assert set(churn.metrics) == {"challenger v2", "champion v1", "recency", "btyd_p_alive"}
    assert set(value.metrics) == {"champion v1", "last_90d_again", "btyd"}
    assert churn.metrics["champion v1"]["auc"] > churn.metrics["challenger v2"]["auc"]
    assert "champion = v1" in result.summary()
    # the warehouse holds the demo's truth tables, but a job reads them only when told to
    assert churn.comparison is None and "truth" not in result.summary()


def test_tune_shares_a_resumable_study_with_nested_trial_runs(demo: tuple) -> None:
    con, data = demo
    first = jobs.tune("churn", con, trials=3, params=FAST, data=data, study_name="churn-test")
    assert first.outcome.trials_run == 3 and first.train.version == "3"
    again = jobs.tune("churn", con, trials=2, params=FAST, data=data, study_name="churn-test")
    study = optuna.load_study(study_name="churn-test", storage=get_settings().optuna_storage_url)
    assert len(study.trials) == 5 and again.outcome.trials_run == 2
    assert again.outcome.best_value == pytest.approx(study.best_value)
    with registry.quiet():
        runs = registry.client().search_runs(
            [tracking.configure()], "tags.`rapport.kind` = 'churn'"
        )
    parents = {r.info.run_id for r in runs if r.info.run_name == "tune-churn"}
    trials = registry.client().search_runs(
        [tracking.configure()], "attributes.run_name LIKE 'trial-%'"
    )
    assert len(parents) == 2 and len(trials) == 5
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == parents
    assert "best validation score" in again.summary()
