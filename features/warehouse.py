"""The warehouse connection: a DuckDB file by default, reached through Ibis."""

from __future__ import annotations

from pathlib import Path

import duckdb
import ibis
from ibis.backends.duckdb import Backend as DuckDBBackend

from features.contract import DUCKDB_TYPES, TABLES


def connect(path: Path | str, read_only: bool = False) -> DuckDBBackend:
    """Open (and create if needed) the DuckDB warehouse file as an Ibis backend."""
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    con = ibis.duckdb.connect(str(path), read_only=read_only)
    # no progress bar in logs; only switch it off when on: in Jupyter without ipywidgets
    # DuckDB starts with it off and refuses any change to the setting
    (enabled,) = con.con.execute("SELECT current_setting('enable_progress_bar')").fetchone()
    if enabled:
        con.con.execute("SET enable_progress_bar = false")
    return con


def raw(con: DuckDBBackend) -> duckdb.DuckDBPyConnection:
    """The underlying DuckDB connection, for bulk SQL (ingest, exports)."""
    return con.con


def ensure_contract_tables(con: DuckDBBackend) -> None:
    """Create the four contract tables (empty) if they do not exist yet, and add optional
    columns the contract gained since a table was made (``campaign_log.group``)."""
    db = raw(con)
    for table in TABLES.values():
        cols = ", ".join(f'"{c.name}" {DUCKDB_TYPES[c.type]}' for c in table.columns)
        db.execute(f'CREATE TABLE IF NOT EXISTS "{table.name}" ({cols})')
        for c in table.columns:
            if not c.required:
                db.execute(
                    f'ALTER TABLE "{table.name}" ADD COLUMN IF NOT EXISTS '
                    f'"{c.name}" {DUCKDB_TYPES[c.type]}'
                )
