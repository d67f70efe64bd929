"""The compiled forest gives LightGBM's one-row predictions bit for bit, or refuses."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from models.fastpredict import FastPredictor, RowBoosters
from models.forest import Forest
from tests.models.test_treeshap import CATEGORICAL, _data, _rows


def _train(X: np.ndarray, y: np.ndarray, rounds: int = 30, **params: object) -> lgb.Booster:
    base = {"verbose": -1, "num_leaves": 15, "min_data_in_leaf": 5, "max_cat_to_onehot": 4}
    data = lgb.Dataset(X, y, categorical_feature=CATEGORICAL)
    return lgb.train({**base, **params}, data, num_boost_round=rounds)


def _boosters() -> tuple[list[lgb.Booster], np.ndarray]:
    """Binary (two sigmoids, missing-value modes), regression, single-leaf trees and an
    early-stopped booster (its best iteration is what ``predict`` uses), and hard rows."""
    X, y = _data()
    reg = np.nan_to_num(X[:, 0]) * 3 + y
    boosters = [
        _train(X, y, objective="binary"),
        _train(X, y, objective="binary", sigmoid=0.7, zero_as_missing=True),
        _train(X, reg, objective="regression", use_missing=False),
        _train(X, reg, rounds=5, objective="regression", min_data_in_leaf=2900),
    ]
    valid = lgb.Dataset(X[:500], y[:500], categorical_feature=CATEGORICAL)
    early = lgb.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 31, "learning_rate": 0.5},
        lgb.Dataset(X[500:], y[500:], categorical_feature=CATEGORICAL),
        num_boost_round=200,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(3, verbose=False)],
        keep_training_booster=True,  # the trees past the best iteration stay in the model
    )
    assert 0 < early.best_iteration < early.current_iteration()
    return [*boosters, early], _rows(boosters[0], X)


def test_every_output_equals_booster_predict_bit_for_bit() -> None:
    boosters, rows = _boosters()
    assert boosters[3].dump_model()["tree_info"][0]["num_leaves"] == 1
    forest = Forest(boosters)
    expected = np.column_stack([b.predict(rows, num_threads=1) for b in boosters])
    every = range(len(boosters))
    got = np.array([forest.predict(np.ascontiguousarray(row), every) for row in rows])
    differ = np.flatnonzero(got != expected)
    assert got.tobytes() == expected.tobytes(), f"{differ.size} outputs differ"


def test_row_boosters_take_the_forest_for_any_subset() -> None:
    """:class:`RowBoosters` (the live NBA's) answers from the forest, the boosters asked
    for in any order, each one the number of its own :meth:`FastPredictor.predict_row`."""
    boosters, rows = _boosters()
    together = RowBoosters(boosters)
    fast = [FastPredictor(b) for b in boosters]
    rng = np.random.default_rng(3)
    for row in rows[::4]:
        which = [i for i in rng.permutation(len(boosters)) if rng.random() < 0.6]
        got = together.predict(row, which)
        assert got is not None
        for i in which:
            assert np.float64(got[i]).tobytes() == fast[i].predict_row(row).tobytes()
    assert together._forest is not None  # the forest answered, not LightGBM's C calls


@pytest.mark.parametrize(
    "params",
    [{"objective": "tweedie"}, {"objective": "regression", "reg_sqrt": True}, {}],
    ids=["tweedie", "sqrt", "binary"],
)
def test_raw_scores_of_any_objective_equal_booster_predict(params: dict[str, object]) -> None:
    """``raw=True`` (the live churn and value models' scores): ``PredictRaw`` alone, so any
    one-output objective, the bytes of ``predict(raw_score=True)``."""
    X, y = _data(800)
    label = np.abs(np.nan_to_num(X[:, 0])) + y
    booster = _train(X, label, rounds=20, **({"objective": "binary"} | params))
    rows = _rows(booster, X)
    forest = Forest([booster], raw=True)
    got = np.array([forest.predict(np.ascontiguousarray(row), [0])[0] for row in rows])
    expected = booster.predict(rows, raw_score=True, num_threads=1)
    assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize(
    "params",
    [
        {"objective": "tweedie"},
        {"objective": "regression", "reg_sqrt": True},
        {"objective": "multiclass", "num_class": 3},
        {"objective": "binary", "boosting": "rf", "bagging_freq": 1, "bagging_fraction": 0.5},
        {"objective": "regression", "linear_tree": True},
    ],
    ids=["tweedie", "sqrt", "multiclass", "random_forest", "linear"],
)
def test_outputs_it_cannot_reproduce_keep_lightgbms_call(params: dict[str, object]) -> None:
    X, y = _data(800)
    label = np.abs(np.nan_to_num(X[:, 0])) + y if params["objective"] != "multiclass" else y * 2
    booster = _train(X, label, rounds=5, **params)
    with pytest.raises(ValueError):
        Forest([booster])
    if params["objective"] in ("multiclass", "binary") or "linear_tree" in params:
        with pytest.raises(ValueError):  # several outputs, averaged ones, linear leaves
            Forest([booster], raw=True)
    if params["objective"] == "multiclass":
        return  # RowBoosters takes one-output boosters only
    plain = _train(X, y, rounds=5, objective="binary")
    together = RowBoosters([plain, booster])  # one refused: all take the C calls
    row = np.ascontiguousarray(X[7])
    got = together.predict(row, [0, 1])
    assert together._forest is None and got is not None
    assert np.float64(got[1]).tobytes() == FastPredictor(booster).predict_row(row).tobytes()
