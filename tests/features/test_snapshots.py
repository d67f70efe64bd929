"""Published score snapshots (``features.tables.snapshots``): what a list reads from one,
and a publisher SIGKILLed at random moments leaves the last complete run readable,
never a half-written one."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from features.tables.scores import RUNS, RUNS_DDL, NoScoresError
from features.tables.snapshots import (
    KEEP,
    NoSnapshotError,
    SnapshotLists,
    current,
    publish,
)

ROWS = 50_000


def warehouse(path: Path, runs: int) -> duckdb.DuckDBPyConnection:
    """A warehouse with ``runs`` committed scoring runs of :data:`ROWS` customers."""
    db = duckdb.connect(str(path))
    db.execute(RUNS_DDL)
    db.execute("CREATE TABLE suppressions (customer_id VARCHAR, reason VARCHAR)")
    db.execute("INSERT INTO suppressions VALUES ('c1', 'opt-out')")
    for i in range(runs):
        run_id = f"sr-{i:04d}"
        db.execute(
            "CREATE OR REPLACE TEMP TABLE chunk AS SELECT ? AS run_id, 'c' || range AS "
            "customer_id, random() AS churn_probability FROM range(?)",
            [run_id, ROWS],
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS scores AS SELECT * FROM chunk LIMIT 0; "
            "INSERT INTO scores SELECT * FROM chunk"
        )
        at = datetime(2026, 1, 1, tzinfo=UTC).replace(minute=i % 60, hour=i // 60)
        db.execute(
            f"INSERT INTO {RUNS} (run_id, as_of, scored_at, rows, churn_version, "
            "value_version, feature_set, catalog_json) VALUES (?, ?, ?, ?, '1', '1', 'v1', ?)",
            [run_id, at, at, ROWS, json.dumps({"actions": []})],
        )
    return db


def features() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.random((ROWS, 20)), columns=[f"f{i}" for i in range(20)])
    frame.insert(0, "customer_id", [f"c{i}" for i in range(ROWS)])
    return frame


def test_a_published_run_is_what_lists_read(tmp_path: Path) -> None:
    db = warehouse(tmp_path / "w.duckdb", runs=4)
    folder = tmp_path / "snapshots"
    with pytest.raises(NoSnapshotError, match="run `rapport score`"):
        current(folder)
    for i in range(4):
        publish(db, folder, f"sr-{i:04d}", features())
    assert current(folder).name == "sr-0003"
    kept = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert kept == [f"sr-{i:04d}" for i in range(4 - KEEP - 1, 4)]
    source = SnapshotLists.latest(folder)
    run = source.run()
    assert run.run_id == "sr-0003" and run.rows == ROWS and run.as_of == source.as_of
    with pytest.raises(NoScoresError):
        source.run("sr-0001")
    frame = source.candidates(run, None, ["f3"], datetime.now(UTC))  # type: ignore[arg-type]
    assert list(frame.columns[-1:]) == ["f3"] and len(frame) == ROWS
    assert set(frame.run_id) == {"sr-0003"}
    assert source.suppressed() == {"c1"}


def publish_forever(db_path: Path, folder: Path, runs: int, frame: pd.DataFrame) -> None:
    """A forked child's life: publish runs 1.. again and again until killed."""
    try:
        db = duckdb.connect(str(db_path), read_only=True)
        i = 1
        while True:
            publish(db, folder, f"sr-{i % runs:04d}", frame)
            i += 1
    finally:
        os._exit(1)


def test_a_publisher_killed_mid_write_leaves_a_complete_run(tmp_path: Path) -> None:
    runs = 6
    warehouse(tmp_path / "w.duckdb", runs=runs).close()
    folder = tmp_path / "snapshots"
    frame = features()
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as db:
        publish(db, folder, "sr-0000", frame)  # the state before the killed writers
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(10):
        pid = os.fork()  # the test's imports are done: a child starts publishing at once
        if pid == 0:
            publish_forever(tmp_path / "w.duckdb", folder, runs, frame)
        time.sleep(float(rng.uniform(0.1, 1.5)))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        source = SnapshotLists.latest(folder)
        run = source.run()
        seen.add(run.run_id)
        frame = source.candidates(run, None, ["f0"], datetime.now(UTC))  # type: ignore[arg-type]
        assert len(frame) == ROWS and set(frame.run_id) == {run.run_id}
        assert frame.f0.notna().all()
    assert len(seen) > 1, "the killed publishers never finished a run"
    # the next publisher clears what the killed ones left half-written
    db = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    publish(db, folder, "sr-0000", features())
    assert not list(folder.glob(".*"))
