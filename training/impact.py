"""``rapport impact``: what the policy earned, treated against the always-on control group.

:func:`measure` reads every logged decision with its outcome (the warehouse's decisions joined
to their outcomes), keeps those with a group (``control``, ``treated``, ``explore``:
logged since the control group exists) and a known outcome, and computes with
:mod:`models.impact`:

* per period (month, or week) and overall, optionally per ``--by`` value (``segment`` =
  RFM segment, ``abc_tier``: from the latest batch scores before each decision; ``list``:
  the latest target list holding the customer; ``action``: the treated customer's first
  action, against the whole control group): treated vs control customers, conversion
  rate, revenue, margin (revenue x the catalog's mean margin rate) and value (margin -
  action costs, the reward off-policy evaluation uses) per customer, and the incremental
  value per customer with a 95% interval (CUPED on the revenue of the 90 days before the
  first grouped decision, else Welch);
* per action: realised conversion and revenue per decision against the control
  decisions', and the uplift the batch scores predicted for those decisions;
* the off-policy estimate logged when the NBA champion was trained (``ope_candidate_dr``)
  against the realised value per treated decision since its promotion.

:meth:`ImpactRun.record` appends the rows to ``impact`` / ``impact_actions``
(:mod:`features.tables.impact`) and logs them as one MLflow run in the ``rapport-impact``
experiment.

For ``--by list`` and ``--by action`` the control side is the whole control group (control
customers are in no list and get no action): the difference is then the list's or
action's customers against an average customer, not a randomised comparison within the
list; the note under the table says so.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from features.contract import CONTROL
from features.tables.impact import IMPACT, IMPACT_ACTIONS, append
from features.tables.outcomes import decision_outcomes
from features.tables.scores import NoScoresError, latest_run
from features.timeutil import as_utc
from features.warehouse import raw, table_names, transaction
from models.catalog import Catalog, default_catalog
from models.impact import impact_rows, per_action, per_customer
from training.nba_evaluation import default_margin_rate

BY = ("action", "segment", "abc_tier", "list")
EXPERIMENT = "rapport-impact"
#: days of orders before the first grouped decision that make CUPED's covariate
PRE_DAYS = 90
_BY_COLUMN = {"action": "action", "segment": "rfm_segment", "abc_tier": "abc_tier", "list": "list"}


class NoImpactDataError(LookupError):
    """Nothing to measure yet (the message says what to run first; ``headline``: the
    first sentence alone, for one-line summaries)."""

    def __init__(self, message: str, headline: str = "") -> None:
        super().__init__(message)
        self.headline = headline or message


@dataclass
class ImpactRun:
    run_id: str
    computed_at: datetime
    since: datetime | None
    by: str | None
    period: str
    table: pd.DataFrame
    actions: pd.DataFrame
    ope: dict[str, float]
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)
    mlflow_run_id: str | None = None
    #: appended to the warehouse (:meth:`record`); a measure alone writes nothing
    recorded: bool = False

    def summary(self) -> str:
        c = self.counts
        lines = [
            f"impact {self.run_id}: {c['decisions']:,} decisions"
            + (f" since {self.since:%Y-%m-%d}" if self.since else "")
            + f", {c['measured']:,} with a group and a known outcome "
            f"({c['pending']:,} outcomes still unknown, {c['ungrouped']:,} without a group)",
        ]
        shown = self.table.copy()
        if len(shown):
            cols = {
                "period": "period",
                "key": self.by or "",
                "treated_customers": "treated",
                "control_customers": "control",
                "treated_converted": "conv T",
                "control_converted": "conv C",
                "treated_revenue": "rev/cust T",
                "control_revenue": "rev/cust C",
                "treated_margin": "margin T",
                "control_margin": "margin C",
                "incremental_value": "incr value/cust",
                "incremental_value_lo": "95% lo",
                "incremental_value_hi": "95% hi",
                "method": "method",
            }
            if not self.by:
                cols.pop("key")
            shown = shown[list(cols)].rename(columns=cols)
            lines.append(shown.to_string(index=False, float_format=lambda v: f"{v:,.3f}"))
        if len(self.actions):
            lines.append("per action (treated decisions vs control decisions):")
            cols = {
                "action": "action",
                "decisions": "decisions",
                "conversion": "conv",
                "control_conversion": "conv C",
                "realised_uplift_conversion": "uplift conv",
                "predicted_conversion": "predicted",
                "revenue": "rev",
                "control_revenue": "rev C",
                "realised_uplift_revenue": "uplift rev",
                "predicted_revenue": "predicted",
            }
            table = self.actions[list(cols)].rename(columns=cols)
            lines.append(table.to_string(index=False, float_format=lambda v: f"{v:,.3f}"))
        if self.ope:
            o = self.ope
            lines.append(
                f"policy value per decision: estimated at promotion (nba v{o['version']:g}, DR) "
                f"{o['estimated']:,.3f} [{o['estimated_lo']:,.3f}, {o['estimated_hi']:,.3f}], "
                f"realised since {o['since']} {o['realised']:,.3f} "
                f"[{o['realised_lo']:,.3f}, {o['realised_hi']:,.3f}] over "
                f"{o['decisions']:,.0f} treated decisions"
            )
        lines.extend(f"  note: {n}" for n in self.notes)
        if self.recorded:
            lines.append(f"  appended to `{IMPACT}` and `{IMPACT_ACTIONS}` (run {self.run_id})")
        return "\n".join(lines)

    def record(self, con: Any, log_to_mlflow: bool = True) -> ImpactRun:
        """Append the rows to ``impact`` / ``impact_actions`` (one transaction) and log
        them as one MLflow run; returns itself (``measure(con, ...).record(con)`` is
        ``rapport impact``)."""
        stamps = {"run_id": self.run_id, "computed_at": pd.Timestamp(self.computed_at)}
        stamps |= {"since": self.since, "by": self.by or "", "period_kind": self.period}
        db = raw(con)
        with transaction(db):
            append(db, IMPACT, self.table.assign(**stamps))
            append(db, IMPACT_ACTIONS, self.actions.assign(**stamps))
        self.recorded = True
        if log_to_mlflow:
            self.mlflow_run_id = _log_mlflow(self)
        return self


def catalog_of(db: Any) -> Catalog:
    """The catalog of the latest scoring run (what the policy arbitrated with), else the
    default one."""
    try:
        return Catalog.model_validate(latest_run(db).catalog)
    except NoScoresError:
        return default_catalog()


def with_scores(db: Any, decisions: pd.DataFrame, catalog: Catalog) -> pd.DataFrame:
    """Each decision with the latest batch score of its customer before it: segment, tier
    and the uplift predicted for the decision's action (null without scores)."""
    out = decisions.copy()
    out["rfm_segment"] = out["abc_tier"] = None
    out["predicted_conversion"] = out["predicted_revenue"] = np.nan
    if "scores" not in table_names(db) or out.empty:
        return out
    have = {r[0] for r in db.execute("DESCRIBE scores").fetchall()}
    uplift = [c for c in have if c.startswith(("uplift_conversion_", "uplift_revenue_"))]
    picks = ", ".join(f's."{c}"' for c in ["abc_tier", "rfm_segment", *uplift])
    db.register("_rapport_d", out[["decision_id", "customer_id", "decided_at"]])
    try:
        scored = (
            db.execute(f"""
            SELECT d.decision_id, {picks} FROM _rapport_d d
            ASOF LEFT JOIN scores s
              ON d.customer_id = s.customer_id AND d.decided_at >= s.as_of
        """)
            .to_arrow_table()
            .to_pandas()
        )
    finally:
        db.unregister("_rapport_d")
    scored = scored.set_index("decision_id").reindex(out["decision_id"])
    out["abc_tier"] = scored["abc_tier"].to_numpy()
    out["rfm_segment"] = scored["rfm_segment"].to_numpy()
    for kind in ("conversion", "revenue"):
        values = np.full(len(out), np.nan)
        for action in catalog.ids:
            column = f"uplift_{kind}_{action}"
            if column in scored.columns:
                rows = (out["action"] == action).to_numpy()
                values[rows] = scored[column].to_numpy(dtype="float64")[rows]
        out[f"predicted_{kind}"] = values
    return out


def _with_lists(db: Any, decisions: pd.DataFrame) -> pd.DataFrame:
    """Each decision with the latest target list (name, else id) holding its customer
    before it (null: none)."""
    out = decisions.copy()
    out["list"] = None
    if not {"target_lists", "target_list_members"} <= table_names(db) or out.empty:
        return out
    db.register("_rapport_d", out[["decision_id", "customer_id", "decided_at"]])
    try:
        found = (
            db.execute("""
            WITH member AS (
                SELECT m.customer_id, l.created_at, coalesce(l.name, l.list_id) AS list
                FROM target_list_members m JOIN target_lists l USING (list_id))
            SELECT d.decision_id, m.list FROM _rapport_d d
            ASOF LEFT JOIN member m
              ON d.customer_id = m.customer_id AND d.decided_at >= m.created_at
        """)
            .to_arrow_table()
            .to_pandas()
        )
    finally:
        db.unregister("_rapport_d")
    out["list"] = found.set_index("decision_id")["list"].reindex(out["decision_id"]).to_numpy()
    return out


def pre_revenue(db: Any, decisions: pd.DataFrame) -> pd.Series | None:
    """Revenue per customer in the PRE_DAYS before the first grouped decision (before any
    policy decision with a control group could move it), None without orders."""
    if "orders" not in table_names(db):
        return None
    grouped = decisions[decisions["group"].notna()]
    if grouped.empty:
        return None
    start = as_utc(pd.Timestamp(grouped["decided_at"].min()).to_pydatetime())
    rows = db.execute(
        "SELECT customer_id, sum(amount) FROM orders WHERE ordered_at >= ? AND ordered_at < ? "
        "GROUP BY customer_id",
        [start - timedelta(days=PRE_DAYS), start],
    ).fetchall()
    return pd.Series({r[0]: float(r[1]) for r in rows}, dtype="float64")


def _spread_control(customers: pd.DataFrame, by: str) -> pd.DataFrame:
    """For ``list`` / ``action``: the whole control group against every key's treated."""
    control = customers[customers["group"] == CONTROL]
    treated = customers[(customers["group"] != CONTROL) & customers[by].notna()]
    parts = [treated]
    for key in treated[by].dropna().unique():
        parts.append(control.assign(**{by: key}))
    return pd.concat(parts, ignore_index=True)


def _mean_interval(values: np.ndarray, alpha: float = 0.05) -> tuple[float, float, float]:
    if len(values) < 2:
        mean = float(values.mean()) if len(values) else float("nan")
        return mean, float("nan"), float("nan")
    mean, se = float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))
    q = float(stats.t.ppf(1 - alpha / 2, len(values) - 1))
    return mean, mean - q * se, mean + q * se


def ope_vs_realised(
    decisions: pd.DataFrame, costs: dict[str, float], margin_rate: float
) -> tuple[dict[str, Any], list[str]]:
    """The NBA champion's DR estimate at training against the realised value per treated
    decision since its promotion ({} and a note when there is no champion)."""
    from models import registry

    version = registry.aliases("nba").get(registry.CHAMPION)
    if version is None:
        return {}, ["no nba champion: no off-policy estimate to compare with"]
    metrics = registry.run_metrics("nba", version)
    if "ope_candidate_dr" not in metrics:
        return {}, [f"nba v{version} logged no off-policy estimate (ope_candidate_dr)"]
    since = registry.crowned_at("nba", registry.get_version("nba", version=version))
    known = decisions[decisions["group"].notna() & decisions["outcome"].notna()]
    treated = known[(known["group"] != CONTROL) & (known["decided_at"] >= since)]
    if treated.empty:
        return {}, [f"no treated decision with an outcome since nba v{version} was promoted"]
    reward = treated["revenue"].astype("float64").fillna(0.0) * margin_rate
    reward = reward - treated["action"].map(costs).astype("float64").fillna(0.0)
    mean, lo, hi = _mean_interval(reward.to_numpy(dtype="float64"))
    ope = {
        "version": float(version),
        "estimated": metrics["ope_candidate_dr"],
        "estimated_lo": metrics.get("ope_candidate_dr_lo", float("nan")),
        "estimated_hi": metrics.get("ope_candidate_dr_hi", float("nan")),
        "realised": mean,
        "realised_lo": lo,
        "realised_hi": hi,
        "decisions": float(len(treated)),
        "since": f"{since:%Y-%m-%d}",
    }
    return ope, []


def measure(
    con: Any,
    since: datetime | None = None,
    by: str | None = None,
    period: str = "month",
    decisions: pd.DataFrame | None = None,
    now: datetime | None = None,
    run_id: str | None = None,
) -> ImpactRun:
    """Measure what the policy earned (see the module doc), appending and logging nothing:
    :meth:`ImpactRun.record` does (the cycle's guard only reads it, to judge the NBA
    champion on the decisions made since it was crowned).

    ``decisions`` (default: the warehouse's decisions joined to their current outcomes,
    :func:`features.tables.outcomes.decision_outcomes`) lets a caller pass
    decisions joined to outcomes itself; ``run_id`` names the run (default: a new
    ``im-<time>-<random>``; the cycle passes one derived from its own). Raises
    :class:`NoImpactDataError` when there is nothing to compare yet, ValueError for a bad
    ``by``.
    """
    if by is not None and by not in BY:
        raise ValueError(f"--by must be one of {', '.join(BY)}, got {by!r}")
    db = raw(con)
    since = as_utc(since) if since is not None else None
    if decisions is None:
        decisions = decision_outcomes(con, since)
    counts = {
        "decisions": len(decisions),
        "ungrouped": int(decisions["group"].isna().sum()) if len(decisions) else 0,
        "pending": int((decisions["group"].notna() & decisions["outcome"].isna()).sum())
        if len(decisions)
        else 0,
    }
    measured = decisions[decisions["group"].notna() & decisions["outcome"].notna()]
    counts["measured"] = len(measured)
    groups = set(measured["group"])
    if CONTROL not in groups or not groups - {CONTROL}:
        have = ", ".join(f"{g} {n:,}" for g, n in measured["group"].value_counts().items())
        headline = (
            f"nothing to compare yet ({counts['decisions']:,} decisions, with a group and a "
            f"known outcome: {have or 'none'})"
        )
        raise NoImpactDataError(
            f"{headline}: impact needs decisions of treated *and* control "
            "customers with outcomes. Serve scores (`rapport serve`, POST /score), load what "
            "the service logged and the outcomes (`rapport ingest --outbox`, outcome files, "
            "orders for attribution) -- or play a period with `rapport simulate` -- then run "
            "`rapport impact` again",
            headline,
        )
    if by in ("segment", "abc_tier") and "scores" not in table_names(db):
        raise NoScoresError(f"--by {by} reads the batch scores: run `rapport score` first")
    catalog = catalog_of(db)
    costs = {a.id: a.cost for a in catalog.actions}
    margin_rate = default_margin_rate(catalog)
    frame = with_scores(db, decisions, catalog)
    if by == "list":
        frame = _with_lists(db, frame)
    column = _BY_COLUMN.get(by) if by else None
    pre = pre_revenue(db, frame)
    customers = pd.concat(
        [
            per_customer(frame, costs, margin_rate, column, pre, period=period),
            per_customer(frame, costs, margin_rate, column, pre, period="all"),
        ],
        ignore_index=True,
    )
    notes = [
        f"value = revenue x {margin_rate:g} (the catalog's mean margin rate) - action cost; "
        "customers counted in the group of their first decision in the period"
    ]
    if by in ("list", "action") and column is not None:
        customers = _spread_control(customers, column)
        notes.append(
            f"by {by}: each {by}'s treated customers against the whole control group (control "
            f"customers get no {by}): not a randomised comparison within the {by}"
        )
    table = impact_rows(customers, column)
    if by is None and len(table):
        table = table.drop(columns=["by", "key"])
    predicted = ["predicted_conversion", "predicted_revenue"]
    actions = per_action(
        frame.drop(columns=predicted), costs, margin_rate, frame[["decision_id", *predicted]]
    )
    ope, more = ope_vs_realised(frame, costs, margin_rate)
    notes += more
    computed_at = as_utc(now) if now is not None else datetime.now(UTC)
    run_id = run_id or computed_at.strftime("im-%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6]
    return ImpactRun(run_id, computed_at, since, by, period, table, actions, ope, counts, notes)


def _log_mlflow(result: ImpactRun) -> str:
    """One run in ``rapport-impact``: the overall figures as metrics, the tables as CSV."""
    import mlflow

    from models.registry import quiet
    from training import tracking

    experiment_id = tracking.configure(EXPERIMENT)
    nested = mlflow.active_run() is not None
    with (
        quiet(),
        mlflow.start_run(experiment_id=experiment_id, run_name=result.run_id, nested=nested) as run,
    ):
        mlflow.set_tags({"rapport.impact_run": result.run_id, "rapport.by": result.by or ""})
        metrics = {f"count_{k}": float(v) for k, v in result.counts.items()}
        overall = result.table[result.table["period"] == "all"]
        if len(overall) and not result.by:
            row = overall.iloc[0]
            for name in ("incremental_value", "incremental_value_lo", "incremental_value_hi"):
                metrics[name] = float(row[name])
            metrics["treated_customers"] = float(row["treated_customers"])
            metrics["control_customers"] = float(row["control_customers"])
        metrics |= {f"ope_{k}": float(v) for k, v in result.ope.items() if k != "since"}
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        mlflow.log_text(result.table.to_csv(index=False), "impact.csv")
        mlflow.log_text(result.actions.to_csv(index=False), "impact_actions.csv")
        return str(run.info.run_id)
