"""Live feature vectors sampled by the service, kept to check them against the batch build.

The live path (:func:`features.online.record.evaluate`) and the batch build
(:func:`features.batch.build`) must agree for the same customer at the same instant; the
parity tests prove it on fixtures, this table lets ``rapport monitor`` prove it on
production traffic (issue 15, live/batch skew):

* the service samples ``RAPPORT_FEATURE_SAMPLE_SHARE`` of the vectors it computes, chosen by
  a hash of the decision id (:func:`sampled`: deterministic, no random state), and writes
  them to ``<outbox>/feature_samples`` together with the decisions of the same group
  (:class:`features.online.events.DecisionBuffer`), so sampling costs the request only the
  hash and a list append;
* ``rapport ingest --outbox`` loads them into the warehouse table ``feature_samples``
  (:func:`load_outbox_samples`; one row per sample, the features as JSON, idempotent on
  ``sample_id`` = the decision id);
* the monitor rebuilds each sample's customer as of its exact ``computed_at`` and compares
  with :func:`mismatches` (numbers within a relative 1e-6, categories equal, null = null).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from features.warehouse import table_names

#: the outbox folder and the warehouse table
FEATURE_SAMPLES = "feature_samples"
#: numbers agree within this relative tolerance (and this absolute one near zero)
REL_TOL = 1e-6
ABS_TOL = 1e-9

DDL = f"""CREATE TABLE IF NOT EXISTS {FEATURE_SAMPLES} (
    sample_id VARCHAR PRIMARY KEY, customer_id VARCHAR, computed_at TIMESTAMPTZ,
    feature_set VARCHAR, features JSON, ingested_at TIMESTAMPTZ
)"""


def sampled(decision_id: str, share: float) -> bool:
    """Is this decision's feature vector sampled? A hash of the id against ``share``: the
    same id always gets the same answer, in every worker and on every replay."""
    if share <= 0:
        return False
    if share >= 1:
        return True
    digest = hashlib.blake2b(decision_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < share * 2**64


def sample_row(
    sample_id: str,
    customer_id: str,
    computed_at: datetime,
    feature_set: str,
    features: Mapping[str, Any],
) -> dict[str, Any]:
    """An outbox row (``features`` still a dict: :func:`encode` runs behind the answer)."""
    return {
        "sample_id": sample_id,
        "customer_id": customer_id,
        "computed_at": computed_at,
        "feature_set": feature_set,
        "features": features,
    }


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def encode(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row with its features as a JSON text (NaN as null), ready for the outbox."""
    features = {k: _plain(v) for k, v in row["features"].items() if k != "customer_id"}
    return {**row, "features": json.dumps(features, separators=(",", ":"), allow_nan=False)}


# --------------------------------------------------------------------------- warehouse
def load_outbox_samples(db: duckdb.DuckDBPyConnection, paths: Sequence[Path], now: datetime) -> int:
    """Insert the samples of sealed outbox segments; returns how many were new (a
    sample seen before, e.g. a decision group written twice after a failure, is skipped).
    Lines that do not parse are skipped: only a torn last line can be, never acknowledged."""
    rows = []
    for path in paths:
        for line in path.read_bytes().splitlines():
            try:
                item = json.loads(line)
                rows.append(
                    (
                        str(item["sample_id"]),
                        str(item["customer_id"]),
                        datetime.fromisoformat(item["computed_at"]),
                        str(item["feature_set"]),
                        json.dumps(json.loads(item["features"])),
                    )
                )
            except (ValueError, KeyError, TypeError):
                continue
    db.execute(DDL)
    if not rows:
        return 0
    before = db.execute(f"SELECT count(*) FROM {FEATURE_SAMPLES}").fetchone()[0]  # type: ignore[index]
    frame = pd.DataFrame(
        rows, columns=["sample_id", "customer_id", "computed_at", "feature_set", "features"]
    ).drop_duplicates("sample_id")
    db.register("sample_rows", frame)
    try:
        db.execute(
            f"INSERT OR IGNORE INTO {FEATURE_SAMPLES} SELECT sample_id, customer_id, "
            "computed_at, feature_set, features::JSON, ?::TIMESTAMPTZ FROM sample_rows",
            [now],
        )
    finally:
        db.unregister("sample_rows")
    after = db.execute(f"SELECT count(*) FROM {FEATURE_SAMPLES}").fetchone()[0]  # type: ignore[index]
    return int(after - before)


def read_samples(
    db: duckdb.DuckDBPyConnection, until: datetime | None = None, limit: int = 500
) -> pd.DataFrame:
    """The latest ``limit`` samples computed at or before ``until`` (all when None),
    features parsed into dicts; empty when the service never sampled."""
    have = table_names(db)
    columns = ["sample_id", "customer_id", "computed_at", "feature_set", "features"]
    if FEATURE_SAMPLES not in have:
        return pd.DataFrame(columns=columns)
    where, params = ("WHERE computed_at <= ?", [until]) if until is not None else ("", [])
    frame = (
        db.execute(
            f"SELECT sample_id, customer_id, computed_at, feature_set, features::VARCHAR AS "
            f"features FROM {FEATURE_SAMPLES} {where} ORDER BY computed_at DESC, sample_id "
            f"LIMIT {int(limit)}",
            params,
        )
        .to_arrow_table()
        .to_pandas()
    )
    frame["features"] = [json.loads(f) for f in frame["features"]]
    return frame


def _null(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def same(live: Any, batch: Any) -> bool:
    """Do a live and a batch value agree (float tolerance, categories exactly)?"""
    live, batch = _plain(live), _plain(batch)
    if _null(live) or _null(batch):
        return _null(live) and _null(batch)
    if isinstance(live, str) or isinstance(batch, str):
        return bool(live == batch)
    return math.isclose(float(live), float(batch), rel_tol=REL_TOL, abs_tol=ABS_TOL)


def mismatches(
    live: Mapping[str, Any], batch: Mapping[str, Any], names: Iterable[str]
) -> list[str]:
    """The features whose live and batch values disagree (a missing one counts as null)."""
    return [n for n in names if not same(live.get(n), batch.get(n))]
