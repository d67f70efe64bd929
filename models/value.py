"""Value (CLV) model: expected net spend over the horizon, with a p10..p90 interval.

Spend over a horizon is zero for many customers and heavy-tailed for the rest. The model
is one LightGBM booster with a Tweedie objective (a compound Poisson-gamma: a point mass at
zero plus a skewed positive part), boosted from a **BG/NBD + Gamma-Gamma prior**: when the
feature frame has the lifetime order features of the spec (``orders_all``,
``days_since_first_order``, ``days_since_last_order``, ``spend_all``, ``tenure_days``), the
probabilistic baseline is fitted on the training rows and its expected spend over the
horizon is the booster's starting point (``init_score = log prior``). The trees then only
learn corrections to it -- complaints, trends, channel, segment -- which is why the model
beats the baseline on MAE and rank at once: on its own the booster ranks better but
estimates the mean with more variance than the baseline's Bayesian shrinkage (at 20k demo
customers MAE against the true expected spend was 59.0 for the old two-part model, 52.6
for BG/NBD, 48.7 for the boosted prior). Without those columns (any other table) the
booster starts from the mean spend instead. Negative net spend (returns exceeding
purchases) is counted as zero: the Tweedie likelihood needs non-negative labels, and the
expected value of a customer is floored at zero anyway.

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

**Never worse than the prior.** On data where the prior is already near the real spend
(transaction logs only: no touchpoints, no campaigns) the trees' corrections are mostly
noise, and the boosted model tied or slightly lost to BG/NBD + Gamma-Gamma. So the fit
ends with a choice on the validation cutoff: predictions are ``exp(log prior + w x
correction)`` and the weight ``w`` is the one of :data:`SHRINKAGE_GRID` with the lowest
validation RMSE -- ``w = 1`` is the boosted model, ``w = 0`` the prior alone, anything
between a shrinkage blend. :class:`PriorChoice` records which won and the three RMSEs; the
training job logs it with the run.

Like :mod:`models.churn`, the estimator takes a feature frame and labels (no I/O) and
has a fast path on the encoded matrix (:meth:`ValueModel.predict_array`).
"""

from __future__ import annotations

import bisect
import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.timeutil import as_utc
from models.btyd import BTYDValueBaseline, clip, maximum
from models.churn import DEFAULT_PARAMS as CHURN_DEFAULTS
from models.churn import BoostedModel, FitRows, booster_predict, fit_booster
from models.fastpredict import FAST_ROWS, PREDICT_RAW_SCORE, fast_predictor

OUTPUT_COLUMNS = ("value_mean", "value_p10", "value_p50", "value_p90")
QUANTILES = (0.1, 0.5, 0.9)
#: a calendar month needs this many training rows to get its own seasonal factor
MIN_SEASON_ROWS = 100
#: spec features the BG/NBD + Gamma-Gamma prior is computed from
PRIOR_INPUTS = (
    "orders_all",
    "days_since_first_order",
    "days_since_last_order",
    "spend_all",
    "tenure_days",
)
#: the prior is floored here before the log, so a "surely gone" customer can still rise
PRIOR_FLOOR = 1e-2
#: horizon of the prior when the caller does not say (the training default)
DEFAULT_HORIZON_DAYS = 90
#: weights of the booster's correction tried on the validation cutoff (0: prior, 1: boosted)
SHRINKAGE_GRID = tuple(float(w) for w in np.linspace(0.0, 1.0, 21))
#: up to this many rows :meth:`ValueModel.predict_array` goes row by row on floats (the
#: live service's customer or micro-batch): numpy's per-call cost is ~70 us a matrix, the
#: floats' ~8 us a row
ROW_PATH_ROWS = 8

DEFAULT_PARAMS: dict[str, Any] = {
    # not churn's depth limit: it is there for live reasons, which the value model has not
    **{k: v for k, v in CHURN_DEFAULTS.items() if k not in ("objective", "metric", "max_depth")},
    "objective": "tweedie",
    "tweedie_variance_power": 1.5,
    "metric": "tweedie",
}


@dataclass(frozen=True)
class ConformalBands:
    """Ratio quantiles ``realised / predicted`` per bin of the predicted mean."""

    edges: tuple[float, ...]  # inner bin edges of the predicted mean
    ratios: tuple[tuple[float, float, float], ...]  # (q10, q50, q90) per bin

    @classmethod
    def fit(
        cls,
        predicted: np.ndarray,
        realised: np.ndarray,
        min_rows: int = 200,
        weight: np.ndarray | None = None,
    ) -> ConformalBands:
        """Equal-count bins of at least ``min_rows`` validation rows each (``weight``: the
        rows' sampling weights, for the ratio quantiles)."""
        bins = max(1, min(20, len(predicted) // min_rows))
        edges = np.unique(np.quantile(predicted, np.linspace(0, 1, bins + 1)[1:-1]))
        which = np.searchsorted(edges, predicted, side="right")
        ratio = realised / np.maximum(predicted, 1e-9)
        ratios = tuple(
            tuple(float(q) for q in _quantiles(ratio, which == b, weight))
            if (which == b).any()
            else (0.0, 1.0, 1.0)
            for b in range(len(edges) + 1)
        )
        return cls(tuple(edges.tolist()), ratios)  # type: ignore[arg-type]

    @functools.cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The edges and ratios as arrays, made once (per live score they cost more than
        the interval itself)."""
        return np.asarray(self.edges), np.asarray(self.ratios)

    def __call__(self, predicted: np.ndarray) -> np.ndarray:
        """``[rows, 3]`` p10, p50, p90 for the given predicted means."""
        edges, ratios = self._arrays
        which = np.searchsorted(edges, predicted, side="right")
        return np.sort(np.maximum(predicted, 0.0)[:, None] * ratios[which], axis=1)

    @functools.cached_property
    def _ordered(self) -> tuple[tuple[float, ...], ...] | None:
        """Each bin's ratios in increasing order, when the edges are finite and the ratios
        finite and >= +0.0 (None otherwise): then a positive finite mean times them is
        already in ``np.sort``'s order, as rounding is monotone."""
        plain = all(math.isfinite(e) for e in self.edges) and all(
            math.isfinite(r) and math.copysign(1.0, r) > 0 for bin_ in self.ratios for r in bin_
        )
        return tuple(tuple(sorted(bin_)) for bin_ in self.ratios) if plain else None

    def one(self, predicted: float) -> tuple[float, ...]:
        """:meth:`__call__` for one predicted mean, on floats (the live path; the same
        numbers bit for bit, tests/models/test_value.py ties them)."""
        ordered = self._ordered
        if ordered is None or not 0.0 < predicted < math.inf:
            return tuple(self(np.array([predicted]))[0].tolist())
        low, mid, high = ordered[bisect.bisect_right(self.edges, predicted)]
        return predicted * low, predicted * mid, predicted * high

    def __getstate__(self) -> dict[str, Any]:
        """The fields only: the cached arrays are made again on first use."""
        return {"edges": self.edges, "ratios": self.ratios}


def _months(as_of: Any, rows: int) -> np.ndarray | None:
    """Calendar month (1..12) of each row's cutoff; None when the cutoff is unknown."""
    if as_of is None:
        return None
    if np.ndim(as_of) == 0:  # one instant for all rows (the live service's "now")
        return np.full(rows, as_utc(as_of).month)
    if isinstance(as_of, list) and all(type(t) is datetime for t in as_of):
        # one instant per row of a live micro-batch: pandas would cost more than the rows
        return np.array([as_utc(t).month for t in as_of])
    return pd.to_datetime(pd.Series(as_of), utc=True).dt.month.to_numpy()


def _row_months(as_of: Any, rows: int) -> list[int] | None:
    """:func:`_months` as ints, for a few rows (the live path: no array for one instant)."""
    if type(as_of) is datetime:
        return [as_utc(as_of).month] * rows
    months = _months(as_of, rows)
    return None if months is None else months.tolist()


def _cutoffs(frame: pd.DataFrame | Mapping[str, Any]) -> Any:
    """The frame's ``as_of`` column (or a dict's ``as_of`` key), None without one."""
    if isinstance(frame, pd.DataFrame):
        return frame["as_of"] if "as_of" in frame.columns else None
    return frame.get("as_of")


@dataclass(frozen=True)
class PriorChoice:
    """What predicts the validation cutoff best: the boosted model, the prior or a blend."""

    #: "boosted" (w = 1), "prior" (w = 0) or "blend"
    kind: str
    #: weight of the booster's correction on the log scale
    shrinkage: float
    #: validation RMSE of the boosted model, the prior alone and the chosen weight
    rmse: dict[str, float]
    #: what the prior is: BG/NBD + Gamma-Gamma, or the training mean without its inputs
    prior: str = "BG/NBD + Gamma-Gamma"

    @classmethod
    def without_validation(cls, prior: str) -> PriorChoice:
        return cls("boosted", 1.0, {}, prior)

    def reason(self) -> str:
        if not self.rmse:
            return "boosted model kept as is: no validation cutoff to choose on"
        r = self.rmse
        return (
            f"{self.kind} (correction weight {self.shrinkage:.2f}) has the lowest validation "
            f"RMSE: boosted {r['boosted']:.3f}, prior ({self.prior}) {r['prior']:.3f}, "
            f"chosen {r['chosen']:.3f}"
        )

    def as_params(self) -> dict[str, Any]:
        """The choice as run parameters (its RMSEs are logged as metrics)."""
        return {"value_choice": self.kind, "value_shrinkage": self.shrinkage}


@dataclass
class SpendPrior:
    """BG/NBD + Gamma-Gamma expected spend over the horizon, read from the encoded matrix."""

    baseline: BTYDValueBaseline
    horizon_days: float
    columns: tuple[int, ...]  # positions of :data:`PRIOR_INPUTS` in the encoded matrix

    @staticmethod
    def rfm(X: np.ndarray, columns: Sequence[int]) -> tuple[np.ndarray, ...]:
        """Lifetimes-style frequency, recency, T, monetary value from the spec's features
        (orders rather than order days; customers without orders age from signup)."""
        inputs = X[:, list(columns)]
        orders, first, last, spend, tenure = np.where(np.isnan(inputs), 0.0, inputs).T
        has = orders > 0
        age = np.maximum(np.where(has, first, tenure), 0.0)
        frequency = np.where(has, orders - 1.0, 0.0)
        recency = np.clip(np.where(has, first - last, 0.0), 0.0, age)
        monetary = np.where(frequency > 0, spend / np.maximum(orders, 1.0), 0.0)
        return frequency, recency, age, monetary

    @classmethod
    def fit(cls, X: np.ndarray, columns: Sequence[int], horizon_days: float) -> SpendPrior:
        baseline = BTYDValueBaseline().fit(*cls.rfm(X, columns))
        return cls(baseline, horizon_days, tuple(columns))

    @staticmethod
    def rfm_one(inputs: Sequence[float]) -> tuple[float, float, float, float]:
        """:meth:`rfm` for one row's :data:`PRIOR_INPUTS`, on floats (bit for bit)."""
        orders, first, last, spend, tenure = (v if v == v else 0.0 for v in inputs)
        has = orders > 0
        age = maximum(first if has else tenure, 0.0)
        frequency = orders - 1.0 if has else 0.0
        recency = clip(first - last if has else 0.0, 0.0, age)
        monetary = spend / maximum(orders, 1.0) if frequency > 0 else 0.0
        return frequency, recency, age, monetary

    def log_spend(self, X: np.ndarray, columns: Sequence[int] | None = None) -> np.ndarray:
        """Log prior per row (``columns``: where :data:`PRIOR_INPUTS` are, if not at
        :attr:`columns`)."""
        columns = self.columns if columns is None else columns
        spend = self.baseline.expected_spend_unchecked(self.horizon_days, *self.rfm(X, columns))
        return np.log(np.maximum(spend, PRIOR_FLOOR))

    def log_spend_one(self, inputs: Sequence[float]) -> float:
        """:meth:`log_spend` for one row's :data:`PRIOR_INPUTS` (``X[i, columns]``), on
        floats: the same number bit for bit, at a fraction of numpy's per-call cost."""
        one = self.baseline.one_customer
        if one is None:
            return float(self.log_spend(np.array([inputs]), range(len(PRIOR_INPUTS)))[0])
        spend = one(self.horizon_days, *self.rfm_one(inputs))
        return float(np.log(maximum(spend, PRIOR_FLOOR)))


class ValueModel(BoostedModel):
    """Expected net spend in the horizon per customer, with a conformal p10..p90 interval.

    Fit on a feature frame and the realised spend of each row; ``X_valid`` / ``y_valid``
    (a later cutoff) serve early stopping and the interval. Without them the interval is
    fitted on the training rows, which makes it too narrow. An ``as_of`` column in the
    frames turns on the seasonal factors; the spec's lifetime order columns turn on the
    BG/NBD prior (module docstring). ``horizon_days`` is the labels' horizon. ``X`` holds
    features only (plus optional ``customer_id`` / ``as_of``); the sampling weights serve
    LightGBM, the starting level, the seasonal factors, the prior's weight and the interval
    (the BG/NBD prior itself is fitted unweighted).
    """

    DEFAULTS = DEFAULT_PARAMS
    #: weight of the booster's correction, chosen in :meth:`fit`; models pickled before the
    #: choice existed (registered champions) load as the boosted model they were
    shrinkage_: float = 1.0

    def __init__(
        self,
        params: Mapping[str, Any] | None = None,
        random_state: int = 0,
        horizon_days: float = DEFAULT_HORIZON_DAYS,
    ) -> None:
        super().__init__(params, random_state)
        self.horizon_days = horizon_days

    def _labels(self, y: Any, name: str, train: bool) -> np.ndarray:
        y_arr = np.maximum(_amounts(y, name), 0.0)
        if train and ((y_arr > 0).sum() < 2 or (y_arr > 0).all()):
            raise ValueError("y needs both customers with and without spend in the horizon")
        return y_arr

    def _fit_rows(self, train: FitRows, valid: FitRows | None, callbacks: Sequence[Any]) -> None:
        """The prior, the booster from it, the correction's weight, seasons and interval."""
        X_arr, y_arr, w = train.X, train.y, train.weight
        self.prior_ = self._fit_prior(X_arr)
        self.base_score_ = float(np.log(np.average(y_arr, weights=w)))  # without a prior
        offset = self._offset(X_arr)
        valid_set = None
        if valid is not None:
            valid_set = (valid.X, valid.y, self._offset(valid.X), valid.weight)
        self.booster_ = fit_booster(
            {**self.params, "seed": self.random_state},
            X_arr,
            y_arr,
            self.encoder_.categorical_indices,
            valid_set,
            callbacks,
            init_score=offset,
            weight=w,
        )
        fitted = (booster_predict(self.booster_, X_arr, raw_score=True), offset, y_arr, w)
        months = _months(_cutoffs(train.frame), len(X_arr))
        prior = "BG/NBD + Gamma-Gamma" if self.prior_ is not None else "the training mean"
        if valid is None or valid_set is None:
            self.shrinkage_ = 1.0
            self.choice_ = PriorChoice.without_validation(prior)
        else:
            raw_v = booster_predict(self.booster_, valid.X, raw_score=True)
            held = (raw_v, valid_set[2], valid.y, valid.weight)
            held_months = _months(_cutoffs(valid.frame), len(valid.X))
            self.choice_ = self._choose(fitted, months, held, held_months, prior)
            self.shrinkage_ = self.choice_.shrinkage
        self.season_ = self._fit_season(*fitted, months, self.shrinkage_)
        cal = valid if valid is not None else train
        predicted = self.predict_mean_array(cal.X, _cutoffs(cal.frame))
        self.bands_ = ConformalBands.fit(predicted, cal.y, weight=cal.weight)

    def _fit_prior(self, X: np.ndarray) -> SpendPrior | None:
        columns = self.encoder_.columns
        if not all(name in columns for name in PRIOR_INPUTS):
            return None
        try:
            positions = [columns.index(name) for name in PRIOR_INPUTS]
            return SpendPrior.fit(X, positions, self.horizon_days)
        except (RuntimeError, ValueError) as exc:
            warnings.warn(f"BG/NBD prior not fitted ({exc}); boosting from the mean", stacklevel=3)
            return None

    def _offset(self, X: np.ndarray) -> np.ndarray:
        """The booster's starting log-spend per row: the prior, or the training mean."""
        if self.prior_ is None:
            return np.full(len(X), self.base_score_)
        return self.prior_.log_spend(X)

    def _choose(
        self,
        train: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None],
        months: np.ndarray | None,
        valid: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None],
        valid_months: np.ndarray | None,
        prior: str,
    ) -> PriorChoice:
        """The correction weight with the lowest validation RMSE (seasonal factors refitted
        on the training rows for each weight, as the final model does)."""
        raw_v, offset_v, y_v, weight_v = valid
        rmse = {}
        for w in SHRINKAGE_GRID:
            season = self._fit_season(*train, months, w)
            pred = _level(raw_v, offset_v, w, valid_months, season)
            rmse[w] = float(np.sqrt(np.average((pred - y_v) ** 2, weights=weight_v)))
        best = min(SHRINKAGE_GRID, key=lambda w: (rmse[w], -w))
        kind = "boosted" if best == 1.0 else "prior" if best == 0.0 else "blend"
        scores = {"boosted": rmse[1.0], "prior": rmse[0.0], "chosen": rmse[best]}
        return PriorChoice(kind, best, scores, prior)

    @staticmethod
    def _fit_season(
        raw: np.ndarray,
        offset: np.ndarray,
        y: np.ndarray,
        weight: np.ndarray | None,
        months: np.ndarray | None,
        shrinkage: float,
    ) -> dict[int, float]:
        """Realised / predicted spend per calendar month of the training cutoffs."""
        if months is None:
            return {}
        pred = _level(raw, offset, shrinkage, None, {})
        w = np.ones(len(y)) if weight is None else weight
        season: dict[int, float] = {}
        for month in np.unique(months):
            rows = months == month
            if rows.sum() >= MIN_SEASON_ROWS and pred[rows].sum() > 0:
                season[int(month)] = float((w * y)[rows].sum() / (w * pred)[rows].sum())
        return season

    def _mean(self, X: np.ndarray, months: np.ndarray | None) -> np.ndarray:
        if 0 < len(X) <= FAST_ROWS:  # the live path: one customer or a micro-batch
            raw = fast_predictor(self, self.booster_).predict_rows(X, PREDICT_RAW_SCORE)[:, 0]
        else:
            raw = booster_predict(self.booster_, X, raw_score=True)
        return _level(raw, self._offset(X), self.shrinkage_, months, self.season_)

    def predict_mean_array(
        self, X: np.ndarray, as_of: datetime | Sequence[Any] | None = None
    ) -> np.ndarray:
        """Expected spend = exp(log prior + w x booster) x the cutoff month's factor.

        ``as_of``: the cutoff (one instant or one per row); the live service passes now.
        """
        return self._mean(X, _months(as_of, len(X)))

    def predict_array(
        self, X: np.ndarray, as_of: datetime | Sequence[Any] | None = None
    ) -> np.ndarray:
        """``[rows, 4]``: mean, p10, p50, p90 (the order of :data:`OUTPUT_COLUMNS`).

        Up to :data:`ROW_PATH_ROWS` rows (the live service's) go row by row on floats, the
        same numbers as the matrix arithmetic below, which stays their definition."""
        if 0 < len(X) <= ROW_PATH_ROWS:
            return self._predict_rows(X, as_of)
        mean = self.predict_mean_array(X, as_of)
        out = np.empty((len(mean), 1 + len(QUANTILES)))  # column_stack's numbers, cheaper
        out[:, 0] = mean
        out[:, 1:] = self.bands_(mean)
        return out

    def _predict_rows(self, X: np.ndarray, as_of: datetime | Sequence[Any] | None) -> np.ndarray:
        """:meth:`predict_array` row by row on floats (the live path): the prior, the level
        and the interval of :meth:`SpendPrior.log_spend_one`, :func:`_level` and
        :meth:`ConformalBands.one`, the same numbers bit for bit."""
        raw = fast_predictor(self, self.booster_).predict_rows(X, PREDICT_RAW_SCORE)[:, 0]
        prior = self.prior_
        if prior is None:
            offsets = [self.base_score_] * len(X)
        else:
            offsets = [prior.log_spend_one(row) for row in X.take(prior.columns, axis=1).tolist()]
        months = _row_months(as_of, len(X)) if self.season_ else None
        out = np.empty((len(X), 1 + len(QUANTILES)))
        for i, (correction, offset) in enumerate(zip(raw.tolist(), offsets, strict=True)):
            mean = float(np.exp(self.shrinkage_ * correction + offset))
            if months is not None:
                mean *= self.season_.get(months[i], 1.0)
            out[i] = (mean, *self.bands_.one(mean))
        return out

    def predict(self, frame: pd.DataFrame | Mapping[str, Any]) -> pd.DataFrame:
        """``value_mean, value_p10, value_p50, value_p90`` per row (index kept for frames);
        an ``as_of`` column / key applies the seasonal factor of its month."""
        index = frame.index if isinstance(frame, pd.DataFrame) else None
        out = self.predict_array(self.encode(frame), _cutoffs(frame))
        return pd.DataFrame(out, columns=list(OUTPUT_COLUMNS), index=index)

    @property
    def boosters(self) -> dict[str, lgb.Booster]:
        return {"value": self.booster_}

    def feature_importance(self) -> pd.Series:
        """Share of the booster's gain per feature, largest first (the prior is not in it)."""
        gain = self.booster_.feature_importance(importance_type="gain")
        share = gain / max(gain.sum(), 1e-12)
        return pd.Series(share, index=self.encoder_.columns).sort_values(ascending=False)


def _level(
    raw: np.ndarray,
    offset: np.ndarray,
    shrinkage: float,
    months: np.ndarray | None,
    season: Mapping[int, float],
) -> np.ndarray:
    """Expected spend: exp(log prior + shrinkage x correction) x the month's factor."""
    mean = np.exp(shrinkage * np.asarray(raw) + offset)
    if months is None or not season:
        return mean
    return mean * np.array([season.get(int(m), 1.0) for m in months])


def _amounts(y: Any, name: str) -> np.ndarray:
    arr = np.asarray(y, dtype="float64")
    if arr.ndim != 1 or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be a 1-d array of finite amounts")
    return arr


def _quantiles(values: np.ndarray, rows: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    """:data:`QUANTILES` of ``values[rows]``, weighted when ``weight`` is given."""
    if weight is None:
        return np.quantile(values[rows], QUANTILES)
    return np.quantile(values[rows], QUANTILES, weights=weight[rows], method="inverted_cdf")
