"""The warehouse connection: a DuckDB file by default, reached through Ibis."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import ibis
from ibis.backends.duckdb import Backend as DuckDBBackend

from features.contract import DUCKDB_TYPES, TABLES

#: seconds between attempts to open a warehouse another process has locked
LOCK_POLL_S = 0.5


class WarehouseLockedError(RuntimeError):
    """Another process holds the warehouse file's lock (DuckDB: one writer, or many
    readers, across processes) and did not let go within the wait allowed."""


def connect(
    path: Path | str,
    read_only: bool = False,
    wait: float = 0.0,
    on_wait: Callable[[], None] | None = None,
) -> DuckDBBackend:
    """Open (and create if needed) the DuckDB warehouse file as an Ibis backend.

    While another process holds the file's lock, retry for up to ``wait`` seconds
    (``on_wait`` is called once, when the waiting starts), then raise
    :class:`WarehouseLockedError` with a one-line message instead of DuckDB's IOException."""
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    waited = False
    while True:
        try:
            con = ibis.duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            if time.monotonic() >= deadline:
                raise WarehouseLockedError(
                    f"the warehouse {path.name} is in use by another process (a running "
                    f"`rapport` job or the web page) and stayed locked for {wait:.0f} s"
                ) from None
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            time.sleep(min(LOCK_POLL_S, max(deadline - time.monotonic(), 0.0)))
    # no progress bar in logs; only switch it off when on: in Jupyter without ipywidgets
    # DuckDB starts with it off and refuses any change to the setting
    (enabled,) = con.con.execute("SELECT current_setting('enable_progress_bar')").fetchone()
    if enabled:
        con.con.execute("SET enable_progress_bar = false")
    return con


def raw(con: DuckDBBackend) -> duckdb.DuckDBPyConnection:
    """The underlying DuckDB connection, for bulk SQL (ingest, exports)."""
    return con.con


def table_names(db: duckdb.DuckDBPyConnection) -> set[str]:
    """The warehouse's table names: jobs reading an optional table (runs, outcomes,
    clusters, ...) ask before they query it."""
    return {str(r[0]) for r in db.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


@contextmanager
def transaction(db: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Everything written inside commits together or not at all (rolled back on any
    error, the error raised on)."""
    db.execute("BEGIN TRANSACTION")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


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
