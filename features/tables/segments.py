"""The segment models of the warehouse: RFM / ABC cut points, one version per snapshot.

A customer's segment must mean the same thing in the batch scores, the target lists, the
live service and the NBA training set, so the cut points are fitted once, where a
snapshot of every customer's features is made (``rapport score``, ``rapport features``:
:func:`features.segments.fit_version`), and stored here with their version. The scoring
run records the version it used (``score_runs.segments_version``); ``rapport
materialize`` copies the current version into the online store for the service, and NBA
training reads it too; each says which version it uses.

``segment_models``: ``version`` (primary key, ``<as-of day>-<hash>``), ``as_of`` (the
snapshot's cutoff), ``fitted_at`` (when it was last stored), ``feature_set``,
``customers`` (snapshot size), ``model_json`` (the cut points,
:class:`features.segments.SegmentModel`). The current version is the one stored last,
as the latest scoring run is the one scored last.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd

from features.segments import SegmentModel, SegmentVersion, fit_version
from features.tables.scores import latest_row
from features.timeutil import as_utc
from features.warehouse import table_names

SEGMENT_MODELS = "segment_models"
SEGMENT_MODELS_DDL = f"""CREATE TABLE IF NOT EXISTS {SEGMENT_MODELS} (
    version VARCHAR PRIMARY KEY, as_of TIMESTAMPTZ, fitted_at TIMESTAMPTZ,
    feature_set VARCHAR, customers BIGINT, model_json VARCHAR
)"""
#: what to run when there is none
HINT = "run `rapport score` or `rapport features` first: they fit one on their snapshot"


class NoSegmentsError(LookupError):
    """No segment model stored (the message says what to run)."""


def save_version(db: Any, segments: SegmentVersion, fitted_at: datetime) -> None:
    """Store ``segments`` (in the caller's transaction, if any); storing a version again
    makes it the current one."""
    db.execute(SEGMENT_MODELS_DDL)
    db.execute(
        f"INSERT OR REPLACE INTO {SEGMENT_MODELS} VALUES (?, ?, ?, ?, ?, ?)",
        [
            segments.version,
            segments.as_of,
            as_utc(fitted_at),
            segments.feature_set,
            segments.customers,
            segments.model.to_json(),
        ],
    )


def snapshot_segments(
    db: Any, features: pd.DataFrame, as_of: datetime, feature_set: str, fitted_at: datetime
) -> SegmentVersion:
    """Fit the cut points on a snapshot and store them: the new current version."""
    segments = fit_version(features, as_of, feature_set)
    save_version(db, segments, fitted_at)
    return segments


def load_version(db: Any, version: str | None = None) -> SegmentVersion:
    """A stored version (default: the current one, stored last); NoSegmentsError if none."""
    row = None
    if SEGMENT_MODELS in table_names(db):
        columns = "version, as_of, feature_set, customers, model_json"
        order = "fitted_at DESC, version DESC"
        row = latest_row(db, SEGMENT_MODELS, columns, order, "version", version)
    if row is None:
        what = f"segment model {version!r}" if version else "segment model"
        raise NoSegmentsError(f"no {what} in the warehouse; {HINT}")
    return SegmentVersion(
        row[0], as_utc(row[1]), row[2], int(row[3]), SegmentModel.from_json(row[4])
    )
