"""The warehouse tables of batch scoring: ``scores``, ``score_runs`` and
``score_features``.

``rapport score`` (:mod:`training.scoring`) appends every run's scores to ``scores``,
records the run in ``score_runs`` and keeps a fixed sample of the features it scored in
``score_features`` (what ``rapport monitor`` checks for drift); target lists
(:mod:`features.tables.lists`) read the latest run back from here. Reading needs only a
read-only DuckDB connection, so the service may do it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from features.timeutil import as_utc
from features.warehouse import table_names

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


def latest_row(
    db: Any, table: str, columns: str, order: str, key: str, value: str | None
) -> tuple[Any, ...] | None:
    """``columns`` of the row of ``table`` whose ``key`` is ``value``, or with no ``value``
    the first by ``order`` (the latest); None when there is no such row."""
    where, params = (f"WHERE {key} = ?", [value]) if value else ("", [])
    query = f"SELECT {columns} FROM {table} {where} ORDER BY {order} LIMIT 1"
    row: tuple[Any, ...] | None = db.execute(query, params).fetchone()
    return row


def latest_run(db: Any, run_id: str | None = None) -> RunInfo:
    """The latest scoring run (or ``run_id``) of a raw DuckDB connection; NoScoresError
    when there is none."""
    if RUNS not in table_names(db):
        raise NoScoresError("no scores in the warehouse yet: run `rapport score`")
    columns = (
        "run_id, as_of, scored_at, rows, churn_version, value_version, nba_version, "
        "feature_set, catalog_json"
    )
    row = latest_row(db, RUNS, columns, "scored_at DESC", "run_id", run_id)
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


def load_scores(db: Any, run: RunInfo, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """One run's scores (only ``columns`` when given), one row per customer."""
    selected = ", ".join(f'"{c}"' for c in columns) if columns else "*"
    query = db.execute(f"SELECT {selected} FROM {SCORES} WHERE run_id = ?", [run.run_id])
    return query.to_arrow_table().to_pandas()


# --------------------------------------------------------------------------- feature sample
#: the features a scoring run keeps for the monitor's drift checks (``rapport monitor``
#: compares them with the champion's 20,000-row reference, so more rows add nothing but
#: time), chosen by :func:`sample_ids`
FEATURES = "score_features"
FEATURE_SAMPLE_ROWS = 50_000


def sample_ids(customer_ids: Any, rows: int = FEATURE_SAMPLE_ROWS) -> np.ndarray:
    """The ``rows`` customer ids with the smallest stable hash (all when fewer): the same
    customers whatever the order, so a rebuild picks those a scoring run kept."""
    ids = np.asarray(customer_ids, dtype=object)
    if len(ids) <= rows:
        return ids
    keys = pd.util.hash_array(ids)
    return ids[np.sort(np.argpartition(keys, rows - 1)[:rows])]


def add_missing_columns(db: Any, name: str, table: pa.Table) -> None:
    """Columns of ``table`` that the warehouse table ``name`` lacks (older rows hold null
    there): a catalog's new actions in ``scores``, a spec's new features here."""
    have = {r[0] for r in db.execute(f"DESCRIBE {name}").fetchall()}
    for column in table.column_names:
        if column not in have:
            kind = "DOUBLE" if pa.types.is_floating(table.schema.field(column).type) else "VARCHAR"
            db.execute(f'ALTER TABLE {name} ADD COLUMN "{column}" {kind}')


def write_feature_sample(
    db: Any, run_id: str, features: pd.DataFrame, rows: int = FEATURE_SAMPLE_ROWS
) -> int:
    """Append the sampled rows of a run's ``features`` (``customer_id`` and the features)
    to ``score_features``; returns the rows kept."""
    keep = features[features["customer_id"].isin(sample_ids(features["customer_id"], rows))]
    table = pa.Table.from_pandas(keep.assign(run_id=run_id), preserve_index=False)
    db.register("feature_sample", table)
    try:
        db.execute(f"CREATE TABLE IF NOT EXISTS {FEATURES} AS SELECT * FROM feature_sample LIMIT 0")
        add_missing_columns(db, FEATURES, table)
        db.execute(f"INSERT INTO {FEATURES} BY NAME SELECT * FROM feature_sample")
    finally:
        db.unregister("feature_sample")
    return len(keep)


def prune_feature_samples(db: Any, keep_runs: int) -> int:
    """Delete the ``score_features`` rows of every scoring run but the ``keep_runs``
    latest of ``score_runs`` (by when they were scored; rows of a run it does not record
    go too); returns the rows deleted. ``rapport score`` calls it once a run is recorded,
    so the table holds a bounded number of samples however often scoring runs."""
    if keep_runs < 1:
        raise ValueError(f"keep_runs must be at least 1, got {keep_runs}")
    if not {FEATURES, RUNS} <= table_names(db):
        return 0
    before = _count(db)
    db.execute(
        f"DELETE FROM {FEATURES} WHERE run_id IS NULL OR run_id NOT IN "
        f"(SELECT run_id FROM {RUNS} ORDER BY scored_at DESC, run_id DESC LIMIT ?)",
        [keep_runs],
    )
    return before - _count(db)


def _count(db: Any) -> int:
    row = db.execute(f"SELECT count(*) FROM {FEATURES}").fetchone()
    return int(row[0]) if row else 0


def load_feature_sample(db: Any, run_id: str, names: list[str]) -> pd.DataFrame | None:
    """The features ``names`` a scoring run kept (``customer_id`` first), or None when it
    kept none (scored before runs kept them) or lacks one of ``names``."""
    if FEATURES not in table_names(db):
        return None
    have = {r[0] for r in db.execute(f"DESCRIBE {FEATURES}").fetchall()}
    if not set(names) <= have:
        return None
    columns = ", ".join(f'"{n}"' for n in ["customer_id", *names])
    frame = (
        db.execute(f"SELECT {columns} FROM {FEATURES} WHERE run_id = ?", [run_id])
        .to_arrow_table()
        .to_pandas()
    )
    return frame if len(frame) else None
