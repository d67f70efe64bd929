"""The lake: validated contract tables, the quarantine, features and scores as Parquet.

With ``RAPPORT_ENGINE=spark`` the jobs read and write here (``RAPPORT_LAKE_URI``, default
``<home>/lake``) instead of the DuckDB warehouse. Layout, one folder per dataset (Spark
reads a folder of Parquet files as one table)::

    <lake>/tables/<customers|orders|interactions|campaign_log>/   validated contract rows
    <lake>/tables/quarantine/                                      bad rows with reasons
    <lake>/features/as_of=<YYYYmmddTHHMMSSZ>/                       one snapshot per cutoff
    <lake>/scores/run_id=<run>/                                    one folder per score run

With the Spark engine, ``rapport ingest`` validates on Spark and writes these tables
itself (:mod:`features.spark_ingest`, the checks of :mod:`features.ingest`);
:func:`export_tables` mirrors the warehouse's validated tables and quarantine into the
lake (after an outbox ingest, or to start a lake from an existing warehouse). Each table
is written to a fresh folder that replaces the old one by a rename, so a reader never
sees half a table. This module does not import Spark.
"""

from __future__ import annotations

import shutil
import uuid
from datetime import datetime
from pathlib import Path

from features.contract import TABLES
from features.ingest import QUARANTINE
from features.timeutil import as_utc
from features.warehouse import table_names

TABLES_DIR, FEATURES_DIR, SCORES_DIR = "tables", "features", "scores"
#: what every contract table is ordered by in the lake (a stable file for the same rows)
_ORDER = {name: table.columns[0].name for name, table in TABLES.items()}


class LakeError(ValueError):
    """The lake cannot be used as asked (its message says what to do)."""


def is_local(lake: str) -> bool:
    """A folder on this machine (a path or ``file://``) rather than an object store."""
    return "://" not in lake or lake.startswith("file://")


def local_path(lake: str) -> Path:
    return Path(lake.removeprefix("file://"))


def join(lake: str, *parts: str) -> str:
    """A dataset's location under the lake root (URI or path)."""
    return "/".join([lake.rstrip("/"), *parts])


def table_uri(lake: str, name: str) -> str:
    return join(lake, TABLES_DIR, name)


def cutoff_key(as_of: datetime) -> str:
    """A cutoff as a folder-safe partition value: ``20250101T000000Z``."""
    return f"{as_utc(as_of):%Y%m%dT%H%M%SZ}"


def features_uri(lake: str, as_of: datetime) -> str:
    return join(lake, FEATURES_DIR, f"as_of={cutoff_key(as_of)}")


def scores_uri(lake: str) -> str:
    """The scores dataset (partitioned by ``run_id``)."""
    return join(lake, SCORES_DIR)


def export_tables(db: object, lake: str) -> dict[str, int]:
    """Mirror the warehouse's validated contract tables and its quarantine into the lake.

    ``db`` is the DuckDB connection of a finished ingest. Returns the rows written per
    table. Only a local lake is written this way (DuckDB writes the files); an
    object-store lake raises :class:`LakeError` until a Spark-side validator exists.
    """
    import duckdb

    assert isinstance(db, duckdb.DuckDBPyConnection)
    if not is_local(lake):
        raise LakeError(
            f"`rapport ingest` writes the lake with DuckDB, which needs a local folder; "
            f"{lake} is an object store: ingest into a local RAPPORT_LAKE_URI and copy it "
            "(e.g. `aws s3 sync`), or run features and score against the object store"
        )
    root = local_path(lake) / TABLES_DIR
    root.mkdir(parents=True, exist_ok=True)
    present = table_names(db)
    written: dict[str, int] = {}
    for name in [*TABLES, QUARANTINE]:
        if name not in present:
            continue
        order = _ORDER.get(name, "table_name, ingested_at, reason, row_json")
        fresh = fresh_folder(root, name)
        fresh.mkdir()
        target = fresh / "part-0.parquet"
        db.execute(
            f"COPY (SELECT * FROM \"{name}\" ORDER BY {order}) TO '{target.as_posix()}' "
            "(FORMAT parquet, COMPRESSION zstd)"
        )
        (rows,) = db.execute(f'SELECT count(*) FROM "{name}"').fetchone() or (0,)
        replace_folder(fresh, root / name)
        written[name] = int(rows)
    return written


def table_rows(lake: str) -> dict[str, int]:
    """The rows of each contract table and the quarantine in a local lake, from the
    Parquet footers (nothing is read but the metadata)."""
    import pyarrow.parquet as pq

    root = local_path(lake) / TABLES_DIR
    rows = {}
    for name in [*TABLES, QUARANTINE]:
        folder = root / name
        if folder.is_dir():
            parts = sorted(folder.glob("*.parquet"))
            rows[name] = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    return rows


def fresh_folder(root: Path, name: str) -> Path:
    """A new hidden folder beside ``root/name`` to write a table into before the swap."""
    return root / f".{name}.{uuid.uuid4().hex[:8]}"


def replace_folder(fresh: Path, final: Path) -> None:
    """Swap ``fresh`` in for ``final`` (two renames; the old copy is then removed)."""
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if final.exists():
        final.rename(old)
    fresh.rename(final)
    shutil.rmtree(old, ignore_errors=True)
