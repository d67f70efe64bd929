"""Validated ingest: contract files into the DuckDB warehouse, bad rows into quarantine.

Files are read natively by DuckDB (Parquet typed, CSV as text so a bad value cannot fail
the read) and every check is one vectorised SQL pass per table:

1. Before anything is written, every file must be readable and carry the required columns
   of its table, otherwise :class:`IngestError` names the file and the columns.
2. Row checks (all problems of a row are listed in its reason, joined by ``"; "``; the
   report counts a row under its first problem): required value missing, unparsable
   timestamp / number / boolean, timestamp in the future or before 1990, value outside its
   range or choices, unknown customer (known = already stored, or valid in this batch's
   customers file, which is loaded first), id already stored with different content.
   Orders and interactions may name their customer by an identifier (e-mail, phone,
   loyalty card, cookie) in place of ``customer_id``: see :func:`_name_customers`.
3. Rows that pass are grouped by id: identical copies collapse to one row, different
   copies of one id are all quarantined as a conflict (their ``row_json`` is the parsed
   row, timestamps in UTC, because the file row is no longer at hand at that point).
4. New ids are inserted, ids stored with identical content are counted as already present,
   and stored rows are never overwritten. Contents are compared by a 64-bit hash of the
   typed row, and ids are assumed unique in the warehouse (only ingest writes there).

Speed: the common case (a row that passes, with an id new to the warehouse and to the
batch) never goes through a staging table. One aggregate pass collects the hashes of the
ids that need care (bad rows, repeated ids, stored ids); every other row is inserted
straight from the file; only the rows of those ids are staged for the steps above (see
:func:`_load_table`). The 1M-customer demo set (32M rows) loads in about half a minute on
two cores (``bench/ingest.py``).

Timestamps are converted to UTC; naive ones are read as UTC. For every table
``read == inserted + already_present + quarantined + duplicates``, where ``duplicates``
counts identical copies collapsed within the batch (a bad row repeated verbatim is
quarantined once). Everything runs in one transaction per call, so a failure (say a broken
CSV line found mid-load, reported as :class:`IngestError` with the line) leaves the
warehouse as it was; ``commit=False`` runs the same work and rolls it back. Quarantine rows
are deduplicated on (table_name, row_json, reason), so re-ingesting the same files changes
nothing.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from features.contract import DUCKDB_TYPES, MAX_OUTCOME_REVENUE, OUTCOMES, TABLES, Column, Table
from features.files import BadLine, FileError, FileOptions, read_csv
from features.forget import erase_forgotten
from features.identity import (
    DEFAULT_PHONE_REGION,
    check_region,
    describe,
    identifier_values,
    normalise_one,
)
from features.resolve import AmbiguousIdentifierError, identifier_owners, named_owner
from features.tables import outcomes as outcome_tables
from features.tables.outcomes import FEEDBACK, UNKNOWN_DECISION, Attribution
from features.timeutil import as_utc
from features.warehouse import ensure_contract_tables, raw

#: customers first, so the events of this batch's new customers are known
LOAD_ORDER = ("customers", "orders", "interactions", "campaign_log")
#: every input a folder may hold: the contract tables, then outcomes of their decisions
FILE_ORDER = (*LOAD_ORDER, OUTCOMES.name)
INPUTS: dict[str, Table] = {**TABLES, OUTCOMES.name: OUTCOMES}
SUFFIXES = (".parquet", ".csv", ".csv.gz")
QUARANTINE = "quarantine"
#: events before this are taken for data errors (default dates, epoch zero)
EARLIEST = "1990-01-01"
#: longest piece of a bad value quoted in a reason
QUOTE_CHARS = 80

#: numeric ranges beyond the column type: (table, column) -> (SQL test, text for people)
RANGES: dict[tuple[str, str], tuple[str, str]] = {
    ("campaign_log", "propensity"): ("{v} > 0 AND {v} <= 1", "is outside (0, 1]"),
    ("interactions", "satisfaction"): ("{v} BETWEEN 1 AND 5", "is not an integer in 1..5"),
    ("outcomes", "revenue"): (
        f"{{v}} BETWEEN 0 AND {MAX_OUTCOME_REVENUE}",
        f"is outside 0..{MAX_OUTCOME_REVENUE:,.0f}",
    ),
}
_INVALID_KIND = {
    "timestamp": "invalid timestamp",
    "float": "invalid number",
    "int": "invalid number",
    "bool": "invalid boolean",
}
_TYPE_WORDS = {
    "timestamp": "a valid timestamp",
    "float": "a number",
    "int": "a whole number",
    "bool": "a boolean (true/false)",
}
_STAGE, _MULTI = "_rapport_ingest_stage", "_rapport_ingest_multi"
#: what a line that does not split into the header's fields is counted as
BAD_LINE = "unreadable line"
#: dates whose day and month are both numbers in an order ISO 8601 does not fix
_DAY_MONTH = r"\d{1,2}[./-]\d{1,2}[./-]\d{2,4}([ T].*)?"
_EXCEPTIONS = "_rapport_ingest_exceptions"


class IngestError(ValueError):
    """A file cannot be ingested at all (unreadable, or a required column is missing)."""


@dataclass
class TableReport:
    """What happened to the rows of one table."""

    table: str
    source: str
    read: int = 0
    inserted: int = 0
    already_present: int = 0
    #: identical copies within the batch, collapsed into one row
    duplicates: int = 0
    #: quarantined rows per kind of problem (a row counts under its first problem)
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    #: quarantined rows not in the quarantine table before (the others were seen already)
    newly_quarantined: int = 0
    extra_columns: tuple[str, ...] = ()
    #: tables outside the contract (``as_is``) are replaced as they are, without checks
    replaced: bool = False
    #: rows without ``customer_id`` whose identifiers named their customer
    named_by_identifier: int = 0

    @property
    def quarantined(self) -> int:
        return sum(self.quarantined_by_reason.values())

    def line(self) -> str:
        if self.replaced:
            return f"{self.table} ({self.source}): replaced with {self.read:,} rows"
        text = (
            f"{self.table} ({self.source}): read {self.read:,}, inserted {self.inserted:,}, "
            f"already present {self.already_present:,}, duplicates {self.duplicates:,}, "
            f"quarantined {self.quarantined:,}"
        )
        if self.named_by_identifier:
            text += f"\n    customer named by an identifier: {self.named_by_identifier:,} rows"
        if self.quarantined_by_reason:
            kinds = sorted(self.quarantined_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
            text += "\n    quarantined: " + ", ".join(f"{k} {n:,}" for k, n in kinds)
        if self.extra_columns:
            text += "\n    ignored extra columns: " + ", ".join(self.extra_columns)
        return text


@dataclass
class IngestReport:
    """Per-table counts of one ingest call (or check: ``commit=False``)."""

    tables: dict[str, TableReport] = field(default_factory=dict)
    #: False for ``ingest(commit=False)``, which rolls everything back
    written: bool = True
    #: outcome versions settled after the tables: pending ones landed, inline, attributed
    outcomes: dict[str, outcome_tables.Versions] = field(default_factory=dict)
    #: rows of customers erased by ``rapport forget`` that the files brought back, not kept
    forgotten_rows: int = 0

    @property
    def quarantined(self) -> int:
        return sum(t.quarantined for t in self.tables.values())

    @property
    def newly_quarantined(self) -> int:
        return sum(t.newly_quarantined for t in self.tables.values())

    def over_quarantine(self, share: float) -> list[str]:
        """The sources with more than ``share`` of their rows quarantined, or all of them:
        a wrong file or mapping, which must not pass as a run with a few bad rows."""
        over = []
        for t in self.tables.values():
            if t.read and (t.quarantined == t.read or t.quarantined > share * t.read):
                over.append(
                    f"{t.table} ({t.source}): {t.quarantined:,} of {t.read:,} rows quarantined"
                )
        return over

    def source_lines(self) -> list[str]:
        """One line per source read (:mod:`features.outbox_ingest` adds its target lists)."""
        lines = [t.line() for t in self.tables.values()]
        settled = {k: v for k, v in self.outcomes.items() if v.new}
        if settled:
            lines.append(
                "outcomes settled: "
                + ", ".join(
                    f"{kind} {v.new:,} new ({v.corrections:,} corrections)"
                    for kind, v in settled.items()
                )
            )
        return lines

    def summary(self) -> str:
        head = "ingest" if self.written else "validation only, nothing was written"
        sources = self.source_lines()
        if not sources:
            return f"{head}: no files"
        lines = [f"{head}:"] + ["  " + line for line in sources]
        if self.quarantined:
            verb = "quarantined" if self.written else "would be quarantined"
            lines.append(
                f"{self.quarantined:,} rows {verb} ({self.newly_quarantined:,} new): "
                f"see table `{QUARANTINE}` for the reasons"
            )
        else:
            lines.append("no rows quarantined")
        if self.forgotten_rows:
            lines.append(
                f"{self.forgotten_rows:,} rows of forgotten customers (`rapport forget`) "
                "not kept: the source still holds them"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class _Source:
    """One table's input: a DuckDB relation (a file, or JSON-lines files) and its columns."""

    table: str
    label: str
    relation: str
    #: column name -> DuckDB type, in file order
    columns: dict[str, str]
    #: name of a column holding each row's file (JSON lines), excluded from the row itself
    file_column: str | None = None
    #: how numbers and dates are written in the file
    options: FileOptions = field(default_factory=FileOptions)
    #: records of a CSV file that do not fit its header (quarantined with their line)
    bad_lines: tuple[BadLine, ...] = ()
    #: outcome rows only: where they come from (``file`` or ``feedback``)
    outcome_source: str = "file"
    #: events naming their customer by an identifier: the prefix of the two columns (reason,
    #: kind of problem) :func:`_name_customers` adds, excluded from the row itself
    identity_column: str | None = None
    #: rows whose identifiers named their customer
    named: int = 0
    #: the file another engine reads (the clean copy of a CSV that needed one) and its
    #: delimiter
    file: Path | None = None
    delimiter: str = ","


# --------------------------------------------------------------------------- public API
def discover_files(directory: Path, as_is: Sequence[str] = ()) -> dict[str, Path]:
    """The contract files in a folder, found by name: ``<table>.parquet|csv``, and those of
    the tables outside the contract named in ``as_is`` (see :func:`ingest`)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise IngestError(f"{directory}: not a folder")
    found: dict[str, Path] = {}
    for name in (*FILE_ORDER, *as_is):
        matches = [directory / f"{name}{suffix}" for suffix in SUFFIXES]
        matches = [p for p in matches if p.is_file()]
        if len(matches) > 1:
            raise IngestError(
                f"{directory}: several files for {name}: "
                + ", ".join(p.name for p in matches)
                + " (keep one)"
            )
        if matches:
            found[name] = matches[0]
    return found


def ingest(
    con: Any,
    files: Mapping[str, Path],
    now: datetime,
    as_is: Sequence[str] = (),
    options: FileOptions | None = None,
    attribution: Attribution | None = None,
    region: str = DEFAULT_PHONE_REGION,
    *,
    commit: bool = True,
) -> IngestReport:
    """Check and load contract files (idempotent); bad rows go to quarantine with a reason.
    ``commit=False`` runs every check and reports, and leaves the warehouse untouched
    (``rapport validate``).

    An ``outcomes`` file adds outcome versions of logged decisions, and every ingest then
    lands pending outcomes whose decision arrived and attributes orders to decisions
    (``attribution``: the windows, default 14 days each); see
    :mod:`features.tables.outcomes`.

    ``as_is``: tables outside the contract that ``files`` may hold too (the demo's
    simulator writes some, see :mod:`rapport.truth`); they are loaded as they are, without
    checks, and replaced on every ingest. ``options`` say how CSV files are written
    (delimiter, encoding, decimal comma, thousands separator, date format); see
    :class:`features.files.FileOptions`. ``region``: the phone region (setting
    ``RAPPORT_PHONE_REGION``) of orders and interactions naming their customer by phone.
    """
    region = check_region(region)
    with tempfile.TemporaryDirectory(prefix="rapport-ingest-") as scratch:
        sources = file_sources(con, files, as_is, options or FileOptions(), Path(scratch))
        return _run(con, sources, as_utc(now), commit, attribution, region)


def ingest_jsonl(
    con: Any,
    batches: Mapping[str, Sequence[Path]],
    now: datetime,
    attribution: Attribution | None = None,
) -> IngestReport:
    """Check and load contract rows from newline-delimited JSON files (``table -> files``,
    every value as text, as the service's outbox writes them), exactly like files;
    ``feedback`` files hold outcome rows."""
    sources = [_jsonl_source(name, paths) for name, paths in batches.items() if paths]
    return _run(con, sources, as_utc(now), True, attribution)


# --------------------------------------------------------------------------- sources
def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _is_csv(path: Path) -> bool:
    return path.name.lower().endswith((".csv", ".csv.gz", ".tsv"))


def _relation(path: Path) -> str:
    """A typed read (tables outside the contract, and Parquet files of contract tables)."""
    if path.name.lower().endswith((".parquet", ".pq")):
        return f"read_parquet({_lit(str(path))})"
    if _is_csv(path):
        return f"read_csv({_lit(str(path))}, header = true)"
    raise IngestError(f"{path}: unsupported file type (use .parquet, .csv or .csv.gz)")


def _describe(db: duckdb.DuckDBPyConnection, relation: str, label: str) -> dict[str, str]:
    try:
        rows = db.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    except duckdb.Error as exc:
        raise IngestError(f"{label}: cannot read file: {duckdb_error(exc)}") from exc
    return {str(r[0]): str(r[1]) for r in rows}


def duckdb_error(exc: BaseException) -> str:
    """DuckDB's own words, without its list of reader options (CSV errors name the line)."""
    lines = str(exc).strip().split("\nPossible fixes")[0].splitlines()
    return "; ".join(line.strip() for line in lines[:3] if line.strip())


def file_sources(
    con: Any,
    files: Mapping[str, Path],
    as_is: Sequence[str],
    options: FileOptions,
    scratch: Path,
) -> list[_Source]:
    """Open every file and check its columns and dates before anything is written."""
    if clash := sorted(set(as_is) & set(TABLES)):
        raise IngestError(f"{', '.join(clash)}: contract tables cannot be loaded as they are")
    unknown = sorted(set(files) - set(FILE_ORDER) - set(as_is))
    if unknown:
        raise IngestError(
            f"unknown table(s) {', '.join(unknown)}; expected one of "
            + ", ".join((*FILE_ORDER, *as_is))
        )
    db = raw(con)
    sources, problems = [], []
    for name in (*FILE_ORDER, *as_is):
        if name not in files:
            continue
        path = Path(files[name])
        if not path.is_file():
            raise IngestError(f"{path}: file not found")
        bad_lines: list[BadLine] = []
        readable, delimiter = path, ","
        if name in INPUTS and _is_csv(path):
            try:
                read = read_csv(db, path, options, scratch)
            except FileError as exc:
                raise IngestError(str(exc)) from exc
            relation, bad_lines = read.relation, read.bad_lines
            readable = read.path or path
            delimiter = read.delimiter if readable == path else ","
        else:
            relation = _relation(path)
        columns = _describe(db, relation, str(path))
        if name in INPUTS:
            missing = _missing_columns(INPUTS[name], columns)
            if missing:
                hint = ""
                if len(columns) == 1 and options.delimiter is not None:
                    hint = (
                        f" (the header reads as one column with --delimiter {options.delimiter!r})"
                    )
                problems.append(
                    f"{path}: missing required column(s) {', '.join(missing)} of table {name}"
                    + hint
                )
                continue
            if options.date_format is None:
                _refuse_ambiguous_dates(db, INPUTS[name], relation, columns, path)
        sources.append(
            _Source(
                name,
                str(path),
                relation,
                columns,
                None,
                options,
                tuple(bad_lines),
                file=readable,
                delimiter=delimiter,
            )
        )
    if problems:
        raise IngestError("\n".join(problems))
    return sources


def _refuse_ambiguous_dates(
    db: duckdb.DuckDBPyConnection,
    table: Table,
    relation: str,
    columns: Mapping[str, str],
    path: Path,
) -> None:
    """Dates like ``03/04/2025`` are never guessed: without a date format they stop the
    ingest, naming the file, the column, the row's id and the option to give."""
    by_lower = {c.lower(): c for c, kind in columns.items() if kind == "VARCHAR"}
    texts = [
        (col.name, by_lower[col.name.lower()])
        for col in table.columns
        if col.type == "timestamp" and col.name.lower() in by_lower
    ]
    if not texts:
        return
    key = by_lower.get(table.id_column.lower(), table.id_column)
    pattern = _lit(_DAY_MONTH)
    found = " OR ".join(f"regexp_full_match(trim({_ident(c)}), {pattern})" for _, c in texts)
    picks = ", ".join(_ident(c) for _, c in texts)
    sql = f"SELECT {_ident(key)}, {picks} FROM {relation} WHERE {found} LIMIT 1"
    row = db.execute(sql).fetchone()
    if row is None:
        return
    for (name, _), value in zip(texts, row[1:], strict=True):
        if value is not None and re.fullmatch(_DAY_MONTH, value.strip()):
            raise IngestError(
                f"{path}: {name} '{value}' (at {table.id_column} '{row[0]}') writes the day and "
                "the month as numbers, and their order is never guessed; give --date-format, "
                "e.g. '%d/%m/%Y' for 31/12/2025 or '%m/%d/%Y' for 12/31/2025 "
                "(add ' %H:%M' for times)"
            )


def _missing_columns(table: Table, columns: Mapping[str, str]) -> list[str]:
    present = {c.lower() for c in columns}
    required = table.required
    if any(kind in present for kind in table.identifiers):  # they may name the customer
        required = [c for c in required if c != "customer_id"]
    return [c for c in required if c.lower() not in present]


def _jsonl_source(name: str, paths: Sequence[Path]) -> _Source:
    table = OUTCOMES if name == FEEDBACK else TABLES[name]
    listing = ", ".join(_lit(str(p)) for p in paths)
    types = ", ".join(f"{_lit(c)}: 'VARCHAR'" for c in table.column_names)
    relation = (
        f"read_json([{listing}], format = 'newline_delimited', columns = {{{types}}}, "
        "filename = '_rapport_file')"
    )
    columns = dict.fromkeys(table.column_names, "VARCHAR")
    return _Source(
        table.name,
        f"{paths[0].parent}/*.jsonl",
        relation,
        columns,
        "_rapport_file",
        outcome_source="feedback" if name == FEEDBACK else "file",
    )


# --------------------------------------------------------------------------- identifiers
#: what a row without ``customer_id`` whose identifiers name no one customer is counted as
UNKNOWN_IDENTIFIER = "unknown identifier"
AMBIGUOUS_IDENTIFIER = "ambiguous identifier"
UNUSABLE_IDENTIFIER = "unusable identifier"
IDENTITY_PROBLEMS = (UNUSABLE_IDENTIFIER, AMBIGUOUS_IDENTIFIER, UNKNOWN_IDENTIFIER)


def _named_view(table: str) -> str:
    return _ident(f"_rapport_ingest_{table}_named")


def _named_table(table: str) -> str:
    """Each distinct combination of a table's identifiers -> customer, or reason and kind."""
    return _ident(f"_rapport_ingest_{table}_identifiers")


def _identity_columns(source: _Source) -> tuple[str, ...]:
    """The reason and kind columns :func:`_name_customers` added (none if it did not)."""
    if source.identity_column is None:
        return ()
    return (source.identity_column, f"{source.identity_column}_kind")


def _name_customers(db: duckdb.DuckDBPyConnection, source: _Source, region: str) -> _Source:
    """Orders and interactions carrying identifier columns (``email``, ``phone``,
    ``loyalty_card``, ``cookie_id``, ``name`` with ``postcode``): a row without
    ``customer_id`` gets the customer its identifiers name, as the online index and
    ``/events`` would name it (:func:`features.resolve.identifier_owners` over the
    warehouse's customers, this batch's included, and their clusters;
    :func:`features.resolve.named_owner`), each identifier in normal form
    (:func:`features.identity.normalise_one`; a name with postcode is one identifier). A
    row with ``customer_id`` keeps it (its identifiers are not read).

    A row whose identifiers name no one customer is quarantined, its reason naming the
    identifier's kind, never its value: ``unusable identifier`` (not an e-mail, not a valid
    phone number), ``ambiguous identifier`` (a shared cookie or household phone, or
    identifiers naming different customers) or ``unknown identifier`` (nobody holds it:
    the row waits in quarantine and lands when the file is ingested again after its
    customer). No provisional customer is made for it, unlike live: a batch file can be
    sent again, and a bulk export's typos must not become customers.

    Each distinct combination of identifiers is looked up once; the source becomes a view
    with ``customer_id`` filled in and the two columns of :func:`_identity_columns`.
    """
    table = TABLES[source.table]
    by_lower = {c.lower(): c for c in source.columns if c != source.file_column}
    kinds = [kind for kind in table.identifiers if kind in by_lower]
    if not kinds:
        return source
    cid = by_lower.get("customer_id")
    given = f"NULLIF(trim(CAST(r.{_ident(cid)} AS VARCHAR)), '')" if cid else "NULL::VARCHAR"
    texts = [f"NULLIF(trim(CAST(r.{_ident(by_lower[k])} AS VARCHAR)), '')" for k in kinds]
    names = [f"_k{i}" for i in range(len(kinds))]
    combos = db.execute(
        f"SELECT {', '.join(f'{t} AS {n}' for t, n in zip(texts, names, strict=True))}, "
        f"count(*) FROM {source.relation} r WHERE {given} IS NULL GROUP BY ALL"
    ).fetchall()
    if not combos:  # every row names its customer_id
        return source
    decided, named = decide_identifiers(db, kinds, combos, region)
    frame = pd.DataFrame(decided, columns=[*names, "_customer", "_reason", "_kind"], dtype=object)
    ids = _named_table(source.table)
    db.register("_rapport_named_frame", frame)
    try:
        typed = ", ".join(f"{c}::VARCHAR AS {c}" for c in frame.columns)
        db.execute(
            f"CREATE OR REPLACE TEMP TABLE {ids} AS SELECT {typed} FROM _rapport_named_frame"
        )
    finally:
        db.unregister("_rapport_named_frame")
    reason = "_rapport_identity"
    while reason in source.columns:
        reason = "_" + reason
    match = " AND ".join(
        f"{t} IS NOT DISTINCT FROM n.{n}" for t, n in zip(texts, names, strict=True)
    )
    filled = f"coalesce({given}, n._customer)"
    select = f"r.* REPLACE ({filled} AS {_ident(cid)})" if cid else f"r.*, {filled} AS customer_id"
    db.execute(
        f"CREATE OR REPLACE TEMP VIEW {_named_view(source.table)} AS SELECT {select}, "
        f"CASE WHEN {given} IS NULL THEN n._reason END AS {_ident(reason)}, "
        f"CASE WHEN {given} IS NULL THEN n._kind END AS {_ident(reason + '_kind')} "
        f"FROM {source.relation} r LEFT JOIN {ids} n ON {given} IS NULL AND {match}"
    )
    return replace(
        source,
        relation=_named_view(source.table),
        columns=named_columns(source, cid, reason),
        identity_column=reason,
        named=named,
    )


def named_columns(source: _Source, cid: str | None, reason: str) -> dict[str, str]:
    """The columns of ``source`` once identifiers have named its rows' customers (both
    engines): the customer id and the reason (and its kind) a row was not named, as text."""
    columns = dict(source.columns)
    columns[cid or "customer_id"] = "VARCHAR"
    columns[reason] = columns[reason + "_kind"] = "VARCHAR"
    return columns


def decide_identifiers(
    db: duckdb.DuckDBPyConnection,
    kinds: Sequence[str],
    combos: Sequence[Sequence[Any]],
    region: str,
) -> tuple[list[tuple[Any, ...]], int]:
    """Each distinct combination of identifier values (``kinds`` order, then its row count)
    -> (values..., customer, reason, kind of problem), and the rows named; both engines
    decide here, over the warehouse's customers (this batch's included) and clusters."""
    owners: dict[str, dict[str, str]] = {}
    if any(any(v is not None for v in row[:-1]) for row in combos):
        owners = {k: v.to_dict() for k, v in identifier_owners(db, region).items()}
    normal: dict[tuple[str, object], str | None] = {}
    decided, named = [], 0
    for *values, count in combos:
        sent = {k: str(v) for k, v in zip(kinds, values, strict=True) if v is not None}
        held = identifier_values(sent)  # by kind: name and postcode make one
        pair = held.get("name_postcode")
        if isinstance(pair, tuple) and None in pair and len(held) > 1:
            del held["name_postcode"]  # half a pair (a delivery postcode) beside an e-mail
        for kind, value in held.items():
            if (kind, value) not in normal:
                normal[(kind, value)] = normalise_one(kind, value, region)
        customer, why, problem = _named_customer(held, normal, owners)
        named += int(count) if customer is not None else 0
        decided.append((*values, customer, why, problem))
    return decided, named


def _named_customer(
    held: Mapping[str, object],
    normal: Mapping[tuple[str, object], str | None],
    owners: Mapping[str, Mapping[str, str]],
) -> tuple[str | None, str | None, str | None]:
    """(customer, reason, kind of problem) of one row's identifiers (kind -> value as sent)."""
    if not held:
        return None, None, None  # neither customer_id nor an identifier: "missing"
    unusable = [k for k in held if normal[(k, held[k])] is None]
    if unusable:
        what = " and ".join(f"{k} is not a usable {describe(k)}" for k in unusable)
        return None, f"customer_id is missing and its {what}", UNUSABLE_IDENTIFIER
    found = {}
    for kind, value in held.items():
        owner = owners.get(kind, {}).get(str(normal[(kind, value)]))
        if owner is not None:
            found[kind] = owner
    listed = ", ".join(held)
    try:
        customer, _ = named_owner(list(held), found)
    except AmbiguousIdentifierError:
        return (
            None,
            f"customer_id is missing and its identifiers ({', '.join(found)}) name more than "
            "one customer (a shared cookie or household phone, or different persons' "
            "identifiers): give customer_id",
            AMBIGUOUS_IDENTIFIER,
        )
    if customer is None:
        return (
            None,
            f"customer_id is missing and no customer holds its {listed} (ingest the file "
            "again once the customer is loaded)",
            UNKNOWN_IDENTIFIER,
        )
    return customer, None, None


# --------------------------------------------------------------------------- run
#: session settings during an ingest: naive text timestamps are UTC, and row order need not
#: be kept (which makes bulk inserts parallel)
_SETTINGS = {"TimeZone": "UTC", "preserve_insertion_order": "false"}


@contextmanager
def _transaction(db: duckdb.DuckDBPyConnection, commit: bool) -> Iterator[None]:
    """One transaction per call, under :data:`_SETTINGS` (restored afterwards)."""
    before = {name: str(_one(db, f"SELECT current_setting('{name}')")[0]) for name in _SETTINGS}
    for name, value in _SETTINGS.items():
        db.execute(f"SET {name} = {_lit(value)}")
    db.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    else:
        db.execute("COMMIT" if commit else "ROLLBACK")
    finally:
        for name, value in before.items():
            db.execute(f"SET {name} = {_lit(value)}")


def _run(
    con: Any,
    sources: list[_Source],
    now: datetime,
    commit: bool,
    attribution: Attribution | None = None,
    region: str = DEFAULT_PHONE_REGION,
) -> IngestReport:
    db = raw(con)
    report = IngestReport(written=commit)
    with _transaction(db, commit):
        ensure_contract_tables(con)
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {QUARANTINE} (table_name VARCHAR, source_file VARCHAR, "
            "row_json VARCHAR, reason VARCHAR, ingested_at TIMESTAMPTZ)"
        )
        for source in sources:
            try:
                if source.table == OUTCOMES.name:
                    result = _load_outcomes(db, source, now)
                elif source.table in TABLES:
                    result = _load_table(db, _name_customers(db, source, region), now)
                else:
                    result = _replace_as_is(db, source)
            except duckdb.Error as exc:
                raise IngestError(f"{source.label}: {duckdb_error(exc)}") from exc
            report.tables[result.table] = result
        try:
            report.outcomes = _settle_outcomes(db, now, attribution)
            report.forgotten_rows = erase_forgotten(db, now, region)
        except duckdb.Error as exc:
            raise IngestError(f"outcomes: {duckdb_error(exc)}") from exc
        for temp in (_EXCEPTIONS, _STAGE, _MULTI):
            db.execute(f"DROP TABLE IF EXISTS {temp}")
        for name, table in TABLES.items():
            if table.identifiers:
                db.execute(f"DROP VIEW IF EXISTS {_named_view(name)}")
                db.execute(f"DROP TABLE IF EXISTS {_named_table(name)}")
    return report


def _replace_as_is(db: duckdb.DuckDBPyConnection, source: _Source) -> TableReport:
    db.execute(f"CREATE OR REPLACE TABLE {_ident(source.table)} AS SELECT * FROM {source.relation}")
    (count,) = _one(db, f"SELECT count(*) FROM {_ident(source.table)}")
    return TableReport(source.table, source.label, read=count, inserted=count, replaced=True)


def _one(db: duckdb.DuckDBPyConnection, sql: str) -> tuple:
    row = db.execute(sql).fetchone()
    assert row is not None
    return row


def _load_table(db: duckdb.DuckDBPyConnection, source: _Source, now: datetime) -> TableReport:
    """Load one table so that the common case never goes through a staging table.

    1. One aggregate pass over the input groups the rows by a 64-bit hash of their id and
       keeps the *exceptional* hashes: those of bad rows, of ids seen more than once in the
       batch, of ids already stored. An id stored with identical content (one good row) is
       marked ``_same``: counted as already present, nothing else to do.
    2. Every row whose id hash is not exceptional is good and new: it is inserted straight
       from the input, typed, in one parallel ``INSERT ... ANTI JOIN``.
    3. The other exceptional rows (few, unless a batch is largely re-sent with changes) are
       staged and resolved exactly as the module docstring says: quarantine, collapse,
       conflict, already present.

    A hash collision can only send a good row down the exact path, never change its fate.
    """
    table = TABLES[source.table]
    q = _Query(table, source, now)
    (stored,) = _one(db, f"SELECT count(*) FROM (SELECT 1 FROM {q.name} LIMIT 1)")
    db.execute(q.exceptions_sql(stored_empty=not stored))
    (clean,) = _one(db, q.insert_clean_sql())
    (same,) = _one(db, f"SELECT count(*) FROM {_EXCEPTIONS} WHERE _same")
    db.execute(q.stage_sql())
    _mark_conflicts_in_batch(db, table)
    inserted = _insert_new(db, table)
    report = _count(db, table, source, int(clean), int(same), inserted)
    report.named_by_identifier = source.named
    report.newly_quarantined = _quarantine(db, table, source, now)
    if source.bad_lines:
        report.read += len(source.bad_lines)
        report.quarantined_by_reason[BAD_LINE] = len(source.bad_lines)
        report.newly_quarantined += _quarantine_lines(db, table, source, now)
    return report


def _load_outcomes(db: duckdb.DuckDBPyConnection, source: _Source, now: datetime) -> TableReport:
    """Outcome rows: checked like any table, then versions of their decisions' outcomes
    (:func:`features.tables.outcomes.record`); rows of unknown decisions are quarantined
    and kept pending."""
    q = _Query(OUTCOMES, source, now)
    db.execute(q.verdict_sql(_STAGE))
    kind = _lit(source.outcome_source)
    typed = (
        f"decision_id, outcome, revenue, responded_at, {kind} AS source, "
        f"coalesce(recorded_at, TIMESTAMPTZ {_lit(now.isoformat())}) AS recorded_at"
    )
    done = outcome_tables.record(db, f"SELECT {typed} FROM {_STAGE} WHERE _reason IS NULL", now)
    outcome_tables.hold(
        db,
        f"SELECT {typed}, _row_json AS row_json, _reason AS reason FROM {_STAGE} "
        f"WHERE _kind = {_lit(UNKNOWN_DECISION)}",
        now,
    )
    kinds = db.execute(
        f"SELECT _kind, count(*) FROM {_STAGE} WHERE _reason IS NOT NULL GROUP BY _kind"
    ).fetchall()
    (read,) = _one(db, f"SELECT count(*) FROM {_STAGE}")
    report = TableReport(
        table=f"outcomes ({source.outcome_source})",
        source=source.label,
        read=int(read) + len(source.bad_lines),
        inserted=done.new,
        already_present=done.replays,
        quarantined_by_reason={str(k): int(n) for k, n in kinds},
    )
    report.newly_quarantined = _quarantine(db, OUTCOMES, source, now)
    if source.bad_lines:
        report.quarantined_by_reason[BAD_LINE] = len(source.bad_lines)
        report.newly_quarantined += _quarantine_lines(db, OUTCOMES, source, now)
    return report


def _settle_outcomes(
    db: duckdb.DuckDBPyConnection, now: datetime, attribution: Attribution | None
) -> dict[str, outcome_tables.Versions]:
    """After every load: pending outcomes whose decision arrived, inline campaign-log
    outcomes, attribution from orders (the order of precedence does not depend on it)."""
    return {
        "pending landed": outcome_tables.retry_pending(db, now, QUARANTINE),
        "campaign_log": outcome_tables.record_inline(db, now),
        "attribution": outcome_tables.attribute(db, now, attribution),
    }


def _quarantine_lines(
    db: duckdb.DuckDBPyConnection, table: Table, source: _Source, now: datetime
) -> int:
    """Add the file's unreadable lines to quarantine (their fields as a list, with the line)."""
    rows = [
        (json.dumps({"line": bad.line, "fields": list(bad.fields)}), bad.reason)
        for bad in source.bad_lines
    ]
    db.execute("CREATE OR REPLACE TEMP TABLE _rapport_bad_lines (row_json VARCHAR, reason VARCHAR)")
    db.executemany("INSERT INTO _rapport_bad_lines VALUES (?, ?)", rows)
    name = _lit(table.name)
    (added,) = _one(
        db,
        f"""
        INSERT INTO {QUARANTINE}
        SELECT DISTINCT {name}, {_lit(source.label)}, row_json, reason,
               TIMESTAMPTZ {_lit(now.isoformat())}
        FROM _rapport_bad_lines s WHERE NOT EXISTS (
            SELECT 1 FROM {QUARANTINE} x
            WHERE x.table_name = {name} AND x.row_json = s.row_json AND x.reason = s.reason)
    """,
    )
    db.execute("DROP TABLE _rapport_bad_lines")
    return int(added)


@dataclass(frozen=True)
class _Field:
    """SQL names for one contract column inside the stage query."""

    col: Column
    ref: str | None  # the file's column (None: optional column absent from the file)
    stype: str  # its DuckDB type in the file
    parsed: str  # converted to the contract type, NULL when it does not parse
    blank: str  # true when the value is absent

    @property
    def value(self) -> str:
        return _ident(self.col.name)


def _fields(table: Table, originals: list[str], source: _Source) -> list[_Field]:
    by_lower = {c.lower(): i for i, c in enumerate(originals)}
    fields = []
    for i, col in enumerate(table.columns):
        pos = by_lower.get(col.name.lower())
        ref = None if pos is None else f"_o{pos}"
        stype = "" if pos is None else source.columns[originals[pos]]
        fields.append(_Field(col, ref, stype, f"_p{i}", f"_m{i}"))
    return fields


class _Query:
    """The SQL over one input, in layers shared by the passes of :func:`_load_table`.

    Layers: p renames the file's columns, q parses, m flags blanks, t types, k looks the
    customer up, b runs the checks; the staging query adds c (words the checks, for bad
    rows only) and w (joins the stored row).
    """

    def __init__(self, table: Table, source: _Source, now: datetime) -> None:
        self.table, self.source, self.now = table, source, now
        hidden = {source.file_column, *_identity_columns(source)}
        self.originals = [c for c in source.columns if c not in hidden]
        self.fields = _fields(table, self.originals, source)
        self.checks = checks_sql(table, self.fields, now, source.identity_column is not None)
        self.cols = ", ".join(_ident(c) for c in table.column_names)
        self.key = _ident(table.id_column)
        self.name = _ident(table.name)

    def typed(self) -> str:
        """CTEs p, q, m, t: ``t`` has every contract column typed (NULL when unusable)."""
        fields = self.fields
        passthrough = ", ".join(f"{_ident(c)} AS _o{i}" for i, c in enumerate(self.originals))
        file_sql = _ident(self.source.file_column) if self.source.file_column else "NULL::VARCHAR"
        hidden = _identity_columns(self.source)
        why, kind = (_ident(hidden[0]), _ident(hidden[1])) if hidden else ("NULL", "NULL")
        options = self.source.options
        parsed = ", ".join(f"{_parse(f, options)} AS {f.parsed}" for f in fields)
        blanks = ", ".join(f"{_blank(f)} AS {f.blank}" for f in fields)
        typed = ", ".join(f"{_typed(f)} AS {f.value}" for f in fields)
        return f"""
            p AS (SELECT {passthrough}, {file_sql} AS _source_file, {why}::VARCHAR AS _identity,
                         {kind}::VARCHAR AS _identity_kind FROM {self.source.relation}),
            q AS (SELECT *, {parsed} FROM p),
            m AS (SELECT *, {blanks} FROM q),
            t AS (SELECT *, {typed} FROM m)"""

    def checked(self, where: str = "") -> str:
        """CTEs k, b on top of :meth:`typed`: ``_bad`` (any check fails) and ``_key``."""
        if self.table is OUTCOMES:
            known = 'coalesce(decision_id IN (SELECT decision_id FROM "campaign_log"), false)'
        elif self.table.name != "customers":
            known = 'coalesce(customer_id IN (SELECT customer_id FROM "customers"), false)'
        else:
            known = "true"
        bad = " OR ".join(f"({cond})" for _, cond, _ in self.checks)
        return f"""{self.typed()},
            k AS (SELECT *, {known} AS _known FROM t {where}),
            b AS (SELECT *, coalesce({bad}, false) AS _bad, hash({self.cols}) AS _key FROM k)"""

    def exceptions_sql(self, stored_empty: bool) -> str:
        """Pass 1: the id hashes not to insert directly, with ``_same`` marking the ids
        already stored with identical content (nothing to do, counted as already present);
        the others (bad, repeated, or stored with other content) take the exact path."""
        if stored_empty:
            return f"""
                CREATE OR REPLACE TEMP TABLE {_EXCEPTIONS} AS
                WITH {self.checked()}
                SELECT hash({self.key}) AS _h, false AS _same FROM b
                GROUP BY _h HAVING count(*) > 1 OR bool_or(_bad)
            """
        # a hash group of one row holds one id, so the stored row is joined by that id
        # (exact, and ids are unique in the warehouse: one match at most)
        return f"""
            CREATE OR REPLACE TEMP TABLE {_EXCEPTIONS} AS
            WITH {self.checked()},
            g AS (SELECT hash({self.key}) AS _h, count(*) AS _n, bool_or(_bad) AS _anybad,
                         any_value({self.key}) AS _id, any_value(_key) AS _k
                  FROM b GROUP BY _h),
            s AS (SELECT {self.key} AS _sid, hash({self.cols}) AS _sk FROM {self.name})
            SELECT _h, coalesce(_n = 1 AND NOT _anybad AND _sk = _k, false) AS _same
            FROM g LEFT JOIN s ON s._sid = g._id
            WHERE _n > 1 OR _anybad OR _sid IS NOT NULL
        """

    def insert_clean_sql(self) -> str:
        """Pass 2: insert every row whose id is not exceptional, straight from the input."""
        return f"""
            INSERT INTO {self.name} ({self.cols})
            WITH {self.typed()}
            SELECT {self.cols} FROM t ANTI JOIN {_EXCEPTIONS} e ON e._h = hash(t.{self.key})
        """

    def verdict_sql(self, stage: str) -> str:
        """Every row checked and worded into ``stage`` (outcome rows: no id is unique)."""
        why, first, row = self._words()
        return f"""
            CREATE OR REPLACE TEMP TABLE {stage} AS
            WITH {self.checked()}
            SELECT {self.cols}, _source_file, CASE WHEN _bad THEN {why} END AS _reason,
                   CASE WHEN _bad THEN {first} END AS _kind,
                   CASE WHEN _bad THEN {row} END AS _row_json
            FROM b
        """

    def _words(self) -> tuple[str, str, str]:
        """SQL: a bad row's reasons, its first problem's kind, the row as JSON."""
        why, first = reasons_sql(self.checks)
        row = (
            "to_json(struct_pack("
            + ", ".join(f"{_ident(c)} := _o{i}" for i, c in enumerate(self.originals))
            + "))"
        )
        return why, first, row

    def stage_sql(self) -> str:
        """Pass 3: the exceptional rows, checked, worded and compared with the stored row."""
        key, cols = self.key, self.cols
        why, first, row = self._words()
        stored_conflict = "(_stored IS NOT NULL AND _stored <> _key)"
        conflict_msg = message_sql(
            self.table.id_column,
            key,
            " already exists in the warehouse with different content (conflict; stored row kept)",
        )
        exceptional = f"IN (SELECT _h FROM {_EXCEPTIONS} WHERE NOT _same)"
        return f"""
            CREATE OR REPLACE TEMP TABLE {_STAGE} AS
            WITH {self.checked(f"WHERE hash({key}) {exceptional}")},
            c AS (SELECT *, CASE WHEN _bad THEN {why} END AS _why,
                            CASE WHEN _bad THEN {first} END AS _first FROM b),
            w AS (
                SELECT c.*, s._stored FROM c
                LEFT JOIN (SELECT {key} AS _sid, hash({cols}) AS _stored FROM {self.name}
                           WHERE hash({key}) {exceptional}) s
                ON s._sid = c.{key}
            )
            SELECT {cols}, _key, _source_file, _stored IS NOT NULL AS _present,
                coalesce(_why, CASE WHEN {stored_conflict} THEN {conflict_msg} END) AS _reason,
                coalesce(_first, CASE WHEN {stored_conflict} THEN 'conflict' END) AS _kind,
                CASE WHEN _why IS NOT NULL OR {stored_conflict} THEN {row} END AS _row_json
            FROM w
        """


def _parse(f: _Field, options: FileOptions) -> str:
    """The value converted to the contract type, NULL when it does not parse."""
    if f.ref is None:
        return f"NULL::{DUCKDB_TYPES[f.col.type]}"
    ref, text = f.ref, f.stype == "VARCHAR"
    if f.col.type == "string":
        return ref if text else f"CAST({ref} AS VARCHAR)"
    if f.col.type == "timestamp":
        if f.stype == "TIMESTAMP WITH TIME ZONE":
            return ref
        if f.stype.startswith("TIMESTAMP") or f.stype == "DATE":
            return f"timezone('UTC', CAST({ref} AS TIMESTAMP))"
        value = f"trim(CAST({ref} AS VARCHAR))"
        iso = f"TRY_CAST({value} AS TIMESTAMPTZ)"
        if options.date_format is None:
            return iso
        # the session's time zone is UTC during ingest: naive parsed times are UTC
        formats = ", ".join(_lit(fmt) for fmt in options.date_formats)
        declared = f"CAST(try_strptime({value}, [{formats}]) AS TIMESTAMPTZ)"
        return f"coalesce({declared}, {iso})"
    if f.col.type == "bool":
        return f"TRY_CAST({f'trim({ref})' if text else ref} AS BOOLEAN)"
    if not text or (options.decimal == "." and options.thousands is None):
        return f"TRY_CAST({ref} AS DOUBLE)"  # DuckDB ignores surrounding spaces here
    return _number(ref, options)


def _number(ref: str, options: FileOptions) -> str:
    """A number written with a decimal comma and/or a thousands separator; with a separator,
    digits must come in groups of three (so ``12.5`` is never read as 125)."""
    value = f"trim({ref})"
    dec, sep = re.escape(options.decimal), options.thousands
    if sep is not None:
        grouped = rf"[-+]?\d{{1,3}}({re.escape(sep)}\d{{3}})*({dec}\d+)?|[-+]?\d*({dec}\d+)?"
        value = (
            f"CASE WHEN regexp_full_match({value}, {_lit(grouped)}) "
            f"THEN replace({value}, {_lit(sep)}, '') END"
        )
    if options.decimal == ",":
        value = f"replace({value}, ',', '.')"
    return f"TRY_CAST({value} AS DOUBLE)"


def _blank(f: _Field) -> str:
    """SQL: the value is absent (NULL, empty or spaces only, NaN for numbers)."""
    ref = f.ref
    if ref is None:
        return "true"
    if f.stype == "VARCHAR":
        # only text sorting before '!' (empty, or starting with a space) can be blank
        test = f"({ref} IS NULL OR ({ref} < '!' AND trim({ref}) = ''))"
    else:
        test = f"{ref} IS NULL"
    if f.col.type in ("float", "int"):
        test = f"({test} OR coalesce(isnan({f.parsed}), false))"
    return test


def _typed(f: _Field) -> str:
    """The value to store: NULL for blanks and anything that does not fit the type."""
    value = {
        "float": f"CASE WHEN isfinite({f.parsed}) THEN {f.parsed} END",
        "int": f"CASE WHEN {f.parsed} = floor({f.parsed}) THEN TRY_CAST({f.parsed} AS BIGINT) END",
    }.get(f.col.type, f.parsed)
    return f"CASE WHEN NOT {f.blank} THEN {value} END"


@dataclass(frozen=True)
class Dialect:
    """How one engine spells the few SQL pieces the checks are written with, so that each
    check is defined once (:func:`_checks`) and run by DuckDB here and by Spark
    (:mod:`features.spark_ingest`) alike."""

    lit: Callable[[str], str]
    ident: Callable[[str], str]
    #: a UTC instant literal from its ISO text
    instant: Callable[[str], str]
    #: a file's value as text, as a reason quotes it
    text: Callable[[str], str]


DUCKDB = Dialect(
    _lit, _ident, lambda iso: f"TIMESTAMPTZ {_lit(iso)}", lambda ref: f"CAST({ref} AS VARCHAR)"
)


def reasons_sql(
    checks: Sequence[tuple[str, str, str]], dialect: Dialect = DUCKDB
) -> tuple[str, str]:
    """SQL over :func:`checks_sql`: a bad row's reasons joined by ``"; "`` (NULL when it
    has none), and its first problem's kind."""
    why = (
        "NULLIF(concat_ws('; ', "
        + ", ".join(f"CASE WHEN {cond} THEN {msg} END" for _, cond, msg in checks)
        + "), '')"
    )
    first = (
        "CASE "
        + " ".join(f"WHEN {cond} THEN {dialect.lit(kind)}" for kind, cond, _ in checks)
        + " END"
    )
    return why, first


def checks_sql(
    table: Table,
    fields: list[_Field],
    now: datetime,
    named: bool = False,
    dialect: Dialect = DUCKDB,
) -> list[tuple[str, str, str]]:
    """(kind, SQL condition, SQL reason) per check, in the order a row's problems are listed;
    ``named``: the rows may name their customer by identifiers (:func:`_name_customers`).
    The one definition of the row checks for both engines: the conditions read the typed
    columns (named as the contract's), each field's blank flag, ``_known`` and
    ``_identity[_kind]``, spelled by ``dialect``."""
    lit = dialect.lit
    missing, invalid, timing, domain = [], [], [], []
    if named:  # a row without customer_id whose identifiers named nobody: that one reason
        missing = [
            (kind, f"_identity_kind = {lit(kind)}", "_identity") for kind in IDENTITY_PROBLEMS
        ]
    now_sql = dialect.instant(now.isoformat())

    def _message(column: str, ref: str, tail: str) -> str:
        return message_sql(column, ref, tail, dialect)

    for f in (f for f in fields if f.ref is not None):
        col, ref, value = f.col, f.ref or "", dialect.ident(f.col.name)
        if col.required:
            by_identifier = named and col.name == "customer_id"
            blank = f"{f.blank} AND _identity IS NULL" if by_identifier else f.blank
            missing.append(("missing value", blank, lit(f"{col.name} is missing")))
        if col.type != "string":
            invalid.append(
                (
                    _INVALID_KIND[col.type],
                    f"NOT {f.blank} AND {value} IS NULL",
                    _message(col.name, ref, f" is not {_TYPE_WORDS[col.type]}"),
                )
            )
        if col.type == "timestamp":
            timing.append(
                (
                    "future timestamp",
                    f"{value} > {now_sql}",
                    _message(col.name, ref, " is in the future"),
                )
            )
            timing.append(
                (
                    "timestamp before 1990",
                    f"{value} < {dialect.instant(EARLIEST)}",
                    _message(col.name, ref, f" is before {EARLIEST} (implausible)"),
                )
            )
        if col.choices:
            allowed = ", ".join(lit(c) for c in col.choices)
            domain.append(
                (
                    "not an allowed value",
                    f"{value} NOT IN ({allowed})",
                    _message(col.name, ref, " is not one of " + ", ".join(col.choices)),
                )
            )
        if (table.name, col.name) in RANGES:
            test, words = RANGES[(table.name, col.name)]
            domain.append(
                (
                    "out of range",
                    f"NOT ({test.format(v=value)})",
                    _message(col.name, ref, f" {words}"),
                )
            )
    if table is OUTCOMES:
        domain.append(
            (
                UNKNOWN_DECISION,
                "decision_id IS NOT NULL AND NOT _known",
                _message(
                    "decision_id",
                    "decision_id",
                    " is not a known decision (kept pending: retried on every ingest "
                    "until the decision arrives)",
                ),
            )
        )
    elif table.name != "customers":
        domain.append(
            (
                "unknown customer",
                "customer_id IS NOT NULL AND NOT _known",
                _message("customer_id", "customer_id", " is not a known customer"),
            )
        )
    return [*missing, *invalid, *timing, *domain]


def message_sql(column: str, ref: str, tail: str, dialect: Dialect = DUCKDB) -> str:
    """SQL for "<column> '<value>' <tail>", the value quoted as it was in the file."""
    value = f"left({dialect.text(ref)}, {QUOTE_CHARS})"
    quote = dialect.lit("'")
    return f"concat({dialect.lit(column + ' ')}, {quote}, {value}, {quote}, {dialect.lit(tail)})"


def _mark_conflicts_in_batch(db: duckdb.DuckDBPyConnection, table: Table) -> None:
    """Ids that pass every row check but come with different contents: quarantine them all."""
    key = _ident(table.id_column)
    db.execute(f"""
        CREATE OR REPLACE TEMP TABLE {_MULTI} AS
        SELECT {key}, count(*) AS n, count(DISTINCT _key) AS versions FROM {_STAGE}
        WHERE _reason IS NULL AND {key} IN (
            SELECT {key} FROM {_STAGE} WHERE _reason IS NULL GROUP BY {key} HAVING count(*) > 1)
        GROUP BY {key}
    """)
    row = (
        "to_json(struct_pack("
        + ", ".join(f"{_ident(c)} := {_STAGE}.{_ident(c)}" for c in table.column_names)
        + "))"
    )
    tail = _lit(" has ")
    db.execute(f"""
        UPDATE {_STAGE} SET _kind = 'conflict', _row_json = {row},
            _reason = concat({_lit(table.id_column + " '")}, {_STAGE}.{key}, '''', {tail},
                             m.versions, ' different versions in this batch (conflict)')
        FROM {_MULTI} m
        WHERE m.versions > 1 AND m.{key} = {_STAGE}.{key} AND {_STAGE}._reason IS NULL
    """)


def _insert_new(db: duckdb.DuckDBPyConnection, table: Table) -> int:
    """Insert one row per valid id that is not stored yet; returns the rows inserted."""
    cols = ", ".join(_ident(c) for c in table.column_names)
    key = _ident(table.id_column)
    fresh = f"FROM {_STAGE} WHERE _reason IS NULL AND NOT _present"
    (count,) = _one(
        db,
        f"""
        INSERT INTO {_ident(table.name)} ({cols})
        SELECT {cols} {fresh} AND {key} NOT IN (SELECT {key} FROM {_MULTI})
        UNION ALL
        SELECT DISTINCT {cols} {fresh} AND {key} IN (SELECT {key} FROM {_MULTI})
    """,
    )
    return int(count)


def _quarantine(db: duckdb.DuckDBPyConnection, table: Table, source: _Source, now: datetime) -> int:
    """Add the bad rows to quarantine, each (row, reason) once across all ingests."""
    name = _lit(table.name)
    (added,) = _one(
        db,
        f"""
        INSERT INTO {QUARANTINE}
        SELECT {name}, min(coalesce(_source_file, {_lit(source.label)})), _row_json, _reason,
               TIMESTAMPTZ {_lit(now.isoformat())}
        FROM {_STAGE} s WHERE _reason IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM {QUARANTINE} x
            WHERE x.table_name = {name} AND x.row_json = s._row_json AND x.reason = s._reason)
        GROUP BY _row_json, _reason
    """,
    )
    return int(added)


def _count(
    db: duckdb.DuckDBPyConnection,
    table: Table,
    source: _Source,
    clean: int,
    same: int,
    inserted: int,
) -> TableReport:
    """The report of one table: ``clean`` rows went in directly, ``same`` rows were stored
    already with the same content, the rest went through the stage."""
    staged, staged_valid = _one(
        db, f"SELECT count(*), count(*) FILTER (_reason IS NULL) FROM {_STAGE}"
    )
    read, valid = clean + same + staged, clean + same + staged_valid
    inserted = clean + inserted
    (collapsed,) = _one(db, f"SELECT coalesce(sum(n - 1), 0) FROM {_MULTI} WHERE versions = 1")
    kinds = db.execute(f"""
        SELECT _kind, count(*) FROM (SELECT DISTINCT _kind, _row_json, _reason FROM {_STAGE}
                                     WHERE _reason IS NOT NULL)
        GROUP BY _kind
    """).fetchall()
    by_kind = {str(k): int(n) for k, n in kinds}
    bad_distinct = sum(by_kind.values())
    distinct_valid = valid - int(collapsed)
    contract = {c.lower() for c in (*table.column_names, *table.identifiers)}
    contract |= {c.lower() for c in _identity_columns(source)}
    return TableReport(
        table=table.name,
        source=source.label,
        read=int(read),
        inserted=inserted,
        already_present=distinct_valid - inserted,
        duplicates=int(collapsed) + (int(read) - int(valid) - bad_distinct),
        quarantined_by_reason=by_kind,
        extra_columns=tuple(
            c for c in source.columns if c.lower() not in contract and c != source.file_column
        ),
    )
