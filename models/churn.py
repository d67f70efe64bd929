"""Churn model: LightGBM on a feature frame, calibrated on a later cutoff, with reasons.

``ChurnModel`` is an estimator (no I/O): fit it on any feature frame and 0/1 labels
(1 = churned: no order in the horizon). The probability is calibrated on the *validation*
rows -- a later cutoff than the training rows -- because a model's own training rows make
its scores look sharper than they are. Reasons come from LightGBM's tree SHAP values
(``pred_contrib``) worded by the feature spec (:mod:`models.reasons`).

Fast path for the live service (one customer per call): encode once with
:meth:`FeatureEncoder.transform` (a frame or a plain ``{feature: value}`` dict), then call
:meth:`ChurnModel.predict_proba_array` / :meth:`ChurnModel.explain_array` on the float
matrix; both call the raw ``lightgbm.Booster`` with no pandas in between.

The encoder and :func:`fit_booster` are shared with :mod:`models.value`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self, overload

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from features.spec import FeatureSpec
from models.fastpredict import FAST_ROWS, PREDICT_RAW_SCORE, fast_predictor
from models.reasons import CHURN_WORDS, top_reasons

#: columns of a feature frame that identify a row and are never features
ID_COLUMNS = ("customer_id", "as_of")
#: boosting-loop settings kept apart from LightGBM's own parameters
LOOP_KEYS = ("num_boost_round", "early_stopping_rounds")

#: sensible on 2 cores for 10k..1M rows; tuning overrides any of them
DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "metric": "auc",
    "learning_rate": 0.05,
    "num_leaves": 31,
    # live reasons (TreeSHAP) cost grows with depth squared: depth 5 took them from ~440 to
    # ~250 us per customer at the same holdout AUC on the 20k demo (0.9116 vs 0.9112, 3 seeds)
    "max_depth": 5,
    "min_data_in_leaf": 100,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "num_threads": 2,
    "verbose": -1,
    "num_boost_round": 400,
    "early_stopping_rounds": 40,
}

Calibration = Literal["platt", "isotonic", "none"]


def _is_categorical(series: pd.Series) -> bool:
    dtype = series.dtype
    return (
        isinstance(dtype, pd.CategoricalDtype)
        or pd.api.types.is_object_dtype(dtype)
        or pd.api.types.is_string_dtype(dtype)
    )


@dataclass
class FeatureEncoder:
    """Feature frame (or one dict) -> float matrix, with the categories frozen at fit.

    Categorical columns become their code in the fitted category list (LightGBM treats
    them as categorical features); null and unseen categories become NaN (missing), the
    same in training, batch scoring and the live service.
    """

    columns: list[str]
    categories: dict[str, list[str]]
    _codes: dict[str, dict[str, float]] = field(init=False, repr=False)
    _index: dict[str, pd.Index] = field(init=False, repr=False)
    _coded: list[tuple[int, dict[str, float]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._codes = {
            col: {value: float(i) for i, value in enumerate(cats)}
            for col, cats in self.categories.items()
        }
        self._index = {col: pd.Index(cats, dtype=object) for col, cats in self.categories.items()}
        #: (position, codes) of the categorical columns
        self._coded = [
            (j, self._codes[col]) for j, col in enumerate(self.columns) if col in self._codes
        ]

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the fitted state only; the lookup tables are rebuilt on load."""
        return {"columns": self.columns, "categories": self.categories}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.columns, self.categories = state["columns"], state["categories"]
        self.__post_init__()

    @classmethod
    def fit(cls, frame: pd.DataFrame, columns: Sequence[str] | None = None) -> FeatureEncoder:
        """Remember the feature columns (default: all but ids) and every category seen."""
        cols = [str(c) for c in (columns or frame.columns) if c not in ID_COLUMNS]
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise ValueError(f"feature frame has no columns {missing}")
        categories = {
            col: sorted(frame[col].dropna().astype(str).unique().tolist())
            for col in cols
            if _is_categorical(frame[col])
        }
        return cls(cols, categories)

    @property
    def categorical_indices(self) -> list[int]:
        return [j for j, col in enumerate(self.columns) if col in self.categories]

    def transform(
        self, data: pd.DataFrame | Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> np.ndarray:
        """A ``[rows, features]`` float64 matrix in the fitted column order, from a frame,
        one customer's ``{feature: value}`` dict or a list of them (the live micro-batch)."""
        if isinstance(data, pd.DataFrame):
            return self._transform_frame(data)
        rows = [data] if isinstance(data, Mapping) else data
        values = [self._picked(row) for row in rows]
        try:  # numpy's conversion of each value is float()'s (None: NaN)
            return np.array(values, dtype="float64").reshape(len(rows), len(self.columns))
        except (TypeError, ValueError):  # say which feature is not a number
            return np.array([self._values(row) for row in rows], dtype="float64")

    def _transform_frame(self, frame: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise ValueError(f"feature frame is missing columns {missing}")
        out = np.empty((len(frame), len(self.columns)), dtype="float64")
        for j, col in enumerate(self.columns):
            series = frame[col]
            if col in self.categories:
                text = series.astype("string").to_numpy(object, na_value=None)
                codes = self._index[col].get_indexer(text)
                out[:, j] = np.where(codes < 0, np.nan, codes)
            else:
                try:
                    numeric = pd.to_numeric(series, errors="raise")
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"feature {col!r} must be numeric: {exc}") from None
                out[:, j] = numeric.to_numpy("float64", na_value=np.nan)
        return out

    def _picked(self, row: Mapping[str, Any]) -> list[Any]:
        """One customer's values in column order, categories as their codes (the live
        path: one list comprehension, the numbers converted by numpy for all rows)."""
        try:
            values = [row[col] for col in self.columns]
        except KeyError as exc:
            raise ValueError(f"feature {exc.args[0]!r} is missing from the input") from None
        for j, codes in self._coded:
            value = values[j]
            values[j] = np.nan if value is None else codes.get(str(value), np.nan)
        return values

    def _values(self, row: Mapping[str, Any]) -> list[float]:
        """One customer's encoded row as plain floats, each checked (a value that is not a
        number is named in the error)."""
        codes = self._codes
        values: list[float] = []
        append = values.append
        for col in self.columns:
            if col not in row:
                raise ValueError(f"feature {col!r} is missing from the input")
            value = row[col]
            if value is None:
                append(np.nan)
            elif col in codes:
                append(codes[col].get(str(value), np.nan))
            else:
                try:
                    append(float(value))
                except (TypeError, ValueError):
                    raise ValueError(f"feature {col!r} must be numeric, got {value!r}") from None
        return values

    def decode(self, row: np.ndarray) -> list[Any]:
        """One encoded row back to readable values (category codes to their text)."""
        return list(DecodedRow(self, row))

    def decode_value(self, j: int, value: float) -> Any:
        col = self.columns[j]
        if math.isnan(value):
            return None
        if col in self.categories:
            return self.categories[col][int(value)]
        return float(value)


class DecodedRow(Sequence[Any]):
    """An encoded row seen as its readable values, one column decoded per access (reasons
    read 3-6 of the ~85 values of a live score)."""

    def __init__(self, encoder: FeatureEncoder, row: np.ndarray) -> None:
        self._encoder, self._row = encoder, row

    def __len__(self) -> int:
        return len(self._row)

    @overload
    def __getitem__(self, j: int) -> Any: ...
    @overload
    def __getitem__(self, j: slice) -> list[Any]: ...
    def __getitem__(self, j: int | slice) -> Any:
        if isinstance(j, slice):
            return [self[i] for i in range(len(self))[j]]
        return self._encoder.decode_value(j, float(self._row[j]))


def fit_booster(
    params: Mapping[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    categorical: list[int],
    valid: tuple[Any, ...] | None = None,
    callbacks: Sequence[Any] = (),
    init_score: np.ndarray | None = None,
    weight: np.ndarray | None = None,
) -> lgb.Booster:
    """Train with early stopping on ``valid`` and return a booster trimmed to its best round.

    Trimming means the raw ``Booster.predict`` (serving, benchmarks) needs no
    ``num_iteration`` to match what was evaluated. ``init_score``: a per-row starting raw
    score (the booster learns what to add to it); ``valid`` then carries its own as a third
    element. The booster's own predictions exclude it. ``weight``: per-row sample weights
    (a sampled training set's inverse inclusion probabilities); ``valid`` then carries its
    own as a fourth element.
    """
    booster_params = {k: v for k, v in params.items() if k not in LOOP_KEYS}
    train_set = lgb.Dataset(
        X,
        y,
        weight=weight,
        init_score=init_score,
        categorical_feature=categorical or "auto",
        free_raw_data=True,
    )
    cbs = list(callbacks)
    valid_sets = []
    if valid is not None:
        valid_init = valid[2] if len(valid) > 2 else None
        valid_weight = valid[3] if len(valid) > 3 else None
        valid_sets = [
            lgb.Dataset(
                valid[0], valid[1], weight=valid_weight, init_score=valid_init, reference=train_set
            )
        ]
        patience = int(params.get("early_stopping_rounds", 40))
        cbs.append(lgb.early_stopping(patience, verbose=False))
    booster = lgb.train(
        booster_params,
        train_set,
        num_boost_round=int(params.get("num_boost_round", 400)),
        valid_sets=valid_sets,
        valid_names=["valid"] if valid_sets else None,
        callbacks=cbs,
    )
    best = booster.best_iteration or booster.current_iteration()
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=best))


def booster_predict(booster: lgb.Booster, X: np.ndarray, **kwargs: Any) -> np.ndarray:
    """``Booster.predict`` typed as the dense array it returns for dense input."""
    return np.asarray(booster.predict(X, **kwargs), dtype="float64")


@dataclass(frozen=True)
class Calibrator:
    """Maps raw scores (log-odds) to calibrated probabilities, with plain numpy.

    Platt scaling (a logistic curve on the score) keeps the ranking, so AUC is unchanged;
    isotonic is more flexible but flattens ties.
    """

    method: Calibration
    slope: float = 1.0
    intercept: float = 0.0
    knots_x: tuple[float, ...] = ()
    knots_y: tuple[float, ...] = ()

    @classmethod
    def fit(
        cls, method: Calibration, raw: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None
    ) -> Calibrator:
        if method == "platt":
            lr = LogisticRegression(C=1e6).fit(raw.reshape(-1, 1), y, sample_weight=weight)
            return cls("platt", float(lr.coef_[0, 0]), float(lr.intercept_[0]))
        if method == "isotonic":
            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
            iso = iso.fit(raw, y, sample_weight=weight)
            return cls(
                "isotonic",
                knots_x=tuple(iso.X_thresholds_.tolist()),
                knots_y=tuple(iso.y_thresholds_.tolist()),
            )
        return cls("none")

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if self.method == "isotonic":
            return np.interp(raw, self.knots_x, self.knots_y)
        return 1.0 / (1.0 + np.exp(-(self.slope * raw + self.intercept)))


@dataclass(frozen=True)
class FitRows:
    """Rows to fit on: the feature frame, its encoded matrix, the labels checked, and the
    rows' sampling weights (None: unweighted)."""

    frame: pd.DataFrame
    X: np.ndarray
    y: np.ndarray
    weight: np.ndarray | None


class BoostedModel:
    """What the churn and value models share: LightGBM parameters merged over the kind's
    :attr:`DEFAULTS`, a seed, and one way to fit -- labels checked, the feature encoder fitted
    on ``X``, the rows encoded, then the kind's :meth:`_fit_rows`."""

    DEFAULTS: ClassVar[Mapping[str, Any]]
    encoder_: FeatureEncoder
    booster_: lgb.Booster

    def __init__(self, params: Mapping[str, Any] | None = None, random_state: int = 0) -> None:
        self.params = {**self.DEFAULTS, **(params or {})}
        self.random_state = random_state

    def fit(
        self,
        X: pd.DataFrame,
        y: Any,
        X_valid: pd.DataFrame | None = None,
        y_valid: Any = None,
        callbacks: Sequence[Any] = (),
        *,
        sample_weight: Any = None,
        valid_weight: Any = None,
    ) -> Self:
        """Fit on ``X``; early-stop (and what else the kind does) on the later ``X_valid``.

        ``callbacks`` go to ``lightgbm.train`` (pruning). ``sample_weight`` /
        ``valid_weight``: the rows' sampling weights (a sampled training set).
        """
        y_arr = self._labels(y, "y", train=True)
        self.encoder_ = FeatureEncoder.fit(X)
        train = FitRows(X, self.encoder_.transform(X), y_arr, _weights(sample_weight))
        valid = None
        if X_valid is not None:
            X_v = self.encoder_.transform(X_valid)
            y_v = self._labels(y_valid, "y_valid", train=False)
            valid = FitRows(X_valid, X_v, y_v, _weights(valid_weight))
        self._fit_rows(train, valid, callbacks)
        return self

    def _labels(self, y: Any, name: str, train: bool) -> np.ndarray:
        """``y`` checked (``name``: for the error) as the kind's labels."""
        raise NotImplementedError

    def _fit_rows(self, train: FitRows, valid: FitRows | None, callbacks: Sequence[Any]) -> None:
        raise NotImplementedError

    @property
    def feature_names(self) -> list[str]:
        return list(self.encoder_.columns)

    def encode(
        self, data: pd.DataFrame | Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> np.ndarray:
        """Feature frame, one ``{feature: value}`` dict or a list of them -> the matrix the
        booster reads."""
        return self.encoder_.transform(data)


def _weights(weight: Any) -> np.ndarray | None:
    return None if weight is None else np.asarray(weight, dtype="float64")


class ChurnModel(BoostedModel):
    """P(no order in the horizon) for a customer, with the reasons behind it.

    ``params``: LightGBM parameters merged over :data:`DEFAULT_PARAMS` (plus
    ``num_boost_round`` / ``early_stopping_rounds``). ``calibration``: ``"platt"``
    (default, keeps the ranking), ``"isotonic"`` or ``"none"``; calibration needs the
    validation rows passed to :meth:`fit`, otherwise the raw LightGBM probability is used.
    ``X`` holds features only: every column but ``customer_id`` / ``as_of`` is one (a label
    left in would be learnt); the sampling weights serve LightGBM, early stopping and the
    calibration.
    """

    DEFAULTS = DEFAULT_PARAMS

    def __init__(
        self,
        params: Mapping[str, Any] | None = None,
        random_state: int = 0,
        calibration: Calibration = "platt",
    ) -> None:
        super().__init__(params, random_state)
        self.calibration = calibration

    def _labels(self, y: Any, name: str, train: bool) -> np.ndarray:
        return _binary(y, name)

    def _fit_rows(self, train: FitRows, valid: FitRows | None, callbacks: Sequence[Any]) -> None:
        """The booster, then the calibration on the validation rows (none without them)."""
        valid_set: tuple[Any, ...] | None = None
        if valid is not None:
            valid_set = (valid.X, valid.y)
            if valid.weight is not None:
                valid_set = (*valid_set, None, valid.weight)
        params = {**self.params, "seed": self.random_state}
        categorical = self.encoder_.categorical_indices
        self.booster_ = fit_booster(
            params, train.X, train.y, categorical, valid_set, callbacks, None, train.weight
        )
        if valid is None:
            self.calibrator_ = Calibrator.fit("none", np.empty(0), np.empty(0), None)
            return
        raw_valid = booster_predict(self.booster_, valid.X, raw_score=True)
        self.calibrator_ = Calibrator.fit(self.calibration, raw_valid, valid.y, valid.weight)

    def predict_proba_array(self, X: np.ndarray) -> np.ndarray:
        """Calibrated churn probabilities from an encoded matrix (the fast path)."""
        if 0 < len(X) <= FAST_ROWS:  # the live path: one customer or a micro-batch
            raw = fast_predictor(self, self.booster_).predict_rows(X, PREDICT_RAW_SCORE)
            return self.calibrator_(raw[:, 0])
        return self.calibrator_(booster_predict(self.booster_, X, raw_score=True))

    def predict_proba(self, frame: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """Calibrated P(churn) per row, shape ``[rows]`` (not sklearn's two columns)."""
        return self.predict_proba_array(self.encode(frame))

    def explain_array(
        self,
        X: np.ndarray,
        top: int = 3,
        spec: FeatureSpec | None = None,
        owners: Sequence[Hashable] | None = None,
    ) -> list[dict[str, list[dict[str, Any]]]]:
        """Top ``top`` drivers up and down per encoded row (see :func:`top_reasons`);
        ``owners``: the rows' customers, whose contributions a repeat score reads back
        while their features stay inside the same splits (:mod:`models.fastpredict`)."""
        if 0 < len(X) <= FAST_ROWS:  # the live path: one customer or a micro-batch
            contrib = fast_predictor(self, self.booster_).contributions(X, owners)[:, :-1]
        else:
            contrib = booster_predict(self.booster_, X, pred_contrib=True)[:, :-1]
        names = self.encoder_.columns
        return [
            top_reasons(contrib[i], DecodedRow(self.encoder_, X[i]), names, top, CHURN_WORDS, spec)
            for i in range(len(X))
        ]

    def explain(
        self, frame: pd.DataFrame | Mapping[str, Any], top: int = 3, spec: FeatureSpec | None = None
    ) -> list[dict[str, list[dict[str, Any]]]]:
        """Per row ``{"up": [...], "down": [...]}``: the features that raise / lower risk,
        each with ``feature``, ``value``, ``contribution`` (log-odds), ``phrase``, ``text``."""
        return self.explain_array(self.encode(frame), top, spec)

    def feature_importance(self) -> pd.Series:
        """Total gain per feature, largest first."""
        gain = self.booster_.feature_importance(importance_type="gain")
        return pd.Series(gain, index=self.encoder_.columns).sort_values(ascending=False)


def _binary(y: Any, name: str) -> np.ndarray:
    arr = np.asarray(y, dtype="float64")
    if arr.ndim != 1 or np.isnan(arr).any() or not np.isin(arr, (0.0, 1.0)).all():
        raise ValueError(f"{name} must be a 1-d array of 0/1 labels without nulls")
    if np.unique(arr).size < 2:
        raise ValueError(f"{name} holds one class only; churn needs churners and stayers")
    return arr
