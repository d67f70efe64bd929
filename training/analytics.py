"""Customer-base analytics: ``rapport analytics [--as-of DATE] [--period month|quarter]``.

:func:`run_analytics` measures the whole customer base at ``as_of`` and over the periods
before it, and appends every result to the warehouse tables of
:mod:`features.tables.analytics` (history kept, one ``run_id`` per run):

1. **snapshots**: the order features of every customer (recency, first order, orders and
   net spend over 365 days and all history, tenure) are built with the feature spec at
   each period boundary ``b_0 < ... < b_N = as_of`` -- the same definitions as
   everywhere else -- and RFM segments and ABC tiers fitted at each boundary, as
   ``rapport score`` would have done then;
2. **retention**: a customer is *active* in a period when they ordered in it; per period,
   overall and by ABC tier at the start of the period, region and acquisition channel:
   repeat-purchase retention with its interval, churned, reactivated and new customers,
   and the estimated share still customers (MBG/NBD P(alive), fitted at ``as_of``);
   the cohort triangle by signup period;
3. **customer equity** from the latest scoring run at or before ``as_of``: the sum of
   predicted value over active customers with its interval, and against the previous
   analytics run the change split into lost, value change, reactivated and new;
4. **customer share**: each active customer's yearly spend over an estimated spending
   potential (:func:`models.base_analytics.wallet_potential`), by segment, tier, region;
5. **segment migration**: RFM and ABC transition matrices from the previous boundary to
   ``as_of`` (counts, probabilities with intervals, the spend that moved), the mix
   projected ``steps`` periods ahead and in the long run, and a backtest of the one-step
   projection against the realised mix and the naive "same mix";
6. **the segment map**: per RFM segment, loyalty index against predicted value, sized by
   customers and coloured by churn risk, with its movement since the previous run;
7. a self-contained HTML report under ``<home>/reports`` and an MLflow run with the
   report, the figures and every table.

The computations are in :mod:`models.base_analytics`; this module reads, aligns and writes.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.batch import build
from features.segments import SEGMENTS, assign_segments, fit_segments
from features.spec import default_spec
from features.tables import analytics as tables
from features.tables.scores import RUNS as SCORE_RUNS
from features.tables.scores import SCORES, NoScoresError
from features.timeutil import as_utc
from features.warehouse import raw, table_names
from models.base_analytics import (
    PERIOD_MONTHS,
    Equity,
    EquityChange,
    TransitionMatrix,
    WalletSettings,
    annual_spend,
    cohort_triangle,
    customer_equity,
    equity_change,
    loyalty_index,
    mix_distance,
    period_boundaries,
    period_flows,
    segment_map,
    wallet_potential,
)
from models.btyd import ModifiedBetaGeoFitter
from models.targeting import feature_subset
from models.value import PRIOR_INPUTS, SpendPrior
from rapport.settings import get_settings
from training.analytics_report import build_report
from training.datasets import Progress, lineage
from training.report import Report

#: periods of history measured when the caller does not say
DEFAULT_PERIODS = {"month": 12, "quarter": 8}
#: order features each snapshot needs (segments, activity, P(alive)); tenure comes along
SNAPSHOT_FEATURES = (
    "days_since_last_order",
    "days_since_first_order",
    "orders_all",
    "orders_365d",
    "spend_365d",
    "spend_all",
)
SATISFACTION = "avg_satisfaction_365d"
#: an active customer ordered within this many days (the training sets' definition)
ACTIVE_DAYS = 365.0
TIERS = ("A", "B", "C")
KINDS = {"rfm_segment": SEGMENTS, "abc_tier": TIERS}
SHARE_DIMENSIONS = ("overall", "rfm_segment", "abc_tier", "region")
NEVER = "none"  # the state of a customer not known yet at a snapshot


class AnalyticsError(ValueError):
    """Analytics cannot run as asked (the message says why and what to do)."""


@dataclass
class Snapshots:
    """Per-customer state at every boundary, aligned on the customers known at ``as_of``
    (sorted by id): ``[k, i]`` is customer i at boundary k (k = 0..N)."""

    boundaries: list[pd.Timestamp]  # b_-1 .. b_N (period k runs from b_k-1 to b_k)
    customer_ids: np.ndarray
    attributes: pd.DataFrame  # region, acquisition_channel, tenure_days... at as_of
    known: np.ndarray
    recency: np.ndarray  # days since the last order (NaN: none)
    first: np.ndarray  # days since the first order
    orders_365d: np.ndarray
    spend_365d: np.ndarray
    p_alive: np.ndarray
    #: kind -> position in KINDS[kind] per [k, i] (-1: not known yet)
    codes: dict[str, np.ndarray]
    satisfaction: np.ndarray  # at as_of
    feature_seconds: float
    _labels: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.boundaries) - 2

    def period_days(self, k: int) -> float:
        return (self.boundaries[k + 1] - self.boundaries[k]) / pd.Timedelta(days=1)

    def active(self, k: int) -> np.ndarray:
        """Ordered in period k (``[b_k-1, b_k)``)."""
        with np.errstate(invalid="ignore"):
            return np.asarray(self.recency[k] <= self.period_days(k))

    def new(self, k: int) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return np.asarray(self.first[k] <= self.period_days(k))

    def at(self, k: int) -> pd.Timestamp:
        return self.boundaries[k + 1]

    def labels(self, attribute: str) -> np.ndarray:
        """A customer attribute as strings (``unknown`` when missing), computed once."""
        if attribute not in self.attributes.columns:
            raise AnalyticsError(f"customers have no attribute {attribute!r} to group by")
        if attribute not in self._labels:
            values = self.attributes[attribute].astype(object)
            self._labels[attribute] = values.where(values.notna(), "unknown").to_numpy(object)
        return self._labels[attribute]

    def states(self, kind: str, k: int) -> np.ndarray:
        """State names at boundary k (``none`` for customers not known yet)."""
        names = np.array([*KINDS[kind], NEVER], dtype=object)
        return names[self.codes[kind][k]]


def take_snapshots(con: Any, boundaries: list[pd.Timestamp], progress: Progress) -> Snapshots:
    """Build the snapshot features at ``boundaries[1:]`` and align them (see the module).

    The latest boundary comes first (it names the customers and fits the survival
    model); one snapshot's frame is in memory at a time.
    """
    spec = feature_subset(default_spec(), SNAPSHOT_FEATURES)
    feature_s = 0.0

    def features(at: pd.Timestamp, which: Any = spec) -> pd.DataFrame:
        nonlocal feature_s
        progress(f"features as of {at:%Y-%m-%d %H:%M}")
        start = time.perf_counter()
        frame = build(con, at.to_pydatetime(), which)
        feature_s += time.perf_counter() - start
        return frame

    last = features(boundaries[-1])
    ids = last["customer_id"].astype(str).to_numpy()
    index = pd.Index(ids)
    k_max, n = len(boundaries) - 1, len(ids)
    known = np.zeros((k_max, n), dtype=bool)
    recency, first, p_alive = (np.full((k_max, n), np.nan) for _ in range(3))
    orders, spend = np.zeros((k_max, n)), np.zeros((k_max, n))
    codes = {kind: np.full((k_max, n), -1, dtype=np.int16) for kind in KINDS}
    mbg = _fit_survival(last)
    if mbg is None:
        progress("too few repeat buyers for the survival model: survival_rate stays empty")
    attributes = last.drop(columns=list(SNAPSHOT_FEATURES)).set_index("customer_id")
    for k in range(k_max - 1, -1, -1):
        frame = last if k == k_max - 1 else features(boundaries[k + 1])
        at = index.get_indexer(frame["customer_id"].astype(str))
        if (at < 0).any():
            raise AnalyticsError("a customer known at an earlier boundary is missing at as_of")
        known[k, at] = True
        recency[k, at] = frame["days_since_last_order"].to_numpy(np.float64)
        first[k, at] = frame["days_since_first_order"].to_numpy(np.float64)
        orders[k, at] = frame["orders_365d"].to_numpy(np.float64)
        spend[k, at] = frame["spend_365d"].to_numpy(np.float64)
        segments = assign_segments(frame, fit_segments(frame))
        for kind, names in KINDS.items():
            positions = pd.Categorical(segments[kind], categories=list(names)).codes
            codes[kind][k, at] = positions
        p_alive[k, at] = _p_alive(mbg, frame)
        del frame
    satisfaction = features(boundaries[-1], feature_subset(default_spec(), [SATISFACTION]))
    sat = pd.Series(satisfaction[SATISFACTION].to_numpy(np.float64), satisfaction["customer_id"])
    return Snapshots(
        boundaries=boundaries,
        customer_ids=ids,
        attributes=attributes,
        known=known,
        recency=recency,
        first=first,
        orders_365d=orders,
        spend_365d=spend,
        p_alive=p_alive,
        codes=codes,
        satisfaction=sat.reindex(ids).to_numpy(np.float64),
        feature_seconds=feature_s,
    )


def _rfm(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lifetimes-style histories from the spec's features, as the value model's prior."""
    frequency, recency, age, _ = SpendPrior.rfm(
        frame[list(PRIOR_INPUTS)].to_numpy(np.float64), range(len(PRIOR_INPUTS))
    )
    return frequency, recency, age


def _fit_survival(frame: pd.DataFrame) -> ModifiedBetaGeoFitter | None:
    """MBG/NBD on the buyers at as_of; None when there are too few repeat buyers."""
    buyers = frame[frame["orders_all"] > 0]
    if buyers.empty:
        return None
    x, rec, age = _rfm(buyers)
    try:
        return ModifiedBetaGeoFitter().fit(x, rec, age)
    except (ValueError, RuntimeError):
        return None


def _p_alive(model: ModifiedBetaGeoFitter | None, frame: pd.DataFrame) -> np.ndarray:
    """P(alive) of the buyers (NaN for customers who never ordered or without a model)."""
    out = np.full(len(frame), np.nan)
    buyer = frame["orders_all"].to_numpy(np.float64) > 0
    if model is not None and buyer.any():
        out[buyer] = model.conditional_probability_alive(*_rfm(frame[buyer]))
    return out


# --------------------------------------------------------------------------- retention
def retention_table(snaps: Snapshots) -> pd.DataFrame:
    """Rows of ``analytics_retention``: periods 1..N, overall and per dimension."""
    parts = []
    for k in range(1, snaps.n + 1):
        before, now = snaps.active(k - 1), snaps.active(k)
        new, alive = snaps.new(k), np.nan_to_num(snaps.p_alive[k])
        # the tier at the start of the period; at its end for customers who were not known
        tier = np.where(
            snaps.known[k - 1], snaps.states("abc_tier", k - 1), snaps.states("abc_tier", k)
        )
        groups: dict[str, Any] = {
            "overall": None,
            "abc_tier": tier,
            "region": snaps.labels("region"),
            "acquisition_channel": snaps.labels("acquisition_channel"),
        }
        known = snaps.known[k]  # customers signed up by the end of the period
        for dimension, labels in groups.items():
            chosen = None if labels is None else labels[known]
            flows = period_flows(
                before[known], now[known], new[known], alive[known], chosen
            ).reset_index(names="grp")
            flows.insert(0, "dimension", dimension)
            flows.insert(2, "period_start", snaps.at(k - 1))
            flows.insert(3, "period_end", snaps.at(k))
            parts.append(flows)
    return pd.concat(parts, ignore_index=True)


def cohort_table(snaps: Snapshots) -> pd.DataFrame:
    """Rows of ``analytics_cohorts``: customers by signup period (within the window).

    A customer known at ``b_k`` and not before signed up in period k; one whose tenure at
    as_of exceeds the whole window signed up before it and is left out.
    """
    window_days = (snaps.at(snaps.n) - snaps.boundaries[0]) / pd.Timedelta(days=1)
    older = snaps.attributes["tenure_days"].to_numpy(np.float64) > window_days
    cohort = np.where(older, -1, np.argmax(snaps.known, axis=0))
    activity = np.column_stack([snaps.active(k) for k in range(snaps.n + 1)])
    triangle = cohort_triangle(cohort, activity)
    starts = {k: snaps.at(k - 1) for k in range(snaps.n + 1)}
    return pd.DataFrame(
        {
            "cohort_start": triangle["cohort"].map(starts),
            "period_start": triangle["period"].map(starts),
            **{c: triangle[c] for c in triangle.columns if c not in ("cohort", "period")},
        }
    )


# --------------------------------------------------------------------------- migration
def migration_tables(
    snaps: Snapshots, steps: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, TransitionMatrix]]:
    """``analytics_migration``, ``analytics_mix`` and ``analytics_backtest`` rows, and the
    latest transition matrix of each kind.

    A transition counts the customers known at its earlier snapshot; the mixes are those
    of the customers known at as_of.
    """
    n = snaps.n
    migration, mixes, backtests = [], [], []
    matrices: dict[str, TransitionMatrix] = {}

    def moves(kind: str, k: int) -> TransitionMatrix:
        """From boundary k - 1 to k, over the customers known at k - 1."""
        grid, were = snaps.codes[kind], snaps.known[k - 1]
        return TransitionMatrix.from_codes(grid[k - 1][were], grid[k][were], KINDS[kind])

    for kind, states in KINDS.items():
        matrix = moves(kind, n)
        matrices[kind] = matrix
        migration.append(_migration_rows(kind, matrix, snaps))
        current = np.bincount(snaps.codes[kind][n], minlength=len(states)) / len(snaps.known[n])
        total = float(len(snaps.customer_ids))
        rows: list[tuple[str, int | None, np.ndarray]] = [("current", 0, current)]
        rows += [("projected", s, matrix.project(current, s)) for s in range(1, steps + 1)]
        rows.append(("long_run", None, matrix.long_run(current)))
        for basis, step, mix in rows:
            mixes.append(
                pd.DataFrame(
                    {
                        "kind": kind,
                        "basis": basis,
                        "steps": step,
                        "state": list(states),
                        "share": mix,
                        "customers": mix * total,
                    }
                )
            )
        for k in range(2, n + 1):
            fitted, start = moves(kind, k - 1), moves(kind, k)
            backtests.append(
                {
                    "kind": kind,
                    "fitted_from": snaps.at(k - 2),
                    "start": snaps.at(k - 1),
                    "target": snaps.at(k),
                    "customers": int(snaps.known[k - 1].sum()),
                    "markov_error": mix_distance(
                        fitted.project(start.mix("before")), start.mix("after")
                    ),
                    "naive_error": mix_distance(start.mix("before"), start.mix("after")),
                }
            )
    columns = [c for c in tables.BACKTEST_COLUMNS if c != "run_id"]
    return (
        pd.concat(migration, ignore_index=True),
        pd.concat(mixes, ignore_index=True),
        pd.DataFrame(backtests, columns=columns),
        matrices,
    )


def _migration_rows(kind: str, matrix: TransitionMatrix, snaps: Snapshots) -> pd.DataFrame:
    n, states = snaps.n, list(matrix.states)
    were = snaps.known[n - 1]
    size = len(states)
    cell = snaps.codes[kind][n - 1][were].astype(np.int64) * size + snaps.codes[kind][n][were]
    value_from = np.bincount(cell, snaps.spend_365d[n - 1][were], size * size)
    value_to = np.bincount(cell, snaps.spend_365d[n][were], size * size)
    low, high = matrix.intervals()
    return pd.DataFrame(
        {
            "kind": kind,
            "customer_group": "all",
            "from_as_of": snaps.at(n - 1),
            "to_as_of": snaps.at(n),
            "from_state": np.repeat(states, size),
            "to_state": np.tile(states, size),
            "customers": matrix.counts.ravel().astype(np.int64),
            "probability": np.where(
                np.repeat(matrix.observed, size), matrix.probabilities.ravel(), np.nan
            ),
            "probability_low": low.ravel(),
            "probability_high": high.ravel(),
            "value_from": value_from,
            "value_to": value_to,
        }
    )


# --------------------------------------------------------------------------- scores
@dataclass(frozen=True)
class ScoresUsed:
    run_id: str
    as_of: datetime
    frame: pd.DataFrame  # customer_id, churn_probability, value_mean, value_p10, value_p90


def scores_at(db: Any, as_of: datetime) -> ScoresUsed:
    """The latest scoring run at or before ``as_of`` and its predictions."""
    if SCORE_RUNS not in table_names(db):
        raise NoScoresError("customer-base analytics needs scores: run `rapport score` first")
    row = db.execute(
        f"SELECT run_id, as_of FROM {SCORE_RUNS} WHERE as_of <= ? "
        "ORDER BY as_of DESC, scored_at DESC LIMIT 1",
        [as_of],
    ).fetchone()
    if row is None:
        raise NoScoresError(
            f"no scoring run as of {as_of:%Y-%m-%d %H:%M} UTC or earlier: run "
            f"`rapport score --as-of {as_of:%Y-%m-%d}`"
        )
    frame = (
        db.execute(
            "SELECT customer_id, churn_probability, value_mean, value_p10, value_p90 "
            f"FROM {SCORES} WHERE run_id = ?",
            [row[0]],
        )
        .to_arrow_table()
        .to_pandas()
    )
    return ScoresUsed(str(row[0]), as_utc(row[1]), frame)


# --------------------------------------------------------------------------- the run
@dataclass
class AnalyticsRun:
    """What :func:`run_analytics` wrote: the run's tables (as
    :func:`features.tables.analytics.load_run` reads them back) and the objects behind
    them, for notebooks and the web page."""

    results: tables.AnalyticsTables
    equity: Equity
    change: EquityChange | None
    matrices: dict[str, TransitionMatrix]
    report_path: Path
    mlflow_run_id: str | None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.results.run.run_id

    def summary(self) -> str:
        return summarize(self)


def run_analytics(
    con: Any,
    as_of: datetime | str | None = None,
    period: str = "month",
    periods: int | None = None,
    steps: int = 4,
    wallet: WalletSettings | None = None,
    log_to_mlflow: bool = True,
    progress: Progress | None = None,
) -> AnalyticsRun:
    """Measure the customer base at ``as_of`` (default: now) over ``periods`` periods of
    ``period`` (month or quarter; 12 months or 8 quarters by default) and append the
    results to the warehouse (``con``: the Ibis DuckDB backend, read-write)."""
    say = progress or (lambda _: None)
    if period not in PERIOD_MONTHS:
        raise AnalyticsError(f"period must be one of {sorted(PERIOD_MONTHS)}, got {period!r}")
    periods = periods if periods is not None else DEFAULT_PERIODS[period]
    if periods < 1 or steps < 1:
        raise AnalyticsError(f"periods and steps must be >= 1, got {periods} and {steps}")
    wallet = wallet or WalletSettings()
    cutoff = as_utc(as_of) if as_of is not None else datetime.now(UTC)
    db = raw(con)
    start = time.perf_counter()
    scores = scores_at(db, cutoff)
    read_s = time.perf_counter() - start
    boundaries = period_boundaries(cutoff, period, periods)
    snaps = take_snapshots(con, boundaries, say)
    start = time.perf_counter()
    timings: dict[str, float] = {"features": snaps.feature_seconds, "reading": read_s}
    say("retention, cohorts, migration")
    retention = retention_table(snaps)
    cohorts = cohort_table(snaps)
    migration, mix, backtest, matrices = migration_tables(snaps, steps)
    say("equity, customer share, segment map")
    customers = customer_table(snaps, scores.frame, wallet)
    try:
        previous = tables.latest_run(db, before=cutoff)
    except tables.NoAnalyticsError:
        previous = None
    equity, change, equity_row = equity_table(db, snaps, customers, previous)
    share = share_table(customers)
    previous_map = _previous_map(db, previous)
    seg_map = segment_map(
        customers["rfm_segment"],
        customers["loyalty_index"],
        customers["value_mean"],
        customers["churn_probability"],
        previous_map,
    ).reset_index()
    customers = customers.drop(columns="first_order_days")
    run_id = datetime.now(UTC).strftime("ar-%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6]
    results = {
        "analytics_retention": retention,
        "analytics_cohorts": cohorts,
        "analytics_equity": equity_row,
        "analytics_share": share,
        "analytics_migration": migration,
        "analytics_mix": mix,
        "analytics_backtest": backtest,
        "analytics_segment_map": seg_map,
        "analytics_customers": customers,
    }
    metrics = headline_metrics(results, equity, change)
    timings["analytics"] = time.perf_counter() - start
    settings = get_settings()
    report_path = settings.reports_dir / f"analytics-{run_id}.html"
    run = tables.AnalyticsRunInfo(
        run_id=run_id,
        as_of=cutoff,
        period=period,
        periods=periods,
        created_at=datetime.now(UTC),
        scores_run_id=scores.run_id,
        previous_run_id=previous.run_id if previous else None,
        metrics=metrics,
        settings={"wallet": asdict(wallet), "steps": steps},
        report_path=str(report_path),
    )
    frames = tables.AnalyticsTables(
        run, **{name.removeprefix("analytics_"): frame for name, frame in results.items()}
    )
    say("report and MLflow")
    t0 = time.perf_counter()
    report = build_report(frames, equity, change, matrices, scores.as_of)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(report.to_html(), encoding="utf-8")
    mlflow_run_id = _log_mlflow(frames, report, lineage(con)) if log_to_mlflow else None
    timings["report"] = time.perf_counter() - t0
    say("writing the analytics tables")
    t0 = time.perf_counter()
    row = {
        **asdict(run),
        "scores_as_of": scores.as_of,
        "customers": len(snaps.customer_ids),
        "active_customers": int(customers["active"].sum()),
        "seconds": timings["analytics"],
        "feature_seconds": snaps.feature_seconds,
        "settings": json.dumps(run.settings),
        "metrics": json.dumps(metrics),
        "mlflow_run_id": mlflow_run_id,
    }
    tables.write_run(db, row, results)
    timings["writing"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    written = tables.load_run(db, run_id)  # the shape every reader sees
    timings["reading"] += time.perf_counter() - t0
    return AnalyticsRun(written, equity, change, matrices, report_path, mlflow_run_id, timings)


def customer_table(snaps: Snapshots, scores: pd.DataFrame, wallet: WalletSettings) -> pd.DataFrame:
    """Rows of ``analytics_customers``: per customer at as_of."""
    n = snaps.n
    ids = snaps.customer_ids
    scored = scores.set_index("customer_id").reindex(ids)
    attrs = snaps.attributes
    recency = snaps.recency[n]
    with np.errstate(invalid="ignore"):
        active = np.asarray(recency <= ACTIVE_DAYS)
    spend = snaps.spend_365d[n]
    tenure = attrs["tenure_days"].to_numpy(np.float64)
    annual = annual_spend(spend, tenure, wallet.min_exposure_days)
    spending = active & (spend > 0)
    potential = np.full(len(ids), np.nan)
    groups = {g: snaps.labels(g)[spending] for g in wallet.groups}
    full_year = tenure[spending] >= 365.0  # measured, not extrapolated, yearly spend
    potential[spending] = wallet_potential(annual[spending], groups, wallet, full_year)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = annual / potential
    return pd.DataFrame(
        {
            "customer_id": ids,
            "region": snaps.labels("region"),
            "acquisition_channel": snaps.labels("acquisition_channel"),
            "active": active,
            "rfm_segment": snaps.states("rfm_segment", n),
            "abc_tier": snaps.states("abc_tier", n),
            "loyalty_index": loyalty_index(
                recency, snaps.orders_365d[n], tenure, snaps.satisfaction
            ),
            "p_alive": snaps.p_alive[n],
            "spend_365d": spend,
            "annual_spend": annual,
            "potential": potential,
            "wallet_share": share,
            "churn_probability": scored["churn_probability"].to_numpy(np.float64),
            "value_mean": scored["value_mean"].to_numpy(np.float64),
            "value_p10": scored["value_p10"].to_numpy(np.float64),
            "value_p90": scored["value_p90"].to_numpy(np.float64),
            # not stored: whether the customer had ordered before the previous run (below)
            "first_order_days": snaps.first[n],
        }
    )


def equity_table(
    db: Any,
    snaps: Snapshots,
    customers: pd.DataFrame,
    previous: tables.AnalyticsRunInfo | None,
) -> tuple[Equity, EquityChange | None, pd.DataFrame]:
    active = customers[customers["active"]]
    equity = customer_equity(active["value_mean"], active["value_p10"], active["value_p90"])
    row: dict[str, Any] = {
        "as_of": snaps.at(snaps.n),
        "horizon_days": get_settings().horizon_days,
        "customers": equity.customers,
        "unscored": equity.unscored,
        "equity": equity.total,
        "equity_low": equity.low,
        "equity_high": equity.high,
    }
    change = None
    if previous is not None:
        before = (
            db.execute(
                "SELECT customer_id, active, value_mean AS value FROM analytics_customers "
                "WHERE run_id = ?",
                [previous.run_id],
            )
            .to_arrow_table()
            .to_pandas()
        )
        gap_days = (snaps.at(snaps.n) - pd.Timestamp(previous.as_of)) / pd.Timedelta(days=1)
        with np.errstate(invalid="ignore"):
            ordered_before = customers["first_order_days"].to_numpy() > gap_days
        now = pd.DataFrame(
            {
                "customer_id": customers["customer_id"],
                "active": customers["active"],
                "value": customers["value_mean"],
                "ordered_before": ordered_before,
            }
        )
        change = equity_change(before, now)
        row |= {
            "previous_run_id": previous.run_id,
            "previous_as_of": previous.as_of,
            "previous_equity": change.previous,
            **{k: v for k, v in asdict(change).items() if k not in ("previous", "current")},
        }
    columns = [c for c in tables.EQUITY_COLUMNS if c != "run_id"]
    return equity, change, pd.DataFrame([row]).reindex(columns=columns)


def share_table(customers: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``analytics_share``: customer share overall and by segment, tier, region."""
    spending = customers[customers["potential"].notna()]
    parts = []
    for dimension in SHARE_DIMENSIONS:
        keys = "all" if dimension == "overall" else spending[dimension]
        grouped = spending.assign(_grp=keys).groupby("_grp")
        part = pd.DataFrame(
            {
                "customers": grouped.size(),
                "spend": grouped["annual_spend"].sum(),
                "potential": grouped["potential"].sum(),
                "median_share": grouped["wallet_share"].median(),
            }
        )
        part["share"] = part["spend"] / part["potential"]
        part["headroom"] = part["potential"] - part["spend"]
        part = part.reset_index(names="grp")
        part.insert(0, "dimension", dimension)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _previous_map(db: Any, previous: tables.AnalyticsRunInfo | None) -> pd.DataFrame | None:
    if previous is None:
        return None
    frame = (
        db.execute(
            "SELECT segment, customers, loyalty, value, churn_risk FROM analytics_segment_map "
            "WHERE run_id = ?",
            [previous.run_id],
        )
        .to_arrow_table()
        .to_pandas()
    )
    return frame.set_index("segment")


def headline_metrics(
    results: dict[str, pd.DataFrame], equity: Equity, change: EquityChange | None
) -> dict[str, float]:
    """The figures logged to MLflow and kept with the run."""
    retention = results["analytics_retention"]
    overall = retention[retention["dimension"] == "overall"].iloc[-1]
    share = results["analytics_share"]
    backtest = results["analytics_backtest"]
    customers = results["analytics_customers"]
    out = {
        "customers": float(len(customers)),
        "active_customers": float(customers["active"].sum()),
        "retention_rate": float(overall["retention_rate"]),
        "survival_rate": float(overall["survival_rate"]),
        "new_customers": float(overall["new"]),
        "churned_customers": float(overall["churned"]),
        "reactivated_customers": float(overall["reactivated"]),
        "equity": equity.total,
        "equity_low": equity.low,
        "equity_high": equity.high,
        "customer_share": float(share.loc[share["dimension"] == "overall", "share"].iloc[0])
        if (share["dimension"] == "overall").any()
        else float("nan"),
    }
    for kind in KINDS:
        rows = backtest[backtest["kind"] == kind]
        if len(rows):
            out[f"{kind}_projection_error"] = float(rows["markov_error"].mean())
            out[f"{kind}_naive_error"] = float(rows["naive_error"].mean())
    if change is not None:
        out |= {f"equity_{k}": float(v) for k, v in asdict(change).items()}
    return {k: v for k, v in out.items() if np.isfinite(v)}


def _log_mlflow(frames: tables.AnalyticsTables, report: Report, info: dict[str, Any]) -> str:
    """One MLflow run: parameters, the headline metrics, the report and its figures, the
    data lineage and every table but the per-customer one."""
    import mlflow

    from training import tracking

    experiment = tracking.configure()
    run = frames.run
    with mlflow.start_run(experiment_id=experiment, run_name="analytics") as active:
        mlflow.set_tags({"rapport.kind": "analytics", "rapport.analytics_run": run.run_id})
        mlflow.log_params(
            {
                "as_of": f"{run.as_of:%Y-%m-%d %H:%M}",
                "period": run.period,
                "periods": run.periods,
                "scores_run_id": run.scores_run_id,
                "wallet_quantile": run.settings["wallet"]["quantile"],
                "wallet_groups": ",".join(run.settings["wallet"]["groups"]),
                "steps": run.settings["steps"],
            }
        )
        mlflow.log_metrics(run.metrics)
        with tracking.artifacts(report, report.figures, info) as folder:
            for name in tables.TABLES:
                if name != "analytics_customers":
                    frame = getattr(frames, name.removeprefix("analytics_"))
                    frame.to_csv(folder / f"{name}.csv", index=False)
        return str(active.info.run_id)


# --------------------------------------------------------------------------- summary
def summarize(result: AnalyticsRun) -> str:
    """What the run found, in a few lines for the terminal."""
    t = result.results
    run, m = t.run, t.run.metrics
    overall = t.retention[t.retention["dimension"] == "overall"].iloc[-1]
    word = "month" if run.period == "month" else "quarter"
    lines = [
        f"customer-base analytics as of {run.as_of:%Y-%m-%d %H:%M} UTC: {run.periods} "
        f"{word}{'s' if run.periods != 1 else ''}, scores {run.scores_run_id}: run {run.run_id}",
        f"  customers: {int(m['customers']):,} known, {int(m['active_customers']):,} active "
        "(an order in the last 365 days)",
        f"  last {word}: retention {overall.retention_rate:.1%} "
        f"[{overall.retention_low:.1%}, {overall.retention_high:.1%}] bought again, "
        f"{overall.survival_rate:.1%} estimated still customers; new {int(overall.new):,}, "
        f"reactivated {int(overall.reactivated):,}, churned {int(overall.churned):,}",
        f"  customer equity ({get_settings().horizon_days}-day value of active customers): "
        f"{result.equity.total:,.0f} [{result.equity.low:,.0f}, {result.equity.high:,.0f}]"
        + (f", {result.equity.unscored:,} unscored" if result.equity.unscored else ""),
    ]
    if result.change is not None:
        c = result.change
        lines.append(
            f"  since {run.previous_run_id}: {c.previous:,.0f} - lost {c.lost:,.0f} "
            f"{c.value_change:+,.0f} value change + reactivated {c.reactivated:,.0f} "
            f"+ new {c.new:,.0f} = {c.current:,.0f}"
        )
    share = t.share[t.share["dimension"] == "rfm_segment"].sort_values("headroom")
    if "customer_share" in m and len(share):
        top = share.iloc[-1]
        lines.append(
            f"  customer share (estimate): {m['customer_share']:.1%} of the active customers' "
            f"spending potential; most headroom: {top.grp} ({top.headroom:,.0f} a year)"
        )
    rfm = result.matrices["rfm_segment"]
    stay = {s: rfm.probabilities[i, i] for i, s in enumerate(rfm.states) if rfm.observed[i]}
    if stay:
        shown = ", ".join(f"{s} {p:.0%}" for s, p in list(stay.items())[:4])
        lines.append(f"  migration: staying in their segment for a {word}: {shown}, ...")
    if "rfm_segment_projection_error" in m:
        lines.append(
            f"  next {word}'s segment mix, backtest: Markov off by "
            f"{m['rfm_segment_projection_error']:.1%} of customers, 'same mix' by "
            f"{m['rfm_segment_naive_error']:.1%}"
        )
    biggest = t.segment_map.sort_values("equity", ascending=False).head(3)
    points = "; ".join(
        f"{r.segment} (loyalty {r.loyalty:.0f}, value {r.value:,.0f}, churn {r.churn_risk:.0%}: "
        f"{r.quadrant})"
        for r in biggest.itertuples()
    )
    lines.append(f"  segment map, largest equity: {points}")
    lines.append(f"  report: {result.report_path}")
    if result.mlflow_run_id:
        lines.append(f"  MLflow run {result.mlflow_run_id}")
    lines.append(f"  appended to the warehouse tables {tables.RUNS} and analytics_* (history kept)")
    return "\n".join(lines)
