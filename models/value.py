"""Value (CLV) model: expected net spend over the horizon, with a p10..p90 interval.

Spend over a horizon is zero for many customers and heavy-tailed for the rest, so the
model has two parts: ``P(any order)`` (a LightGBM classifier) times ``E[spend | ordered]``
(a LightGBM regressor fitted on the customers who ordered). Their product is the expected
spend -- an unbiased mean, which is what campaign arithmetic (uplift x value) needs.

Spend is seasonal (a horizon over the holidays is worth more than one over the summer)
while the spec's features are all relative to the cutoff. When the training frame has an
``as_of`` column (``features.batch.build_many`` adds it), the model learns one factor per
calendar month of the cutoff -- realised over predicted spend of the training rows of that
month -- and applies it whenever the cutoff is known at prediction time (an ``as_of``
column, or ``as_of=`` on the array path). Without a cutoff the prediction is at the
average level of the training months; train on 12 monthly cutoffs to cover a year.

The interval is conformal on the validation cutoff: validation customers are binned by
their predicted mean, and in each bin the p10/p50/p90 of ``realised / predicted`` scale
each customer's prediction. It is calibrated by construction on the validation rows, and
costs a ``searchsorted`` at prediction time.

Like :mod:`models.churn`, the estimator takes a feature frame and labels (no I/O) and
has a fast path on the encoded matrix (:meth:`ValueModel.predict_array`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.batch import as_utc
from models.churn import DEFAULT_PARAMS as CHURN_DEFAULTS
from models.churn import FeatureEncoder, booster_predict, fit_booster
from models.fastpredict import fast_predictor

OUTPUT_COLUMNS = ("value_mean", "value_p10", "value_p50", "value_p90")
QUANTILES = (0.1, 0.5, 0.9)
#: a calendar month needs this many training rows to get its own seasonal factor
MIN_SEASON_ROWS = 100

_COMMON = {k: v for k, v in CHURN_DEFAULTS.items() if k not in ("objective", "metric")}
#: parameters of the purchase classifier and of the spend regressor; ``params`` passed to
#: :class:`ValueModel` override both, ``buy_params`` / ``spend_params`` only one
DEFAULT_BUY_PARAMS: dict[str, Any] = {**_COMMON, "objective": "binary", "metric": "binary_logloss"}
DEFAULT_SPEND_PARAMS: dict[str, Any] = {
    **_COMMON,
    "objective": "regression",
    "metric": "l2",
    "min_data_in_leaf": 50,
}


@dataclass(frozen=True)
class ConformalBands:
    """Ratio quantiles ``realised / predicted`` per bin of the predicted mean."""

    edges: tuple[float, ...]  # inner bin edges of the predicted mean
    ratios: tuple[tuple[float, float, float], ...]  # (q10, q50, q90) per bin

    @classmethod
    def fit(
        cls, predicted: np.ndarray, realised: np.ndarray, min_rows: int = 200
    ) -> ConformalBands:
        """Equal-count bins of at least ``min_rows`` validation rows each."""
        bins = max(1, min(20, len(predicted) // min_rows))
        edges = np.unique(np.quantile(predicted, np.linspace(0, 1, bins + 1)[1:-1]))
        which = np.searchsorted(edges, predicted, side="right")
        ratio = realised / np.maximum(predicted, 1e-9)
        ratios = tuple(
            tuple(float(q) for q in np.quantile(ratio[which == b], QUANTILES))
            if (which == b).any()
            else (0.0, 1.0, 1.0)
            for b in range(len(edges) + 1)
        )
        return cls(tuple(edges.tolist()), ratios)  # type: ignore[arg-type]

    def __call__(self, predicted: np.ndarray) -> np.ndarray:
        """``[rows, 3]`` p10, p50, p90 for the given predicted means."""
        which = np.searchsorted(np.asarray(self.edges), predicted, side="right")
        scale = np.asarray(self.ratios)[which]
        return np.sort(np.maximum(predicted, 0.0)[:, None] * scale, axis=1)


def _months(as_of: Any, rows: int) -> np.ndarray | None:
    """Calendar month (1..12) of each row's cutoff; None when the cutoff is unknown."""
    if as_of is None:
        return None
    if np.ndim(as_of) == 0:  # one instant for all rows (the live service's "now")
        return np.full(rows, as_utc(as_of).month)
    return pd.to_datetime(pd.Series(as_of), utc=True).dt.month.to_numpy()


def _cutoffs(frame: pd.DataFrame | Mapping[str, Any]) -> Any:
    """The frame's ``as_of`` column (or a dict's ``as_of`` key), None without one."""
    if isinstance(frame, pd.DataFrame):
        return frame["as_of"] if "as_of" in frame.columns else None
    return frame.get("as_of")


class ValueModel:
    """Expected net spend in the horizon per customer, with a conformal p10..p90 interval.

    Fit on a feature frame and the realised spend of each row; ``X_valid`` / ``y_valid``
    (a later cutoff) serve early stopping and the interval. Without them the interval is
    fitted on the training rows, which makes it too narrow. An ``as_of`` column in the
    frames turns on the seasonal factors (module docstring).
    """

    def __init__(
        self,
        params: Mapping[str, Any] | None = None,
        random_state: int = 0,
        buy_params: Mapping[str, Any] | None = None,
        spend_params: Mapping[str, Any] | None = None,
    ) -> None:
        self.params = dict(params or {})
        self.random_state = random_state
        self.buy_params = {**DEFAULT_BUY_PARAMS, **self.params, **(buy_params or {})}
        self.spend_params = {**DEFAULT_SPEND_PARAMS, **self.params, **(spend_params or {})}

    def fit(
        self,
        X: pd.DataFrame,
        y: Any,
        X_valid: pd.DataFrame | None = None,
        y_valid: Any = None,
        callbacks: Sequence[Any] = (),
    ) -> ValueModel:
        """``X`` holds features only (plus optional ``customer_id`` / ``as_of``);
        ``callbacks`` go to the purchase classifier's ``lightgbm.train`` (pruning)."""
        y_arr = _amounts(y, "y")
        self.encoder_ = FeatureEncoder.fit(X)
        X_arr = self.encoder_.transform(X)
        cats = self.encoder_.categorical_indices
        valid = None
        if X_valid is not None:
            valid = (self.encoder_.transform(X_valid), _amounts(y_valid, "y_valid"))
        bought = y_arr != 0
        if bought.sum() < 2 or bought.all():
            raise ValueError("y needs both customers with and without spend in the horizon")
        seed = {"seed": self.random_state}
        self.buy_booster_ = fit_booster(
            {**self.buy_params, **seed},
            X_arr,
            bought.astype("float64"),
            cats,
            (valid[0], (valid[1] != 0).astype("float64")) if valid else None,
            callbacks,
        )
        spend_valid = (valid[0][valid[1] != 0], valid[1][valid[1] != 0]) if valid else None
        self.spend_booster_ = fit_booster(
            {**self.spend_params, **seed}, X_arr[bought], y_arr[bought], cats, spend_valid
        )
        self.season_ = self._fit_season(X_arr, y_arr, _months(_cutoffs(X), len(X)))
        X_cal, y_cal = valid if valid else (X_arr, y_arr)
        cal_frame = X_valid if X_valid is not None else X
        self.bands_ = ConformalBands.fit(self.predict_mean_array(X_cal, _cutoffs(cal_frame)), y_cal)
        return self

    def _fit_season(
        self, X: np.ndarray, y: np.ndarray, months: np.ndarray | None
    ) -> dict[int, float]:
        """Realised / predicted spend per calendar month of the training cutoffs."""
        if months is None:
            return {}
        pred = self._mean(X, None)
        season: dict[int, float] = {}
        for month in np.unique(months):
            rows = months == month
            if rows.sum() >= MIN_SEASON_ROWS and pred[rows].sum() > 0:
                season[int(month)] = float(y[rows].sum() / pred[rows].sum())
        return season

    def _mean(self, X: np.ndarray, months: np.ndarray | None) -> np.ndarray:
        # spend per buyer is floored at 0: a negative mean only comes from return noise
        if len(X) == 1:  # the live path: one customer
            spend_row = fast_predictor(self, self.spend_booster_).predict_row(X[0])
            buy_row = fast_predictor(self, self.buy_booster_).predict_row(X[0])
            mean = buy_row * np.maximum(spend_row, 0.0)
        else:
            spend = np.maximum(booster_predict(self.spend_booster_, X), 0.0)
            mean = booster_predict(self.buy_booster_, X) * spend
        if months is None or not self.season_:
            return mean
        return mean * np.array([self.season_.get(int(m), 1.0) for m in months])

    @property
    def feature_names(self) -> list[str]:
        return list(self.encoder_.columns)

    def encode(self, data: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """Feature frame or one ``{feature: value}`` dict -> the matrix the boosters read."""
        return self.encoder_.transform(data)

    def predict_mean_array(
        self, X: np.ndarray, as_of: datetime | Sequence[Any] | None = None
    ) -> np.ndarray:
        """Expected spend = P(any order) x E[spend | ordered] x the cutoff month's factor.

        ``as_of``: the cutoff (one instant or one per row); the live service passes now.
        """
        return self._mean(X, _months(as_of, len(X)))

    def predict_array(
        self, X: np.ndarray, as_of: datetime | Sequence[Any] | None = None
    ) -> np.ndarray:
        """``[rows, 4]``: mean, p10, p50, p90 (the order of :data:`OUTPUT_COLUMNS`)."""
        mean = self.predict_mean_array(X, as_of)
        return np.column_stack([mean, self.bands_(mean)])

    def predict(self, frame: pd.DataFrame | Mapping[str, Any]) -> pd.DataFrame:
        """``value_mean, value_p10, value_p50, value_p90`` per row (index kept for frames);
        an ``as_of`` column / key applies the seasonal factor of its month."""
        index = frame.index if isinstance(frame, pd.DataFrame) else None
        out = self.predict_array(self.encode(frame), _cutoffs(frame))
        return pd.DataFrame(out, columns=list(OUTPUT_COLUMNS), index=index)

    @property
    def boosters(self) -> dict[str, lgb.Booster]:
        return {"buy": self.buy_booster_, "spend": self.spend_booster_}

    def feature_importance(self) -> pd.Series:
        """Gain of both parts, each normalised to 1 and averaged, largest first."""
        shares = []
        for booster in self.boosters.values():
            gain = booster.feature_importance(importance_type="gain")
            shares.append(gain / max(gain.sum(), 1e-12))
        mean = np.mean(shares, axis=0)
        return pd.Series(mean, index=self.encoder_.columns).sort_values(ascending=False)


def _amounts(y: Any, name: str) -> np.ndarray:
    arr = np.asarray(y, dtype="float64")
    if arr.ndim != 1 or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be a 1-d array of finite amounts")
    return arr
