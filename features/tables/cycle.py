"""The warehouse tables of the scheduled cycle and of champion changes.

* ``cycle_runs``: one row per ``rapport cycle`` run (its as-of, status and one-line summary);
* ``cycle_steps``: one row per step of a run (status ``running``, ``done``, ``skipped`` or
  ``failed``, with what it did); a run whose process died keeps ``running`` rows, which the
  next run resumes (:mod:`training.cycle`);
* ``champion_changes``: every change of a ``@champion`` that is not an ordinary gated
  promotion (rollbacks, forced promotions, automatic rollbacks), with its reason.

Every write commits at once, so a process killed with SIGKILL loses at most the step it
was in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

RUNS = "cycle_runs"
STEPS = "cycle_steps"
CHANGES = "champion_changes"

DDL = (
    f"""CREATE TABLE IF NOT EXISTS {RUNS} (
    run_id VARCHAR PRIMARY KEY, as_of TIMESTAMPTZ, started_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ, status VARCHAR, summary VARCHAR, attempts INTEGER,
    data_fingerprint VARCHAR, champions VARCHAR)""",
    f"""CREATE TABLE IF NOT EXISTS {STEPS} (
    run_id VARCHAR, step VARCHAR, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ,
    status VARCHAR, detail VARCHAR, PRIMARY KEY (run_id, step))""",
    f"""CREATE TABLE IF NOT EXISTS {CHANGES} (
    changed_at TIMESTAMPTZ, kind VARCHAR, action VARCHAR, version VARCHAR,
    replaced VARCHAR, reason VARCHAR, cycle_run VARCHAR)""",
)


def ensure_tables(db: Any) -> None:
    """Create the three tables if needed (``db``: a raw DuckDB connection)."""
    for statement in DDL:
        db.execute(statement)


@dataclass(frozen=True)
class RunRow:
    run_id: str
    as_of: datetime
    status: str
    attempts: int


def unfinished_run(db: Any) -> RunRow | None:
    """The latest run still marked ``running`` (its process died), if any."""
    row = db.execute(
        f"SELECT run_id, as_of, status, attempts FROM {RUNS} WHERE status = 'running' "
        "ORDER BY started_at DESC LIMIT 1"
    ).fetchone()
    return None if row is None else RunRow(row[0], row[1], row[2], int(row[3]))


def start_run(db: Any, run_id: str, as_of: datetime) -> None:
    db.execute(
        f"INSERT INTO {RUNS} VALUES (?, ?, ?, NULL, 'running', NULL, 1, NULL, NULL)",
        [run_id, as_of, datetime.now(UTC)],
    )


def resume_run(db: Any, run_id: str) -> None:
    db.execute(f"UPDATE {RUNS} SET attempts = attempts + 1 WHERE run_id = ?", [run_id])


def finish_run(
    db: Any, run_id: str, status: str, summary: str, fingerprint: str, champions: dict[str, str]
) -> None:
    """Close a run with the state it left: the data fingerprint and the champions."""
    db.execute(
        f"UPDATE {RUNS} SET finished_at = ?, status = ?, summary = ?, data_fingerprint = ?, "
        "champions = ? WHERE run_id = ?",
        [datetime.now(UTC), status, summary, fingerprint, json.dumps(champions), run_id],
    )


def last_finished_state(db: Any) -> tuple[str, str, dict[str, str]] | None:
    """(run id, data fingerprint, champions) left by the latest run that did not fail."""
    row = db.execute(
        f"SELECT run_id, data_fingerprint, champions FROM {RUNS} "
        "WHERE status IN ('done', 'nothing to do') ORDER BY finished_at DESC LIMIT 1"
    ).fetchone()
    return None if row is None else (row[0], row[1], json.loads(row[2]))


def step_status(db: Any, run_id: str) -> dict[str, tuple[str, str]]:
    """step -> (status, detail) of a run's recorded steps."""
    rows = db.execute(f"SELECT step, status, detail FROM {STEPS} WHERE run_id = ?", [run_id])
    return {step: (status, detail or "") for step, status, detail in rows.fetchall()}


def start_step(db: Any, run_id: str, step: str) -> None:
    db.execute(
        f"INSERT OR REPLACE INTO {STEPS} VALUES (?, ?, ?, NULL, 'running', NULL)",
        [run_id, step, datetime.now(UTC)],
    )


def finish_step(db: Any, run_id: str, step: str, status: str, detail: str) -> None:
    db.execute(
        f"UPDATE {STEPS} SET finished_at = ?, status = ?, detail = ? WHERE run_id = ? AND step = ?",
        [datetime.now(UTC), status, detail, run_id, step],
    )


def record_change(
    db: Any,
    kind: str,
    action: str,
    version: str,
    replaced: str | None,
    reason: str,
    cycle_run: str | None = None,
) -> None:
    """Record a change of ``kind@champion`` (``action``: rollback, force, auto_rollback)."""
    ensure_tables(db)
    db.execute(
        f"INSERT INTO {CHANGES} VALUES (?, ?, ?, ?, ?, ?, ?)",
        [datetime.now(UTC), kind, action, version, replaced, reason, cycle_run],
    )


def read(db: Any, table: str) -> pd.DataFrame:
    """One of the three tables as a frame (empty when it does not exist yet)."""
    ensure_tables(db)
    return db.execute(f"SELECT * FROM {table}").to_arrow_table().to_pandas()
