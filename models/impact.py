"""Realised impact, pure: treated against the always-on control group, per customer.

The control group (:mod:`features.control`) is a random share of customers that gets no
policy action, so the difference of mean outcomes per customer between the treated and
the control customers of a period is an unbiased estimate of what the policy earned per
customer (intention to treat: a treated customer counts whatever the policy chose for
them, ``no_action`` included). Its 95% interval is Welch's (unequal variances, the
control being ~20 times smaller than the treated group).

CUPED (Deng et al. 2013) shrinks that interval with a covariate measured *before* the
period (pre-period revenue per customer): ``y - theta (x - mean x)``, ``theta`` the pooled
regression slope. Group assignment does not depend on ``x``, so the estimate stays
unbiased and its variance falls by the squared correlation of ``x`` and ``y``.

The unit is the customer (their decisions of the period summed), because the group is
assigned per customer: decisions of one customer are not independent draws.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from features.contract import CONTROL

#: per customer outcomes :func:`compare` summarises (mean per customer per group)
METRICS = ("converted", "revenue", "margin", "value")


@dataclass(frozen=True)
class Difference:
    """Treated mean minus control mean of one per-customer outcome, with its interval."""

    treated_mean: float
    control_mean: float
    diff: float
    se: float
    lo: float
    hi: float
    df: float
    n_treated: int
    n_control: int
    method: str  # "welch" or "cuped"
    #: share of the Welch variance CUPED removed (0 for welch)
    variance_reduction: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _nan_difference(t: np.ndarray, c: np.ndarray, method: str) -> Difference:
    tm = float(t.mean()) if len(t) else float("nan")
    cm = float(c.mean()) if len(c) else float("nan")
    nan = float("nan")
    return Difference(tm, cm, tm - cm, nan, nan, nan, nan, len(t), len(c), method)


def welch(
    treated: np.ndarray, control: np.ndarray, alpha: float = 0.05, method: str = "welch"
) -> Difference:
    """Difference of means with Welch's t interval (Welch-Satterthwaite degrees of
    freedom); NaN interval with fewer than two customers on a side."""
    t = np.asarray(treated, dtype="float64")
    c = np.asarray(control, dtype="float64")
    if len(t) < 2 or len(c) < 2:
        return _nan_difference(t, c, method)
    vt, vc = t.var(ddof=1) / len(t), c.var(ddof=1) / len(c)
    se = float(np.sqrt(vt + vc))
    diff = float(t.mean() - c.mean())
    if se == 0:
        return Difference(
            float(t.mean()), float(c.mean()), diff, 0.0, diff, diff, np.inf, len(t), len(c), method
        )
    df = float((vt + vc) ** 2 / (vt**2 / (len(t) - 1) + vc**2 / (len(c) - 1)))
    q = float(stats.t.ppf(1 - alpha / 2, df))
    return Difference(
        float(t.mean()),
        float(c.mean()),
        diff,
        se,
        diff - q * se,
        diff + q * se,
        df,
        len(t),
        len(c),
        method,
    )


def cuped(
    treated: np.ndarray,
    control: np.ndarray,
    treated_pre: np.ndarray,
    control_pre: np.ndarray,
    alpha: float = 0.05,
) -> Difference:
    """Welch on CUPED-adjusted outcomes (``theta`` pooled over both groups); the means
    reported are the raw ones. Falls back to Welch when the covariate is constant."""
    t, c = np.asarray(treated, dtype="float64"), np.asarray(control, dtype="float64")
    xt, xc = np.asarray(treated_pre, dtype="float64"), np.asarray(control_pre, dtype="float64")
    plain = welch(t, c, alpha)
    x, y = np.concatenate([xt, xc]), np.concatenate([t, c])
    if len(t) < 2 or len(c) < 2 or x.var() == 0:
        return plain
    theta = float(np.cov(y, x, ddof=1)[0, 1] / x.var(ddof=1))
    mean_x = x.mean()
    adjusted = welch(t - theta * (xt - mean_x), c - theta * (xc - mean_x), alpha, "cuped")
    reduction = 1 - (adjusted.se / plain.se) ** 2 if plain.se > 0 else 0.0
    return Difference(
        plain.treated_mean,
        plain.control_mean,
        adjusted.diff,
        adjusted.se,
        adjusted.lo,
        adjusted.hi,
        adjusted.df,
        adjusted.n_treated,
        adjusted.n_control,
        "cuped",
        float(reduction),
    )


def compare(customers: pd.DataFrame, alpha: float = 0.05) -> dict[str, Any]:
    """One row of the impact table from per-customer outcomes (columns ``group``,
    :data:`METRICS`, optional ``pre_revenue``): customers and means per group, and the
    incremental value per customer with its interval (CUPED when ``pre_revenue`` is
    there, else Welch)."""
    is_control = (customers["group"] == CONTROL).to_numpy()
    t, c = customers[~is_control], customers[is_control]
    row: dict[str, Any] = {"treated_customers": len(t), "control_customers": len(c)}
    for name in METRICS:
        row[f"treated_{name}"] = float(t[name].mean()) if len(t) else float("nan")
        row[f"control_{name}"] = float(c[name].mean()) if len(c) else float("nan")
    y_t, y_c = t["value"].to_numpy(), c["value"].to_numpy()
    if "pre_revenue" in customers.columns:
        est = cuped(y_t, y_c, t["pre_revenue"].to_numpy(), c["pre_revenue"].to_numpy(), alpha)
    else:
        est = welch(y_t, y_c, alpha)
    conversion = welch(t["converted"].to_numpy(), c["converted"].to_numpy(), alpha)
    row.update(
        {
            "incremental_value": est.diff,
            "incremental_value_lo": est.lo,
            "incremental_value_hi": est.hi,
            "method": est.method,
            "variance_reduction": est.variance_reduction,
            "incremental_conversion": conversion.diff,
            "incremental_conversion_lo": conversion.lo,
            "incremental_conversion_hi": conversion.hi,
        }
    )
    return row


# --------------------------------------------------------------------------- from decisions
def period_of(decided_at: pd.Series, period: str = "month") -> pd.Series:
    """``2026-11`` (month), ``2026-W47`` (week) or ``all`` labels of decision times (UTC)."""
    if period == "all":
        return pd.Series("all", index=decided_at.index)
    ts = pd.to_datetime(decided_at, utc=True)
    if period == "week":
        iso = ts.dt.isocalendar()
        return iso["year"].astype(str) + "-W" + iso["week"].astype(str).str.zfill(2)
    return ts.dt.strftime("%Y-%m")


def per_customer(
    decisions: pd.DataFrame,
    costs: dict[str, float],
    margin_rate: float,
    by: str | None = None,
    pre_revenue: pd.Series | None = None,
    period: str = "month",
) -> pd.DataFrame:
    """One row per (period, customer) from decisions with known outcomes and a group
    (``period="all"``: one period, the whole window).

    ``decisions``: ``customer_id, decided_at, action, group, outcome, revenue`` (and the
    ``by`` column). A customer's group and ``by`` value in a period are those of their
    first decision in it (``explore`` counts as treated: intention to treat). ``value`` =
    ``revenue x margin_rate - action costs``, the reward off-policy evaluation uses.
    ``pre_revenue``: revenue per customer before the period start (CUPED), by customer id.
    """
    known = decisions[decisions["group"].notna() & decisions["outcome"].notna()].copy()
    known["period"] = period_of(known["decided_at"], period)
    known["group"] = np.where(known["group"] == CONTROL, CONTROL, "treated")
    known["revenue"] = known["revenue"].astype("float64").fillna(0.0)
    known["cost"] = known["action"].map(costs).astype("float64").fillna(0.0)
    known["converted"] = known["outcome"].astype(bool)
    known = known.sort_values("decided_at", kind="stable")
    firsts = {"group": "first"} | ({by: "first"} if by else {})
    out = known.groupby(["period", "customer_id"], sort=True).agg(
        decisions=("action", "size"),
        converted=("converted", "max"),
        revenue=("revenue", "sum"),
        cost=("cost", "sum"),
        **{k: (k, v) for k, v in firsts.items()},
    )
    out = out.reset_index()
    out["converted"] = out["converted"].astype("float64")
    out["margin"] = out["revenue"] * margin_rate
    out["value"] = out["margin"] - out["cost"]
    if pre_revenue is not None:
        out["pre_revenue"] = out["customer_id"].map(pre_revenue).astype("float64").fillna(0.0)
    return out


def impact_rows(
    customers: pd.DataFrame, by: str | None = None, alpha: float = 0.05
) -> pd.DataFrame:
    """The impact table: per period, per ``by`` value when given, treated vs control
    (:func:`compare`). Periods with no control or no treated customer are left out."""
    rows = []
    keys = ["period", by] if by else ["period"]
    for key, part in customers.groupby(keys, sort=True, dropna=False):
        values = key if isinstance(key, tuple) else (key,)
        if part["group"].nunique() < 2:
            continue
        head = {"period": values[0], "by": by or "", "key": str(values[1]) if by else ""}
        rows.append(head | compare(part, alpha))
    return pd.DataFrame(rows)


def per_action(
    decisions: pd.DataFrame,
    costs: dict[str, float],
    margin_rate: float,
    predicted: pd.DataFrame | None = None,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Per action of treated decisions: realised conversion, revenue and value per
    decision against the control decisions' (the baseline), the realised uplift with a
    Welch interval (decisions as units: an approximation when customers repeat), and,
    with ``predicted`` (``decision_id, predicted_conversion, predicted_revenue``), the
    mean uplift the models predicted for those decisions."""
    known = decisions[decisions["group"].notna() & decisions["outcome"].notna()].copy()
    if known.empty:
        return pd.DataFrame()
    known["revenue"] = known["revenue"].astype("float64").fillna(0.0)
    known["converted"] = known["outcome"].astype(bool).astype("float64")
    known["value"] = known["revenue"] * margin_rate - known["action"].map(costs).fillna(0.0)
    if predicted is not None and len(predicted):
        known = known.merge(predicted, on="decision_id", how="left")
    control = known[known["group"] == CONTROL]
    rows = []
    for action, part in known[known["group"] != CONTROL].groupby("action", sort=True):
        conv = welch(part["converted"].to_numpy(), control["converted"].to_numpy(), alpha)
        rev = welch(part["revenue"].to_numpy(), control["revenue"].to_numpy(), alpha)
        row = {
            "action": action,
            "decisions": len(part),
            "control_decisions": len(control),
            "conversion": conv.treated_mean,
            "control_conversion": conv.control_mean,
            "realised_uplift_conversion": conv.diff,
            "realised_uplift_conversion_lo": conv.lo,
            "realised_uplift_conversion_hi": conv.hi,
            "revenue": rev.treated_mean,
            "control_revenue": rev.control_mean,
            "realised_uplift_revenue": rev.diff,
            "realised_uplift_revenue_lo": rev.lo,
            "realised_uplift_revenue_hi": rev.hi,
            "value": float(part["value"].mean()),
        }
        for name in ("predicted_conversion", "predicted_revenue"):
            row[name] = float(part[name].mean()) if name in part.columns else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)
