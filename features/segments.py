"""RFM scores, named RFM segments and ABC value tiers.

Segments are fitted on a batch (quintile edges, ABC value thresholds) and then assigned by
thresholds, so one customer scored live gets the segment the batch would give them. The
cut points are fitted once per feature snapshot (:func:`fit_version`, by ``rapport score``
and ``rapport features``) and stored with a version (:mod:`features.tables.segments`);
everyone else reads a stored version.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from features.timeutil import as_utc

RECENCY, FREQUENCY, MONETARY = "days_since_last_order", "orders_365d", "spend_365d"
ABC_VALUE = "spend_365d"
#: the only feature columns :func:`fit_segments` reads (what a distributed job collects)
FIT_COLUMNS = tuple(dict.fromkeys((RECENCY, FREQUENCY, MONETARY, ABC_VALUE)))
NO_PURCHASE = "prospect"

#: (R scores, F scores) -> segment, first match wins (the classic RFM segment grid)
SEGMENT_GRID: tuple[tuple[str, str, str], ...] = (
    ("5", "45", "champions"),
    ("34", "45", "loyal"),
    ("45", "23", "potential_loyalists"),
    ("5", "1", "new"),
    ("4", "1", "promising"),
    ("3", "3", "need_attention"),
    ("3", "12", "about_to_sleep"),
    ("12", "5", "cannot_lose_them"),
    ("12", "34", "at_risk"),
    ("2", "12", "hibernating"),
    ("1", "12", "lost"),
)
SEGMENTS = (*dict.fromkeys(s for _, _, s in SEGMENT_GRID), NO_PURCHASE)


def _segment_table() -> np.ndarray:
    """``table[r, f]`` = the segment of scores r, f (1..5); row / column 0 (no score) and
    combinations outside the grid are the no-purchase segment."""
    table = np.full((6, 6), NO_PURCHASE, dtype=object)
    for r_set, f_set, name in reversed(SEGMENT_GRID):  # the first match is written last
        for r in r_set:
            for f in f_set:
                table[int(r), int(f)] = name
    return table


_SEGMENT_TABLE = _segment_table()
SEGMENT_COLUMNS = ("r_score", "f_score", "m_score", "rfm_segment", "abc_tier")


@dataclass(frozen=True)
class SegmentModel:
    recency_edges: tuple[float, ...]
    frequency_edges: tuple[float, ...]
    monetary_edges: tuple[float, ...]
    abc_a_min: float
    abc_b_min: float
    abc_shares: tuple[float, float, float]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SegmentModel:
        data: dict[str, Any] = json.loads(text)
        kwargs: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        return cls(**kwargs)


def _edges(values: np.ndarray) -> tuple[float, ...]:
    if not values.size:
        return (0.0, 0.0, 0.0, 0.0)
    return tuple(float(q) for q in np.quantile(values, [0.2, 0.4, 0.6, 0.8]))


def _abc_thresholds(values: np.ndarray, shares: tuple[float, float, float]) -> tuple[float, float]:
    """Smallest values still in tier A and B: A holds the top ``shares[0]`` of total value."""
    positive = np.sort(values[values > 0])[::-1]
    if not positive.size:
        return (np.inf, np.inf)
    cumulative = np.cumsum(positive) / positive.sum()
    a_last = int(np.searchsorted(cumulative, shares[0]))
    b_last = int(np.searchsorted(cumulative, shares[0] + shares[1]))
    last = positive.size - 1
    return float(positive[min(a_last, last)]), float(positive[min(b_last, last)])


def fit_segments(
    features: pd.DataFrame, abc_shares: tuple[float, float, float] = (0.8, 0.15, 0.05)
) -> SegmentModel:
    """Quintile edges among buyers and ABC thresholds from one feature batch."""
    if not np.isclose(sum(abc_shares), 1.0) or min(abc_shares) < 0:
        raise ValueError(f"ABC shares must be non-negative and sum to 1, got {abc_shares}")
    buyers = features[features[RECENCY].notna()]
    a_min, b_min = _abc_thresholds(features[ABC_VALUE].to_numpy(float), abc_shares)
    return SegmentModel(
        recency_edges=_edges(buyers[RECENCY].to_numpy(float)),
        frequency_edges=_edges(buyers[FREQUENCY].to_numpy(float)),
        monetary_edges=_edges(buyers[MONETARY].to_numpy(float)),
        abc_a_min=a_min,
        abc_b_min=b_min,
        abc_shares=abc_shares,
    )


@dataclass(frozen=True)
class SegmentVersion:
    """Cut points fitted on one snapshot (every customer's features as of ``as_of``)."""

    #: ``<as-of day>-<hash>``: the same snapshot and cut points give the same version
    version: str
    as_of: datetime
    feature_set: str
    #: customers in the snapshot
    customers: int
    model: SegmentModel

    def describe(self) -> str:
        return (
            f"segments {self.version} (fitted on {self.customers:,} customers as of "
            f"{self.as_of:%Y-%m-%d %H:%M} UTC)"
        )


def fit_version(features: pd.DataFrame, as_of: datetime, feature_set: str) -> SegmentVersion:
    """The segment model of a snapshot, versioned (store it: :mod:`features.tables.segments`)."""
    model = fit_segments(features)
    cutoff = as_utc(as_of)
    key = f"{cutoff.isoformat()}|{feature_set}|{model.to_json()}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return SegmentVersion(f"{cutoff:%Y%m%d}-{digest}", cutoff, feature_set, len(features), model)


def _segment_names(r: np.ndarray, f: np.ndarray) -> np.ndarray:
    """One table lookup per customer (the same cost live and in batch)."""
    scored = ~(np.isnan(r) | np.isnan(f))
    return _SEGMENT_TABLE[
        np.where(scored, r, 0.0).astype(np.intp), np.where(scored, f, 0.0).astype(np.intp)
    ]


def assign_segments(features: pd.DataFrame | Mapping[str, Any], model: SegmentModel) -> dict:
    """Segment columns for a frame (or a one-customer dict, or a mapping of column lists:
    the live scorer's micro-batch) of features."""
    if not isinstance(features, pd.DataFrame) and _plain_edges(model):
        return _assign_few(features, model)

    def column(name: str) -> np.ndarray:
        return np.atleast_1d(np.asarray(features[name], dtype="float64"))

    recency, frequency, monetary = column(RECENCY), column(FREQUENCY), column(MONETARY)
    buyer = ~np.isnan(recency)
    r = np.where(buyer, 5.0 - np.searchsorted(model.recency_edges, recency, side="left"), np.nan)
    f = np.where(
        buyer, 1.0 + np.searchsorted(model.frequency_edges, frequency, side="right"), np.nan
    )
    m = np.where(buyer, 1.0 + np.searchsorted(model.monetary_edges, monetary, side="right"), np.nan)
    value = column(ABC_VALUE)
    tier = np.where(value >= model.abc_a_min, "A", np.where(value >= model.abc_b_min, "B", "C"))
    tier = np.where(value > 0, tier, "C").astype(object)
    return {
        "r_score": r,
        "f_score": f,
        "m_score": m,
        "rfm_segment": _segment_names(r, f),
        "abc_tier": tier,
    }


def _plain_edges(model: SegmentModel) -> bool:
    """Can :func:`_assign_few` rank against these edges (no NaN, so ``bisect`` orders them
    as ``np.searchsorted`` does)?"""
    edges = (*model.recency_edges, *model.frequency_edges, *model.monetary_edges)
    return not any(map(math.isnan, edges))


def _number(value: Any) -> float:
    """``np.asarray(value, dtype="float64")``'s number for one value (None is NaN)."""
    return math.nan if value is None else float(value)


def _rank(edges: tuple[float, ...], value: float, right: bool) -> int:
    """``np.searchsorted(edges, value, side)`` of one value (NaN sorts after every edge)."""
    if math.isnan(value):
        return len(edges)
    return bisect.bisect_right(edges, value) if right else bisect.bisect_left(edges, value)


def _assign_few(features: Mapping[str, Any], model: SegmentModel) -> dict:
    """:func:`assign_segments` of a one-customer dict or a few customers' column lists on
    plain floats, the same columns bit for bit (~15 numpy calls on one-element arrays
    cost ~40 us per live score; ``tests/features/test_segments.py`` holds them equal)."""

    def column(name: str) -> list[float]:
        values = features[name]
        many = isinstance(values, list | tuple | np.ndarray)
        return [_number(v) for v in values] if many else [_number(values)]

    r_scores, f_scores, m_scores, segments, tiers = [], [], [], [], []
    for recency, frequency, monetary, value in zip(
        column(RECENCY), column(FREQUENCY), column(MONETARY), column(ABC_VALUE), strict=True
    ):
        if math.isnan(recency):  # not a buyer: no scores
            r_scores.append(math.nan)
            f_scores.append(math.nan)
            m_scores.append(math.nan)
            segments.append(_SEGMENT_TABLE[0, 0])
        else:
            r = 5.0 - _rank(model.recency_edges, recency, right=False)
            f = 1.0 + _rank(model.frequency_edges, frequency, right=True)
            r_scores.append(r)
            f_scores.append(f)
            m_scores.append(1.0 + _rank(model.monetary_edges, monetary, right=True))
            segments.append(_SEGMENT_TABLE[int(r), int(f)])
        if not value > 0:
            tiers.append("C")
        else:
            tiers.append(
                "A" if value >= model.abc_a_min else "B" if value >= model.abc_b_min else "C"
            )
    return {
        "r_score": np.array(r_scores, dtype=np.float64),
        "f_score": np.array(f_scores, dtype=np.float64),
        "m_score": np.array(m_scores, dtype=np.float64),
        "rfm_segment": np.array(segments, dtype=object),
        "abc_tier": np.array(tiers, dtype=object),
    }


def _score_range(
    scores: str, edges: tuple[float, ...], higher_is_more: bool
) -> tuple[float, float]:
    """The feature range ``(low, high)`` of a set of contiguous 1..5 scores (``inf`` ends)."""
    low_score, high_score = int(min(scores)), int(max(scores))
    bounds = (-np.inf, *edges, np.inf)
    if higher_is_more:  # score s covers [bounds[s-1], bounds[s])
        return bounds[low_score - 1], bounds[high_score]
    # recency: score s covers (bounds[5-s], bounds[6-s]]
    return bounds[5 - high_score], bounds[6 - low_score]


def _n(x: float) -> str:
    """A cut point for people: at most one decimal, no trailing zeros."""
    return f"{x:,.1f}".removesuffix(".0")


def segment_rule(name: str, model: SegmentModel) -> str:
    """Why a customer is in segment ``name``, in words with the model's cut points: the
    grid's recency and frequency scores as days since the last order and orders in a
    year (``monetary`` plays no part in the segment, only in the M score)."""
    if name == NO_PURCHASE:
        return "no order yet (no recency or frequency score)"
    for r_set, f_set, segment in SEGMENT_GRID:
        if segment != name:
            continue
        r_low, r_high = _score_range(r_set, model.recency_edges, higher_is_more=False)
        f_low, f_high = _score_range(f_set, model.frequency_edges, higher_is_more=True)
        if np.isinf(r_low):
            recency = f"last order at most {_n(r_high)} days ago"
        elif np.isinf(r_high):
            recency = f"last order more than {_n(r_low)} days ago"
        else:
            recency = f"last order more than {_n(r_low)} and at most {_n(r_high)} days ago"
        if np.isinf(f_low):
            frequency = f"fewer than {_n(f_high)} orders in 365 days"
        elif np.isinf(f_high):
            frequency = f"{_n(f_low)} or more orders in 365 days"
        elif f_low < f_high:
            frequency = f"at least {_n(f_low)} and fewer than {_n(f_high)} orders in 365 days"
        else:  # quintile edges tie when most buyers order equally often
            frequency = f"no frequency can score {'/'.join(f_set)} (tied cut points)"
        return (
            f"recency score {'/'.join(r_set)} and frequency score {'/'.join(f_set)}: "
            f"{recency}, {frequency}"
        )
    raise KeyError(f"unknown segment {name!r}; the segments are {list(SEGMENTS)}")


def with_segments(features: pd.DataFrame, model: SegmentModel) -> pd.DataFrame:
    out = features.copy()
    for name, values in assign_segments(features, model).items():
        out[name] = values
    return out


def describe_segments(frame: pd.DataFrame) -> str:
    """Two summary lines: customers per RFM segment and per ABC tier."""
    counts = frame["rfm_segment"].value_counts()
    tiers = frame["abc_tier"].value_counts().reindex(["A", "B", "C"]).fillna(0).astype(int)
    return "\n".join(
        [
            "RFM segments: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()),
            "ABC tiers:    " + ", ".join(f"{k} {v:,}" for k, v in tiers.items()),
        ]
    )
