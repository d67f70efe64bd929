"""The registry adapter against a real MLflow store (and BentoML store) in a temporary
workspace: register, versions, aliases, the previous champion and rollback, loading,
the feature-set check, the scorer, and the service's bundle following every change.

One store serves the module (creating one costs seconds): the tests run in file order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sample_data import module_home

from features.spec import default_spec
from models import registry
from models.bundle import bundled_champions, load_for_serving
from models.catalog import default_catalog
from models.churn import ChurnModel
from models.nba import NbaModel
from models.registry import FEATURE_SET_TAG, ChampionsMissingError
from models.uplift import UpliftModel
from models.value import ValueModel
from training import tracking

FAST = {"num_boost_round": 10, "num_threads": 1, "min_data_in_leaf": 20}
SPEC = default_spec()


#: one workspace (and MLflow store) for every test of this module
home, shared_home = module_home("registry-home")


def frame(n: int, seed: int) -> pd.DataFrame:
    """A few of the spec's features (so the models fit the current feature set)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "customer_id": [f"C{seed}-{i}" for i in range(n)],
            "as_of": pd.Timestamp("2024-04-01", tz="UTC"),
            "days_since_last_order": rng.exponential(60, n),
            "orders_90d": rng.poisson(2, n).astype(float),
            "avg_order_value_365d": rng.lognormal(3.5, 0.7, n),
            "region": pd.Series(rng.choice(["north", "south"], n), dtype="string"),
        }
    )


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return frame(1200, 1)


@pytest.fixture(scope="module")
def churn_models(data: pd.DataFrame) -> list[ChurnModel]:
    """Two churn models that score differently (so loading the wrong one would show)."""
    y = (data["days_since_last_order"] > 60).astype(float).to_numpy()
    return [
        ChurnModel(FAST, random_state=0).fit(data, y, data, y),
        ChurnModel({**FAST, "num_boost_round": 3}, random_state=1).fit(data, 1 - y, data, 1 - y),
    ]


@pytest.fixture(scope="module")
def value_model(data: pd.DataFrame) -> ValueModel:
    spend = (data["orders_90d"] * data["avg_order_value_365d"]).to_numpy()
    return ValueModel(FAST, random_state=0).fit(data, spend, data, spend)


@pytest.fixture(scope="module")
def nba_model(data: pd.DataFrame) -> NbaModel:
    rng = np.random.default_rng(2)
    catalog = default_catalog()
    actions = rng.choice(catalog.ids[:3], len(data))
    X = data[["days_since_last_order", "orders_90d", "region"]].assign(
        churn_probability=rng.random(len(data))
    )
    outcome = (rng.random(len(data)) < 0.3).astype(float)
    uplift = UpliftModel("t", {"num_iterations": 5, "min_data_in_leaf": 20}).fit(
        X, actions, np.full(len(data), 1 / 3), outcome, outcome * 40.0
    )
    return NbaModel(uplift, catalog, epsilon=0.1)


def register(kind: str, model: object, example: pd.DataFrame, feature_set: str) -> str:
    """What a training run does: log the model in a run tagged with its feature set."""
    import mlflow

    experiment = tracking.configure()
    with mlflow.start_run(experiment_id=experiment):
        mlflow.set_tag(FEATURE_SET_TAG, feature_set)
        return registry.register(kind, model, example.head(5))


def test_registered_versions_carry_no_alias_and_load_by_version(
    data: pd.DataFrame, churn_models: list[ChurnModel]
) -> None:
    assert registry.aliases("churn") == {} and registry.versions("churn") == []
    assert [register("churn", m, data, SPEC.version) for m in churn_models] == ["1", "2"]
    assert [str(v.version) for v in registry.versions("churn")] == ["1", "2"]
    assert registry.aliases("churn") == {}
    assert str(registry.get_version("churn").version) == "2"  # the latest
    for number, model in zip(("1", "2"), churn_models, strict=True):
        native, version = registry.load_model("churn", version=number)
        assert version == number and isinstance(native, ChurnModel)
        np.testing.assert_allclose(native.predict_proba(data), model.predict_proba(data))


def test_the_pyfunc_wrapper_predicts_every_kind(
    data: pd.DataFrame, value_model: ValueModel, nba_model: NbaModel
) -> None:
    import mlflow

    assert register("value", value_model, data, SPEC.version) == "1"
    assert register("nba", nba_model, data.assign(churn_probability=0.2), SPEC.version) == "1"
    mlflow.set_tracking_uri(registry.tracking_uri())
    with registry.quiet():
        churn = mlflow.pyfunc.load_model("models:/churn/1").predict(data)
        value = mlflow.pyfunc.load_model("models:/value/1").predict(data)
        nba = mlflow.pyfunc.load_model("models:/nba/1")
        uplift = nba.predict(data.assign(churn_probability=0.2))
    assert list(churn.columns) == ["p_churn"] and len(churn) == len(data)
    np.testing.assert_allclose(value.to_numpy(), value_model.predict(data).to_numpy())
    assert isinstance(nba.unwrap_python_model().model, NbaModel)
    assert {f"uplift_conversion_{a}" for a in nba_model.uplift.actions_} <= set(uplift.columns)


def test_unknown_kinds_versions_and_aliases_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="model kind must be one of"):
        registry.aliases("clv")
    with pytest.raises(LookupError, match="no registered churn model version 9"):
        registry.load_model("churn", version="9")
    with pytest.raises(LookupError, match=r"churn model @champion .*rapport promote churn"):
        registry.load_model("churn")
    with pytest.raises(ChampionsMissingError, match="no churn@champion"):
        registry.load_champions()


def test_a_champion_without_a_complete_set_is_not_bundled_yet() -> None:
    registry.set_alias("churn", registry.CHALLENGER, "1")
    change = registry.set_champion("churn", "1")
    assert (change.champion, change.previous, change.bundle) == ("1", None, None)
    assert "no value@champion" in change.bundle_note
    # the challenger it was is now the champion; nothing to keep as previous
    assert registry.aliases("churn") == {"champion": "1"}
    assert bundled_champions() is None


def test_a_new_champion_keeps_the_old_one_as_previous() -> None:
    registry.set_alias("churn", registry.CHALLENGER, "2")
    change = registry.set_champion("churn", "2")
    assert (change.champion, change.previous) == ("2", "1")
    assert registry.aliases("churn") == {"champion": "2", "previous": "1"}
    assert registry.load_model("churn")[1] == "2"
    assert registry.load_model("churn", registry.PREVIOUS)[1] == "1"


def test_a_promotion_through_the_api_refreshes_the_bundle(data: pd.DataFrame) -> None:
    change = registry.set_champion("value", "1")
    assert change.bundle is not None and change.bundle_note == ""
    bundled = bundled_champions()
    assert bundled is not None and str(bundled.tag) == change.bundle
    assert bundled.info.metadata["versions"] == {"churn": "2", "value": "1"}
    assert bundled.info.labels == {"churn": "v2", "value": "v1"}
    served = load_for_serving()
    assert served.source == f"bentoml:{change.bundle}" and served.nba is None
    expected = registry.load_model("churn", version="2")[0].predict_proba(data)
    np.testing.assert_allclose(served.churn.predict_proba(data), expected)
    # the same champions again: the bundle is reused, not copied again
    assert registry.set_champion("value", "1").bundle == change.bundle


def test_rollback_swaps_champion_and_previous_and_the_bundle_follows() -> None:
    change = registry.rollback("churn")
    assert (change.champion, change.previous) == ("1", "2")
    assert registry.aliases("churn") == {"champion": "1", "previous": "2"}
    bundled = bundled_champions()
    assert bundled is not None and str(bundled.tag) == change.bundle
    assert bundled.info.metadata["versions"] == {"churn": "1", "value": "1"}
    assert load_for_serving().versions["churn"] == "1"
    # a second rollback undoes the first
    assert registry.rollback("churn").champion == "2"
    assert registry.aliases("churn") == {"champion": "2", "previous": "1"}
    assert bundled_champions().info.metadata["versions"]["churn"] == "2"  # type: ignore[union-attr]


def test_rollback_without_a_previous_champion_is_refused() -> None:
    with pytest.raises(LookupError, match="no value@previous"):
        registry.rollback("value")
    assert registry.aliases("value") == {"champion": "1"}


def test_rollback_to_a_given_version_keeps_the_replaced_one_as_previous() -> None:
    with pytest.raises(LookupError, match="no registered churn model version 7"):
        registry.rollback("churn", to="7")
    with pytest.raises(ValueError, match="churn v2 already is the champion"):
        registry.rollback("churn", to="2")
    change = registry.rollback("churn", to="1")
    assert (change.champion, change.previous) == ("1", "2")
    assert registry.aliases("churn") == {"champion": "1", "previous": "2"}
    assert bundled_champions().info.metadata["versions"]["churn"] == "1"  # type: ignore[union-attr]
    registry.rollback("churn")  # back to v2 for the tests below
    registry.tag_version("churn", "2", {"rapport.note": "kept"})
    assert registry.get_version("churn", version="2").tags["rapport.note"] == "kept"


def test_champions_load_with_their_feature_sets_and_build_the_scorer() -> None:
    registry.set_champion("nba", "1")
    champions = registry.load_champions()
    assert champions.versions == {"churn": "2", "value": "1", "nba": "1"}
    assert champions.feature_sets == dict.fromkeys(("churn", "value", "nba"), SPEC.version)
    assert registry.check_compatible(champions, SPEC) == []
    scorer = registry.build_scorer(champions, segments=None, spec=SPEC)  # type: ignore[arg-type]
    assert scorer.nba is champions.nba and scorer.catalog is champions.nba.catalog
    assert scorer.versions == champions.versions
    assert load_for_serving().versions == champions.versions  # the promotion bundled nba too


def test_a_champion_of_another_feature_set_is_refused(
    data: pd.DataFrame, churn_models: list[ChurnModel]
) -> None:
    assert register("churn", churn_models[0], data, "fs-retired") == "3"
    registry.set_champion("churn", "3")
    champions = registry.load_champions()
    problems = registry.check_compatible(champions, SPEC)
    assert problems == [
        f"churn v3 was trained on feature set fs-retired, the current one is {SPEC.version}: "
        "retrain and promote it"
    ]
    extra = data.assign(not_a_feature=1.0)
    y = (data["orders_90d"] > 1).astype(float)
    champions.models["churn"] = ChurnModel(FAST).fit(extra, y)
    assert registry.check_compatible(champions, SPEC)[1:] == [
        "churn needs features the spec lacks: ['not_a_feature']"
    ]
