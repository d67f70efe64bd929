"""The warehouse tables of batch scoring: ``scores`` and ``score_runs``.

``rapport score`` (:mod:`training.scoring`) appends every run's scores to ``scores`` and
records the run in ``score_runs``; target lists (:mod:`features.tables.lists`) read the
latest run back from here. Reading needs only a read-only DuckDB connection, so the
service may do it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from features.timeutil import as_utc

SCORES = "scores"
RUNS = "score_runs"

RUNS_DDL = f"""CREATE TABLE IF NOT EXISTS {RUNS} (
    run_id VARCHAR PRIMARY KEY, as_of TIMESTAMPTZ, scored_at TIMESTAMPTZ, rows BIGINT,
    seconds DOUBLE, churn_version VARCHAR, value_version VARCHAR, nba_version VARCHAR,
    feature_set VARCHAR, catalog_version VARCHAR, catalog_json VARCHAR, segments_version VARCHAR
)"""
#: runs tables made before segment models were versioned held their cut points instead
RUNS_SEGMENTS_VERSION = f"ALTER TABLE {RUNS} ADD COLUMN IF NOT EXISTS segments_version VARCHAR"
#: the control group a run held out (added with the control group)
RUNS_CONTROL = (
    f"ALTER TABLE {RUNS} ADD COLUMN IF NOT EXISTS control_share DOUBLE",
    f"ALTER TABLE {RUNS} ADD COLUMN IF NOT EXISTS control_salt VARCHAR",
)


class NoScoresError(LookupError):
    """Nothing scored yet (the message says what to run)."""


@dataclass(frozen=True)
class RunInfo:
    """One scoring run: when, with which models, feature set and action catalog."""

    run_id: str
    as_of: datetime
    scored_at: datetime
    rows: int
    versions: dict[str, str]
    feature_set: str
    #: the action catalog the run arbitrated with (``Catalog.model_dump`` JSON)
    catalog: dict[str, Any]

    @property
    def has_uplift(self) -> bool:
        return "nba" in self.versions


def tables(db: Any) -> set[str]:
    return {r[0] for r in db.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


def latest_run(db: Any, run_id: str | None = None) -> RunInfo:
    """The latest scoring run (or ``run_id``) of a raw DuckDB connection; NoScoresError
    when there is none."""
    if RUNS not in tables(db):
        raise NoScoresError("no scores in the warehouse yet: run `rapport score`")
    where, params = ("WHERE run_id = ?", [run_id]) if run_id else ("", [])
    row = db.execute(
        "SELECT run_id, as_of, scored_at, rows, churn_version, value_version, nba_version, "
        f"feature_set, catalog_json FROM {RUNS} {where} ORDER BY scored_at DESC LIMIT 1",
        params,
    ).fetchone()
    if row is None:
        raise NoScoresError(
            f"no scoring run {run_id!r}" if run_id else "no scores yet: run `rapport score`"
        )
    kinds = ("churn", "value", "nba")
    versions = {k: str(v) for k, v in zip(kinds, row[4:7], strict=True) if v is not None}
    return RunInfo(
        run_id=row[0],
        as_of=as_utc(row[1]),
        scored_at=as_utc(row[2]),
        rows=int(row[3]),
        versions=versions,
        feature_set=row[7],
        catalog=json.loads(row[8]),
    )


def load_scores(db: Any, run: RunInfo) -> pd.DataFrame:
    """One run's scores, one row per customer."""
    query = db.execute(f"SELECT * FROM {SCORES} WHERE run_id = ?", [run.run_id])
    return query.to_arrow_table().to_pandas()
