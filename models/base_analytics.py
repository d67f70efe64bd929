"""Customer-base analytics: the computations behind retention, customer equity, customer
share, segment migration and the segment map -- pure numpy / pandas, no I/O.

The offline job (:mod:`training.analytics`) feeds them customer snapshots taken at period
boundaries and writes what they return to the warehouse; the marketers' web page may call
them too (``models`` is importable from ``serving``). Every function takes arrays aligned
on one customer order and says what it assumes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.stats import norm, rankdata

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Period = Literal["month", "quarter"]
#: calendar months per period
PERIOD_MONTHS: dict[str, int] = {"month": 1, "quarter": 3}
#: z of the two-sided 95% intervals on rates and transition probabilities
Z95 = float(norm.ppf(0.975))


# --------------------------------------------------------------------------- periods
def period_boundaries(as_of: datetime, period: str, periods: int) -> list[pd.Timestamp]:
    """``periods + 2`` instants ``b_-1 < b_0 < ... < b_periods = as_of``, one calendar period
    apart (month-end days clip, as pandas' DateOffset does); period k is ``[b_k-1, b_k)``.

    Periods are anchored at ``as_of`` rather than at calendar months so the latest period
    is complete and ends where the scores are taken.
    """
    if period not in PERIOD_MONTHS:
        raise ValueError(f"period must be one of {sorted(PERIOD_MONTHS)}, got {period!r}")
    if periods < 1:
        raise ValueError(f"periods must be >= 1, got {periods}")
    end = pd.Timestamp(as_of)
    end = end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")
    step = PERIOD_MONTHS[period]
    return [end - pd.DateOffset(months=step * (periods - k)) for k in range(-1, periods + 1)]


# --------------------------------------------------------------------------- rates
def wilson_interval(
    successes: npt.ArrayLike, trials: npt.ArrayLike, z: float = Z95
) -> tuple[FloatArray, FloatArray]:
    """Wilson score interval of a binomial proportion (NaN where there are no trials).

    Unlike the normal approximation it stays inside [0, 1] and is honest for small groups
    and rates near 0 or 1, which segment-level retention and rare transitions are.
    """
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        denominator = 1.0 + z**2 / n
        centre = (p + z**2 / (2.0 * n)) / denominator
        half = z * np.sqrt(p * (1.0 - p) / n + z**2 / (4.0 * n**2)) / denominator
    empty = n <= 0
    low = np.where(empty, np.nan, np.clip(centre - half, 0.0, 1.0))
    high = np.where(empty, np.nan, np.clip(centre + half, 0.0, 1.0))
    return low, high


# --------------------------------------------------------------------------- retention
#: the per-period counts :func:`period_flows` returns, in order
FLOW_COLUMNS = (
    "active_previous",
    "active",
    "retained",
    "churned",
    "reactivated",
    "new",
    "retention_rate",
    "retention_low",
    "retention_high",
    "survival_rate",
)


def period_flows(
    active_previous: BoolArray,
    active: BoolArray,
    new: BoolArray,
    p_alive: FloatArray,
    groups: npt.ArrayLike | None = None,
) -> pd.DataFrame:
    """Retention and the flows of one period, overall or per group (one row per group).

    ``active_previous`` / ``active``: bought in the previous / this period; ``new``: first
    order in this period; ``p_alive``: each customer's probability of still being a
    customer at the end of this period. Returns :data:`FLOW_COLUMNS`:

    * ``retained`` (active in both), ``churned`` (active before, not now), ``reactivated``
      (active now, not before, ordered before that), ``new`` -- so ``active = retained +
      reactivated + new`` and ``active_previous = retained + churned``;
    * ``retention_rate`` = retained / active_previous with its 95% Wilson interval: the
      repeat-purchase retention a manager tracks;
    * ``survival_rate``: the mean ``p_alive`` of the previous period's active customers,
      the estimated share of them still customers -- higher than the repeat rate when
      periods are short, because a customer can stay without buying every month.
    """
    active_previous = np.asarray(active_previous, dtype=bool)
    active = np.asarray(active, dtype=bool)
    new = np.asarray(new, dtype=bool) & active
    if (new & active_previous).any():
        row = int(np.argmax(new & active_previous))
        raise ValueError(f"customer {row} is new (first order) yet active the period before")
    if groups is None:
        codes, labels = np.zeros(len(active), dtype=np.int64), np.array(["all"], dtype=object)
    else:  # hashing, not sorting, the labels: 1M strings in ~50 ms
        codes, labels = pd.factorize(np.asarray(groups, dtype=object), sort=True)
    size = len(labels)

    def count(mask: BoolArray) -> FloatArray:
        return np.bincount(codes, weights=mask.astype(np.float64), minlength=size).astype(
            np.float64
        )

    retained = count(active_previous & active)
    base = count(active_previous)
    low, high = wilson_interval(retained, base)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = retained / base
        survival = (
            np.bincount(codes, weights=np.where(active_previous, p_alive, 0.0), minlength=size)
            / base
        )
    frame = pd.DataFrame(
        {
            "active_previous": base,
            "active": count(active),
            "retained": retained,
            "churned": count(active_previous & ~active),
            "reactivated": count(active & ~active_previous & ~new),
            "new": count(new),
            "retention_rate": rate,
            "retention_low": low,
            "retention_high": high,
            "survival_rate": survival,
        },
        index=pd.Index(labels, name="group"),
    )
    counts = list(FLOW_COLUMNS[:6])
    frame[counts] = frame[counts].astype(np.int64)
    return frame


def cohort_triangle(cohort: npt.ArrayLike, activity: BoolArray) -> pd.DataFrame:
    """Acquisition cohorts against the periods since acquisition.

    ``cohort[i]`` is the period index (0..P-1) a customer was acquired in, -1 for earlier
    customers (left out); ``activity[i, k]`` whether they bought in period k. One row per
    cohort and period k >= cohort: ``cohort_customers``, ``active``, ``active_rate``
    (share of the cohort buying in period k), ``active_previous``, ``retained`` and
    ``retention_rate`` (bought in k among those who bought in k - 1; NaN at k = cohort).
    """
    cohort = np.asarray(cohort, dtype=np.int64)
    activity = np.asarray(activity, dtype=bool)
    periods = activity.shape[1]
    rows = []
    for c in range(periods):
        members = activity[cohort == c]
        size = len(members)
        for k in range(c, periods):
            active = int(members[:, k].sum())
            if k > c:
                previous = int(members[:, k - 1].sum())
                retained = int((members[:, k - 1] & members[:, k]).sum())
            else:
                previous = retained = 0
            rows.append(
                {
                    "cohort": c,
                    "period": k,
                    "periods_since": k - c,
                    "cohort_customers": size,
                    "active": active,
                    "active_rate": active / size if size else np.nan,
                    "active_previous": previous,
                    "retained": retained,
                    "retention_rate": retained / previous if previous else np.nan,
                }
            )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- migration
@dataclass(frozen=True)
class TransitionMatrix:
    """Customers moving between states (RFM segments, ABC tiers) from one snapshot to the
    next: counts, row probabilities and their 95% Wilson intervals, as a Markov chain.

    A state nobody started in keeps its customers (an identity row) so projections stay
    defined; :attr:`observed` says which rows were estimated.
    """

    states: tuple[str, ...]
    counts: FloatArray  # [from, to]

    @classmethod
    def fit(
        cls, before: npt.ArrayLike, after: npt.ArrayLike, states: Sequence[str]
    ) -> TransitionMatrix:
        """Counts of (state before, state after) over the customers present in both."""
        index = {s: i for i, s in enumerate(states)}
        before_s, after_s = pd.Series(np.asarray(before)), pd.Series(np.asarray(after))
        i, j = before_s.map(index), after_s.map(index)
        unknown = sorted({*before_s[i.isna()].astype(str), *after_s[j.isna()].astype(str)})
        if unknown:
            raise ValueError(f"states {unknown} are not among {list(states)}")
        return cls.from_codes(i.to_numpy(np.int64), j.to_numpy(np.int64), states)

    @classmethod
    def from_codes(
        cls, before: npt.ArrayLike, after: npt.ArrayLike, states: Sequence[str]
    ) -> TransitionMatrix:
        """:meth:`fit` on state positions (0 .. len(states) - 1) rather than names."""
        size = len(states)
        i, j = np.asarray(before, dtype=np.int64), np.asarray(after, dtype=np.int64)
        if len(i) and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= size):
            raise ValueError(f"state codes must lie in 0..{size - 1}")
        counts = np.bincount(i * size + j, minlength=size * size).astype(np.float64)
        return cls(tuple(states), counts.reshape(size, size))

    @property
    def observed(self) -> BoolArray:
        return np.asarray(self.counts.sum(axis=1) > 0)

    @property
    def probabilities(self) -> FloatArray:
        rows = self.counts.sum(axis=1, keepdims=True)
        return np.where(rows > 0, self.counts / np.where(rows > 0, rows, 1.0), np.eye(len(rows)))

    def intervals(self, z: float = Z95) -> tuple[FloatArray, FloatArray]:
        """95% Wilson interval of each transition probability (NaN on unobserved rows)."""
        rows = np.broadcast_to(self.counts.sum(axis=1, keepdims=True), self.counts.shape)
        return wilson_interval(self.counts, rows, z)

    def mix(self, which: Literal["before", "after"] = "before") -> FloatArray:
        """Share of customers per state before or after the transition."""
        totals = self.counts.sum(axis=1 if which == "before" else 0)
        return totals / max(totals.sum(), 1.0)

    def project(self, mix: npt.ArrayLike, steps: int = 1) -> FloatArray:
        """The mix ``steps`` periods ahead if these flows repeat: ``mix @ P^steps``."""
        out = np.asarray(mix, dtype=np.float64)
        for _ in range(steps):
            out = out @ self.probabilities
        return out

    def long_run(self, mix: npt.ArrayLike) -> FloatArray:
        """Where ``mix`` ends up if these flows repeat for ever (``mix @ P^inf``): the
        chain's stationary mix when it has one, else the limit reached from ``mix``."""
        power = self.probabilities
        for _ in range(40):  # P^(2^40): converged for any chain that converges at all
            power = power @ power
            power /= power.sum(axis=1, keepdims=True)
        return np.asarray(mix, dtype=np.float64) @ power


def mix_distance(p: npt.ArrayLike, q: npt.ArrayLike) -> float:
    """Total variation distance between two mixes: the share of customers that would have
    to change state to turn one into the other (0 = equal, 1 = disjoint)."""
    return float(0.5 * np.abs(np.asarray(p, float) - np.asarray(q, float)).sum())


# --------------------------------------------------------------------------- equity
#: z of the central 80% interval (the p10..p90 of the value model)
Z80 = float(norm.ppf(0.9))


@dataclass(frozen=True)
class Equity:
    """Customer equity: the sum of predicted value over the base, with an 80% interval.

    The interval is for the realised total if each customer's predictive distribution is
    right and customers vary independently: each customer's spread is read from their
    p10..p90 (sd ~ (p90 - p10) / 2.56) and the total is normal by the central limit
    theorem. It leaves out model error common to everyone (a wrong seasonal level), so it
    is narrow for a large base.
    """

    customers: int
    unscored: int
    total: float
    low: float
    high: float


def customer_equity(
    value_mean: npt.ArrayLike, value_p10: npt.ArrayLike, value_p90: npt.ArrayLike
) -> Equity:
    """:class:`Equity` of the customers whose values are given (NaN = not scored)."""
    mean = np.asarray(value_mean, dtype=np.float64)
    scored = ~np.isnan(mean)
    sd = (np.asarray(value_p90, float) - np.asarray(value_p10, float))[scored] / (2.0 * Z80)
    total = float(mean[scored].sum())
    half = Z80 * float(np.sqrt(np.sum(sd**2)))
    return Equity(len(mean), int((~scored).sum()), total, total - half, total + half)


@dataclass(frozen=True)
class EquityChange:
    """The change in equity between two runs, by what happened to the customers.

    ``current = previous - lost + value_change + reactivated + new``, exactly:
    ``lost`` is the previous value of customers active then and not now, ``value_change``
    the revaluation of customers active in both runs (``retained`` is their previous
    value), ``reactivated`` the value of customers back after a lapse, ``new`` that of
    customers whose first order came after the previous run.
    """

    previous: float
    current: float
    retained: float
    lost: float
    value_change: float
    reactivated: float
    new: float
    retained_customers: int
    lost_customers: int
    reactivated_customers: int
    new_customers: int

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in vars(self).items()}


def equity_change(previous: pd.DataFrame, current: pd.DataFrame) -> EquityChange:
    """Decompose equity between two runs.

    ``previous``: ``customer_id``, ``active``, ``value`` of the earlier run; ``current``:
    the same plus ``ordered_before`` (the customer had ordered before the earlier run's
    as-of). Equity counts active customers only; values missing (not scored) count 0.
    """
    for name, frame, need in (
        ("previous", previous, ("customer_id", "active", "value")),
        ("current", current, ("customer_id", "active", "value", "ordered_before")),
    ):
        missing = [c for c in need if c not in frame.columns]
        if missing:
            raise ValueError(f"{name}: missing column(s) {missing}")
    before = previous.set_index("customer_id")[["active", "value"]]
    now = current.set_index("customer_id")[["active", "value", "ordered_before"]]
    joined = now.add_suffix("_now").join(before.add_suffix("_before"), how="outer")
    joined = joined.rename(columns={"ordered_before_now": "ordered_before"})
    was = joined["active_before"].fillna(False).astype(bool).to_numpy()
    is_ = joined["active_now"].fillna(False).astype(bool).to_numpy()
    ordered = joined["ordered_before"].fillna(False).astype(bool).to_numpy()
    v_before = joined["value_before"].fillna(0.0).to_numpy(np.float64)
    v_now = joined["value_now"].fillna(0.0).to_numpy(np.float64)
    kept, lost = was & is_, was & ~is_
    back, new = is_ & ~was & ordered, is_ & ~was & ~ordered
    return EquityChange(
        previous=float(v_before[was].sum()),
        current=float(v_now[is_].sum()),
        retained=float(v_before[kept].sum()),
        lost=float(v_before[lost].sum()),
        value_change=float((v_now - v_before)[kept].sum()),
        reactivated=float(v_now[back].sum()),
        new=float(v_now[new].sum()),
        retained_customers=int(kept.sum()),
        lost_customers=int(lost.sum()),
        reactivated_customers=int(back.sum()),
        new_customers=int(new.sum()),
    )


# --------------------------------------------------------------------------- customer share
@dataclass(frozen=True)
class WalletSettings:
    """How spending potential is estimated (see :func:`wallet_potential`)."""

    quantile: float = 0.9
    groups: tuple[str, ...] = ("region",)
    min_group: int = 200
    min_exposure_days: float = 30.0

    def __post_init__(self) -> None:
        if not 0.5 <= self.quantile < 1.0:
            raise ValueError(f"the wallet quantile must be in [0.5, 1), got {self.quantile}")
        if self.min_group < 1:
            raise ValueError(f"min_group must be >= 1, got {self.min_group}")


def annual_spend(spend_365d: npt.ArrayLike, tenure_days: npt.ArrayLike, min_days: float = 30.0):
    """Net spend of the last 365 days per year of exposure: a customer of 3 months who
    spent 100 spends about 400 a year (exposure floored at ``min_days``)."""
    exposure = np.clip(np.asarray(tenure_days, dtype=np.float64), min_days, 365.0)
    return np.asarray(spend_365d, dtype=np.float64) * 365.0 / exposure


def wallet_potential(
    spend: npt.ArrayLike,
    groups: Mapping[str, npt.ArrayLike] | None = None,
    settings: WalletSettings | None = None,
    reference: npt.ArrayLike | None = None,
) -> FloatArray:
    """Each customer's spending potential: the ``quantile`` of the yearly spend of
    comparable customers (same values of every ``groups`` column), or their own spend when
    higher. Only ``reference`` customers (default: all) set the quantiles -- customers
    with a full year of history, whose yearly spend is measured rather than extrapolated;
    groups with fewer than ``min_group`` of them use the whole reference base.

    The assumption (the "realistic wallet" of Rosset et al.): among comparable customers
    the best ones spend nearly all their budget with us, so the high quantile of spend
    is what a customer like them *could* spend. Customer share = spend / potential. The
    groups should describe needs (region, company size), not the relationship with us:
    grouping by RFM segment would make a lapsed customer's potential as small as the
    spend of other lapsed customers.
    """
    settings = settings or WalletSettings()
    values = np.asarray(spend, dtype=np.float64)
    ref = np.ones(len(values), bool) if reference is None else np.asarray(reference, bool)
    if not ref.any():
        ref = np.ones(len(values), bool)
    overall = float(np.quantile(values[ref], settings.quantile)) if len(values) else np.nan
    potential = np.full(len(values), overall)
    if groups:
        keys = pd.MultiIndex.from_arrays([np.asarray(v, dtype=object) for v in groups.values()])
        codes, uniques = pd.factorize(keys)
        frame = pd.DataFrame({"code": codes[ref], "spend": values[ref]})
        sizes = frame.groupby("code").spend.size()
        quantiles = frame.groupby("code").spend.quantile(settings.quantile)
        big = sizes.index[sizes >= settings.min_group]
        per_code = np.full(len(uniques), overall)
        per_code[big] = quantiles[big].to_numpy()
        potential = per_code[codes]
    return np.maximum(potential, values)


# --------------------------------------------------------------------------- segment map
#: the loyalty index's inputs and weights (equal: none is known to matter more)
LOYALTY_WEIGHTS: dict[str, float] = {
    "recency": 0.25,
    "frequency": 0.25,
    "tenure": 0.25,
    "satisfaction": 0.25,
}


def loyalty_index(
    recency_days: npt.ArrayLike,
    orders_365d: npt.ArrayLike,
    tenure_days: npt.ArrayLike,
    satisfaction: npt.ArrayLike,
) -> FloatArray:
    """Relationship strength 0..100: the weighted mean of each customer's percentile rank
    among the customers given on recency (recent = strong; never ordered = weakest),
    orders in the last year, tenure and mean service satisfaction (no rating = the middle).

    Ranks make the four comparable without units; the index is therefore relative to the
    base at the time: 50 is a typical customer, and a segment moving right has
    strengthened against the others.
    """

    def rank(values: npt.ArrayLike, missing: float) -> FloatArray:
        v = np.asarray(values, dtype=np.float64)
        out = np.full(len(v), missing)
        known = ~np.isnan(v)
        if known.sum() > 1:
            out[known] = (rankdata(v[known]) - 1.0) / (known.sum() - 1.0)
        elif known.any():
            out[known] = 0.5
        return out

    parts = {
        "recency": rank(-np.asarray(recency_days, dtype=np.float64), 0.0),
        "frequency": rank(orders_365d, 0.0),
        "tenure": rank(tenure_days, 0.0),
        "satisfaction": rank(satisfaction, 0.5),
    }
    index = sum(LOYALTY_WEIGHTS[k] * v for k, v in parts.items())
    return np.asarray(100.0 * index, dtype=np.float64)


#: plain-language advice per quadrant of the segment map (loyalty high?, value high?)
QUADRANTS: dict[tuple[bool, bool], str] = {
    (True, True): "keep and reward",
    (True, False): "grow: cross-sell and upsell",
    (False, True): "win back: fix the relationship",
    (False, False): "serve at low cost",
}
MAP_COLUMNS = (
    "customers",
    "customer_share",
    "loyalty",
    "value",
    "churn_risk",
    "equity",
    "quadrant",
)


def segment_map(
    segment: npt.ArrayLike,
    loyalty: npt.ArrayLike,
    value: npt.ArrayLike,
    churn: npt.ArrayLike,
    previous: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One point per segment for the map ("strategy sandbox"), indexed by segment.

    x = ``loyalty`` (mean loyalty index), y = ``value`` (mean predicted value per
    customer), size = ``customers``, colour = ``churn_risk`` (mean churn probability);
    ``equity`` is the segment's total value. ``quadrant`` reads the point against the
    average customer: loyalty and value above or below the base's means.
    With ``previous`` (an earlier map) the columns ``previous_<x>`` give its movement.
    Missing values (customers not scored) are left out of the means.
    """
    frame = pd.DataFrame(
        {
            "segment": np.asarray(segment),
            "loyalty": np.asarray(loyalty, float),
            "value": np.asarray(value, float),
            "churn_risk": np.asarray(churn, float),
        }
    )
    grouped = frame.groupby("segment", sort=True)
    out = pd.DataFrame(
        {
            "customers": grouped.size(),
            "loyalty": grouped.loyalty.mean(),
            "value": grouped.value.mean(),
            "churn_risk": grouped.churn_risk.mean(),
            "equity": grouped.value.sum(),
        }
    )
    out["customer_share"] = out["customers"] / max(len(frame), 1)
    mean_loyalty = float(np.nanmean(frame["loyalty"])) if len(frame) else 50.0
    mean_value = float(np.nanmean(frame["value"])) if frame["value"].notna().any() else 0.0
    out["quadrant"] = [
        QUADRANTS[(bool(x >= mean_loyalty), bool(y >= mean_value))]
        for x, y in zip(out["loyalty"], out["value"].fillna(0.0), strict=True)
    ]
    out = out[list(MAP_COLUMNS)]
    for column in ("customers", "loyalty", "value", "churn_risk"):
        before = previous[column] if previous is not None else pd.Series(dtype=float)
        out[f"previous_{column}"] = before.reindex(out.index).astype(float)
    out.index.name = "segment"
    return out
