"""Training sets built on Spark from the lake, sampled down to what LightGBM on one machine
fits (``RAPPORT_TRAIN_MAX_ROWS``), with each row's sampling weight.

The rows are the DuckDB path's (:mod:`training.datasets`): the same cutoffs
(:func:`~training.datasets.plan_training`), the features of every cutoff built on Spark
from the lake with the shared spec (:func:`features.spark.build_features`) and the labels
of the one Ibis expression both engines compile
(:func:`~training.datasets.label_expression`), joined by customer and cutoff in Spark.

When the set has more rows than the limit it is sampled for one model kind, stratified
within every cutoff (so each split keeps its share and each cutoff's weights add up to its
customers):

* **churn**: its population (active customers), strata = the label; every churner is kept
  while they fit in half the limit (:data:`POSITIVE_SHARE`), the rest of the limit is
  spread over the non-churners;
* **value**: every customer, strata = no spend in the horizon, or the decile of the
  positive spend (cut points by Spark's ``approxQuantile``); every spender is kept while
  they fit in half the limit, and so on.

Within a stratum each row is kept when a hash of (customer, cutoff, seed) falls under the
stratum's target share (Bernoulli, reproducible whatever the partitioning), and its weight
is the stratum's population over the rows kept (post-stratified: the weights of a stratum
sum to its population exactly). LightGBM reads the weights as sample weights (early
stopping and calibration too) and the holdout metrics are weighted
(:mod:`models.metrics`), so they estimate the whole population's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from features.spec import FeatureSpec, default_spec
from rapport.settings import get_settings
from training.datasets import (
    LABEL_COLUMNS,
    Progress,
    Sampling,
    TrainingSet,
    Window,
    label_expression,
    plan_training,
    silent,
)
from training.nba_data import WeekFeatures

#: the share of the row limit kept for the positives (churners; customers who spent)
POSITIVE_SHARE = 0.5
#: a stratum keeps at least this many rows (or all of its rows): its weight stays measured
MIN_STRATUM_ROWS = 100
#: the least floor per stratum the limit must allow (a Bernoulli draw expecting 20 rows
#: comes back empty once in e^20)
MIN_FLOOR_ROWS = 20
#: value strata: deciles of the positive spend
VALUE_BINS = 10


@dataclass
class Lake:
    """The lake's contract tables as Ibis tables on Spark, read as the jobs read the
    warehouse: ``table(name)`` and ``execute(expr)``."""

    tables: dict[str, Any]

    def table(self, name: str) -> Any:
        return self.tables[name]

    def execute(self, expr: Any) -> pd.DataFrame:
        """The result as pandas; Spark's times (naive, in the session's UTC) made UTC."""
        frame = expr.execute()
        for name in frame.columns:
            if pd.api.types.is_datetime64_any_dtype(frame[name]) and frame[name].dt.tz is None:
                frame[name] = frame[name].dt.tz_localize("UTC")
        return frame


def build_on_spark(
    kind: str,
    spark: Any,
    lake: str,
    window: Window,
    spec: FeatureSpec | None = None,
    max_rows: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> TrainingSet:
    """The training set of :func:`training.datasets.build_training_set` built on Spark
    from the lake; sampled for ``kind`` (``churn`` or ``value``) to about ``max_rows``
    rows (default ``RAPPORT_TRAIN_MAX_ROWS``) when it has more, with a ``weight`` column."""
    from features import spark as on_spark

    say = silent(progress)
    spec = spec or default_spec()
    limit = max_rows or get_settings().train_max_rows
    tables = Lake(on_spark.lake_tables(spark, lake))
    plan = plan_training(tables, window, say)
    horizon_days = window.horizon_days
    say(f"features and labels for {len(plan.all)} cutoffs on Spark")
    frame = labelled_frame(spark, lake, tables, plan.all, horizon_days, spec).persist()
    try:
        rows = frame.count()
        names = ["customer_id", "as_of", *spec.names, *LABEL_COLUMNS]
        if rows <= limit:
            say(f"{rows:,} rows: no sampling needed (limit {limit:,})")
            out = _local(frame.select(*names).toPandas())
            return TrainingSet(out, plan, horizon_days, list(spec.names), spec.version, "spark")
        population = frame.filter("active") if kind == "churn" else frame
        strata = population.selectExpr(
            "*", "unix_micros(as_of) AS _cut", f"{_stratum(kind, population)} AS _stratum"
        )
        sizes = pd.DataFrame(
            [r.asDict() for r in strata.groupBy("_cut", "_stratum").count().collect()]
        )
        shares = allocate(sizes.rename(columns={"count": "rows"}), limit, positive=_positive)
        total = int(shares["rows"].sum())
        say(f"{total:,} {kind} rows: sampling about {limit:,} (stratified, weighted)")
        targets = spark.createDataFrame(shares[["_cut", "_stratum", "share"]]).hint("broadcast")
        kept = strata.join(targets, ["_cut", "_stratum"]).filter(f"{_uniform(seed)} < share")
        sample = kept.select(*names, "_cut", "_stratum").toPandas()
        out = _local(weigh(sample, shares).drop(columns=["_cut", "_stratum"]))
        sampling = Sampling(kind, total, len(out), limit, seed)
        say(f"sampled {len(out):,} of {total:,} rows; weights sum to {out['weight'].sum():,.0f}")
        return TrainingSet(
            out, plan, horizon_days, list(spec.names), spec.version, "spark", sampling
        )
    finally:
        frame.unpersist()


def labelled_frame(
    spark: Any,
    lake: str,
    tables: Lake,
    cutoffs: Sequence[datetime],
    horizon_days: int,
    spec: FeatureSpec,
) -> Any:
    """Features per (customer, cutoff) joined to their labels, as a lazy Spark DataFrame
    (:func:`training.datasets.labelled_features` on Spark)."""
    from features import spark as on_spark

    features = [on_spark.build_features(spark, lake, cutoff, spec) for cutoff in cutoffs]
    stacked = features[0]
    for more in features[1:]:
        stacked = stacked.unionByName(more)
    labels = on_spark.to_spark(label_expression(tables, cutoffs, horizon_days))
    return stacked.join(labels, ["customer_id", "as_of"])


def week_features(spark: Any, lake: str, spec: FeatureSpec | None = None) -> WeekFeatures:
    """The NBA training set's features (:data:`training.nba_data.WeekFeatures`) built on
    Spark from the lake: a cutoff's features of every customer (:func:`features.spark.
    build_features`), joined in Spark with the customers asked for, so only their rows
    reach the driver, in the DuckDB build's dtypes and order."""
    from features import spark as on_spark

    spec = spec or default_spec()

    def features(as_of: datetime, customer_ids: Sequence[str]) -> pd.DataFrame:
        wanted = spark.createDataFrame(pd.DataFrame({"customer_id": list(customer_ids)}))
        built = on_spark.build_features(spark, lake, as_of, spec)
        frame = _local(built.join(wanted.hint("broadcast"), "customer_id").toPandas())
        return frame.drop(columns="as_of")[["customer_id", *spec.names]]

    return features


def _positive(stratum: int) -> bool:
    """Churners (stratum 1) and spenders (strata 1..10) are the positives."""
    return stratum >= 1


def _stratum(kind: str, population: Any) -> str:
    """The stratum of a row, as Spark SQL: the churn label, or the spend decile."""
    if kind == "churn":
        return "CAST(churned AS INT)"
    probabilities = [k / VALUE_BINS for k in range(1, VALUE_BINS)]
    spenders = population.filter("spend > 0")
    edges = sorted(set(spenders.approxQuantile("spend", probabilities, 0.001)))
    cases = " ".join(f"WHEN spend <= {edge!r} THEN {i + 1}" for i, edge in enumerate(edges))
    return f"CASE WHEN spend <= 0 THEN 0 {cases} ELSE {len(edges) + 1} END"


def _uniform(seed: int) -> str:
    """A uniform number in [0, 1) per (customer, cutoff, seed), as Spark SQL."""
    bits = f"(xxhash64(customer_id, unix_micros(as_of), {int(seed)}) & 9007199254740991)"
    return f"(CAST({bits} AS DOUBLE) / CAST(9007199254740992 AS DOUBLE))"


def allocate(
    sizes: pd.DataFrame,
    limit: int,
    positive: Any = _positive,
    positive_share: float = POSITIVE_SHARE,
    min_rows: int = MIN_STRATUM_ROWS,
) -> pd.DataFrame:
    """Rows to keep per stratum (``sizes``: ``_cut``, ``_stratum``, ``rows``): the
    positive strata whole while they fit in ``positive_share`` of ``limit`` (else that
    share, in proportion to their sizes), the other strata share what is left in
    proportion to their sizes; every stratum keeps at least ``min_rows`` (or all its
    rows; at most half of ``limit`` goes to these floors). Adds ``keep`` and ``share``
    (= keep / rows, the inclusion probability)."""
    out = sizes.copy()
    rows = out["rows"].to_numpy(dtype="float64")
    is_pos = out["_stratum"].map(positive).to_numpy(dtype=bool)
    pos_rows, neg_rows = rows[is_pos].sum(), rows[~is_pos].sum()
    pos_room = min(pos_rows, positive_share * limit)
    neg_room = min(neg_rows, limit - pos_room)
    pos_room = min(pos_rows, limit - neg_room)  # what the negatives left unused
    keep = np.where(
        is_pos,
        rows * (pos_room / max(pos_rows, 1.0)),
        rows * (neg_room / max(neg_rows, 1.0)),
    )
    floor = min(min_rows, limit // (2 * max(len(out), 1)))  # floors take at most half
    if floor < MIN_FLOOR_ROWS:  # a stratum drawn empty would drop its population's weight
        raise ValueError(
            f"a training-set limit of {limit:,} rows is too small for {len(out)} strata "
            f"(cutoffs x label strata): raise RAPPORT_TRAIN_MAX_ROWS to at least "
            f"{2 * MIN_FLOOR_ROWS * len(out):,}"
        )
    keep = np.minimum(rows, np.maximum(np.round(keep), np.minimum(rows, floor)))
    out["keep"] = keep.astype("int64")
    out["share"] = keep / np.maximum(rows, 1.0)
    return out


def weigh(sample: pd.DataFrame, shares: pd.DataFrame) -> pd.DataFrame:
    """Each sampled row's weight: its stratum's rows over the rows kept of it (so the
    weights of a stratum sum to its population). A stratum with rows but none drawn is
    an error: its population would silently leave the weights (:func:`allocate`'s floor
    of at least :data:`MIN_FLOOR_ROWS` expected rows makes it a 1-in-e^20 event)."""
    kept = sample.groupby(["_cut", "_stratum"]).size().rename("kept").reset_index()
    strata = shares[["_cut", "_stratum", "rows"]].merge(kept, on=["_cut", "_stratum"], how="left")
    empty = strata[(strata["rows"] > 0) & strata["kept"].isna()]
    if len(empty):
        raise ValueError(
            f"{len(empty)} sampling strata drew no row (cutoff, stratum: "
            f"{list(zip(empty['_cut'], empty['_stratum'], strict=True))[:5]}); "
            "raise RAPPORT_TRAIN_MAX_ROWS or change the seed"
        )
    strata["weight"] = strata["rows"] / strata["kept"]
    return sample.merge(strata[["_cut", "_stratum", "weight"]], on=["_cut", "_stratum"])


def _local(frame: pd.DataFrame) -> pd.DataFrame:
    """The DuckDB path's dtypes and order: ids as strings, cutoffs in UTC microseconds,
    rows by cutoff then customer."""
    frame["customer_id"] = frame["customer_id"].astype("string")
    frame["as_of"] = pd.to_datetime(frame["as_of"], utc=True).astype("datetime64[us, UTC]")
    return frame.sort_values(["as_of", "customer_id"], ignore_index=True)
