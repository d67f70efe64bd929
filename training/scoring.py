"""Batch scoring: every known customer scored by the champions, appended to ``scores``.

``rapport score [--as-of DATE]`` runs :func:`score_all`:

1. the champions are loaded from the MLflow registry (``churn@champion`` and
   ``value@champion`` are required; ``nba@champion`` is optional -- without it every
   customer's best action is ``no_action`` and target lists fall back to the value at
   risk, see :mod:`models.targeting`);
2. the features of every customer known at ``as_of`` are built once
   (:func:`features.batch.build`, DuckDB);
3. segments (RFM quintiles, ABC tiers) are fitted on that batch -- the same thing
   ``rapport materialize`` does for the live service -- and stored with the run;
4. customers are scored in chunks of ``chunk_rows`` by the very :class:`models.scorer.Scorer`
   the service uses (churn, value with its interval, segments, arbitration of the next best
   action), so memory beyond the feature frame stays bounded by one chunk;
5. each chunk is appended to the warehouse table ``scores``; the run is recorded in
   ``score_runs`` (model versions, feature set, catalog, segments, timings) in the same
   transaction, so a failed run leaves nothing behind and history is never overwritten.

``scores`` holds one row per customer and run: ``run_id``, ``as_of``, ``scored_at``, the
score columns of :data:`models.scorer.SCORE_COLUMNS`, per action the uplift that made its
expected value (``uplift_conversion_<action>`` for retention actions, already capped at
the churn probability, ``uplift_revenue_<action>`` for growth actions; null without an
NBA model) so that target lists can re-run arbitration with fresh consent and contact
history, and the stamps ``churn_version``, ``value_version``, ``nba_version``,
``feature_set``, ``catalog_version``. :func:`latest_run` / :func:`load_scores` read them back.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from features.batch import build
from features.segments import SegmentModel, fit_segments
from features.spec import FeatureSpec, default_spec
from features.tables.scores import RUNS, RUNS_DDL, SCORES
from features.timeutil import as_utc
from features.warehouse import raw
from models.catalog import Catalog, default_catalog
from models.policy import Exclusion
from models.scorer import SCORE_COLUMNS, Scorer
from models.value import OUTPUT_COLUMNS
from training import tracking

Progress = Callable[[str], None]
NBA = "nba"
#: customers per scoring chunk: large enough for LightGBM's batch speed, small in memory
CHUNK_ROWS = 250_000


@dataclass
class Champions:
    """The models batch scoring uses and their registry versions."""

    churn: Any
    value: Any
    nba: Any | None
    versions: dict[str, str]
    feature_sets: dict[str, str] = field(default_factory=dict)

    @property
    def catalog(self) -> Catalog:
        return getattr(self.nba, "catalog", None) or default_catalog()


def load_champions() -> Champions:
    """``churn`` and ``value`` @champion (LookupError without them) and ``nba`` if any.

    The NBA model is loaded through MLflow directly (``models:/nba/<version>``), as the
    registry holds it; its object is a :class:`models.nba.NbaModel`.
    """
    churn, churn_version = tracking.load_model("churn", tracking.CHAMPION)
    value, value_version = tracking.load_model("value", tracking.CHAMPION)
    versions = {"churn": churn_version, "value": value_version}
    feature_sets = {}
    for kind in ("churn", "value"):
        tags = tracking.run_of(tracking.get_version(kind, version=versions[kind])).data.tags
        if "rapport.feature_set" in tags:
            feature_sets[kind] = tags["rapport.feature_set"]
    nba = None
    import mlflow
    from mlflow.exceptions import MlflowException

    client = tracking.client()
    try:
        with tracking.quiet():
            found = client.get_model_version_by_alias(NBA, tracking.CHAMPION)
    except MlflowException:
        found = None
    if found is not None:
        with tracking.quiet():
            pyfunc = mlflow.pyfunc.load_model(f"models:/{NBA}/{found.version}")
        nba = pyfunc.unwrap_python_model().model
        versions[NBA] = str(found.version)
        # the registered uplift models predict on one thread (right for the live service,
        # one row at a time); a batch of 250,000 rows wants every core
        uplift = getattr(nba, "uplift", None)
        if uplift is not None and isinstance(getattr(uplift, "params", None), dict):
            uplift.params = {**uplift.params, "num_threads": os.cpu_count() or 1}
    return Champions(churn, value, nba, versions, feature_sets)


def check_feature_sets(champions: Champions, spec: FeatureSpec) -> None:
    """Refuse champions trained on another feature set than the one we compute."""
    wrong = {k: v for k, v in champions.feature_sets.items() if v != spec.version}
    if wrong:
        raise ValueError(
            f"champions trained on another feature set ({wrong}) than the current "
            f"{spec.version}: retrain and promote them"
        )


def build_scorer(champions: Champions, segments: SegmentModel, spec: FeatureSpec) -> Scorer:
    return Scorer(
        champions.churn,
        champions.value,
        champions.nba,
        champions.catalog,
        segments,
        spec,
        dict(champions.versions),
    )


def score_chunk(scorer: Scorer, features: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
    """:data:`SCORE_COLUMNS` (as :meth:`Scorer.score_frame`) plus each action's uplift."""
    enriched = scorer.enrich(features, as_of)
    result = scorer.arbitrate(enriched)
    best = result.ranking()[:, 0]
    rows = np.arange(len(enriched))
    out: dict[str, Any] = {"customer_id": enriched["customer_id"].astype(str).to_numpy()}
    for name in ("churn_probability", *OUTPUT_COLUMNS, "r_score", "f_score", "m_score"):
        out[name] = enriched[name].to_numpy(dtype="float64")
    for name in ("rfm_segment", "abc_tier"):
        out[name] = enriched[name].astype(str).to_numpy()
    channels = np.array([a.channel for a in scorer.catalog.actions], dtype=object)
    out["best_action"] = np.asarray(result.actions, dtype=object)[best]
    out["best_channel"] = channels[best]
    out["expected_value"] = result.expected_value[rows, best]
    out["action_cost"] = result.cost[best]
    out["action_score"] = result.score[rows, best]
    for j, action in enumerate(scorer.catalog.actions):
        if j == 0:
            continue  # no_action, the control
        known = not (result.reason[:, j] == Exclusion.NO_UPLIFT).all()
        up = result.uplift[:, j] if known else np.full(len(rows), np.nan)
        retained = action.value_kind == "retained_value"
        out[f"uplift_conversion_{action.id}"] = up if retained else np.full(len(rows), np.nan)
        out[f"uplift_revenue_{action.id}"] = np.full(len(rows), np.nan) if retained else up
    frame = pd.DataFrame(out)
    assert list(frame.columns[1 : len(SCORE_COLUMNS) + 1]) == list(SCORE_COLUMNS)
    return frame


@dataclass
class ScoreRun:
    run_id: str
    as_of: datetime
    rows: int
    versions: dict[str, str]
    feature_set: str
    catalog_version: str
    timings: dict[str, float]
    best_actions: dict[str, int]
    abc: dict[str, int]

    @property
    def seconds(self) -> float:
        return sum(self.timings.values())

    def summary(self) -> str:
        versions = ", ".join(f"{k} v{v}" for k, v in sorted(self.versions.items()))
        if "nba" not in self.versions:
            versions += ", no nba champion (best action: no_action)"
        timings = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())
        actions = ", ".join(f"{k} {v:,}" for k, v in self.best_actions.items())
        abc = ", ".join(f"{k} {v:,}" for k, v in sorted(self.abc.items()))
        rate = self.rows / self.seconds if self.seconds else 0.0
        return "\n".join(
            [
                f"scored {self.rows:,} customers as of {self.as_of:%Y-%m-%d %H:%M} UTC in "
                f"{self.seconds:.1f}s ({rate:,.0f} rows/s): run {self.run_id}",
                f"  models: {versions}; feature set {self.feature_set}; "
                f"catalog {self.catalog_version}",
                f"  time: {timings}",
                f"  best action: {actions}",
                f"  ABC tier: {abc}",
                f"  appended to the warehouse table `{SCORES}` (history kept; runs in `{RUNS}`)",
            ]
        )


def _add_missing_columns(db: Any, table: pa.Table) -> None:
    """A catalog with new actions adds uplift columns (older runs hold null there)."""
    have = {r[0] for r in db.execute(f"DESCRIBE {SCORES}").fetchall()}
    for name in table.column_names:
        if name not in have:
            kind = "DOUBLE" if pa.types.is_floating(table.schema.field(name).type) else "VARCHAR"
            db.execute(f'ALTER TABLE {SCORES} ADD COLUMN "{name}" {kind}')


def score_all(
    con: Any,
    as_of: datetime | str | None = None,
    champions: Champions | None = None,
    spec: FeatureSpec | None = None,
    chunk_rows: int = CHUNK_ROWS,
    progress: Progress | None = None,
) -> ScoreRun:
    """Score every customer known at ``as_of`` (default: now) and append to ``scores``.

    ``con`` is the warehouse (Ibis DuckDB backend opened read-write).
    """
    say = progress or (lambda _: None)
    spec = spec or default_spec()
    cutoff = as_utc(as_of) if as_of is not None else datetime.now(UTC)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if champions is None:
        say("loading the champion models from the MLflow registry")
        champions = load_champions()
    check_feature_sets(champions, spec)
    timings["models"] = time.perf_counter() - start

    start = time.perf_counter()
    say(f"building features as of {cutoff:%Y-%m-%d %H:%M} UTC")
    features = build(con, cutoff, spec)
    segments = fit_segments(features)
    timings["features"] = time.perf_counter() - start
    total = len(features)
    say(f"{total:,} customers x {len(spec.names)} features; scoring in chunks of {chunk_rows:,}")

    scorer = build_scorer(champions, segments, spec)
    catalog = scorer.catalog
    run_id = datetime.now(UTC).strftime("sr-%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6]
    scored_at = datetime.now(UTC)
    stamps = {
        "run_id": run_id,
        "as_of": pd.Timestamp(cutoff),
        "scored_at": pd.Timestamp(scored_at),
    }
    tail = {
        "churn_version": champions.versions.get("churn"),
        "value_version": champions.versions.get("value"),
        "nba_version": champions.versions.get(NBA),
        "feature_set": spec.version,
        "catalog_version": catalog.version,
    }
    db = raw(con)
    best: dict[str, int] = {}
    abc: dict[str, int] = {}
    score_s = write_s = 0.0
    db.execute("BEGIN TRANSACTION")
    try:
        db.execute(RUNS_DDL)
        for offset in range(0, max(total, 1), chunk_rows):
            t0 = time.perf_counter()
            part = features.iloc[offset : offset + chunk_rows]
            if part.empty:
                break
            scored = score_chunk(scorer, part, cutoff)
            for name, value in stamps.items():
                scored.insert(list(stamps).index(name), name, value)
            for name, value in tail.items():
                scored[name] = pd.Series([value] * len(scored), dtype="string")
            for key, n in scored["best_action"].value_counts().items():
                best[str(key)] = best.get(str(key), 0) + int(n)
            for key, n in scored["abc_tier"].value_counts().items():
                abc[str(key)] = abc.get(str(key), 0) + int(n)
            table = pa.Table.from_pandas(scored, preserve_index=False)
            t1 = time.perf_counter()
            db.register("chunk", table)
            db.execute(f"CREATE TABLE IF NOT EXISTS {SCORES} AS SELECT * FROM chunk LIMIT 0")
            _add_missing_columns(db, table)
            db.execute(f"INSERT INTO {SCORES} BY NAME SELECT * FROM chunk")
            db.unregister("chunk")
            t2 = time.perf_counter()
            score_s += t1 - t0
            write_s += t2 - t1
            done = min(offset + chunk_rows, total)
            say(f"scored {done:,} / {total:,} ({done / max(score_s + write_s, 1e-9):,.0f} rows/s)")
        timings["scoring"] = score_s
        timings["writing"] = write_s
        db.execute(
            f"INSERT INTO {RUNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                run_id,
                cutoff,
                scored_at,
                total,
                sum(timings.values()),
                tail["churn_version"],
                tail["value_version"],
                tail["nba_version"],
                spec.version,
                catalog.version,
                json.dumps(catalog.model_dump(mode="json")),
                segments.to_json(),
            ],
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return ScoreRun(
        run_id,
        cutoff,
        total,
        dict(champions.versions),
        spec.version,
        catalog.version,
        timings,
        dict(sorted(best.items(), key=lambda kv: -kv[1])),
        abc,
    )
