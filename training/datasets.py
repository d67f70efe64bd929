"""Training sets with point-in-time labels: features before a cutoff, labels after it.

Definitions (the same for every model, the CLI and the notebooks):

* **order**: any row of ``orders`` (returns included), as in the feature spec.
* **horizon**: the ``H`` days ``[cutoff, cutoff + H)``. Features only see events strictly
  before the cutoff (``features.batch``), labels only events in the horizon, so no event is
  both a feature and a label.
* **active** at a cutoff: at least one order in the 365 days before it. Churn is only
  defined for active customers (someone who never bought cannot stop buying).
* **churned**: active and no order in the horizon.
* **value labels** (every customer signed up before the cutoff): ``spend`` = net amount
  (returns negative) of the orders in the horizon, ``margin`` = their summed margin
  (null when no order in the horizon has a margin), ``orders_in_horizon``.
* **data end**: midnight after the latest event (order, interaction or campaign decision);
  the data is taken as complete up to then. The default holdout cutoff is the latest
  midnight with ``cutoff + H <= data end``.

Time split (never random across time): the **test** (holdout) cutoff is the latest one;
the **validation** cutoff is the latest whole number of months earlier whose horizon ends
by the test cutoff; the **training** cutoffs are ``step_months`` apart, the latest one's
horizon ending by the validation cutoff. So no training label is observed after the
validation cutoff and no validation label after the test cutoff: what the model sees is
what was known then. The default, 4 training cutoffs 3 months apart, covers a year of
seasons (which the value model's seasonal factors need) with 4 feature snapshots;
``step_months=1, train_cutoffs=12`` is the monthly variant.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import ibis
import pandas as pd
import pyarrow as pa

from features.batch import build_many
from features.contract import CUSTOMERS, EVENT_TABLES, ORDERS, TABLES
from features.spec import FeatureSpec, default_spec
from features.timeutil import as_utc

#: a long job's progress callback, one line per step (the training jobs' one home of it)
Progress = Callable[[str], None]
Part = Literal["train", "valid", "test"]
ACTIVE_DAYS = 365
LABEL_COLUMNS = ("active", "churned", "orders_in_horizon", "spend", "margin")


def silent(progress: Progress | None) -> Progress:
    """The caller's progress callback, or one that says nothing."""
    return progress or (lambda _message: None)


def _scalar(con: Any, expr: Any) -> Any:
    """One value from an Ibis scalar expression (through pandas: no pytz needed)."""
    return con.execute(expr.name("value").as_table()).iloc[0, 0]


def data_end(con: Any) -> datetime:
    """Midnight (UTC) after the latest event in the event tables."""
    latest: list[pd.Timestamp] = []
    for table in EVENT_TABLES:
        t = con.table(table.name)
        value = _scalar(con, t[table.time_column].max())
        if not pd.isna(value):
            latest.append(pd.Timestamp(value))
    if not latest:
        raise ValueError("the warehouse holds no orders, interactions or campaign decisions")
    return as_utc(max(latest).tz_convert("UTC").floor("D") + pd.Timedelta(days=1))


def default_as_of(con: Any, horizon_days: int) -> datetime:
    """The latest cutoff whose whole horizon lies in the data: ``data_end - H``."""
    return data_end(con) - timedelta(days=horizon_days)


def _months_before(value: datetime, months: int) -> datetime:
    return as_utc(pd.Timestamp(value) - pd.DateOffset(months=months))


def _latest_month_step(anchor: datetime, deadline: datetime, horizon_days: int) -> datetime:
    """Latest ``anchor - k months`` (k >= 1) whose horizon ends by ``deadline``."""
    months = 1
    while _months_before(anchor, months) + timedelta(days=horizon_days) > deadline:
        months += 1
    return _months_before(anchor, months)


@dataclass(frozen=True)
class Window:
    """Which cutoffs a training set has (:func:`plan_training` makes them a
    :class:`CutoffPlan`): the holdout cutoff ``as_of`` (None: :func:`default_as_of`), the
    label horizon, and ``train_cutoffs`` training cutoffs ``step_months`` apart before the
    validation cutoff."""

    as_of: datetime | str | None = None
    horizon_days: int = 90
    train_cutoffs: int = 4
    step_months: int = 3


@dataclass(frozen=True)
class CutoffPlan:
    """The cutoffs of one training set: train (oldest first), validation, test."""

    train: tuple[datetime, ...]
    valid: datetime
    test: datetime

    @property
    def all(self) -> list[datetime]:
        return [*self.train, self.valid, self.test]

    def describe(self) -> dict[str, str]:
        """Dates as text, for logging."""
        return {
            "train_cutoffs": ",".join(f"{c:%Y-%m-%d}" for c in self.train),
            "valid_cutoff": f"{self.valid:%Y-%m-%d}",
            "test_cutoff": f"{self.test:%Y-%m-%d}",
        }


def plan_cutoffs(
    as_of: datetime | str,
    horizon_days: int,
    train_cutoffs: int = Window.train_cutoffs,
    step_months: int = Window.step_months,
) -> CutoffPlan:
    """Test at ``as_of``, validation and ``train_cutoffs`` training cutoffs before it,
    ``step_months`` apart."""
    if train_cutoffs < 1 or step_months < 1:
        raise ValueError(
            f"need train_cutoffs >= 1 and step_months >= 1, got {train_cutoffs}, {step_months}"
        )
    test = as_utc(as_of)
    valid = _latest_month_step(test, test, horizon_days)
    newest = _latest_month_step(valid, valid, horizon_days)
    steps = reversed(range(train_cutoffs))
    train = tuple(_months_before(newest, k * step_months) for k in steps)
    return CutoffPlan(train, valid, test)


def labels(con: Any, cutoffs: Sequence[datetime | str], horizon_days: int) -> pd.DataFrame:
    """Labels of every customer signed up before each cutoff, in one query for all cutoffs.

    Columns: ``customer_id``, ``as_of`` and :data:`LABEL_COLUMNS` (definitions in the
    module docstring).
    """
    result = label_expression(con, cutoffs, horizon_days).order_by(["as_of", "customer_id"])
    frame = con.execute(result)
    frame["customer_id"] = frame["customer_id"].astype("string")
    frame["as_of"] = pd.to_datetime(frame["as_of"], utc=True).astype("datetime64[us, UTC]")
    return frame


def label_expression(con: Any, cutoffs: Sequence[datetime | str], horizon_days: int) -> Any:
    """The labels of :func:`labels` as one unordered Ibis expression over ``con``'s
    ``customers`` and ``orders`` (``con``: anything with ``table(name)``: the DuckDB
    warehouse, or the lake's tables on Spark, :class:`training.spark_datasets.Lake`)."""
    stamps = pa.array([as_utc(c) for c in cutoffs], pa.timestamp("us", tz="UTC"))
    cuts = ibis.memtable(pa.table({"as_of": stamps}))
    customers = con.table(CUSTOMERS.name)
    orders = con.table(ORDERS.name)
    horizon = ibis.interval(days=horizon_days)
    base = customers.cross_join(cuts).filter(customers.signup_at < cuts.as_of)
    base = base.select("customer_id", "as_of")
    windowed = orders.join(
        cuts,
        [
            orders.ordered_at >= cuts.as_of - ibis.interval(days=ACTIVE_DAYS),
            orders.ordered_at < cuts.as_of + horizon,
        ],
    )
    after = windowed.ordered_at >= windowed.as_of
    per_customer = windowed.group_by(["customer_id", "as_of"]).aggregate(
        past_orders=windowed.count(where=~after),
        orders_in_horizon=windowed.count(where=after),
        spend=windowed.amount.sum(where=after),
        margin=windowed.margin.sum(where=after),
    )
    joined = base.left_join(per_customer, ["customer_id", "as_of"])
    active = joined.past_orders.fill_null(0) > 0
    horizon_orders = joined.orders_in_horizon.fill_null(0)
    return joined.select(
        "customer_id",
        "as_of",
        active=active,
        churned=active & (horizon_orders == 0),
        orders_in_horizon=horizon_orders,
        spend=joined.spend.fill_null(0.0),
        margin=joined.margin,
    )


@dataclass(frozen=True)
class Sampling:
    """How a training set built on Spark was sampled down (:mod:`training.spark_datasets`):
    for which kind, the rows of its population and of the sample, and the seed. Each
    row's ``weight`` column is its stratum's population over its sample rows."""

    kind: str
    rows_before: int
    rows_after: int
    max_rows: int
    seed: int

    def tags(self) -> dict[str, str]:
        return {
            "rapport.sampled_for": self.kind,
            "rapport.rows_before_sampling": str(self.rows_before),
            "rapport.rows_after_sampling": str(self.rows_after),
            "rapport.train_max_rows": str(self.max_rows),
        }


@dataclass
class TrainingSet:
    """Features and labels per (customer, cutoff), with the time split they belong to.

    ``engine``: where it was built. A set sampled on Spark (``sampling``) has a ``weight``
    column (inverse inclusion probability) and serves only the kind it was sampled for.
    """

    frame: pd.DataFrame
    plan: CutoffPlan
    horizon_days: int
    feature_names: list[str]
    spec_version: str
    engine: str = "duckdb"
    sampling: Sampling | None = None

    def serves(self, kind: str) -> bool:
        """Can ``kind`` be trained on it (an unsampled set serves every kind)?"""
        return self.sampling is None or self.sampling.kind == kind

    def weights(self, name: Part, active_only: bool = False) -> Any:
        """The sampling weights of one split's rows (None: not sampled, every row counts 1)."""
        if "weight" not in self.frame.columns:
            return None
        return self.part(name, active_only)["weight"].to_numpy(dtype="float64")

    def tags(self) -> dict[str, str]:
        """MLflow tags saying where and how the set was built."""
        return {"rapport.engine": self.engine, **(self.sampling.tags() if self.sampling else {})}

    def part(self, name: Part, active_only: bool = False) -> pd.DataFrame:
        """Rows of one split; ``active_only`` keeps the churn population."""
        cutoffs = {"train": self.plan.train, "valid": (self.plan.valid,), "test": (self.plan.test,)}
        when = pd.to_datetime(list(cutoffs[name]), utc=True).astype("datetime64[us, UTC]")
        rows = self.frame[self.frame["as_of"].isin(when)]
        if active_only:
            rows = rows[rows["active"]]
        return rows.reset_index(drop=True)

    def features(self, name: Part, active_only: bool = False) -> pd.DataFrame:
        """Model inputs of one split: ids, the cutoff and the features, never a label
        (estimators ignore ``customer_id`` / ``as_of`` except the value model's season)."""
        return self.part(name, active_only)[["customer_id", "as_of", *self.feature_names]]

    def counts(self) -> dict[str, int]:
        """Rows per split (all customers / active ones), for logging."""
        out: dict[str, int] = {}
        for name in ("train", "valid", "test"):
            part = self.part(name)  # type: ignore[arg-type]
            out[f"rows_{name}"] = len(part)
            out[f"active_{name}"] = int(part["active"].sum())
        return out


def build_training_set(
    con: Any,
    window: Window = Window(),
    spec: FeatureSpec | None = None,
    progress: Progress | None = None,
) -> TrainingSet:
    """Features (``features.batch.build_many``) joined to labels for every cutoff of
    ``window``. Training cutoffs that fall before the first order are dropped; none left
    is an error naming the dates.
    """
    say = silent(progress)
    spec = spec or default_spec()
    plan = plan_training(con, window, say)
    say(f"features and labels for {len(plan.all)} cutoffs")
    frame = labelled_features(con, plan.all, window.horizon_days, spec)
    return TrainingSet(frame, plan, window.horizon_days, list(spec.names), spec.version)


def plan_training(con: Any, window: Window, say: Progress) -> CutoffPlan:
    """The cutoffs of :func:`build_training_set` (checked against the data's end, training
    cutoffs before the first order dropped); ``con`` as for :func:`label_expression`."""
    as_of, horizon_days = window.as_of, window.horizon_days
    test = as_utc(as_of) if as_of is not None else default_as_of(con, horizon_days)
    end = data_end(con)
    if test + timedelta(days=horizon_days) > end:
        raise ValueError(
            f"cutoff {test:%Y-%m-%d} + {horizon_days} days goes past the end of the data "
            f"({end:%Y-%m-%d}); use --as-of {end - timedelta(days=horizon_days):%Y-%m-%d} "
            "or earlier"
        )
    plan = plan_cutoffs(test, horizon_days, window.train_cutoffs, window.step_months)
    plan = _drop_empty_train(con, plan)
    say(
        f"cutoffs: train {plan.describe()['train_cutoffs']}, valid {plan.valid:%Y-%m-%d}, "
        f"test {plan.test:%Y-%m-%d}"
    )
    return plan


def labelled_features(
    con: Any,
    cutoffs: Sequence[datetime | str],
    horizon_days: int,
    spec: FeatureSpec | None = None,
) -> pd.DataFrame:
    """Features per (customer, cutoff) joined to their labels: what every split is cut from.

    With a single cutoff this is a holdout for scoring already-trained models.
    """
    features = build_many(con, cutoffs, spec)
    features["as_of"] = features["as_of"].astype("datetime64[us, UTC]")
    return features.merge(labels(con, cutoffs, horizon_days), on=["customer_id", "as_of"])


def _drop_empty_train(con: Any, plan: CutoffPlan) -> CutoffPlan:
    first = _scalar(con, con.table(ORDERS.name).ordered_at.min())
    if pd.isna(first):
        raise ValueError("the warehouse holds no orders; nothing to learn from")
    first_order = as_utc(first)
    train = tuple(c for c in plan.train if c > first_order)
    if not train or plan.valid <= first_order:
        raise ValueError(
            f"not enough history: the first order is on {first_order:%Y-%m-%d} but the "
            f"training cutoffs start at {plan.train[0]:%Y-%m-%d} and validation is on "
            f"{plan.valid:%Y-%m-%d}; pick a later --as-of or a shorter horizon"
        )
    return CutoffPlan(train, plan.valid, plan.test)


def orders_before(con: Any, as_of: datetime) -> pd.DataFrame:
    """``customer_id, ordered_at, amount`` of every order before the cutoff (BTYD input)."""
    orders = con.table(ORDERS.name)
    before = orders.filter(orders.ordered_at < ibis.literal(as_utc(as_of)))
    return con.execute(before.select("customer_id", "ordered_at", "amount"))


def signups_before(con: Any, as_of: datetime) -> pd.Series:
    """Signup time by customer id, for customers known at the cutoff."""
    customers = con.table(CUSTOMERS.name)
    known = customers.filter(customers.signup_at < ibis.literal(as_utc(as_of)))
    frame = con.execute(known.select("customer_id", "signup_at"))
    return frame.set_index("customer_id")["signup_at"]


def lineage(con: Any) -> dict[str, Any]:
    """Where the training data came from: warehouse file, rows and latest time per table."""
    out: dict[str, Any] = {"warehouse": _database_path(con)}
    for table in TABLES.values():
        t = con.table(table.name)
        out[f"{table.name}_rows"] = int(_scalar(con, t.count()))
        latest = _scalar(con, t[table.time_column].max())
        out[f"{table.name}_max_{table.time_column}"] = None if pd.isna(latest) else str(latest)
    return out


def fingerprint(info: dict[str, Any]) -> str:
    """Short hash of a lineage dict: two runs with the same one saw the same data."""
    payload = json.dumps({k: v for k, v in info.items() if k != "warehouse"}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _database_path(con: Any) -> str:
    """The DuckDB file (other backends: their name, the best lineage we have)."""
    if getattr(con, "name", None) != "duckdb":
        return str(getattr(con, "name", type(con).__name__))
    rows = con.raw_sql("PRAGMA database_list").fetchall()
    return next((str(row[2]) for row in rows if row[2]), ":memory:")
