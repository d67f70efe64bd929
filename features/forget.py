"""Forgetting a person on request: erase a customer's rows from every copy Rapport keeps.

A customer's data lives in the warehouse (every table with a ``customer_id`` column, the
rows keyed by their decisions, quarantined rows that name them), the online store (their
record and the identifier hashes that name them), the outbox (sealed JSON-line segments
not yet or already ingested, pending decisions) and target-list downloads still on disk.
:func:`forget` removes all of it and records the erasure in ``forgotten`` under a SHA-256
of the id (never the id itself), so every later ingest erases the customer again
(:func:`erase_forgotten`) when a stale export brings them back, and a second ``forget`` is
a no-op that says so.

Not covered (said by ``rapport forget``): files outside the workspace (the sources a
user ingests, lists exported with ``--out`` elsewhere), MLflow run artifacts, and models
already trained on the person (a retrain without them is the next cycle's). Open outbox
segments belong to a running service: their lines are counted, not rewritten; the service
seals them within seconds, and running ``forget`` again then erases them. A running
service's workers may still hold the person's kept aggregates and attributes in memory
(:mod:`features.online.kept`, never served again): dropped on the next request naming
them, else when they age out of the bound or the service restarts.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.contract import IDENTIFIER_FIELDS
from features.durable import replace_durably
from features.identity import DEFAULT_PHONE_REGION, identifier_values, normalise_one
from features.online.events import OPEN_SUFFIX, SEALED_SUFFIX
from features.online.identifiers import IdentityIndex, UnusableIdentifierError
from features.online.store import OnlineStore
from features.resolve import CLUSTERS
from features.tables.lists import write_members
from features.warehouse import raw, table_names, transaction

FORGOTTEN = "forgotten"
#: hashes of a forgotten person's identifiers (:func:`identifier_mark`): rows quarantined
#: by identifier alone name no customer id
FORGOTTEN_IDENTIFIERS = "forgotten_identifiers"
_QUARANTINE = "quarantine"


def customer_hash(customer_id: str) -> str:
    """What ``forgotten`` keeps of a customer: enough to erase them again, not to name them."""
    return hashlib.sha256(customer_id.encode("utf-8")).hexdigest()


@dataclass
class ForgetReport:
    """What one :func:`forget` erased, by place."""

    customer_hash: str
    #: rows deleted per warehouse table (quarantine included; in the identity tables also
    #: the other records' rows naming the customer as their cluster, made to stand alone)
    warehouse: dict[str, int] = field(default_factory=dict)
    online_record: bool = False
    #: identifier hashes naming the customer removed from the online store's index
    online_identifiers: int = 0
    #: lines removed from sealed outbox segments, and the files rewritten
    outbox_lines: int = 0
    outbox_files: int = 0
    #: lines in open segments of a running service, left for the next run
    open_lines: int = 0
    #: rows removed from CSV / Parquet files (list downloads, snapshots, the lake)
    file_rows: int = 0
    files: int = 0
    #: the customer was forgotten before (rows found now came back from a stale source)
    again: bool = False

    @property
    def erased(self) -> int:
        return (
            sum(self.warehouse.values())
            + int(self.online_record)
            + self.online_identifiers
            + self.outbox_lines
            + self.file_rows
        )

    def lines(self) -> list[str]:
        tables = ", ".join(f"{t} {n:,}" for t, n in sorted(self.warehouse.items()) if n)
        out = [
            f"customer {self.customer_hash[:12]}… "
            + ("(forgotten before) " if self.again else "")
            + f"erased: {self.erased:,} rows and lines in all",
            f"  warehouse: {tables or 'nothing'}",
            f"  online store: {'record deleted' if self.online_record else 'no record'}, "
            f"{self.online_identifiers:,} identifiers removed from the index",
            f"  outbox: {self.outbox_lines:,} lines from {self.outbox_files:,} sealed segments",
            f"  files (list downloads, snapshots, lake): {self.file_rows:,} rows from "
            f"{self.files:,} files",
        ]
        if self.open_lines:
            out.append(
                f"  {self.open_lines:,} lines are in open outbox segments of a running "
                "service: run `rapport forget` again once it has sealed them (seconds)"
            )
        return out


# --------------------------------------------------------------------------- warehouse
def _tables_with(db: duckdb.DuckDBPyConnection, column: str) -> list[str]:
    rows = db.execute(
        "SELECT DISTINCT table_name FROM information_schema.columns "
        "WHERE column_name = ? AND table_schema = 'main' AND table_catalog = current_database()",
        [column],
    ).fetchall()
    return sorted(str(r[0]) for r in rows)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _erase_hashes(
    db: duckdb.DuckDBPyConnection,
    hashes: str,
    since: datetime | None = None,
    region: str = DEFAULT_PHONE_REGION,
) -> dict[str, int]:
    """Delete the rows of the customers whose hashes the relation ``hashes`` (one column
    ``h``) holds, in every table; quarantined rows only from ``since`` on when given (the
    older ones were erased already). Returns the rows deleted per table."""
    deleted: dict[str, int] = {}
    by_customer = _tables_with(db, "customer_id")
    keyed = [t for t in _tables_with(db, "decision_id") if t not in by_customer]
    mine = f"sha256(CAST(customer_id AS VARCHAR)) IN (SELECT h FROM {hashes})"
    if keyed:  # rows keyed by the customer's decisions only (outcomes): before the decisions
        decisions = " UNION ".join(
            f"SELECT decision_id FROM {_quoted(t)} WHERE {mine}"
            for t in _tables_with(db, "decision_id")
            if t in by_customer
        )
        for table in keyed if decisions else []:
            (n,) = db.execute(
                f"DELETE FROM {_quoted(table)} WHERE decision_id IN ({decisions})"
            ).fetchone() or (0,)
            deleted[table] = int(n)
    for table in by_customer:
        (n,) = db.execute(f"DELETE FROM {_quoted(table)} WHERE {mine}").fetchone() or (0,)
        deleted[table] = int(n)
    # pair tables (identity_links) name the customer on either side
    theirs = mine.replace("customer_id", "other_customer_id")
    for table in _tables_with(db, "other_customer_id"):
        (n,) = db.execute(f"DELETE FROM {_quoted(table)} WHERE {theirs}").fetchone() or (0,)
        deleted[table] = deleted.get(table, 0) + int(n)
    # a forgotten customer whose id named a cluster (identity_clusters, identity_changes):
    # the other records of the cluster stand alone until the next `rapport resolve`
    by_record = set(by_customer)
    for column in ("cluster_id", "old_cluster_id"):
        named = f"sha256(CAST({column} AS VARCHAR)) IN (SELECT h FROM {hashes})"
        for table in (t for t in _tables_with(db, column) if t in by_record):
            (n,) = db.execute(
                f"UPDATE {_quoted(table)} SET {column} = customer_id WHERE {named}"
            ).fetchone() or (0,)
            deleted[table] = deleted.get(table, 0) + int(n)
    deleted[_QUARANTINE] = _erase_quarantine(db, hashes, since, region)
    return deleted


def _erase_quarantine(
    db: duckdb.DuckDBPyConnection,
    hashes: str,
    since: datetime | None,
    region: str = DEFAULT_PHONE_REGION,
) -> int:
    """Delete the quarantined rows (from ``since`` on when given) naming the customers."""
    if _QUARANTINE not in _tables_with(db, "row_json"):
        return 0
    recent = "" if since is None else " AND ingested_at >= ?"
    quarantined = db.execute(
        f"SELECT rowid, row_json FROM {_QUARANTINE} WHERE row_json IS NOT NULL{recent}",
        [] if since is None else [since],
    ).fetchall()
    targets = {str(r[0]) for r in db.execute(f"SELECT h FROM {hashes}").fetchall()}
    gone = [rowid for rowid, text in quarantined if _names_any(str(text), targets, region)]
    if gone:
        db.execute(f"DELETE FROM {_QUARANTINE} WHERE rowid IN (SELECT unnest(?))", [gone])
    return len(gone)


_TOKEN = re.compile(r"[^\s,;|\t\"']+")


def identifier_mark(kind: str, value: Any, region: str) -> str | None:
    """What ``forgotten_identifiers`` keeps of a forgotten person's identifier: a hash of
    its normal form (None when it has none), so a quarantined row holding it in any
    spelling is found, and the identifier itself is kept nowhere."""
    normal = normalise_one(kind, value, region)
    return None if normal is None else customer_hash(f"{kind}:{normal}")


def _names_any(text: str, hashes: set[str], region: str = DEFAULT_PHONE_REGION) -> bool:
    """A quarantined row names one of the customers: its ``customer_id`` field (JSON) or
    one of its identifiers (a row quarantined as unknown or ambiguous identifier has no
    customer id), or, for a line that could not be parsed, any of its tokens (erring
    towards erasing)."""
    try:
        row = json.loads(text)
    except ValueError:
        row = None
    if isinstance(row, dict):
        row = {str(k).lower(): v for k, v in row.items()}  # headers as the file had them
        value = row.get("customer_id")
        if value is not None and customer_hash(str(value)) in hashes:
            return True
        given = {k: v for k, v in row.items() if k in IDENTIFIER_FIELDS and v not in (None, "")}
        return any(
            identifier_mark(kind, value, region) in hashes
            for kind, value in identifier_values(given).items()
        )
    return any(customer_hash(token) in hashes for token in _TOKEN.findall(text))


def erase_forgotten(
    db: duckdb.DuckDBPyConnection, since: datetime, region: str = DEFAULT_PHONE_REGION
) -> int:
    """Erase again every customer in ``forgotten`` (an ingest at ``since`` calls this before
    it commits, so a stale export cannot bring a forgotten person back); returns the rows
    deleted. Without erasures recorded it costs one catalog query."""
    if FORGOTTEN not in _tables_with(db, "customer_hash"):
        return 0
    (any_,) = db.execute(f"SELECT count(*) > 0 FROM {FORGOTTEN}").fetchone() or (False,)
    if not any_:
        return 0
    hashes = f"(SELECT DISTINCT customer_hash AS h FROM {FORGOTTEN})"
    if FORGOTTEN_IDENTIFIERS in _tables_with(db, "mark"):
        hashes = (
            f"(SELECT DISTINCT customer_hash AS h FROM {FORGOTTEN} "
            f"UNION SELECT mark AS h FROM {FORGOTTEN_IDENTIFIERS})"
        )
    # rows of an unknown customer are quarantined, and derived tables start from
    # `customers`: when none of them is back there, only new quarantine rows can name them
    (back,) = db.execute(
        f"SELECT count(*) FROM customers WHERE sha256(CAST(customer_id AS VARCHAR)) IN "
        f"(SELECT h FROM {hashes})"
    ).fetchone() or (0,)
    if not back:
        return _erase_quarantine(db, hashes, since, region)
    return sum(_erase_hashes(db, hashes, since, region).values())


# --------------------------------------------------------------------------- files
def _rewrite_lines(path: Path, keep: Any) -> int:
    """Rewrite a JSON-lines file without the lines ``keep`` refuses, atomically and
    durably (temp file, fsync, rename); returns the lines removed."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if keep(line)]
    if len(kept) == len(lines):
        return 0
    replace_durably(path, "".join(kept).encode("utf-8"))
    return len(lines) - len(kept)


def _line_of(line: str, customer_id: str, decisions: set[str]) -> bool:
    try:
        row = json.loads(line)
    except ValueError:
        return customer_id in line  # a torn line: keep nothing that might name them
    if not isinstance(row, dict):
        return False
    return row.get("customer_id") == customer_id or row.get("decision_id") in decisions


def _erase_outbox(
    outbox: Path, customer_id: str, decisions: set[str], report: ForgetReport
) -> None:
    if not outbox.exists():
        return
    for path in sorted(outbox.rglob(f"*{SEALED_SUFFIX}")):
        removed = _rewrite_lines(path, lambda line: not _line_of(line, customer_id, decisions))
        report.outbox_lines += removed
        report.outbox_files += bool(removed)
    for path in sorted(outbox.rglob(f"*{OPEN_SUFFIX}")):
        text = path.read_text(encoding="utf-8", errors="replace")
        report.open_lines += sum(_line_of(x, customer_id, decisions) for x in text.splitlines())


def _erase_files(folders: Sequence[Path], customer_id: str, report: ForgetReport) -> None:
    """CSV and Parquet files with a ``customer_id`` column below ``folders`` (list
    downloads, published score snapshots, the lake), rewritten without the customer."""
    for folder in folders:
        if not folder.exists():
            continue
        paths = [*folder.rglob("*.csv"), *folder.rglob("*.parquet")]
        for path in sorted(p for p in paths if not p.name.startswith(".")):
            removed = _erase_csv(path, customer_id) if path.suffix == ".csv" else 0
            if path.suffix == ".parquet":
                removed = _erase_parquet(path, customer_id)
            report.file_rows += removed
            report.files += bool(removed)


def _erase_csv(path: Path, customer_id: str) -> int:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)  # text kept as it was
    if "customer_id" not in frame.columns:
        return 0
    mine = frame["customer_id"] == customer_id
    if mine.any():
        write_members(frame.loc[~mine], path)
    return int(mine.sum())


def _erase_parquet(path: Path, customer_id: str) -> int:
    if "customer_id" not in pq.read_schema(path).names:
        return 0
    ids = pq.read_table(path, columns=["customer_id"]).column("customer_id")
    mine = pc.equal(pc.cast(ids, pa.string()), customer_id)
    removed = int(pc.sum(mine).as_py() or 0)
    if removed:
        kept = pq.read_table(path).filter(pc.invert(pc.fill_null(mine, False)))
        sink = pa.BufferOutputStream()
        pq.write_table(kept, sink)
        replace_durably(path, sink.getvalue().to_pybytes())
    return removed


# --------------------------------------------------------------------------- forget
def _decisions_of(db: duckdb.DuckDBPyConnection, hashed: str) -> set[str]:
    tables = [t for t in _tables_with(db, "decision_id") if t in _tables_with(db, "customer_id")]
    found: set[str] = set()
    for table in tables:
        rows = db.execute(
            f"SELECT DISTINCT decision_id FROM {_quoted(table)} "
            "WHERE sha256(CAST(customer_id AS VARCHAR)) = ?",
            [hashed],
        ).fetchall()
        found |= {str(r[0]) for r in rows if r[0] is not None}
    return found


def _identifiers_of(db: duckdb.DuckDBPyConnection, customer_id: str) -> list[tuple[str, Any]]:
    """``(kind, value)`` of the customer's identifiers in ``customers`` (read before the
    rows go; a name with postcode as the pair)."""
    columns = {str(r[0]) for r in db.execute("DESCRIBE customers").fetchall()}
    fields = [c for c in IDENTIFIER_FIELDS if c in columns]
    if not fields:
        return []
    rows = db.execute(
        f"SELECT {', '.join(_quoted(c) for c in fields)} FROM customers WHERE customer_id = ?",
        [customer_id],
    ).fetchall()
    return [
        pair
        for row in rows
        for pair in identifier_values(dict(zip(fields, row, strict=True))).items()
    ]


def _identifier_keys(held: list[tuple[str, Any]], index: IdentityIndex | None) -> list[str]:
    """The online index's hashes of the customer's own identifiers: when resolution merged
    them into a cluster, those hashes name the cluster, not them, and must go too."""
    if index is None:
        return []
    keys: set[str] = set()
    for kind, value in held:
        try:
            keys.add(index.hash_one(kind, value))
        except UnusableIdentifierError:  # never indexed
            continue
    return sorted(keys)


def _identifier_marks(held: list[tuple[str, Any]], region: str) -> list[str]:
    """:func:`identifier_mark` of each of the customer's identifiers."""
    marks = {identifier_mark(kind, value, region) for kind, value in held}
    return sorted(m for m in marks if m is not None)


def _own_keys(
    db: duckdb.DuckDBPyConnection, store: OnlineStore, customer_id: str, keys: list[str]
) -> list[str]:
    """Of ``keys``, those the index has naming the customer or their cluster: a key that
    names another person (a shared landline, a cookie several use) stays theirs."""
    owners = {customer_id}
    have = table_names(db)
    if CLUSTERS in have:
        rows = db.execute(
            f"SELECT cluster_id FROM {CLUSTERS} WHERE customer_id = ?", [customer_id]
        ).fetchall()
        owners |= {str(r[0]) for r in rows}
    named = store.get_identifiers(keys) if keys else {}
    return [k for k in keys if named.get(k) in owners]


def forget(
    con: Any,
    store: OnlineStore | None,
    customer_id: str,
    now: datetime,
    outbox: Path,
    files: Sequence[Path],
    index: IdentityIndex | None = None,
) -> ForgetReport:
    """Erase ``customer_id`` everywhere this workspace keeps it, and record it (see the
    module doc). The warehouse part is one transaction; files are rewritten one by one,
    atomically, so a crash leaves each file whole and ``forget`` can simply run again."""
    if not customer_id or not customer_id.strip():
        raise ValueError("forget needs a customer id")
    db = raw(con)
    hashed = customer_hash(customer_id)
    report = ForgetReport(hashed)
    db.execute(
        f"CREATE TABLE IF NOT EXISTS {FORGOTTEN} (customer_hash VARCHAR, forgotten_at "
        "TIMESTAMPTZ, rows_erased BIGINT)"
    )
    (before,) = db.execute(
        f"SELECT count(*) FROM {FORGOTTEN} WHERE customer_hash = ?", [hashed]
    ).fetchone() or (0,)
    report.again = bool(before)
    decisions = _decisions_of(db, hashed)  # read before the rows that hold them go
    held = _identifiers_of(db, customer_id)  # likewise
    keys = _identifier_keys(held, index)
    region = index.region if index is not None else DEFAULT_PHONE_REGION
    marks = _identifier_marks(held, region)
    if store is not None:
        keys = _own_keys(db, store, customer_id, keys)
    with transaction(db):
        db.execute(
            "CREATE OR REPLACE TEMP TABLE _rapport_forget AS SELECT unnest(?) AS h",
            [[hashed, *marks]],
        )
        report.warehouse = _erase_hashes(db, "_rapport_forget", region=region)
        db.execute("DROP TABLE _rapport_forget")
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {FORGOTTEN_IDENTIFIERS} (mark VARCHAR, "
            "forgotten_at TIMESTAMPTZ)"
        )
        for mark in marks:
            db.execute(f"INSERT INTO {FORGOTTEN_IDENTIFIERS} VALUES (?, ?)", [mark, now])
        db.execute(
            f"INSERT INTO {FORGOTTEN} VALUES (?, ?, ?)",
            [hashed, now, sum(report.warehouse.values())],
        )
    if store is not None:
        report.online_record = store.delete(customer_id)
        report.online_identifiers = store.delete_identifiers(customer_id, keys)
    _erase_outbox(outbox, customer_id, decisions, report)
    _erase_files(files, customer_id, report)
    return report
