"""``rapport ingest`` with the Spark engine: the row checks of :mod:`features.ingest` run
in Spark, and the validated tables and the quarantine are written to the lake.

What is shared with the DuckDB ingest, never copied:

* the file front end (:func:`features.ingest.file_sources`): discovery, the required
  columns, refused day/month dates, the CSV clean-up and its unreadable lines, so a bad
  file stops both engines with the same :class:`~features.ingest.IngestError`;
* the checks (:func:`features.ingest.checks_sql`, worded by
  :func:`features.ingest.reasons_sql`): one definition of every check, its kind and its
  reason, spelled for Spark SQL by :data:`SPARK` (a :class:`~features.ingest.Dialect`);
* the counts (:class:`~features.ingest.TableReport`, the same identities) and the
  identifier look-up (:func:`features.ingest.decide_identifiers`, on the driver over the
  distinct identifier combinations, as on DuckDB).

What is Spark's own: reading the files, parsing text into the contract types (with the
guards that make Spark accept exactly the values DuckDB accepts), grouping rows by id
(identical copies collapse, different copies are all quarantined, an id stored with other
content is a conflict) against the lake's tables, and writing. Every table is written to a
fresh folder; the folders replace the old ones by renames once every table is written, so
a failure leaves the lake as it was.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from features.contract import OUTCOMES, TABLES, Table
from features.files import FileOptions
from features.forget import erase_forgotten
from features.identity import DEFAULT_PHONE_REGION, check_region
from features.ingest import (
    _STAGE,
    BAD_LINE,
    QUARANTINE,
    Dialect,
    IngestError,
    IngestReport,
    TableReport,
    _Field,
    _load_outcomes,
    _settle_outcomes,
    _Source,
    _transaction,
    checks_sql,
    decide_identifiers,
    duckdb_error,
    file_sources,
    message_sql,
    named_columns,
    reasons_sql,
)
from features.lake import TABLES_DIR as LAKE_TABLES
from features.lake import (
    LakeError,
    export_tables,
    fresh_folder,
    is_local,
    local_path,
    replace_folder,
)
from features.tables.outcomes import Attribution
from features.timeutil import as_utc
from features.warehouse import ensure_contract_tables, raw, table_names


def _lit(text: str) -> str:
    """A Spark SQL string literal (backslash escapes; '' would be two adjacent literals)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


SPARK = Dialect(
    _lit, _ident, lambda iso: f"TIMESTAMP {_lit(iso)}", lambda ref: f"CAST({ref} AS STRING)"
)

#: text Spark may read as a timestamp: a date first (Spark alone also takes ``2024``,
#: ``2024-01`` and words like ``yesterday``, which DuckDB refuses)
_DATE_FIRST = r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}([ T].*)?$"
#: Java-literal number suffixes (``1d``, ``2f``) Spark takes and DuckDB does not
_SUFFIXED = r"^[+-]?[0-9.]+([eE][+-]?[0-9]+)?[dDfF]$"
#: strftime codes -> Java date patterns (``--date-format`` on Spark)
_PATTERNS = {
    "%d": "dd",
    "%m": "MM",
    "%Y": "yyyy",
    "%y": "yy",
    "%H": "HH",
    "%M": "mm",
    "%S": "ss",
    "%I": "hh",
    "%p": "a",
    "%b": "MMM",
    "%B": "MMMM",
}


#: the Spark type a contract type is parsed into (whole numbers as DOUBLE first, as on DuckDB)
_PARSED_TYPES = {
    "string": "STRING",
    "timestamp": "TIMESTAMP",
    "float": "DOUBLE",
    "int": "DOUBLE",
    "bool": "BOOLEAN",
}


@dataclass
class SparkResult:
    """One table's outcome on Spark: its report, and its fresh folder in the lake."""

    report: TableReport
    folder: Path | None = None


@dataclass
class SparkIngest:
    """What :func:`ingest` wrote: per table its report and fresh folder (swapped
    in by :meth:`publish`), and the quarantine's fresh folder."""

    lake: Path
    results: dict[str, SparkResult] = field(default_factory=dict)
    quarantine: Path | None = None

    def publish(self) -> None:
        """Swap every fresh folder in (each a rename; readers never see half a table)."""
        root = self.lake / LAKE_TABLES
        for name, result in self.results.items():
            if result.folder is not None:
                replace_folder(result.folder, root / name)
        if self.quarantine is not None:
            replace_folder(self.quarantine, root / QUARANTINE)

    def discard(self) -> None:
        import shutil

        for folder in [r.folder for r in self.results.values()] + [self.quarantine]:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)


def lake_root(lake: str) -> Path:
    """The local folder of the lake; an object-store lake is refused, as for the mirror."""
    if not is_local(lake):
        raise LakeError(
            f"`rapport ingest` on Spark keeps the warehouse level with the lake and needs a "
            f"local folder; {lake} is an object store: ingest into a local RAPPORT_LAKE_URI "
            "and copy it (e.g. `aws s3 sync`), or run features and score against the object store"
        )
    return local_path(lake)


# --------------------------------------------------------------------------- reading
def _frame(spark: Any, source: _Source) -> Any:
    """The file as Spark reads it, its columns renamed by position to the front end's."""
    if source.file is None:
        raise IngestError(f"{source.label}: not a file Spark can read")
    path = str(source.file)
    if path.lower().endswith((".parquet", ".pq")):
        frame = spark.read.parquet(path)
    else:
        frame = (
            spark.read.option("header", True)
            .option("sep", source.delimiter)
            .option("quote", '"')
            .option("escape", '"')
            .option("multiLine", True)
            .option("mode", "FAILFAST")
            .option("encoding", "UTF-8")
            .csv(path)
        )
    names = list(source.columns)
    if len(frame.columns) != len(names):
        raise IngestError(
            f"{source.label}: Spark reads {len(frame.columns)} columns where the header has "
            f"{len(names)}"
        )
    return frame.toDF(*names)


def _kind(spark_type: str) -> str:
    """A Spark column type as the parse step sees it."""
    if spark_type == "string":
        return "text"
    if spark_type.startswith("timestamp"):
        return "timestamp"
    if spark_type == "date":
        return "date"
    return "typed"


# --------------------------------------------------------------------------- parsing
def _java_pattern(fmt: str) -> str:
    out, i = [], 0
    while i < len(fmt):
        code = fmt[i : i + 2]
        if code.startswith("%"):
            if code not in _PATTERNS:
                raise IngestError(
                    f"--date-format {fmt!r}: {code} is not supported on Spark "
                    f"(supported: {' '.join(_PATTERNS)}); use RAPPORT_ENGINE=duckdb"
                )
            out.append(_PATTERNS[code])
            i += 2
        else:
            out.append("'" + fmt[i].replace("'", "''") + "'" if fmt[i].isalpha() else fmt[i])
            i += 1
    return "".join(out)


def _parse(f: _Field, kind: str, options: FileOptions) -> str:
    """Spark SQL: the value in the contract type, NULL when DuckDB would not parse it."""
    if f.ref is None:
        return f"CAST(NULL AS {_PARSED_TYPES[f.col.type]})"
    ref, text = f.ref, kind == "text"
    if f.col.type == "string":
        return ref if text else f"CAST({ref} AS STRING)"
    if f.col.type == "timestamp":
        if kind in ("timestamp", "date"):
            return f"CAST({ref} AS TIMESTAMP)"
        value = f"trim(CAST({ref} AS STRING))"
        iso = f"CASE WHEN {value} RLIKE {_lit(_DATE_FIRST)} THEN try_cast({value} AS TIMESTAMP) END"
        if options.date_format is None:
            return iso
        declared = ", ".join(
            f"try_to_timestamp({value}, {_lit(_java_pattern(fmt))})" for fmt in options.date_formats
        )
        return f"coalesce({declared}, {iso})"
    if f.col.type == "bool":
        value = f"lower(trim({ref}))" if text else ref
        if not text:
            return f"try_cast({ref} AS BOOLEAN)"
        # DuckDB's words for true and false (Spark alone would also take y/yes/n/no ...)
        return (
            f"CASE WHEN {value} IN ('true', 't', '1', 'yes', 'y') THEN true "
            f"WHEN {value} IN ('false', 'f', '0', 'no', 'n') THEN false END"
        )
    if not text:
        return f"try_cast({ref} AS DOUBLE)"
    value = f"trim({ref})"
    if options.thousands is not None:
        dec, sep = re.escape(options.decimal), re.escape(options.thousands)
        grouped = rf"^([-+]?\d{{1,3}}({sep}\d{{3}})*({dec}\d+)?|[-+]?\d*({dec}\d+)?)$"
        value = (
            f"CASE WHEN {value} RLIKE {_lit(grouped)} "
            f"THEN replace({value}, {_lit(options.thousands)}, '') END"
        )
    if options.decimal == ",":
        value = f"replace({value}, ',', '.')"
    # DuckDB reads 1_000 as 1000 and refuses Java's 1d / 2f
    value = f"regexp_replace({value}, '(?<=[0-9])_(?=[0-9])', '')"
    return f"CASE WHEN NOT trim({ref}) RLIKE {_lit(_SUFFIXED)} THEN try_cast({value} AS DOUBLE) END"


def _blank(f: _Field, kind: str) -> str:
    ref = f.ref
    if ref is None:
        return "true"
    test = f"({ref} IS NULL OR trim({ref}) = '')" if kind == "text" else f"{ref} IS NULL"
    if f.col.type in ("float", "int"):
        test = f"({test} OR coalesce(isnan({f.parsed}), false))"
    return test


def _typed(f: _Field) -> str:
    infinite = "double('Infinity')"
    value = {
        "float": f"CASE WHEN abs({f.parsed}) < {infinite} THEN {f.parsed} END",
        "int": (
            f"CASE WHEN abs({f.parsed}) < {infinite} AND {f.parsed} = floor({f.parsed}) "
            f"THEN try_cast({f.parsed} AS BIGINT) END"
        ),
    }.get(f.col.type, f.parsed)
    return f"CASE WHEN NOT {f.blank} THEN {value} END"


def _json_value(expr: str, kind: str) -> str:
    """A value as DuckDB's ``to_json`` writes it: timestamps as ``2024-01-05 10:00:00+00``."""
    if kind == "timestamp":
        text = f"date_format({expr}, 'yyyy-MM-dd HH:mm:ss.SSSSSS')"
        return f"concat(regexp_replace({text}, '\\\\.?0+$', ''), '+00')"
    return expr


def _row_json(pairs: Sequence[tuple[str, str, str]]) -> str:
    """Spark SQL: ``{"name": value, ...}`` with nulls kept, as DuckDB writes it."""
    inner = ", ".join(f"{_lit(name)}, {_json_value(expr, kind)}" for name, expr, kind in pairs)
    return f"to_json(named_struct({inner}), map('ignoreNullFields', 'false'))"


# --------------------------------------------------------------------------- one table
def _contract_kind(table: Table, name: str) -> str:
    return "timestamp" if table.column(name).type == "timestamp" else "value"


def _verdicts(
    spark: Any,
    table: Table,
    source: _Source,
    frame: Any,
    now: datetime,
    known: Any,
) -> tuple[Any, str]:
    """Every row of the file, typed and checked: the contract columns, the file's columns
    (``_o<i>``), ``_reason`` and ``_kind`` (its first problem) for bad rows; and the SQL of
    the row as in the file (``row_json`` of the quarantine)."""
    originals = [c for c in source.columns if c not in _identity_names(source)]
    by_lower = {c.lower(): i for i, c in enumerate(originals)}
    types = dict(frame.dtypes)
    fields, kinds = [], {}
    for i, col in enumerate(table.columns):
        pos = by_lower.get(col.name.lower())
        ref = None if pos is None else f"_o{pos}"
        kinds[col.name] = "text" if pos is None else _kind(types[originals[pos]])
        fields.append(_Field(col, ref, kinds[col.name], f"_p{i}", f"_m{i}"))
    named = source.identity_column is not None
    instants = {f.ref for f in fields if f.ref is not None and kinds[f.col.name] == "timestamp"}

    def text(ref: str) -> str:  # a typed instant quoted as DuckDB writes it
        return _json_value(ref, "timestamp") if ref in instants else f"CAST({ref} AS STRING)"

    dialect = replace(SPARK, text=text)
    checks = checks_sql(table, fields, now, named, dialect)
    why, first = reasons_sql(checks, dialect)
    view = f"_rapport_src_{table.name}"
    frame.createOrReplaceTempView(view)
    passthrough = ", ".join(f"{_ident(c)} AS _o{i}" for i, c in enumerate(originals))
    if named:
        reason, kind = _identity_names(source)
        identity = f"{_ident(reason)} AS _identity, {_ident(kind)} AS _identity_kind"
    else:
        identity = "CAST(NULL AS STRING) AS _identity, CAST(NULL AS STRING) AS _identity_kind"
    options = source.options
    parsed = ", ".join(f"{_parse(f, kinds[f.col.name], options)} AS {f.parsed}" for f in fields)
    blanks = ", ".join(f"{_blank(f, kinds[f.col.name])} AS {f.blank}" for f in fields)
    typed = ", ".join(f"{_typed(f)} AS {_ident(f.col.name)}" for f in fields)
    row = _row_json([(c, f"_o{i}", _kind(types[c])) for i, c in enumerate(originals)])
    if table.name == "customers":
        join, known_sql = "", "true"
    else:
        known.select("customer_id").distinct().createOrReplaceTempView("_rapport_known")
        join = "LEFT JOIN _rapport_known kc ON t.customer_id = kc.customer_id"
        known_sql = "coalesce(kc.customer_id IS NOT NULL AND t.customer_id IS NOT NULL, false)"
    bad = " OR ".join(f"({cond})" for _, cond, _ in checks) or "false"
    cols = ", ".join(_ident(c) for c in table.column_names)
    return spark.sql(f"""
        WITH p AS (SELECT {passthrough}, {identity} FROM {view}),
        q AS (SELECT *, {parsed} FROM p),
        m AS (SELECT *, {blanks} FROM q),
        t AS (SELECT *, {typed} FROM m),
        k AS (SELECT t.*, {known_sql} AS _known FROM t {join}),
        b AS (SELECT *, coalesce({bad}, false) AS _bad FROM k)
        SELECT {cols}, {", ".join(f"_o{i}" for i in range(len(originals)))},
               CASE WHEN _bad THEN {why} END AS _reason,
               CASE WHEN _bad THEN {first} END AS _kind
        FROM b
    """), row


def _identity_names(source: _Source) -> tuple[str, ...]:
    if source.identity_column is None:
        return ()
    return (source.identity_column, f"{source.identity_column}_kind")


def _resolved(spark: Any, table: Table, source: _Source, frame: Any, db: Any, region: str) -> Any:
    """Rows naming their customer by identifiers get it (or a reason), as on DuckDB: the
    distinct combinations of identifiers of rows without ``customer_id`` are collected to
    the driver and decided there by :func:`features.ingest.decide_identifiers` (over the
    warehouse, which already holds this batch's customers); the answers are broadcast."""
    by_lower = {c.lower(): c for c in source.columns}
    kinds = [kind for kind in table.identifiers if kind in by_lower]
    if not kinds:
        return frame, source
    cid = by_lower.get("customer_id")

    def text(column: str) -> str:
        return f"nullif(trim(CAST({_ident(column)} AS STRING)), '')"

    given = text(cid) if cid else "CAST(NULL AS STRING)"
    names = [f"_k{i}" for i in range(len(kinds))]
    texts = [text(by_lower[k]) for k in kinds]
    view = f"_rapport_named_{table.name}"
    frame.createOrReplaceTempView(view)
    combos = spark.sql(
        f"SELECT {', '.join(f'{t} AS {n}' for t, n in zip(texts, names, strict=True))}, "
        f"count(*) AS n FROM {view} WHERE {given} IS NULL GROUP BY ALL"
    ).collect()
    if not combos:
        return frame, source
    decided, named = decide_identifiers(db, kinds, [tuple(r) for r in combos], region)
    reason = "_rapport_identity"
    while reason in source.columns:
        reason = "_" + reason
    rows = [tuple(None if v is None else str(v) for v in row) for row in decided]
    schema = ", ".join(f"{n} STRING" for n in [*names, "_customer", "_reason", "_kind"])
    spark.createDataFrame(rows, schema).createOrReplaceTempView("_rapport_named_ids")
    match = " AND ".join(f"{t} <=> n.{n}" for t, n in zip(texts, names, strict=True))
    filled = f"coalesce({given}, n._customer)"
    keep = ", ".join(
        (f"{filled} AS {_ident(c)}" if c == cid else f"r.{_ident(c)}") for c in source.columns
    )
    if not cid:
        keep += f", {filled} AS customer_id"
    out = spark.sql(
        f"SELECT {keep}, CASE WHEN {given} IS NULL THEN n._reason END AS {_ident(reason)}, "
        f"CASE WHEN {given} IS NULL THEN n._kind END AS {_ident(reason + '_kind')} "
        f"FROM {view} r LEFT JOIN _rapport_named_ids n ON {given} IS NULL AND {match}"
    )
    columns = named_columns(source, cid, reason)
    return out, replace(source, columns=columns, identity_column=reason, named=named)


def _table(
    spark: Any,
    table: Table,
    source: _Source,
    frame: Any,
    now: datetime,
    stored: Any | None,
    known: Any,
    out: Path,
) -> tuple[TableReport, Any]:
    """Check one table's rows, group them by id against the stored rows and write the table
    (stored rows, then the new ones) to ``out``. Returns the report and the quarantined
    rows (``row_json``, ``reason``, ``_kind``, one per bad row, not yet deduplicated)."""
    verdicts, original = _verdicts(spark, table, source, frame, now, known)
    key = _ident(table.id_column)
    cols = ", ".join(_ident(c) for c in table.column_names)
    # materialized once, its lineage cut: the plans below stay small (the checks' SQL
    # inlined into every later step blows Spark's optimizer up)
    verdicts = verdicts.localCheckpoint()
    verdicts.createOrReplaceTempView("_rapport_verdicts")
    if stored is None:
        stored = spark.sql(f"SELECT {cols} FROM _rapport_verdicts WHERE false")
    stored.select(*table.column_names).createOrReplaceTempView("_rapport_stored")
    same = " AND ".join(f"v.{_ident(c)} <=> s.{_ident(c)}" for c in table.column_names)
    # a valid row whose id is stored: the same content is already present, other content
    # a conflict (the stored row kept); then valid rows by id: one version collapses, more
    # are all conflicts -- the order and the words of the DuckDB ingest's stage
    spark.sql(f"""
        SELECT v.*, s.{key} IS NOT NULL AS _present,
               coalesce(s.{key} IS NOT NULL AND NOT ({same}), false) AS _stored_conflict
        FROM _rapport_verdicts v LEFT JOIN _rapport_stored s
        ON v._reason IS NULL AND s.{key} = v.{key}
    """).createOrReplaceTempView("_rapport_staged")
    content = (
        "named_struct(" + ", ".join(f"{_lit(c)}, {_ident(c)}" for c in table.column_names) + ")"
    )
    graded = spark.sql(f"""
        WITH g AS (
            SELECT *, count(*) OVER (PARTITION BY {key}) AS _n,
                   size(collect_set({content}) OVER (PARTITION BY {key})) AS _versions
            FROM _rapport_staged WHERE _reason IS NULL AND NOT _stored_conflict
        )
        SELECT *, CASE WHEN _versions > 1 THEN concat({_lit(table.id_column + " '")}, {key},
                  {_lit("' has ")}, CAST(_versions AS STRING),
                  ' different versions in this batch (conflict)') END AS _conflict
        FROM g
    """)
    graded = graded.localCheckpoint()
    graded.createOrReplaceTempView("_rapport_graded")
    conflict_msg = message_sql(
        table.id_column,
        key,
        " already exists in the warehouse with different content (conflict; stored row kept)",
        SPARK,
    )
    typed_json = _row_json([(c, _ident(c), _contract_kind(table, c)) for c in table.column_names])
    quarantined = spark.sql(f"""
        SELECT {original} AS row_json, _reason AS reason, _kind FROM _rapport_staged
        WHERE _reason IS NOT NULL
        UNION ALL
        SELECT {original} AS row_json, {conflict_msg} AS reason, 'conflict' AS _kind
        FROM _rapport_staged WHERE _stored_conflict
        UNION ALL
        SELECT {typed_json} AS row_json, _conflict AS reason, 'conflict' AS _kind
        FROM _rapport_graded WHERE _conflict IS NOT NULL
    """)
    quarantined = quarantined.localCheckpoint()
    quarantined.createOrReplaceTempView("_rapport_bad")
    fresh = spark.sql(f"""
        SELECT {cols} FROM (
            SELECT *, row_number() OVER (PARTITION BY {key} ORDER BY {key}) AS _r
            FROM _rapport_graded WHERE _conflict IS NULL AND NOT _present)
        WHERE _r = 1
    """)
    spark.sql(f"SELECT {cols} FROM _rapport_stored").unionByName(fresh).write.parquet(str(out))
    read, valid = spark.sql(
        "SELECT count(*), count_if(_reason IS NULL AND NOT _stored_conflict) FROM _rapport_staged"
    ).collect()[0]
    collapsed, conflicted = spark.sql(
        f"SELECT coalesce(sum(CASE WHEN _versions = 1 THEN _n - 1 END), 0), "
        f"coalesce(sum(CASE WHEN _versions > 1 THEN _n END), 0) "
        f"FROM (SELECT first(_n) AS _n, first(_versions) AS _versions FROM _rapport_graded "
        f"GROUP BY {key})"
    ).collect()[0]
    kinds = spark.sql(
        "SELECT _kind, count(*) FROM (SELECT DISTINCT _kind, row_json, reason "
        "FROM _rapport_bad) GROUP BY _kind"
    ).collect()
    by_kind = {str(k): int(n) for k, n in kinds}
    bad_total = int(spark.sql("SELECT count(*) FROM _rapport_bad").collect()[0][0])
    inserted = int(spark.read.parquet(str(out)).count()) - int(stored.count())
    distinct_valid = int(valid) - int(conflicted) - int(collapsed)
    contract = {c.lower() for c in (*table.column_names, *table.identifiers)}
    contract |= {c.lower() for c in _identity_names(source)}
    report = TableReport(
        table=table.name,
        source=source.label,
        read=int(read),
        inserted=inserted,
        already_present=distinct_valid - inserted,
        duplicates=int(collapsed) + (bad_total - sum(by_kind.values())),
        quarantined_by_reason=by_kind,
        extra_columns=tuple(c for c in source.columns if c.lower() not in contract),
        named_by_identifier=source.named,
    )
    return report, quarantined


# --------------------------------------------------------------------------- the run
def ingest(
    spark: Any,
    con: Any,
    files: Mapping[str, Path],
    now: datetime,
    lake: str,
    options: FileOptions | None = None,
    attribution: Attribution | None = None,
    region: str = DEFAULT_PHONE_REGION,
) -> IngestReport:
    """``rapport ingest`` with the Spark engine: the contract tables checked on Spark
    against the lake's tables and written there with the quarantine, the same report.

    The warehouse is kept level (the new validated rows and quarantine rows copied in,
    typed, without checks) in the same transaction, because outcomes, identity
    resolution, ``rapport forget`` and the training baselines read it; an outcomes file is
    checked there, then the outcomes are settled and forgotten customers erased exactly
    as by :func:`features.ingest.ingest`. Nothing is published to the lake and nothing
    committed to the warehouse unless every table was written.
    """
    now = as_utc(now)
    region = check_region(region)
    root = lake_root(lake)
    db = raw(con)
    _seed_lake(db, root, lake)
    report = IngestReport()
    done = SparkIngest(root)
    tables_root = root / LAKE_TABLES
    tables_root.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="rapport-ingest-") as scratch,
        _small_plans(spark),
    ):
        sources = file_sources(con, files, (), options or FileOptions(), Path(scratch))
        try:
            with _transaction(db, commit=True):
                ensure_contract_tables(con)
                db.execute(QUARANTINE_DDL)
                parts = []
                for source in sources:
                    if source.table not in TABLES:
                        continue
                    table = TABLES[source.table]
                    out = fresh_folder(tables_root, table.name)
                    frame = _frame(spark, source)
                    frame, source = _resolved(spark, table, source, frame, db, region)
                    known = _known(spark, root, done)
                    stored = _stored(spark, tables_root / table.name)
                    result, bad = _table(spark, table, source, frame, now, stored, known, out)
                    done.results[table.name] = SparkResult(result, out)
                    report.tables[table.name] = result
                    parts.append((table.name, source, bad))
                    _level_warehouse(db, table, out)
                done.quarantine = _write_quarantine(spark, tables_root, parts, now, report)
                _level_quarantine(db, done.quarantine)
                for source in sources:
                    if source.table == OUTCOMES.name:
                        try:
                            result = _load_outcomes(db, source, now)
                        except duckdb.Error as exc:
                            raise IngestError(f"{source.label}: {duckdb_error(exc)}") from exc
                        report.tables[result.table] = result
                report.outcomes = _settle_outcomes(db, now, attribution)
                report.forgotten_rows = erase_forgotten(db, now, region)
                for temp in (_STAGE,):
                    db.execute(f"DROP TABLE IF EXISTS {temp}")
            # the warehouse has committed: only now may the lake show the batch
            try:
                done.publish()
            except BaseException:
                export_tables(db, lake)  # the lake made level with the committed warehouse
                raise
        except BaseException:
            done.discard()
            raise
    if report.forgotten_rows:  # the files brought back forgotten customers: not in the lake
        export_tables(db, lake)
    return report


#: Spark's rule that merges stacked projections, inlining each column's SQL into every
#: use: over the checks' layers (parse, blank, type, check, word) it multiplies the plan
#: past the driver's memory, so it is off while ingest runs
_COLLAPSE = "org.apache.spark.sql.catalyst.optimizer.CollapseProject"
_EXCLUDED = "spark.sql.optimizer.excludedRules"


@contextmanager
def _small_plans(spark: Any) -> Iterator[None]:
    before = spark.conf.get(_EXCLUDED, "")
    rules = ",".join(r for r in (before, _COLLAPSE) if r)
    spark.conf.set(_EXCLUDED, rules)
    try:
        yield
    finally:
        spark.conf.set(_EXCLUDED, before) if before else spark.conf.unset(_EXCLUDED)


QUARANTINE_DDL = (
    f"CREATE TABLE IF NOT EXISTS {QUARANTINE} (table_name VARCHAR, source_file VARCHAR, "
    "row_json VARCHAR, reason VARCHAR, ingested_at TIMESTAMPTZ)"
)


def _seed_lake(db: Any, root: Path, lake: str) -> None:
    """A lake without tables beside a warehouse with rows (a workspace that ingested on
    DuckDB before) starts as the warehouse's mirror, so stored ids are known on Spark."""
    if (root / LAKE_TABLES).is_dir():
        return
    present = table_names(db)
    if any(name in present for name in TABLES):
        export_tables(db, lake)


def _stored(spark: Any, folder: Path) -> Any | None:
    return spark.read.parquet(str(folder)) if folder.is_dir() else None


def _known(spark: Any, root: Path, done: SparkIngest) -> Any:
    """The customers events may name: this batch's customers table (written, not yet
    published) or else the lake's."""
    written = done.results.get("customers")
    if written is not None and written.folder is not None:
        return spark.read.parquet(str(written.folder))
    stored = _stored(spark, root / LAKE_TABLES / "customers")
    if stored is None:
        return spark.sql("SELECT CAST(NULL AS STRING) AS customer_id WHERE false")
    return stored


def _write_quarantine(
    spark: Any,
    root: Path,
    parts: Sequence[tuple[str, _Source, Any]],
    now: datetime,
    report: IngestReport,
) -> Path | None:
    """The quarantine: the stored rows and each (table, row, reason) not seen before, once
    (the first source file naming it), with the ingest's time; unreadable lines too."""
    frames = []
    for name, source, bad in parts:
        frame = bad.selectExpr(
            f"{_lit(name)} AS table_name",
            f"{_lit(source.label)} AS source_file",
            "row_json",
            "reason",
        )
        if source.bad_lines:
            lines = [
                (
                    name,
                    source.label,
                    json.dumps({"line": b.line, "fields": list(b.fields)}),
                    b.reason,
                )
                for b in source.bad_lines
            ]
            frame = frame.unionByName(
                spark.createDataFrame(
                    lines, "table_name STRING, source_file STRING, row_json STRING, reason STRING"
                )
            )
            result = report.tables[name]
            result.read += len(source.bad_lines)
            result.quarantined_by_reason[BAD_LINE] = len(source.bad_lines)
        frames.append(frame)
    if not frames:
        return None
    batch = frames[0]
    for frame in frames[1:]:
        batch = batch.unionByName(frame)
    batch.createOrReplaceTempView("_rapport_quarantine_batch")
    stored = _stored(spark, root / QUARANTINE)
    if stored is None:
        stored = spark.sql(
            "SELECT CAST(NULL AS STRING) AS table_name, CAST(NULL AS STRING) AS source_file, "
            "CAST(NULL AS STRING) AS row_json, CAST(NULL AS STRING) AS reason, "
            "CAST(NULL AS TIMESTAMP) AS ingested_at WHERE false"
        )
    stored.createOrReplaceTempView("_rapport_quarantine_stored")
    new = spark.sql(f"""
        SELECT b.table_name, min(b.source_file) AS source_file, b.row_json, b.reason,
               {SPARK.instant(now.isoformat())} AS ingested_at
        FROM _rapport_quarantine_batch b LEFT ANTI JOIN _rapport_quarantine_stored x
        ON x.table_name = b.table_name AND x.row_json = b.row_json AND x.reason = b.reason
        GROUP BY b.table_name, b.row_json, b.reason
    """)
    new = new.localCheckpoint()
    out = fresh_folder(root, QUARANTINE)
    stored.unionByName(new).write.parquet(str(out))
    for name, added in new.groupBy("table_name").count().collect():
        report.tables[name].newly_quarantined = int(added)
    return out


def _level_warehouse(db: Any, table: Table, folder: Path) -> None:
    """Copy the table's rows the warehouse does not hold yet (the new ids) from the lake."""
    key = f'"{table.id_column}"'
    cols = ", ".join(f'"{c}"' for c in table.column_names)
    db.execute(
        f'INSERT INTO "{table.name}" ({cols}) SELECT {cols} FROM '
        f"read_parquet('{(folder / '*.parquet').as_posix()}') l "
        f'WHERE NOT EXISTS (SELECT 1 FROM "{table.name}" w WHERE w.{key} = l.{key})'
    )


def _level_quarantine(db: Any, folder: Path | None) -> None:
    if folder is None:
        return
    db.execute(
        f"INSERT INTO {QUARANTINE} SELECT table_name, source_file, row_json, reason, "
        f"ingested_at FROM read_parquet('{(folder / '*.parquet').as_posix()}') l "
        f"WHERE NOT EXISTS (SELECT 1 FROM {QUARANTINE} x WHERE x.table_name = l.table_name "
        "AND x.row_json = l.row_json AND x.reason = l.reason)"
    )
