"""The next-best-action training set: logged campaign decisions joined with what was known
about each customer when the decision was made.

Why a module of its own: the point-in-time join is the part of the NBA job that must never
leak the future, and the jobs in :mod:`training.nba` (train, explain) and the quality tests
all build on it.

**Training set.** Every ``campaign_log`` decision with a known outcome (its current
outcome in :mod:`features.tables.outcomes`, or one written inline in the log) is one row:
the logged action, its propensity, the outcome and the revenue, joined with the customer's
features as of the start of the decision's week (``decided_at`` floored to Monday 00:00
UTC: strictly before the decision, so nothing of the response leaks in, and one feature
build per week instead of one per decision), the churn and value champions' scores at that
cutoff and the RFM / ABC segments of the warehouse's current segment model
(:mod:`features.tables.segments`, the cut points the live service uses) -- so the
catalog's eligibility rules are evaluated as the service evaluates them. Time split: the
latest decision weeks (at least ``holdout_fraction`` of the decisions) are the holdout;
the uplift models never see them. A log of one week (a one-shot campaign) cannot be split
in time: a fixed share of its decisions, picked by a hash of the decision id, is held out
instead.

**Without champions.** When the catalog's values and rules read no churn or value score
(:meth:`models.catalog.Catalog.score_needs`), the set is built from the features and
segments alone (:func:`enricher_for`; segments from the stored model, fitted and stored
once if there is none); with both champions registered their scores are
added as features either way.

**Propensities.** Decisions logged without a propensity get an estimated one
(:func:`models.propensity.fill_propensities`: cross-fitted over every decision of the log,
from the same features), and the column ``propensity_estimated`` says which.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from features.batch import build
from features.segments import SegmentModel, assign_segments, fit_version
from features.spec import FeatureSpec, default_spec
from features.tables.outcomes import decision_outcomes, decisions_with_outcome
from features.tables.segments import NoSegmentsError, load_version
from features.timeutil import as_utc
from features.warehouse import raw
from models import registry
from models.catalog import CHURN_FIELD, Catalog, default_catalog
from models.propensity import fill_propensities
from models.registry import CHAMPION
from training.datasets import Progress, data_end, silent

#: scores the uplift models read next to the spec's features
SCORE_FEATURES = (CHURN_FIELD, "value_mean")

Enrich = Callable[[pd.DataFrame, datetime], pd.DataFrame]
#: the features as of a cutoff of (at least) some customers: the DuckDB build
#: (:func:`warehouse_features`) or Spark's (:func:`training.spark_datasets.week_features`)
WeekFeatures = Callable[[datetime, Sequence[str]], pd.DataFrame]


def week_start(values: pd.Series) -> pd.Series:
    """Timestamps floored to Monday 00:00 UTC of their week."""
    ts = pd.to_datetime(values, utc=True)
    day = ts.dt.floor("D")
    return (day - pd.to_timedelta(day.dt.day_of_week, unit="D")).astype("datetime64[us, UTC]")


def logged_decisions(
    con: Any, as_of: datetime | None = None, max_rows: int | None = None, seed: int = 0
) -> pd.DataFrame:
    """Decisions with a known outcome decided before ``as_of`` (default: all), each with its
    current outcome (:func:`features.tables.outcomes.decision_outcomes`: feedback, outcome
    files, inline campaign-log outcomes, attribution from orders).

    ``max_rows``: when more decisions than that have an outcome before ``as_of``, a
    uniform sample of about ``max_rows`` of them (by a hash of the decision id and
    ``seed``, drawn in the warehouse, so only the sample is read). Uniform, so the sample
    needs no weights: every estimate the NBA job makes (uplift, propensities, off-policy
    values) is a mean over decisions."""
    before = as_utc(as_of) if as_of is not None else None
    share = _share(decisions_with_outcome(con, before), max_rows)
    frame = decision_outcomes(con, with_outcome=True, before=before, share=share, seed=seed)
    frame = frame[
        ["decision_id", "customer_id", "decided_at", "action", "propensity", "outcome", "revenue"]
    ].reset_index(drop=True)
    if frame.empty:
        raise ValueError(
            "the campaign log holds no decision with a known outcome"
            + (f" before {as_utc(as_of):%Y-%m-%d}" if as_of else "")
            + "; the NBA policy learns from logged campaign outcomes"
        )
    frame["customer_id"] = frame["customer_id"].astype("string")
    frame["action"] = frame["action"].astype(str)
    frame["decided_at"] = pd.to_datetime(frame["decided_at"], utc=True)
    frame["outcome"] = frame["outcome"].astype("float64")
    frame["revenue"] = frame["revenue"].astype("float64").fillna(0.0)
    frame["as_of"] = week_start(frame["decided_at"])
    return frame.sort_values(["decided_at", "decision_id"]).reset_index(drop=True)


def _share(decisions: int, max_rows: int | None) -> float:
    """The share of ``decisions`` that keeps about ``max_rows`` (1: all of them)."""
    if max_rows is None or decisions <= max_rows:
        return 1.0
    return max_rows / decisions


def score_enricher(churn: Any, value: Any, segments: SegmentModel) -> Enrich:
    """Churn / value scores and the ``segments`` cut points' segments for a feature frame."""
    from models.scorer import Scorer

    scorer = Scorer(churn, value, None, default_catalog(), segments)

    def enrich(features: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
        return scorer.enrich(features, as_of)

    return enrich


def champion_enricher(con: Any, progress: Progress | None = None) -> tuple[Enrich, dict[str, str]]:
    """The enricher over ``churn@champion``, ``value@champion`` and the warehouse's current
    segment model, and their versions (LookupError if one is absent)."""
    models, versions = _champions()
    for kind in registry.REQUIRED:
        if kind not in models:
            raise LookupError(
                f"the NBA policy needs the churn and value champions' scores, but there is no "
                f"{kind}@{CHAMPION}: run `rapport train churn`, `rapport train value`, "
                "`rapport promote churn` and `rapport promote value` first (or `rapport demo`)"
            )
    segments = load_version(raw(con))
    silent(progress)(
        f"scores of churn v{versions['churn']}, value v{versions['value']}; {segments.describe()}"
    )
    versions["segments"] = segments.version
    return score_enricher(models["churn"], models["value"], segments.model), versions


def _champions() -> tuple[dict[str, Any], dict[str, str]]:
    """The churn and value champions that are registered (models, versions)."""
    models: dict[str, Any] = {}
    versions: dict[str, str] = {}
    for kind in registry.REQUIRED:
        try:
            models[kind], versions[kind] = registry.load_model(kind, CHAMPION)
        except LookupError:
            continue
    return models, versions


def features_enricher(
    con: Any, as_of: datetime | None = None, progress: Progress | None = None
) -> tuple[Enrich, dict[str, str]]:
    """Segments without any score: the warehouse's current segment model; when none is
    stored yet (no `rapport features` / `rapport score` run), one fitted on the snapshot at
    ``as_of`` (default: the data's end), once, versioned as a scoring run's and recorded
    with the NBA run (the warehouse is read-only here), never refitted per week."""
    say = silent(progress)
    try:
        stored = load_version(raw(con))
    except NoSegmentsError:
        when = as_utc(as_of) if as_of is not None else data_end(con)
        spec = default_spec()
        stored = fit_version(build(con, when, spec), when, spec.version)
        say(f"no stored segment model: fitted {stored.describe()} (recorded with the run)")
    else:
        say(stored.describe())
    model = stored.model

    def enrich(features: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
        return _with_segments(features, model)

    return enrich, {"segments": stored.version}


def _with_segments(features: pd.DataFrame, model: SegmentModel) -> pd.DataFrame:
    frame = features.copy()
    for name, column in assign_segments(frame, model).items():
        frame[name] = column
    return frame


def enricher_for(
    con: Any, catalog: Catalog, progress: Progress | None = None, as_of: datetime | None = None
) -> tuple[Enrich, dict[str, str]]:
    """Scores of both champions when they are registered; otherwise features and segments
    alone, if no action of ``catalog`` reads a score (LookupError naming each action and
    the champions it needs if one does)."""
    models, _ = _champions()
    if all(kind in models for kind in registry.REQUIRED):
        return champion_enricher(con, progress)
    lacking = {
        action: [kind for kind in kinds if kind not in models]
        for action, kinds in catalog.score_needs().items()
    }
    lacking = {action: kinds for action, kinds in lacking.items() if kinds}
    if lacking:
        needs = "; ".join(
            f"action {action!r} needs " + " and ".join(f"{k}@{CHAMPION}" for k in kinds)
            for action, kinds in lacking.items()
        )
        missing = sorted({k for kinds in lacking.values() for k in kinds})
        steps = ", ".join(f"`rapport train {k}` + `rapport promote {k}`" for k in missing)
        raise LookupError(
            f"catalog {catalog.version} reads scores of champions that are not registered: "
            f"{needs}. Run {steps}, or drop those actions (their retained_value kind, their "
            "rules on churn_probability / value_*) from the catalog"
        )
    return features_enricher(con, as_of, progress)


def warehouse_features(con: Any, spec: FeatureSpec | None = None) -> WeekFeatures:
    """The DuckDB feature build of the warehouse ``con`` as a :data:`WeekFeatures` (every
    customer known at the cutoff; the join keeps the ones asked for)."""

    def features(as_of: datetime, customer_ids: Sequence[str]) -> pd.DataFrame:
        return build(con, as_of, spec)

    return features


def customer_frame(
    con: Any,
    as_of: datetime,
    enrich: Enrich,
    customer_ids: Sequence[str] | None = None,
    spec: FeatureSpec | None = None,
    features: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Features, scores and segments of the customers known at ``as_of`` (optionally some);
    ``features``: that cutoff's features when already built (else the DuckDB build)."""
    features = build(con, as_of, spec) if features is None else features
    features["as_of"] = pd.Timestamp(as_utc(as_of))
    enriched = enrich(features, as_utc(as_of))
    if customer_ids is not None:
        enriched = enriched[enriched["customer_id"].isin(list(customer_ids))]
    return enriched.reset_index(drop=True)


@dataclass
class NbaData:
    """Logged decisions joined with features, scores and segments, split in time."""

    frame: pd.DataFrame
    feature_names: list[str]
    holdout_from: datetime
    spec_version: str
    as_of: datetime
    #: held-out rows when the log spans one week (None: the time split)
    random_holdout: np.ndarray | None = None

    def _held(self) -> np.ndarray:
        if self.random_holdout is not None:
            return self.random_holdout
        return (self.frame["as_of"] >= pd.Timestamp(self.holdout_from)).to_numpy()

    def part(self, name: str) -> pd.DataFrame:
        held = self._held()
        rows = self.frame[held if name == "test" else ~held]
        return rows.reset_index(drop=True)

    def counts(self) -> dict[str, int]:
        train, test = self.part("train"), self.part("test")
        return {
            "decisions_train": len(train),
            "decisions_test": len(test),
            "cutoffs_train": int(train["as_of"].nunique()),
            "cutoffs_test": int(test["as_of"].nunique()),
        }

    def describe(self) -> dict[str, str]:
        train = self.part("train")
        held = "random" if self.random_holdout is not None else f"{self.holdout_from:%Y-%m-%d}"
        return {
            "decisions_before": f"{self.as_of:%Y-%m-%d}",
            "train_weeks": f"{train['as_of'].min():%Y-%m-%d}..{train['as_of'].max():%Y-%m-%d}",
            "holdout_from": held,
        }


def _random_holdout(decision_ids: pd.Series, fraction: float) -> np.ndarray:
    """A fixed share of the decisions, picked by a hash of their id (same log, same split)."""
    hashed = pd.util.hash_pandas_object(decision_ids.astype(str), index=False).to_numpy()
    return (hashed % 10_000) < round(fraction * 10_000)


def _holdout_start(cutoffs: pd.Series, fraction: float) -> datetime:
    """The earliest cutoff of the latest weeks holding at least ``fraction`` of the rows."""
    counts = cutoffs.value_counts().sort_index(ascending=False)
    if len(counts) < 2:
        raise ValueError(
            "the logged decisions span a single week: a time split needs at least two "
            "(train on the earlier weeks, evaluate on the latest)"
        )
    share = counts.cumsum() / counts.sum()
    reached = int(np.searchsorted(share.to_numpy(), fraction))
    reached = min(reached, len(counts) - 2)  # keep at least one training week
    return as_utc(counts.index[reached])


def build_nba_data(
    con: Any,
    as_of: datetime | str | None = None,
    enrich: Enrich | None = None,
    holdout_fraction: float = 0.2,
    spec: FeatureSpec | None = None,
    progress: Progress | None = None,
    seed: int = 0,
    features: WeekFeatures | None = None,
    max_rows: int | None = None,
) -> NbaData:
    """The NBA training set (see the module docstring); ``enrich`` defaults to the
    churn / value champions (:func:`champion_enricher`); ``seed`` drives the propensity
    model's folds and the sample; ``features`` builds each week's features (default: the
    DuckDB build); ``max_rows``: a uniform sample of the decisions when the log holds more
    (:func:`logged_decisions`)."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    say = silent(progress)
    spec = spec or default_spec()
    if enrich is None:
        enrich = champion_enricher(con, say)[0]
    cutoff = as_utc(as_of) if as_of is not None else data_end(con)
    features = features or warehouse_features(con, spec)
    decisions = logged_decisions(con, cutoff, max_rows, seed)
    weeks = sorted(decisions["as_of"].unique())
    say(f"{len(decisions):,} decisions with outcomes in {len(weeks)} weeks: features per week")
    parts = []
    for week in weeks:
        rows = decisions[decisions["as_of"] == week]
        built = features(as_utc(week), rows["customer_id"].unique().tolist())
        snapshot = customer_frame(con, as_utc(week), enrich, spec=spec, features=built)
        snapshot = snapshot.drop(columns="as_of")
        parts.append(rows.merge(snapshot, on="customer_id", how="inner"))
    frame = pd.concat(parts, ignore_index=True)
    lost = len(decisions) - len(frame)
    if lost:
        say(f"{lost:,} decisions dropped: customer unknown at the decision week")
    names = [*spec.names, *(c for c in SCORE_FEATURES if c in frame.columns)]
    if frame["propensity"].isna().any():
        say(f"{int(frame['propensity'].isna().sum()):,} decisions without a propensity: estimating")
    frame = fill_propensities(frame, names, seed)
    if frame["as_of"].nunique() == 1:
        held = _random_holdout(frame["decision_id"], holdout_fraction)
        return NbaData(frame, names, as_utc(frame["as_of"].iloc[0]), spec.version, cutoff, held)
    holdout_from = _holdout_start(frame["as_of"], holdout_fraction)
    return NbaData(frame, names, holdout_from, spec.version, cutoff)
