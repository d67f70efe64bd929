"""Published score snapshots: each finished scoring run, also as immutable files.

``rapport score`` (:func:`training.scoring.score_all`) holds the warehouse for writing
while it runs, and DuckDB lets no other process read the file meanwhile. So after its
transaction commits, the run is also published under ``<home>/snapshots/scores``
(:func:`publish`): one folder per run with the run's scores, the features it scored (as
of the run's ``as_of``), the suppressions at that moment and the run's record. The folder
is written under a temporary name, fsync'ed, renamed into place, and only then named in
``CURRENT`` (replaced atomically): a reader sees the last complete run or the one before,
never a half-written one. :class:`SnapshotLists` reads it as a
:class:`models.targeting.ListSource`; the service falls back to it while the warehouse is
locked (``serving.targets``), so ``POST /targets`` answers during a scoring run.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.durable import fsync_paths, pid_alive
from features.spec import FeatureSpec
from features.tables.lists import HoldsNothing, suppressed_ids
from features.tables.scores import SCORES, NoScoresError, RunInfo, latest_run
from features.timeutil import as_utc

CURRENT = "CURRENT"
#: published runs kept besides the current one (a reader that resolved an older one
#: while a new one was published still finds its files)
KEEP = 2
RUN_FILE = "run.json"
SCORES_FILE = "scores.parquet"
FEATURES_FILE = "features.parquet"
SUPPRESSIONS_FILE = "suppressions.parquet"


class NoSnapshotError(LookupError):
    """No scoring run was published yet (or the published one was removed)."""


def _run_json(run: RunInfo) -> str:
    return json.dumps(
        {
            "run_id": run.run_id,
            "as_of": run.as_of.isoformat(),
            "scored_at": run.scored_at.isoformat(),
            "rows": run.rows,
            "versions": run.versions,
            "feature_set": run.feature_set,
            "catalog": run.catalog,
        }
    )


def _run_of(text: str) -> RunInfo:
    data = json.loads(text)
    data["as_of"] = as_utc(datetime.fromisoformat(data["as_of"]))
    data["scored_at"] = as_utc(datetime.fromisoformat(data["scored_at"]))
    return RunInfo(**data)


def publish(db: Any, folder: Path, run_id: str, features: pd.DataFrame) -> Path:
    """Publish the committed scoring run ``run_id`` of the raw DuckDB connection ``db``
    with the ``features`` frame it scored; returns the run's folder. Idempotent."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / run_id
    if not final.is_dir():
        run = latest_run(db, run_id)
        work = folder / f".tmp-{run_id}-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        scores = db.execute(f"SELECT * FROM {SCORES} WHERE run_id = ?", [run_id]).to_arrow_table()
        pq.write_table(scores, work / SCORES_FILE)
        pq.write_table(pa.Table.from_pandas(features, preserve_index=False), work / FEATURES_FILE)
        blocked = pa.array(sorted(suppressed_ids(db)), pa.string())
        pq.write_table(pa.table({"customer_id": blocked}), work / SUPPRESSIONS_FILE)
        (work / RUN_FILE).write_text(_run_json(run))
        for path in work.iterdir():
            fsync_paths(path)
        fsync_paths(work)
        work.rename(final)
        fsync_paths(folder)
    pointer = folder / f".{CURRENT}-{os.getpid()}"
    pointer.write_text(run_id)
    fsync_paths(pointer)
    pointer.replace(folder / CURRENT)
    fsync_paths(folder)
    _prune(folder, run_id)
    return final


def _prune(folder: Path, current: str) -> None:
    """Remove published runs but the current one and the :data:`KEEP` before it (run ids
    sort by time), and what publishers that died left half-written."""
    runs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    older = [p for p in runs if p.name != current]
    for path in older[: max(len(older) - KEEP, 0)]:
        shutil.rmtree(path, ignore_errors=True)
    for path in folder.glob(".*-*"):  # .tmp-<run>-<pid>/ and .CURRENT-<pid>
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def current(folder: Path) -> Path:
    """The folder of the current published run (:class:`NoSnapshotError` without one)."""
    try:
        run_id = (Path(folder) / CURRENT).read_text().strip()
    except FileNotFoundError:
        raise NoSnapshotError("no scoring run published yet: run `rapport score`") from None
    path = Path(folder) / run_id
    if not (path / RUN_FILE).is_file():
        raise NoSnapshotError(f"the published scoring run {run_id} is missing")
    return path


def published(folder: Path, run_id: str) -> Path | None:
    """The folder of the published run ``run_id`` while it is kept (:data:`KEEP`), else
    None (never published: a Spark run, or pruned). Its files are immutable: a reader may
    take its scores and features column by column (``SCORES_FILE``, ``FEATURES_FILE``)."""
    path = Path(folder) / run_id
    return path if (path / RUN_FILE).is_file() else None


class SnapshotLists(HoldsNothing):
    """A list's inputs from one published run (:class:`models.targeting.ListSource`): its
    scores, the features it scored (consent and contact history as of the run's
    ``as_of``, not the request's) and the suppressions when it was published.
    :meth:`latest` resolves the current run once, so one list reads one run."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._run = _run_of((self.path / RUN_FILE).read_text())

    @classmethod
    def latest(cls, folder: Path) -> SnapshotLists:
        return cls(current(folder))

    @property
    def as_of(self) -> datetime:
        """When the snapshot's features were computed (the run's ``as_of``)."""
        return self._run.as_of

    def run(self, run_id: str | None = None) -> RunInfo:
        """The published run; NoScoresError when ``run_id`` names another one."""
        if run_id is not None and run_id != self._run.run_id:
            raise NoScoresError(f"scoring run {run_id!r} is not the published one")
        return self._run

    def candidates(
        self, run: RunInfo, spec: FeatureSpec, columns: Sequence[str], as_of: datetime
    ) -> pd.DataFrame:
        """The run's scores joined with the feature ``columns`` it scored (``spec`` and
        ``as_of`` are the request's; the snapshot holds the run's features as they were)."""
        scores = pq.read_table(self.path / SCORES_FILE).to_pandas()
        scores["customer_id"] = scores["customer_id"].astype(str)
        features = pq.read_table(self.path / FEATURES_FILE, columns=["customer_id", *columns])
        frame = features.to_pandas()
        frame["customer_id"] = frame["customer_id"].astype(str)
        return scores.merge(frame, on="customer_id", how="left")

    def suppressed(self) -> set[str]:
        return set(pq.read_table(self.path / SUPPRESSIONS_FILE)["customer_id"].to_pylist())
