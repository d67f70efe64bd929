"""Batch scoring: every known customer scored by the champions, appended to ``scores``.

``rapport score [--as-of DATE]`` runs :func:`score_all`:

1. the champions are loaded from the MLflow registry (:func:`models.registry.load_champions`:
   ``churn@champion`` and ``value@champion`` are required; ``nba@champion`` is optional --
   without it every customer's best action is ``no_action`` and target lists fall back to
   the value at risk, see :mod:`models.targeting`) and checked against the feature spec;
2. the features of every customer known at ``as_of`` are built once
   (:func:`features.batch.build`, DuckDB);
3. segments (RFM quintiles, ABC tiers) are fitted on that batch and stored as a new
   version in ``segment_models`` (:mod:`features.tables.segments`), the one ``rapport
   materialize`` then hands to the live service; the run records the version;
4. customers are scored in chunks of ``chunk_rows`` by :meth:`models.scorer.Scorer.score_frame`,
   the very scorer the service uses (churn, value with its interval, segments, arbitration
   of the next best action), so memory beyond the feature frame stays bounded by one chunk;
5. each chunk is appended to the warehouse table ``scores``; the run is recorded in
   ``score_runs`` (model versions, feature set, catalog, segments version, timings) and a
   fixed sample of the features it scored (:data:`~features.tables.scores.FEATURE_SAMPLE_ROWS`
   customers) to ``score_features``, for ``rapport monitor``'s drift checks, in the same
   transaction, so a failed run leaves nothing behind and history is never overwritten
   (``score_features`` alone is pruned to the latest ``RAPPORT_SCORE_FEATURE_RUNS`` runs,
   default 12: the monitor reads the latest run's sample only).
6. the committed run is published as immutable files (:func:`features.tables.snapshots.publish`:
   scores, the features it scored, suppressions), which ``POST /targets`` reads while the
   warehouse is locked by a writer.

``scores`` holds one row per customer and run: ``run_id``, ``as_of``, ``scored_at``, the
score columns of :data:`models.scorer.SCORE_COLUMNS`, per action the uplift that made its
expected value (``uplift_conversion_<action>`` for retention actions, already capped at
the churn probability, ``uplift_revenue_<action>`` for growth actions; null without an
NBA model) so that target lists can re-run arbitration with fresh consent and contact
history, and the stamps ``churn_version``, ``value_version``, ``nba_version``,
``feature_set``, ``catalog_version``. :func:`latest_run` / :func:`load_scores` read them back.
``group`` marks the always-on control group (``control``: best action ``no_action``
whatever the policy would do) against ``treated``; the run records the share and salt
it used (``control_share``, ``control_salt`` in ``score_runs``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pandas as pd
import pyarrow as pa

from features.batch import build
from features.control import ControlGroup
from features.segments import fit_version
from features.spec import FeatureSpec, default_spec
from features.tables.control import read_control
from features.tables.scores import (
    RUNS,
    RUNS_CONTROL,
    RUNS_DDL,
    RUNS_SEGMENTS_VERSION,
    SCORES,
    add_missing_columns,
    prune_feature_samples,
    write_feature_sample,
)
from features.tables.segments import save_version
from features.tables.snapshots import publish
from features.timeutil import as_utc
from features.warehouse import raw, transaction
from models.registry import Champions, build_scorer, check_compatible, load_champions
from rapport.settings import get_settings
from training.datasets import Progress

NBA = "nba"
#: customers per scoring chunk: large enough for LightGBM's batch speed, small in memory
CHUNK_ROWS = 250_000


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, e.g. a pinned container), not the
    machine's: more threads than that only take turns."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _batch_threads(champions: Champions, threads: int | None = None) -> None:
    """The registered uplift models predict on one thread (right for the live service, one
    row at a time); a batch of 250,000 rows wants every core (``threads``, default all;
    one in a Spark task, where the executor's cores are Spark's to share)."""
    uplift = getattr(champions.nba, "uplift", None)
    if uplift is not None and isinstance(getattr(uplift, "params", None), dict):
        uplift.params = {**uplift.params, "num_threads": threads or _usable_cpus()}


@dataclass
class ScoreRun:
    run_id: str
    as_of: datetime
    rows: int
    versions: dict[str, str]
    feature_set: str
    catalog_version: str
    segments_version: str
    timings: dict[str, float]
    best_actions: dict[str, int]
    abc: dict[str, int]
    #: customers of the control group (best action no_action) and the share that held them
    held_out: int = 0
    control_share: float = 0.0
    #: where the scores went: None for the warehouse table, else the lake folder (Spark)
    where: str | None = None

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
                f"catalog {self.catalog_version}; segments {self.segments_version}",
                f"  time: {timings}",
                f"  best action: {actions}",
                f"  ABC tier: {abc}",
                f"  control group: {self.held_out:,} customers held out of every action "
                f"(share {self.control_share:.1%}; `rapport control`)",
                f"  appended to the warehouse table `{SCORES}` (history kept; runs in `{RUNS}`)"
                if self.where is None
                else f"  written to {self.where} (runs in the warehouse table `{RUNS}`)",
            ]
        )


def _ready(
    champions: Champions | None, spec: FeatureSpec, say: Progress, threads: int | None = None
) -> Champions:
    """The champions (default: the registry's), refused when they do not fit ``spec``."""
    if champions is None:
        say("loading the champion models from the MLflow registry")
        champions = load_champions()
    problems = check_compatible(champions, spec)
    if problems:
        raise ValueError("; ".join(problems))
    _batch_threads(champions, threads)
    return champions


@dataclass(frozen=True)
class _Stamps:
    """What every score row of one run carries besides its scores."""

    run_id: str
    as_of: datetime
    scored_at: datetime
    feature_set: str
    catalog_version: str
    #: the champions' versions by kind
    versions: dict[str, str]

    @classmethod
    def new(cls, as_of: datetime, champions: Champions, spec: FeatureSpec, catalog: Any) -> _Stamps:
        run_id = datetime.now(UTC).strftime("sr-%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6]
        versions = dict(champions.versions)
        return cls(run_id, as_of, datetime.now(UTC), spec.version, catalog.version, versions)

    @property
    def tail(self) -> dict[str, str | None]:
        """Model versions, feature set and catalog: string columns after the scores."""
        return {
            "churn_version": self.versions.get("churn"),
            "value_version": self.versions.get("value"),
            "nba_version": self.versions.get(NBA),
            "feature_set": self.feature_set,
            "catalog_version": self.catalog_version,
        }

    def summary(
        self,
        rows: int,
        segments_version: str,
        timings: dict[str, float],
        best: dict[str, int],
        abc: dict[str, int],
        held_out: int,
        control_share: float,
        where: str | None = None,
    ) -> ScoreRun:
        """The run's :class:`ScoreRun` (best actions most frequent first)."""
        return ScoreRun(
            self.run_id,
            self.as_of,
            rows,
            dict(self.versions),
            self.feature_set,
            self.catalog_version,
            segments_version,
            timings,
            dict(sorted(best.items(), key=lambda kv: -kv[1])),
            abc,
            held_out,
            control_share,
            where=where,
        )

    def apply(self, scored: pd.DataFrame) -> pd.DataFrame:
        """``run_id``, ``as_of``, ``scored_at`` first, the tail last (in place)."""
        head = {
            "run_id": self.run_id,
            "as_of": pd.Timestamp(self.as_of),
            "scored_at": pd.Timestamp(self.scored_at),
        }
        for i, (name, value) in enumerate(head.items()):
            scored.insert(i, name, value)
        for name, tail_value in self.tail.items():
            scored[name] = pd.Series([tail_value] * len(scored), dtype="string")
        return scored


def _score_batch(scorer: Any, stamps: _Stamps, features: pd.DataFrame) -> pd.DataFrame:
    """One batch of features scored and stamped (a chunk on DuckDB, a Spark batch)."""
    return stamps.apply(scorer.score_frame(features, stamps.as_of))


def _record_run(
    db: Any,
    stamps: _Stamps,
    rows: int,
    seconds: float,
    catalog: Any,
    segments: Any,
    control: ControlGroup,
) -> None:
    """The run in ``score_runs`` and its segment model in ``segment_models`` (the
    caller's transaction)."""
    db.execute(RUNS_DDL)
    db.execute(RUNS_SEGMENTS_VERSION)
    for alter in RUNS_CONTROL:
        db.execute(alter)
    save_version(db, segments, stamps.scored_at)
    db.execute(
        f"INSERT INTO {RUNS} (run_id, as_of, scored_at, rows, seconds, churn_version, "
        "value_version, nba_version, feature_set, catalog_version, catalog_json, "
        "segments_version, control_share, control_salt) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            stamps.run_id,
            stamps.as_of,
            stamps.scored_at,
            rows,
            seconds,
            stamps.tail["churn_version"],
            stamps.tail["value_version"],
            stamps.tail["nba_version"],
            stamps.tail["feature_set"],
            catalog.version,
            json.dumps(catalog.model_dump(mode="json")),
            segments.version,
            control.share,
            control.salt,
        ],
    )


def score_all(
    con: Any,
    as_of: datetime | str | None = None,
    champions: Champions | None = None,
    spec: FeatureSpec | None = None,
    chunk_rows: int = CHUNK_ROWS,
    progress: Progress | None = None,
    control: ControlGroup | None = None,
) -> ScoreRun:
    """Score every customer known at ``as_of`` (default: now) and append to ``scores``.

    ``con`` is the warehouse (Ibis DuckDB backend opened read-write). ``champions``
    (default: the registry's) are refused when they do not fit ``spec``; their NBA
    model is set to predict on every core. ``control`` (default: the workspace's,
    :func:`features.tables.control.read_control`) is held out of every action.
    """
    say = progress or (lambda _: None)
    spec = spec or default_spec()
    cutoff = as_utc(as_of) if as_of is not None else datetime.now(UTC)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    champions = _ready(champions, spec, say)
    timings["models"] = time.perf_counter() - start

    start = time.perf_counter()
    say(f"building features as of {cutoff:%Y-%m-%d %H:%M} UTC")
    features = build(con, cutoff, spec)
    segments = fit_version(features, cutoff, spec.version)
    timings["features"] = time.perf_counter() - start
    total = len(features)
    say(f"{total:,} customers x {len(spec.names)} features; scoring in chunks of {chunk_rows:,}")

    if control is None:
        control = read_control(get_settings().home).group
    scorer = build_scorer(champions, segments.model, spec, control=control)
    catalog = scorer.catalog
    stamps = _Stamps.new(cutoff, champions, spec, catalog)
    db = raw(con)
    best: dict[str, int] = {}
    abc: dict[str, int] = {}
    held_out = 0
    score_s = write_s = 0.0
    with transaction(db):
        for offset in range(0, max(total, 1), chunk_rows):
            t0 = time.perf_counter()
            part = features.iloc[offset : offset + chunk_rows]
            if part.empty:
                break
            scored = _score_batch(scorer, stamps, part)
            for key, n in scored["best_action"].value_counts().items():
                best[str(key)] = best.get(str(key), 0) + int(n)
            held_out += int((scored["group"] == "control").sum())
            for key, n in scored["abc_tier"].value_counts().items():
                abc[str(key)] = abc.get(str(key), 0) + int(n)
            table = pa.Table.from_pandas(scored, preserve_index=False)
            t1 = time.perf_counter()
            db.register("chunk", table)
            db.execute(f"CREATE TABLE IF NOT EXISTS {SCORES} AS SELECT * FROM chunk LIMIT 0")
            add_missing_columns(db, SCORES, table)
            db.execute(f"INSERT INTO {SCORES} BY NAME SELECT * FROM chunk")
            db.unregister("chunk")
            t2 = time.perf_counter()
            score_s += t1 - t0
            write_s += t2 - t1
            done = min(offset + chunk_rows, total)
            say(f"scored {done:,} / {total:,} ({done / max(score_s + write_s, 1e-9):,.0f} rows/s)")
        t0 = time.perf_counter()
        write_feature_sample(db, stamps.run_id, features)
        write_s += time.perf_counter() - t0
        timings["scoring"] = score_s
        timings["writing"] = write_s
        _record_run(db, stamps, total, sum(timings.values()), catalog, segments, control)
        prune_feature_samples(db, get_settings().score_feature_runs)
    start = time.perf_counter()
    published = publish(db, get_settings().score_snapshots_dir, stamps.run_id, features)
    timings["publishing"] = time.perf_counter() - start
    say(f"published as {published} (what the service reads while the warehouse is busy)")
    return stamps.summary(total, segments.version, timings, best, abc, held_out, control.share)


def score_on_spark(
    con: Any,
    spark: Any,
    lake: str,
    as_of: datetime | str | None = None,
    champions: Champions | None = None,
    spec: FeatureSpec | None = None,
    progress: Progress | None = None,
    control: ControlGroup | None = None,
) -> ScoreRun:
    """:func:`score_all` on Spark: features from the lake's tables, the same ``Scorer``
    applied inside the executors (``mapInPandas``), scores appended to
    ``<lake>/scores/run_id=<run>/`` as Parquet.

    The driver loads the champions, fits the segment model exactly on the few columns it
    reads (collected), and records the run (``score_runs``) and its segment model in the
    warehouse ``con``, as :func:`score_all` does, after the scores are written. A failed
    write of a local lake removes the run's folder.
    """
    from features import spark as on_spark
    from features.lake import is_local, local_path, scores_uri

    say = progress or (lambda _: None)
    spec = spec or default_spec()
    cutoff = as_utc(as_of) if as_of is not None else datetime.now(UTC)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    champions = _ready(champions, spec, say, threads=1)
    timings["models"] = time.perf_counter() - start

    start = time.perf_counter()
    say(f"building features as of {cutoff:%Y-%m-%d %H:%M} UTC on Spark")
    snapshot = on_spark.snapshot_features(spark, lake, cutoff, spec)
    segments = fit_version(snapshot.fit, cutoff, spec.version)
    timings["features"] = time.perf_counter() - start
    if not snapshot.rows:
        raise ValueError(f"no customer signed up before {cutoff:%Y-%m-%d %H:%M} UTC in the lake")
    say(f"{snapshot.rows:,} customers x {len(spec.names)} features; scoring in the executors")

    if control is None:
        control = read_control(get_settings().home).group
    scorer = build_scorer(champions, segments.model, spec, control=control)
    stamps = _Stamps.new(cutoff, champions, spec, scorer.catalog)
    start = time.perf_counter()
    features = on_spark.read_parquet(spark, snapshot.uri).drop("as_of")
    score = partial(_score_batch, scorer, stamps)
    scored = on_spark.map_frames(features, score, score(features.limit(1).toPandas()))
    folder = f"{scores_uri(lake)}/run_id={stamps.run_id}"
    try:
        scored.write.mode("append").partitionBy("run_id").parquet(scores_uri(lake))
    except BaseException:
        if is_local(lake):
            shutil.rmtree(local_path(folder), ignore_errors=True)
        raise
    timings["scoring"] = time.perf_counter() - start
    written = on_spark.read_parquet(spark, folder)
    best = on_spark.counts(written, "best_action")
    abc = on_spark.counts(written, "abc_tier")
    held_out = on_spark.counts(written, "group").get("control", 0)
    db = raw(con)
    with transaction(db):
        _record_run(
            db, stamps, snapshot.rows, sum(timings.values()), scorer.catalog, segments, control
        )
    return stamps.summary(
        snapshot.rows, segments.version, timings, best, abc, held_out, control.share, folder
    )
