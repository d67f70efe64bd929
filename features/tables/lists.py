"""What target lists read and keep besides the scores: suppressions, saved definitions,
exported files and the audit record of every list made.

The one path that makes a list is :func:`models.targeting.make_list`; it does no I/O
itself (``models`` never does) and reads and writes through two small ports it declares,
implemented here over the warehouse: :class:`WarehouseLists` reads a scoring run's scores
joined with the features the list needs and the ``suppressions`` table, and
:class:`AuditTables` exports the list to a file and records it directly (``rapport
targets``, the demo). The service, which never writes the warehouse, records through the
outbox instead (``serving.targets``): :func:`outbox_lines` turns an audit record into
outbox rows, and ``rapport ingest --outbox`` (:mod:`features.outbox_ingest`) reads them
back with :func:`read_outbox_lists`. :func:`record_lists` is the one writer of the audit
tables ``target_lists`` (definition, scoring run, totals, stats) and
``target_list_members`` (rank, customer, action, expected value, cost).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import pandas as pd

from features.batch import build
from features.spec import FeatureSpec
from features.tables.scores import RunInfo, latest_run, load_scores
from features.warehouse import connect, raw, table_names

SUPPRESSIONS = "suppressions"
TARGET_LISTS = "target_lists"
TARGET_MEMBERS = "target_list_members"

SUPPRESSIONS_DDL = f"""CREATE TABLE IF NOT EXISTS {SUPPRESSIONS} (
    customer_id VARCHAR NOT NULL, reason VARCHAR, added_at TIMESTAMPTZ DEFAULT now()
)"""

#: the audit tables' columns and types (one place: DDL, inserts and the outbox reader)
LIST_TYPES: dict[str, str] = {
    "list_id": "VARCHAR",
    "name": "VARCHAR",
    "created_at": "TIMESTAMPTZ",
    "run_id": "VARCHAR",
    "scores_as_of": "TIMESTAMPTZ",
    "features_as_of": "TIMESTAMPTZ",
    "definition": "VARCHAR",
    "filter": "VARCHAR",
    "action": "VARCHAR",
    "budget": "DOUBLE",
    "top": "BIGINT",
    "sort": "VARCHAR",
    "customers": "BIGINT",
    "total_expected_value": "DOUBLE",
    "total_cost": "DOUBLE",
    "basis": "VARCHAR",
    "budget_method": "VARCHAR",
    "stats": "VARCHAR",
    "output": "VARCHAR",
}
MEMBER_TYPES: dict[str, str] = {
    "list_id": "VARCHAR",
    "rank": "BIGINT",
    "customer_id": "VARCHAR",
    "action": "VARCHAR",
    "channel": "VARCHAR",
    "expected_value": "DOUBLE",
    "cost": "DOUBLE",
}
LISTS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {TARGET_LISTS} ("
    + ", ".join(
        f"{col} {kind}" + (" PRIMARY KEY" if col == "list_id" else "")
        for col, kind in LIST_TYPES.items()
    )
    + ")"
)
MEMBERS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {TARGET_MEMBERS} ("
    + ", ".join(f"{col} {kind}" for col, kind in MEMBER_TYPES.items())
    + ")"
)
#: the outbox folder (``<home>/outbox/<this>``) of the lists the service made
OUTBOX_LISTS = "target_lists"
#: what every list id looks like (``new_list_id``); the download route accepts nothing else
LIST_ID = re.compile(r"tl-[0-9]{8}T[0-9]{6}-[0-9a-f]{6}")
#: file formats of an exported list, by suffix
EXPORT_SUFFIXES = (".csv", ".parquet")


class TargetError(ValueError):
    """A target list that cannot be built; the message says what to change."""


class WarehouseUnavailableError(RuntimeError):
    """The warehouse cannot be read now (missing, or locked by a writer)."""


# --------------------------------------------------------------------------- reads
class HoldsNothing:
    """A list source with nothing to open or close: ``with`` hands it back as it is."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class WarehouseLists:
    """A list's inputs from the warehouse (:class:`models.targeting.ListSource`).

    ``warehouse`` is an open connection (used as it is, left open) or the warehouse file's
    path: then it is opened read-only when the list's reads begin and closed as soon as
    they end, so a request holds no lock on the file while it selects and exports.
    """

    def __init__(self, warehouse: Any) -> None:
        self._path = Path(warehouse) if isinstance(warehouse, str | Path) else None
        self._con = None if self._path is not None else warehouse

    def __enter__(self) -> Self:
        if self._path is not None:
            # the messages reach HTTP clients: no path, host or process id in them
            if not self._path.exists():
                raise WarehouseUnavailableError("no warehouse yet: run `rapport ingest`")
            try:
                self._con = connect(self._path, read_only=True)
            except Exception as exc:  # duckdb: locked by a writer, unreadable file
                why = "locked by a running job" if "lock" in str(exc).lower() else "unreadable"
                raise WarehouseUnavailableError(f"the warehouse is {why} now") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        if self._path is not None and self._con is not None:
            self._con.disconnect()
            self._con = None

    @property
    def con(self) -> Any:
        if self._con is None:
            raise RuntimeError("WarehouseLists: read inside `with source:`")
        return self._con

    def run(self, run_id: str | None = None) -> RunInfo:
        """The latest scoring run, or ``run_id`` (NoScoresError without one)."""
        return latest_run(raw(self.con), run_id)

    def candidates(
        self, run: RunInfo, spec: FeatureSpec, columns: Sequence[str], as_of: datetime
    ) -> pd.DataFrame:
        """The run's scores joined with the feature ``columns``, computed with ``spec`` (a
        subset of the full spec) as of ``as_of``: consent and contact history are current
        even when the scores are from last night."""
        features = build(self.con, as_of, spec)
        scores = load_scores(raw(self.con), run)
        scores["customer_id"] = scores["customer_id"].astype(str)
        features = features[["customer_id", *columns]]
        features["customer_id"] = features["customer_id"].astype(str)
        return scores.merge(features, on="customer_id", how="left")

    def suppressed(self) -> set[str]:
        return suppressed_ids(raw(self.con))


def suppressed_ids(db: Any) -> set[str]:
    """Customer ids in the warehouse's ``suppressions`` table (empty without one)."""
    if SUPPRESSIONS not in table_names(db):
        return set()
    rows = db.execute(f"SELECT DISTINCT customer_id FROM {SUPPRESSIONS}").fetchall()
    return {str(r[0]) for r in rows if r[0] is not None}


def add_suppressions(con: Any, customer_ids: Iterable[str], reason: str = "opt-out") -> int:
    """Add customers to the warehouse's suppression list (never contacted by any list)."""
    db = raw(con)
    db.execute(SUPPRESSIONS_DDL)
    ids = sorted({str(c) for c in customer_ids})
    if ids:
        frame = pd.DataFrame({"customer_id": ids, "reason": reason})
        db.register("new_suppressions", frame)
        db.execute(
            f"INSERT INTO {SUPPRESSIONS} (customer_id, reason) "
            f"SELECT customer_id, reason FROM new_suppressions"
        )
        db.unregister("new_suppressions")
    return len(ids)


def read_suppression_file(path: Path) -> set[str]:
    """Customer ids from a CSV / Parquet file with a ``customer_id`` column, or a text file
    with one id per line."""
    if not path.exists():
        raise FileNotFoundError(f"no suppression file {path}")
    if path.suffix.lower() == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix.lower() == ".csv":
        frame = pd.read_csv(path, dtype=str)
    else:
        lines = path.read_text("utf-8").splitlines()
        return {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    if "customer_id" not in frame.columns:
        raise TargetError(f"{path}: a suppression file needs a customer_id column")
    return {str(v).strip() for v in frame["customer_id"].dropna()}


def definition_texts(
    workspace: Path, extra: Path | None = None, *, hide_paths: bool = False
) -> list[tuple[str, str]]:
    """The saved list definitions beside the packaged ones, as ``(source, YAML text)`` in
    the order they apply: the workspace's file when present, then ``extra`` (which must
    exist). ``hide_paths`` names files without their folders (HTTP errors do not show
    the server's paths)."""
    paths = [workspace] if workspace.exists() else []
    if extra is not None:
        if not extra.exists():
            raise FileNotFoundError(f"no list definitions file {extra}")
        paths.append(extra)
    return [(p.name if hide_paths else str(p), p.read_text("utf-8")) for p in paths]


# --------------------------------------------------------------------------- writes
#: what a saved list's name may look like (a YAML key, a file-name-safe word)
LIST_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


def save_definition(workspace: Path, name: str, body: Mapping[str, Any]) -> Path:
    """Add (or replace) the saved list ``name`` in the workspace's definitions file, the
    one ``rapport targets --list NAME`` reads (:func:`definition_texts`); ``body`` holds
    the definition's non-default fields. The file is rewritten atomically; other lists in
    it are kept (its comments are not)."""
    import yaml

    if not LIST_NAME.fullmatch(name):
        raise TargetError(
            f"a list name starts with a letter and has only letters, digits, _ and - "
            f"(at most 64), not {name!r}"
        )
    data: dict[str, Any] = {}
    if workspace.exists():
        data = yaml.safe_load(workspace.read_text("utf-8")) or {}
        if not isinstance(data, dict) or not isinstance(data.get("lists", {}), dict):
            raise TargetError(f"{workspace}: expected a mapping 'lists: {{name: ...}}'")
    lists = dict(data.get("lists") or {})
    lists[name] = {k: v for k, v in body.items() if k != "name"}
    data["lists"] = lists
    workspace.parent.mkdir(parents=True, exist_ok=True)
    partial = workspace.with_name(f".{workspace.name}.part")
    partial.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), "utf-8")
    partial.replace(workspace)
    return workspace


def check_export(path: Path) -> Path:
    """``path`` if it names a file a list can be exported to (by suffix), else TargetError;
    callers check before the list is built."""
    if path.suffix.lower() not in EXPORT_SUFFIXES:
        raise TargetError(f"export to a .csv or .parquet file, not {path.name!r}")
    return path


def write_members(members: pd.DataFrame, path: Path) -> Path:
    """Write a list as CSV or Parquet (by the suffix), atomically: readers (the download
    route) never see a half-written file."""
    check_export(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    if path.suffix.lower() == ".csv":
        members.to_csv(partial, index=False)
    else:
        members.to_parquet(partial, index=False)
    partial.replace(path)
    return path


@dataclass
class AuditTables:
    """Where a list goes from ``rapport targets`` and the demo
    (:class:`models.targeting.ListSink`): the file ``out`` when given, and the audit
    tables, written directly on an open read-write connection."""

    con: Any
    out: Path | None = None

    def export(self, members: pd.DataFrame, list_id: str) -> Path | None:
        return write_members(members, self.out) if self.out is not None else None

    def record(self, row: Mapping[str, Any], members: pd.DataFrame) -> None:
        record_lists(raw(self.con), pd.DataFrame([dict(row)]), members)


# --------------------------------------------------------------------------- audit
def new_list_id() -> str:
    """``tl-<UTC time>-<6 hex>``, e.g. ``tl-20250101T120000-3fa2c1``."""
    return datetime.now(UTC).strftime("tl-%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6]


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _typed_select(types: Mapping[str, str], source: str) -> str:
    cols = ", ".join(f"CAST({_quoted(c)} AS {t}) AS {_quoted(c)}" for c, t in types.items())
    return f"SELECT {cols} FROM {source}"


def record_lists(db: Any, lists: Any, members: Any) -> tuple[int, int]:
    """Keep target lists for audit: ``lists`` rows of ``target_lists`` (:data:`LIST_TYPES`),
    ``members`` rows of ``target_list_members`` (:data:`MEMBER_TYPES`), as anything DuckDB
    can scan (pandas, Arrow). One transaction on a raw DuckDB connection; lists already
    recorded (by ``list_id``) are skipped with their members, so replays change nothing.
    Returns how many lists and members were new."""
    db.execute("BEGIN TRANSACTION")
    try:
        db.execute(LISTS_DDL)
        db.execute(MEMBERS_DDL)
        db.register("_rapport_new_lists", lists)
        db.register("_rapport_new_members", members)
        new = (
            f"(SELECT list_id FROM _rapport_new_lists WHERE list_id NOT IN "
            f"(SELECT list_id FROM {TARGET_LISTS}))"
        )
        db.execute(
            f"CREATE OR REPLACE TEMP TABLE _rapport_list_ids AS SELECT DISTINCT list_id FROM {new}"
        )
        (count,) = db.execute(
            f"INSERT INTO {TARGET_LISTS} BY NAME "
            + _typed_select(LIST_TYPES, "_rapport_new_lists")
            + " WHERE list_id IN (SELECT list_id FROM _rapport_list_ids)"
        ).fetchone()
        (added,) = db.execute(
            f"INSERT INTO {TARGET_MEMBERS} BY NAME "
            + _typed_select(MEMBER_TYPES, "_rapport_new_members")
            + " WHERE list_id IN (SELECT list_id FROM _rapport_list_ids)"
        ).fetchone()
        db.execute("DROP TABLE _rapport_list_ids")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    finally:
        for view in ("_rapport_new_lists", "_rapport_new_members"):
            db.unregister(view)
    return int(count), int(added)


def outbox_lines(row: Mapping[str, Any], members: pd.DataFrame) -> list[dict[str, Any]]:
    """One list as outbox rows: its members (``kind: member``), then its ``target_lists``
    row (``kind: list``) with the number of members, so a reader can tell a complete list
    (header present, member count matching) from a torn one."""
    columns = [c for c in MEMBER_TYPES if c != "list_id"]
    lines = [
        {"kind": "member", "list_id": row["list_id"], **member}
        for member in members[columns].to_dict(orient="records")
    ]
    lines.append({"kind": "list", **{c: row.get(c) for c in LIST_TYPES}, "members": len(members)})
    return lines


@dataclass
class OutboxLists:
    """Complete lists read from outbox files (Arrow tables) and the ids of torn ones."""

    lists: Any
    members: Any
    complete: int
    incomplete: list[str]


def read_outbox_lists(db: Any, paths: Sequence[Path]) -> OutboxLists:
    """The complete lists in outbox files written from :func:`outbox_lines`; lists whose
    header is missing or whose member count differs are left out and named."""
    listing = ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths)
    types = {"kind": "VARCHAR", **LIST_TYPES, **MEMBER_TYPES, "members": "BIGINT"}
    spec = ", ".join(f"'{c}': '{t}'" for c, t in types.items())
    db.execute(
        "CREATE OR REPLACE TEMP TABLE _rapport_outbox_lists AS SELECT * FROM "
        f"read_json([{listing}], format = 'newline_delimited', columns = {{{spec}}})"
    )
    try:
        db.execute(
            "CREATE OR REPLACE TEMP TABLE _rapport_outbox_complete AS "
            "SELECT h.list_id FROM (SELECT DISTINCT list_id, members FROM "
            "_rapport_outbox_lists WHERE kind = 'list') h LEFT JOIN (SELECT list_id, "
            "count(*) AS n FROM _rapport_outbox_lists WHERE kind = 'member' GROUP BY list_id) m "
            "USING (list_id) WHERE coalesce(m.n, 0) = h.members"
        )
        ok = "list_id IN (SELECT list_id FROM _rapport_outbox_complete)"
        lists = db.execute(
            f"SELECT DISTINCT ON (list_id) {', '.join(map(_quoted, LIST_TYPES))} "
            f"FROM _rapport_outbox_lists WHERE kind = 'list' AND {ok}"
        ).to_arrow_table()
        members = db.execute(
            f"SELECT {', '.join(map(_quoted, MEMBER_TYPES))} FROM _rapport_outbox_lists "
            f"WHERE kind = 'member' AND {ok} ORDER BY list_id, rank"
        ).to_arrow_table()
        torn = db.execute(
            "SELECT DISTINCT list_id FROM _rapport_outbox_lists WHERE list_id NOT IN "
            "(SELECT list_id FROM _rapport_outbox_complete) ORDER BY list_id"
        ).fetchall()
    finally:
        db.execute("DROP TABLE IF EXISTS _rapport_outbox_lists")
        db.execute("DROP TABLE IF EXISTS _rapport_outbox_complete")
    return OutboxLists(lists, members, lists.num_rows, [str(r[0]) for r in torn])
