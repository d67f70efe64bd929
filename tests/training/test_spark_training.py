"""Training sets built on Spark from the lake (:mod:`training.spark_datasets`): equal to
the DuckDB path's when nothing is sampled; sampled, their weights add up to every stratum's
population and their weighted metrics estimate the full set's; and ``rapport train churn``
on Spark registers a model as good as the DuckDB-trained one."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
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
from training.datasets import LABEL_COLUMNS, TrainingSet, Window, build_training_set
from training.jobs import fit_model, predict
from training.spark_datasets import build_on_spark

pytestmark = [pytest.mark.spark, pytest.mark.slow]  # Spark builds 4 cutoffs: ~1 min a set

CUSTOMERS = 2000
#: the demo world ends here, not today: the decision weeks (and so the NBA set's size
#: asserted below) move with the day of the week the simulation ends on
END = datetime(2026, 12, 4, tzinfo=UTC)
HORIZON = 90
CUTOFFS = 2  # training cutoffs (+ validation + holdout)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Demo customers ingested with the Spark engine (the warehouse and the lake)."""
    from rapport.demo_data import generate, write

    path = tmp_path_factory.mktemp("spark-training")
    folder = write(generate(CUSTOMERS, seed=21, end=END), path / "data", "parquet")
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
            return build_training_set(con, Window(horizon_days=HORIZON, train_cutoffs=CUTOFFS))
        finally:
            con.disconnect()
            reset_settings()


def spark_set(spark: Any, home: Path, kind: str, max_rows: int) -> TrainingSet:
    return build_on_spark(
        kind, spark, str(home / "lake"), Window(None, HORIZON, CUTOFFS), max_rows=max_rows, seed=3
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


@pytest.fixture(scope="module")
def nba_weeks(home: Path) -> pd.Series:
    """The decisions with outcomes per week of the demo log (oldest first)."""
    from features.warehouse import connect
    from training.nba_data import logged_decisions

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAPPORT_HOME", str(home))
        reset_settings()
        con = connect(get_settings().warehouse_path, read_only=True)
        try:
            return logged_decisions(con)["as_of"].value_counts().sort_index()
        finally:
            con.disconnect()
            reset_settings()


@pytest.fixture(scope="module")
def nba_cutoff(nba_weeks: pd.Series) -> Any:
    """The start of the log's fourth decision week: three weeks of decisions before it (a
    time split, and three Spark feature builds rather than one per week of the log)."""
    assert len(nba_weeks) > 4
    return nba_weeks.index[3]


def test_nba_training_set_on_spark_equals_duckdb(
    spark: Any, home: Path, nba_cutoff: Any, nba_weeks: pd.Series
) -> None:
    """Each decision week's features built on Spark from the lake give the DuckDB set:
    the same decisions, features to 1e-9 relative, the same segments and propensities."""
    from features.warehouse import connect
    from training.nba_data import build_nba_data, features_enricher
    from training.spark_datasets import week_features

    con = connect(get_settings().warehouse_path, read_only=True)
    try:
        enrich, _ = features_enricher(con)
        on_duckdb = build_nba_data(con, nba_cutoff, enrich, seed=3)
        features = week_features(spark, str(home / "lake"))
        on_spark = build_nba_data(con, nba_cutoff, enrich, seed=3, features=features)
    finally:
        con.disconnect()
    left, right = on_spark.frame, on_duckdb.frame
    assert list(left.columns) == list(right.columns)
    assert len(left) == len(right) == nba_weeks.iloc[:3].sum() > 400
    assert left["as_of"].nunique() == 3
    numeric = [c for c in left.columns if pd.api.types.is_numeric_dtype(left[c])]
    others = [c for c in left.columns if c not in numeric]
    assert_features_equal(left[["customer_id", *numeric]], right[["customer_id", *numeric]])
    for column in others:
        assert left[column].astype(str).tolist() == right[column].astype(str).tolist(), column
    assert on_spark.holdout_from == on_duckdb.holdout_from
    assert on_spark.counts() == on_duckdb.counts()


def test_nba_decisions_are_sampled_uniformly_and_reproducibly(home: Path, nba_cutoff: Any) -> None:
    """Beyond ``max_rows`` a uniform share of the decisions with an outcome, drawn in the
    warehouse: a subset of the full set of about ``max_rows`` (within 5 binomial standard
    errors), the same for the same seed, another for another seed, with the actions' mix
    kept; the count the share is taken of is the decisions with an outcome, exactly."""
    from features.tables.outcomes import decisions_with_outcome
    from features.warehouse import connect
    from training.nba_data import logged_decisions

    con = connect(get_settings().warehouse_path, read_only=True)
    try:
        full = logged_decisions(con)
        known = decisions_with_outcome(con)
        early = (decisions_with_outcome(con, nba_cutoff), len(logged_decisions(con, nba_cutoff)))
        limit = known // 4
        sample = logged_decisions(con, max_rows=limit, seed=1)
        again = logged_decisions(con, max_rows=limit, seed=1)
        other = logged_decisions(con, max_rows=limit, seed=2)
        everything = logged_decisions(con, max_rows=known, seed=1)
    finally:
        con.disconnect()
    assert known == len(full) and early[0] == early[1] < known
    share = limit / known
    se = np.sqrt(known * share * (1 - share))
    assert abs(len(sample) - limit) < 5 * se, (len(sample), limit, se)
    assert set(sample["decision_id"]) <= set(full["decision_id"])
    pd.testing.assert_frame_equal(sample, again)
    assert set(sample["decision_id"]) != set(other["decision_id"])
    pd.testing.assert_frame_equal(everything, full)
    mix_full = full["action"].value_counts(normalize=True)
    mix_sample = sample["action"].value_counts(normalize=True).reindex(mix_full.index)
    assert np.abs(mix_sample - mix_full).max() < 0.03, (mix_sample, mix_full)


def test_train_nba_on_spark_samples_and_tags_the_engine(
    spark: Any, home: Path, nba_weeks: pd.Series, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train_nba`` with the Spark engine builds the weeks' features on Spark, samples
    the decisions to ``RAPPORT_TRAIN_MAX_ROWS`` (at least 1,000: the first weeks holding
    2,400 decisions with an outcome, half of them kept) and says so in the MLflow run."""
    reached = int(np.searchsorted(nba_weeks.cumsum().to_numpy(), 2400))
    assert reached + 1 < len(nba_weeks)
    cutoff = nba_weeks.index[reached + 1]
    import mlflow

    from features.warehouse import connect
    from training.nba import train_nba
    from training.nba_data import features_enricher, logged_decisions

    monkeypatch.setenv("RAPPORT_ENGINE", "spark")
    monkeypatch.setenv("RAPPORT_SPARK_MASTER", "local[2]")
    con = connect(get_settings().warehouse_path, read_only=True)
    try:
        known = len(logged_decisions(con, cutoff))
        limit = known // 2
        monkeypatch.setenv("RAPPORT_TRAIN_MAX_ROWS", str(limit))
        reset_settings()
        enrich, _ = features_enricher(con)
        result = train_nba(
            con,
            cutoff,
            catalog=_catalog_without_scores(),
            enrich=enrich,
            compare_methods=False,
            register=False,
            n_boot=20,
        )
    finally:
        con.disconnect()
    rows = result.counts["decisions_train"] + result.counts["decisions_test"]
    share = limit / known
    se = np.sqrt(known * share * (1 - share))
    assert abs(rows - limit) < 5 * se, (rows, limit)
    tags = mlflow.get_run(result.run_id).data.tags
    assert tags["rapport.engine"] == "spark"
    assert tags["rapport.train_max_rows"] == str(limit)


def _catalog_without_scores() -> Any:
    """The packaged catalog's actions valued as incremental revenue, without rules: it
    reads no churn or value score (the module's workspace trains no champions)."""
    from importlib import resources

    import yaml

    from models.catalog import parse_catalog

    raw = yaml.safe_load(resources.files("models").joinpath("default_catalog.yaml").read_text())
    raw.pop("value_field", None)
    for action in raw["actions"]:
        action["value_kind"] = "incremental_revenue"
        action.pop("eligibility", None)
    catalog = parse_catalog(yaml.safe_dump(raw), source="test catalog without scores")
    assert not catalog.score_needs()
    return catalog
