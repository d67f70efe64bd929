"""Training sets built on Spark from the lake (:mod:`training.spark_datasets`): equal to
the DuckDB path's when nothing is sampled; sampled, their weights add up to every stratum's
population and their weighted metrics estimate the full set's; and ``rapport train churn``
on Spark registers a model as good as the DuckDB-trained one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sample_data import FAST_PARAMS, assert_features_equal

from features.spec import default_spec
from models.metrics import classification_metrics, regression_metrics
from rapport.cli import main
from rapport.settings import get_settings, reset_settings
from training.datasets import LABEL_COLUMNS, TrainingSet, build_training_set
from training.jobs import fit_model, predict
from training.spark_datasets import build_on_spark

pytestmark = [pytest.mark.spark, pytest.mark.slow]  # Spark builds 4 cutoffs: ~1 min a set

CUSTOMERS = 2000
HORIZON = 90
CUTOFFS = 2  # training cutoffs (+ validation + holdout)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Demo customers ingested with the Spark engine (the warehouse and the lake)."""
    from rapport.demo_data import generate, write

    path = tmp_path_factory.mktemp("spark-training")
    folder = write(generate(CUSTOMERS, seed=21), path / "data", "parquet")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAPPORT_HOME", str(path / "home"))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setenv("RAPPORT_ENGINE", "spark")
        reset_settings()
        done = CliRunner().invoke(main, ["ingest", str(folder["customers"].parent)])
        assert done.exit_code == 0, done.output
        yield path / "home"
    reset_settings()


@pytest.fixture(autouse=True)
def in_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("RAPPORT_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    reset_settings()
    yield
    reset_settings()


@pytest.fixture(scope="module")
def on_duckdb(home: Path) -> TrainingSet:
    from features.warehouse import connect

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAPPORT_HOME", str(home))
        reset_settings()
        con = connect(get_settings().warehouse_path, read_only=True)
        try:
            return build_training_set(con, horizon_days=HORIZON, train_cutoffs=CUTOFFS)
        finally:
            con.disconnect()
            reset_settings()


def spark_set(spark: Any, home: Path, kind: str, max_rows: int) -> TrainingSet:
    return build_on_spark(
        kind, spark, str(home / "lake"), None, HORIZON, CUTOFFS, max_rows=max_rows, seed=3
    )


def test_unsampled_spark_set_equals_duckdb(spark: Any, home: Path, on_duckdb: TrainingSet) -> None:
    on_spark = spark_set(spark, home, "churn", max_rows=10**9)
    assert on_spark.sampling is None and on_spark.engine == "spark"
    assert on_spark.serves("churn") and on_spark.serves("value")
    assert on_spark.plan == on_duckdb.plan
    left, right = on_spark.frame, on_duckdb.frame
    assert list(left.columns) == list(right.columns)
    assert len(left) == len(right) > 4000
    features = ["customer_id", "as_of", *default_spec().names]
    assert_features_equal(left[features], right[features], "spark vs duckdb")
    for column in ("active", "churned", "orders_in_horizon"):  # labels: identical
        assert (left[column].to_numpy() == right[column].to_numpy()).all(), column
    for column in ("spend", "margin"):  # sums of the same amounts, maybe in another order
        a, b = left[column].to_numpy(dtype=float), right[column].to_numpy(dtype=float)
        assert (np.isnan(a) == np.isnan(b)).all(), column
        assert np.allclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True), column
    assert set(LABEL_COLUMNS) <= set(left.columns)


def stratified_se(
    rows: pd.DataFrame, strata: list[str], metric: Any, draws: int = 200, seed: int = 0
) -> float:
    """Bootstrap standard error of a weighted metric: rows redrawn within each stratum,
    each stratum's weights rescaled to its population (as the sampler weighs them)."""
    rng = np.random.default_rng(seed)
    groups = [g for _, g in rows.groupby(strata)]
    values = []
    for _ in range(draws):
        parts = [g.iloc[rng.integers(0, len(g), len(g))] for g in groups]
        values.append(metric(pd.concat(parts, ignore_index=True)))
    return float(np.std(values))


def test_churn_sample_weights_and_metrics_estimate_the_full_set(
    spark: Any, home: Path, on_duckdb: TrainingSet
) -> None:
    full_active = on_duckdb.frame[on_duckdb.frame["active"]]
    sampled = spark_set(spark, home, "churn", max_rows=len(full_active) // 3)
    assert sampled.sampling is not None and sampled.sampling.kind == "churn"
    assert sampled.sampling.rows_before == len(full_active)
    assert sampled.sampling.rows_after == len(sampled.frame) < len(full_active) // 2
    assert not sampled.serves("value")
    # every stratum's weights sum to its population (post-stratified)
    population = full_active.groupby(["as_of", "churned"]).size()
    weights = sampled.frame.groupby(["as_of", "churned"])["weight"].sum()
    pd.testing.assert_series_equal(weights, population.astype(float), check_names=False)
    # the sampled rows are the full set's rows
    features = ["customer_id", "as_of", *default_spec().names]
    keys = sampled.frame[["customer_id", "as_of"]]
    same = keys.merge(on_duckdb.frame, on=["customer_id", "as_of"], how="left")
    assert_features_equal(sampled.frame[features], same[features], "sampled rows")

    # one model, its holdout metrics: on the full set vs weighted on the sample
    model = fit_model("churn", on_duckdb, FAST_PARAMS)
    test_full = on_duckdb.part("test", active_only=True)
    full = classification_metrics(test_full["churned"], predict(model, test_full))
    test_sample = sampled.part("test", active_only=True)
    test_sample = test_sample.assign(p=predict(model, test_sample))

    def weighted(rows: pd.DataFrame) -> dict[str, float]:
        return classification_metrics(rows["churned"], rows["p"], weight=rows["weight"])

    estimate = weighted(test_sample)
    assert estimate["base_rate"] == pytest.approx(full["base_rate"], rel=1e-12)
    for metric in ("auc", "brier", "log_loss"):
        se = stratified_se(test_sample, ["churned"], lambda rows, m=metric: weighted(rows)[m])
        print(f"churn {metric}: full {full[metric]:.4f}, sample {estimate[metric]:.4f} +- {se:.4f}")
        assert abs(estimate[metric] - full[metric]) <= 3 * se + 1e-9, metric


def test_value_sample_weights_and_metrics_estimate_the_full_set(
    spark: Any, home: Path, on_duckdb: TrainingSet
) -> None:
    full_rows = on_duckdb.frame
    sampled = spark_set(spark, home, "value", max_rows=len(full_rows) // 3)
    assert sampled.sampling is not None and sampled.sampling.kind == "value"
    frame = sampled.frame
    assert len(frame) < len(full_rows) // 2
    # per cutoff, the weights sum to its customers; the weighted spend estimates the total
    per_cutoff = frame.groupby("as_of")["weight"].sum()
    pd.testing.assert_series_equal(
        per_cutoff, full_rows.groupby("as_of").size().astype(float), check_names=False
    )
    spenders = frame[frame["spend"] > 0]
    assert (frame[frame["spend"] <= 0]["weight"] > spenders["weight"].min()).all()

    model = fit_model("value", on_duckdb, FAST_PARAMS)
    test_full = on_duckdb.part("test")
    full = regression_metrics(test_full["spend"], predict(model, test_full))
    test_sample = sampled.part("test")
    test_sample = test_sample.assign(p=predict(model, test_sample))
    test_sample["stratum"] = test_sample["weight"].round(9)  # one weight per stratum

    def weighted(rows: pd.DataFrame) -> dict[str, float]:
        return regression_metrics(rows["spend"], rows["p"], weight=rows["weight"])

    estimate = weighted(test_sample)
    for metric in ("mae", "rmse", "spearman"):
        se = stratified_se(test_sample, ["stratum"], lambda rows, m=metric: weighted(rows)[m])
        print(f"value {metric}: full {full[metric]:.4f}, sample {estimate[metric]:.4f} +- {se:.4f}")
        assert abs(estimate[metric] - full[metric]) <= 3 * se + 1e-9, metric


def test_rapport_train_churn_on_spark_registers_a_model_as_good_as_duckdb(
    spark: Any, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models import registry
    from training import tracking

    runner = CliRunner()
    monkeypatch.setenv("RAPPORT_ENGINE", "duckdb")
    reset_settings()
    duck = runner.invoke(main, ["train", "churn"])
    assert duck.exit_code == 0, duck.output
    monkeypatch.setenv("RAPPORT_ENGINE", "spark")
    monkeypatch.setenv("RAPPORT_TRAIN_MAX_ROWS", "4000")
    reset_settings()
    assert get_settings().train_max_rows == 4000
    on_spark = runner.invoke(main, ["train", "churn"])
    assert on_spark.exit_code == 0, on_spark.output
    assert "registered as churn v2" in on_spark.output

    tracking.configure()
    runs = {v: registry.run_of(registry.get_version("churn", version=v)).data for v in "12"}
    tags = runs["2"].tags
    assert tags["rapport.engine"] == "spark" and runs["1"].tags["rapport.engine"] == "duckdb"
    before, after = (
        int(tags["rapport.rows_before_sampling"]),
        int(tags["rapport.rows_after_sampling"]),
    )
    assert after < before and abs(after - 4000) < 400
    assert tags["rapport.holdout"] != runs["1"].tags["rapport.holdout"]  # a sample: re-scored
    duck_auc, spark_auc = runs["1"].metrics["test_auc"], runs["2"].metrics["test_auc"]
    print(f"holdout AUC: duckdb {duck_auc:.4f}, spark (sampled {after}/{before}) {spark_auc:.4f}")
    assert spark_auc >= duck_auc - 0.03
