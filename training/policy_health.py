"""Policy health for ``rapport monitor``: is the next-best-action policy still paying, and
is it still exploring enough to be evaluated?

Everything is read from the logged decisions with their current outcomes
(:func:`features.tables.outcomes.decision_outcomes`) decided up to the monitor's as-of
date, and the statistics are :mod:`models.impact`'s (the ones ``rapport impact`` reports),
so the monitor and ``rapport impact`` never disagree on a number. Checks (kind
``policy``; thresholds under ``policy:`` in the alerts YAML):

* ``incremental_value`` (with ``_lo`` / ``_hi``, shown): treated minus control value per
  customer with its 95% interval (CUPED when pre-period orders exist), per month and
  over the whole window (``all``); ``value_shortfall`` judges it: minus the estimate in
  half-widths of its interval, so 1 means the whole interval is below 0 (alert) and 0.5
  an estimate ~1 standard error below 0 (warn). A period with fewer than
  ``min_control`` control customers is shown, not judged;
* ``uplift_gap`` per action (conversion and revenue): the uplift the batch scores
  predicted for the decisions against the realised uplift over the control decisions,
  in half-widths of the realised interval (above 1: the prediction is outside it);
* exploration of the latest period's treated decisions: ``ess_shortfall`` (the smallest
  per-action Kish effective sample size of the weights ``1[action] / propensity`` against
  ``min_ess``; an action once logged but no longer chosen scores 1), ``max_weight``
  (1 / the smallest propensity, which bounds the variance of any off-policy estimate),
  ``action_mix_js`` (Jensen-Shannon distance of the action mix to the previous period's)
  and ``top_action_share``;
* ``ope_shortfall``: the NBA champion's doubly robust estimate at promotion against the
  realised value per treated decision since (``rapport impact``'s comparison).

With no decision that has a group and a known outcome every check is one ``no_data``
row at ok: nothing is wrong with a policy that has not been measured yet.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from features.contract import CONTROL
from features.tables.outcomes import decision_outcomes
from models.impact import impact_rows, per_action, per_customer
from models.monitoring import js_distance
from models.ope import kish_ess
from training.impact import catalog_of, ope_vs_realised, pre_revenue, with_scores
from training.monitor_checks import Checks
from training.nba_evaluation import default_margin_rate

NAN = float("nan")
KIND = "policy"


def _decisions(db: Any, as_of: datetime) -> pd.DataFrame:
    """Decisions up to ``as_of`` with a group and a known outcome (empty: none, or no
    campaign log yet)."""
    try:
        return decision_outcomes(db, until=as_of, known=True)
    except LookupError:
        return pd.DataFrame()


def _shortfall(diff: float, hi: float) -> float:
    """Minus the estimate in half-widths of its interval (NaN without an interval)."""
    half = hi - diff
    return -diff / half if np.isfinite(half) and half > 0 else NAN


def _value(c: Checks, customers: pd.DataFrame) -> None:
    table = impact_rows(customers)
    if table.empty:
        c.add(
            KIND,
            "no_data",
            "all",
            NAN,
            "no period has both treated and control customers",
            judged=False,
        )
        return
    floor = c.alerts.policy.min_control
    months = sorted(p for p in table["period"] if p != "all")
    for row in table.itertuples():
        subject = "all" if row.period == "all" else f"period {row.period}"
        tag = (
            f"{row.treated_customers} treated vs {row.control_customers} control customers, "
            f"{row.method}; 95% interval [{row.incremental_value_lo:.3f}, "
            f"{row.incremental_value_hi:.3f}]"
        )
        c.add(KIND, "incremental_value", subject, row.incremental_value, tag, judged=False)
        c.add(KIND, "incremental_value_lo", subject, row.incremental_value_lo, "", judged=False)
        c.add(KIND, "incremental_value_hi", subject, row.incremental_value_hi, "", judged=False)
        latest = bool(months) and row.period == months[-1]
        if row.period != "all" and not latest:
            continue  # earlier periods are history: shown and charted, judged when they were
        enough = row.control_customers >= floor
        c.add(
            KIND,
            "value_shortfall",
            subject,
            _shortfall(row.incremental_value, row.incremental_value_hi),
            tag
            + (
                ""
                if enough
                else f"; {row.control_customers} control < min_control {floor}: not judged"
            ),
            judged=enough,
        )


def _uplift(c: Checks, actions: pd.DataFrame) -> None:
    for row in actions.itertuples():
        for kind in ("conversion", "revenue"):
            realised = getattr(row, f"realised_uplift_{kind}")
            half = getattr(row, f"realised_uplift_{kind}_hi") - realised
            predicted = getattr(row, f"predicted_{kind}")
            gap = abs(realised - predicted) / half if half > 0 else NAN
            detail = (
                f"{row.decisions} decisions vs {row.control_decisions} control; realised "
                f"{realised:.4f} ± {half:.4f}, predicted {predicted:.4f}"
            )
            if not np.isfinite(predicted):
                detail += " (no batch scores before these decisions: not judged)"
            c.add(KIND, "uplift_gap", f"{row.action} {kind}", gap, detail, row.decisions)


def _exploration(c: Checks, decisions: pd.DataFrame) -> None:
    treated = decisions[decisions["group"] != CONTROL]
    if treated.empty:
        return
    period = pd.to_datetime(treated["decided_at"], utc=True).dt.strftime("%Y-%m")
    months = sorted(period.unique())
    latest = treated[period == months[-1]]
    subject = f"period {months[-1]}"
    n = len(latest)
    p = latest["propensity"].astype("float64")
    known = p[(p > 0) & (p <= 1)]
    tag = f"{n} treated decisions"
    if len(known) < n:
        tag += f" ({n - len(known)} without a valid propensity left out of the weights)"
    ess = {}
    for action in sorted(treated["action"].unique()):
        rows = latest.loc[known.index, "action"] == action
        ess[action] = kish_ess(np.where(rows, 1.0 / known.to_numpy(), 0.0)) if len(known) else 0.0
    weakest = min(ess, key=lambda a: ess[a])
    shortfall = max(0.0, 1.0 - ess[weakest] / c.alerts.policy.min_ess)
    c.add(
        KIND,
        "ess_shortfall",
        subject,
        shortfall,
        f"{tag}; smallest effective sample {ess[weakest]:.1f} ({weakest}) of min_ess "
        f"{c.alerts.policy.min_ess:g}",
        n,
    )
    if len(known):
        c.add(KIND, "min_propensity", subject, float(known.min()), tag, n, judged=False)
        c.add(KIND, "max_weight", subject, float(1.0 / known.min()), tag, n)
    shares = latest["action"].value_counts(normalize=True)
    c.add(
        KIND,
        "top_action_share",
        subject,
        float(shares.iloc[0]),
        f"{tag}; {shares.index[0]} most frequent",
        n,
    )
    if len(months) > 1:
        before = treated[period == months[-2]]["action"]
        c.add(
            KIND,
            "action_mix_js",
            subject,
            js_distance(before.astype(str), latest["action"].astype(str)),
            f"{tag} vs {len(before)} in {months[-2]}",
            n,
        )


def _ope(c: Checks, decisions: pd.DataFrame, costs: dict[str, float], rate: float) -> None:
    ope, notes = ope_vs_realised(decisions, costs, rate)
    if not ope:
        c.add(KIND, "ope_shortfall", "nba champion", NAN, "; ".join(notes), judged=False)
        return
    estimate = float(ope["estimated"])
    value = (estimate - ope["realised_hi"]) / abs(estimate) if estimate else NAN
    c.add(
        KIND,
        "ope_shortfall",
        f"nba v{ope['version']:g}",
        value,
        f"DR estimate at promotion {estimate:.3f} [{ope['estimated_lo']:.3f}, "
        f"{ope['estimated_hi']:.3f}]; realised since {ope['since']} {ope['realised']:.3f} "
        f"[{ope['realised_lo']:.3f}, {ope['realised_hi']:.3f}]",
        int(ope["decisions"]),
    )
    c.add(KIND, "ope_estimate", "nba champion", estimate, "", judged=False)
    c.add(KIND, "ope_realised", "nba champion", float(ope["realised"]), "", judged=False)


def check(c: Checks, db: Any, as_of: datetime) -> None:
    """Add the policy health checks of the decisions up to ``as_of`` to ``c`` (``db``: the
    raw DuckDB connection of the warehouse)."""
    decisions = _decisions(db, as_of)
    groups = set(decisions["group"]) if len(decisions) else set()
    if CONTROL not in groups or not groups - {CONTROL}:
        c.add(
            KIND,
            "no_data",
            "all",
            NAN,
            f"{len(decisions)} decisions with a group and a known outcome by {as_of:%Y-%m-%d}; "
            "policy health needs treated and control ones (serve, ingest the outbox and the "
            "outcomes, or `rapport simulate`)",
            judged=False,
        )
        return
    catalog = catalog_of(db)
    costs = {a.id: a.cost for a in catalog.actions}
    rate = default_margin_rate(catalog)
    frame = with_scores(db, decisions, catalog)
    pre = pre_revenue(db, frame)
    customers = pd.concat(
        [
            per_customer(frame, costs, rate, None, pre, period="month"),
            per_customer(frame, costs, rate, None, pre, period="all"),
        ],
        ignore_index=True,
    )
    _value(c, customers)
    predicted = ["predicted_conversion", "predicted_revenue"]
    _uplift(
        c,
        per_action(frame.drop(columns=predicted), costs, rate, frame[["decision_id", *predicted]]),
    )
    _exploration(c, decisions)
    _ope(c, frame, costs, rate)
