"""``rapport ingest --outbox``: what the service accepted, into the warehouse.

The service never writes the warehouse (one writer); it appends to ``<home>/outbox``
(:class:`features.online.events.Outbox`) and this module loads what it finds there:

- live events and decisions, ``<outbox>/<table>/*.jsonl``, are contract rows: they go
  through contract ingest (:func:`features.ingest.ingest_jsonl`), with the same checks,
  quarantine and idempotence as files, in one transaction;
- feedback, ``<outbox>/feedback/*.jsonl``, holds outcome rows: in the same transaction,
  after the decisions, they become versions of their decisions' outcomes
  (:mod:`features.tables.outcomes`; a decision not in the warehouse yet keeps its
  outcome pending and quarantined until it arrives);
- target lists made by ``POST /targets``, ``<outbox>/target_lists/*.jsonl``, are recorded
  in the audit tables by :func:`features.tables.lists.record_lists`, the writer ``rapport
  targets`` uses, in their own transaction after the events; a list already recorded is
  skipped, a torn one (header missing, members short) is left out and named;
- feature vectors the service sampled, ``<outbox>/feature_samples/*.jsonl``, go to the
  table ``feature_samples`` (:mod:`features.tables.feature_samples`) for the monitor's
  live/batch skew check, in their own transaction last.

Writers must put complete files in place (write elsewhere, then rename): every
``*.jsonl`` file found is read, and moved to ``<folder>/done/`` once committed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from features.ingest import (
    FEEDBACK,
    LOAD_ORDER,
    IngestError,
    IngestReport,
    duckdb_error,
    ingest_jsonl,
)
from features.online.events import recover_segments
from features.outbox_pending import DECISIONS, hold_unknown
from features.tables.feature_samples import FEATURE_SAMPLES, load_outbox_samples
from features.tables.lists import OUTBOX_LISTS, read_outbox_lists, record_lists
from features.tables.outcomes import Attribution
from features.warehouse import raw


@dataclass
class ListsReport:
    """Target lists the service made, recorded from the outbox (``target_lists``)."""

    source: str
    read: int = 0
    recorded: int = 0
    members: int = 0
    #: lists whose outbox lines were torn (header missing or members short): never answered
    incomplete: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = (
            f"target lists ({self.source}): read {self.read:,}, recorded {self.recorded:,} "
            f"({self.members:,} members), already recorded {self.read - self.recorded:,}"
        )
        if self.incomplete:
            text += f", incomplete and skipped {len(self.incomplete):,}: " + ", ".join(
                self.incomplete[:5]
            )
        return text


@dataclass
class OutboxReport(IngestReport):
    """The events' per-table counts (as for files) and the target lists recorded."""

    lists: ListsReport | None = None
    #: decisions waiting in the outbox for their customer (features/outbox_pending.py)
    pending: int = 0
    #: sampled live feature vectors loaded into ``feature_samples`` (new ones)
    samples: int = 0

    def source_lines(self) -> list[str]:
        lists = [self.lists.line()] if self.lists is not None else []
        if self.samples:
            lists.append(f"{FEATURE_SAMPLES}: {self.samples:,} sampled live feature vectors")
        waiting = (
            [
                f"{DECISIONS}: {self.pending:,} decisions wait in the outbox for customers not "
                "ingested yet (loaded once they are)"
            ]
            if self.pending
            else []
        )
        return super().source_lines() + lists + waiting


def ingest_outbox(
    con: Any, outbox_dir: Path, now: datetime, attribution: Attribution | None = None
) -> OutboxReport:
    """Load the events, decisions and feedback, then record the target lists, found in
    ``outbox_dir`` (``attribution``: the windows, see :func:`features.ingest.ingest`).
    The open segments of dead writers of this host are sealed first
    (:func:`features.online.events.recover_segments`)."""
    outbox_dir = Path(outbox_dir)
    # a worker killed while the service runs on leaves its segment open: sealed here, or
    # its acknowledged lines would wait for the whole service's next start
    recover_segments(outbox_dir)
    batches = {
        name: sorted((outbox_dir / name).glob("*.jsonl"))
        for name in (*LOAD_ORDER, FEEDBACK)
        if (outbox_dir / name).is_dir()
    }
    pending = 0
    if batches.get(DECISIONS):  # decisions of customers not ingested yet wait, reported
        batches[DECISIONS], pending = hold_unknown(con, batches[DECISIONS])
    events = ingest_jsonl(con, batches, now, attribution)
    for name, paths in batches.items():
        if paths:
            _done(outbox_dir / name, paths)
    lists = _record_lists(con, outbox_dir / OUTBOX_LISTS)
    samples = _record_samples(con, outbox_dir / FEATURE_SAMPLES, now)
    return OutboxReport(
        events.tables,
        events.written,
        events.outcomes,
        events.forgotten_rows,
        lists=lists,
        pending=pending,
        samples=samples,
    )


def _done(folder: Path, paths: list[Path]) -> None:
    (done := folder / "done").mkdir(exist_ok=True)
    for path in paths:
        path.replace(done / path.name)


def _record_lists(con: Any, folder: Path) -> ListsReport | None:
    """Record the complete target lists of the sealed segments in ``folder``."""
    paths = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    if not paths:
        return None
    db = raw(con)
    try:
        found = read_outbox_lists(db, paths)
        recorded, members = record_lists(db, found.lists, found.members)
    except duckdb.Error as exc:
        raise IngestError(f"{folder}/*.jsonl: {duckdb_error(exc)}") from exc
    _done(folder, paths)
    read = len(set(found.lists.column("list_id").to_pylist()))
    return ListsReport(f"{folder}/*.jsonl", read, recorded, members, found.incomplete)


def _record_samples(con: Any, folder: Path, now: datetime) -> int:
    """Load the sampled feature vectors of the sealed segments in ``folder``."""
    paths = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    if not paths:
        return 0
    db = raw(con)
    db.execute("BEGIN TRANSACTION")
    try:
        loaded = load_outbox_samples(db, paths, now)
        db.execute("COMMIT")
    except duckdb.Error as exc:
        db.execute("ROLLBACK")
        raise IngestError(f"{folder}/*.jsonl: {duckdb_error(exc)}") from exc
    _done(folder, paths)
    return loaded
