"""The numba TreeSHAP port gives LightGBM's ``pred_contrib`` bit for bit."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from models import treeshap
from models.fastpredict import PREDICT_CONTRIB, FastPredictor
from models.treeshap import TreeShap

FEATURES = 10
CATEGORICAL = [2, 3]
#: values LightGBM reads specially: missing, zero (within kZeroThreshold), out of range
SPECIAL = np.array([np.nan, 0.0, -0.0, np.inf, -np.inf, 1e-36, -1e-36, 1e-35, 2.0**40, -0.5])


def _data(rows: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Demo-like rows: numerical features with missing values and many zeros, two
    categorical ones (one high-cardinality)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, FEATURES))
    X[:, 2] = rng.integers(0, 40, size=rows)
    X[:, 3] = rng.integers(0, 6, size=rows)
    X[rng.random(X.shape) < 0.1] = np.nan
    X[:, 4][rng.random(rows) < 0.3] = 0.0
    logit = (
        np.nan_to_num(X[:, 0])
        + (np.nan_to_num(X[:, 2]) % 3 == 0)
        + np.isnan(X[:, 1])
        - (X[:, 4] == 0)
        + 0.5 * (np.nan_to_num(X[:, 3]) == 1)
    )
    y = (logit + rng.normal(size=rows) > 0.5).astype(float)
    return X, y


def _rows(booster: lgb.Booster, X: np.ndarray, seed: int = 1) -> np.ndarray:
    """Training rows, wider-spread rows with unseen and negative categories, rows of
    special values, and rows holding each split's threshold and its neighbours."""
    rng = np.random.default_rng(seed)
    wide = rng.normal(size=(1000, FEATURES)) * 3
    wide[:, 2] = rng.integers(-3, 70, size=1000)
    wide[rng.random(wide.shape) < 0.2] = np.nan
    special = rng.choice(SPECIAL, size=(1000, FEATURES))
    mixed = X[rng.integers(len(X), size=1000)].copy()
    mask = rng.random(mixed.shape) < 0.3
    mixed[mask] = rng.choice(SPECIAL, size=int(mask.sum()))
    at_threshold = []
    for tree in booster.dump_model()["tree_info"]:
        stack = [tree["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_feature" not in node:
                continue
            stack += [node["left_child"], node["right_child"]]
            if node["decision_type"] != "<=":
                continue
            threshold = float(node["threshold"])
            for value in (
                threshold,
                np.nextafter(threshold, np.inf),
                -np.nextafter(-threshold, np.inf),
            ):
                row = X[rng.integers(len(X))].copy()
                row[node["split_feature"]] = value
                at_threshold.append(row)
    return np.vstack([X, wide, special, mixed, *at_threshold])


def _assert_exact(booster: lgb.Booster, rows: np.ndarray, **kwargs: int) -> None:
    expected = np.asarray(booster.predict(rows, num_threads=1, pred_contrib=True, **kwargs))
    shap = TreeShap(booster, kwargs.get("num_iteration"))
    got = np.vstack([shap.contributions(row) for row in rows])
    assert got.shape == expected.shape
    differ = [i for i in range(len(rows)) if got[i].tobytes() != expected[i].tobytes()]
    assert not differ, f"{len(differ)} rows differ, e.g. {rows[differ[0]]}"


PARAMS = {
    "nan": {},
    "zero_as_missing": {"zero_as_missing": True},
    "no_missing": {"use_missing": False},
    "depth5": {"max_depth": 5},
}


@pytest.mark.parametrize("name", list(PARAMS))
def test_binary_matches_pred_contrib(name: str) -> None:
    X, y = _data()
    params = {
        "objective": "binary",
        "verbose": -1,
        "num_leaves": 23,
        "min_data_in_leaf": 5,
        "max_cat_to_onehot": 4,
        **PARAMS[name],
    }
    data = lgb.Dataset(X, y, categorical_feature=CATEGORICAL)
    booster = lgb.train(params, data, num_boost_round=30)
    _assert_exact(booster, _rows(booster, X))


def test_multiclass_and_iterations_match() -> None:
    X, _ = _data(1500)
    y = np.random.default_rng(2).integers(0, 3, size=len(X)).astype(float)
    params = {"objective": "multiclass", "num_class": 3, "verbose": -1, "num_leaves": 7}
    booster = lgb.train(params, lgb.Dataset(X, y, categorical_feature=CATEGORICAL), 10)
    rows = _rows(booster, X)[::3]
    _assert_exact(booster, rows)
    _assert_exact(booster, rows, num_iteration=4)


def test_single_leaf_trees_match() -> None:
    X, y = _data(500)
    params = {"objective": "binary", "verbose": -1, "min_data_in_leaf": 400}
    booster = lgb.train(params, lgb.Dataset(X, y), num_boost_round=5)
    assert booster.dump_model()["tree_info"][0]["num_leaves"] == 1
    _assert_exact(booster, X)


def test_rejects_wrong_width() -> None:
    X, y = _data(500)
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(X, y), 3)
    with pytest.raises(ValueError):
        TreeShap(booster).contributions(X[0, :3])


def test_a_booster_too_large_for_the_table_keeps_lightgbms_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past :data:`MAX_TABLE_TERMS` the port refuses the booster and
    :class:`FastPredictor` answers with LightGBM's C call: the same contributions."""
    X, y = _data()
    params = {"objective": "binary", "verbose": -1, "num_leaves": 23, "min_data_in_leaf": 5}
    booster = lgb.train(params, lgb.Dataset(X, y, categorical_feature=CATEGORICAL), 20)
    monkeypatch.setattr(treeshap, "MAX_TABLE_TERMS", 1000)
    with pytest.raises(ValueError, match="precomputed terms"):
        TreeShap(booster)
    fast = FastPredictor(booster)
    rows = _rows(booster, X)[:300]
    got = np.vstack([fast.predict_row(row, PREDICT_CONTRIB) for row in rows])
    expected = np.asarray(booster.predict(rows, num_threads=1, pred_contrib=True))
    assert got.tobytes() == expected.tobytes()
    assert fast._shap is None and fast._shap_tried
