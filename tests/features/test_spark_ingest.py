"""Ingest on Spark (``features.spark_ingest``) against the DuckDB ingest, batch by batch on
the same files: the lake's validated tables equal the DuckDB warehouse's, every
quarantined row has the same reason and row, the reports count the same; a bad file stops
both with the same error."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest
from sample_data import random_tables

from features import spark_ingest
from features.contract import TABLES
from features.files import FileOptions
from features.ingest import IngestError, IngestReport, ingest
from features.lake import QUARANTINE, table_uri
from features.warehouse import connect, raw


def _sibling(name: str) -> Any:
    """A test module beside this one (pytest imports tests by path, not by name): the
    DuckDB ingest tests' rows are reused, never copied."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_INGEST, _PATHS = _sibling("test_ingest"), _sibling("test_ingest_paths")
BAD_CASES, GOOD, bad, write = _INGEST.BAD_CASES, _INGEST.GOOD, _INGEST.bad, _INGEST.write
ID_CUSTOMERS, ID_ORDERS, ID_INTERACTIONS = (
    _INGEST.ID_CUSTOMERS,
    _INGEST.ID_ORDERS,
    _INGEST.ID_INTERACTIONS,
)
PATH_CUSTOMERS, FIRST, SECOND = _PATHS.CUSTOMERS, _PATHS.FIRST, _PATHS.SECOND

pytestmark = [pytest.mark.spark, pytest.mark.slow]  # ~1-3 min each on two shared cores

NOW = datetime(2025, 6, 1, tzinfo=UTC)
CORPUS = Path(__file__).parent / "files"


class Engines:
    """The same batches ingested by DuckDB (a warehouse) and by Spark (a lake and its
    warehouse), compared after every batch."""

    def __init__(self, spark: Any, root: Path) -> None:
        self.spark, self.root = spark, root
        root.mkdir(parents=True, exist_ok=True)
        self.duck = connect(root / "duck.duckdb")
        self.spark_con = connect(root / "spark.duckdb")
        self.lake = root / "lake"

    def batch(self, files: dict[str, Path], options: FileOptions | None = None) -> IngestReport:
        on_duckdb = ingest(self.duck, files, NOW, options=options)
        on_spark = spark_ingest.ingest(
            self.spark, self.spark_con, files, NOW, str(self.lake), options=options
        )
        assert summary(on_spark) == summary(on_duckdb)
        self.assert_same_data()
        return on_duckdb

    def assert_same_data(self) -> None:
        db = duckdb.connect()
        db.execute("SET TimeZone = 'UTC'")
        duck_path = self.root / "duck.duckdb"
        self.duck.disconnect()
        db.execute(f"ATTACH '{duck_path}' AS w (READ_ONLY)")
        try:
            for name in TABLES:
                lake = table_uri(str(self.lake), name)
                if not Path(lake).is_dir():  # no file of it yet: none on DuckDB either
                    assert rows(db, f'w."{name}"', "count(*)") == [(0,)]
                    continue
                assert rows(db, f"read_parquet('{lake}/*.parquet')") == rows(db, f'w."{name}"')
            lake = table_uri(str(self.lake), QUARANTINE)
            cols = "table_name, source_file, row_json, reason"
            on_spark = rows(db, f"read_parquet('{lake}/*.parquet')", cols)
            assert on_spark == rows(db, f"w.{QUARANTINE}", cols)
            # the Spark run's warehouse is kept level with its lake
            self.spark_con.disconnect()
            db.execute(f"ATTACH '{self.root / 'spark.duckdb'}' AS s (READ_ONLY)")
            for name in (*TABLES, QUARANTINE):
                assert rows(db, f's."{name}"', "count(*)") == rows(db, f'w."{name}"', "count(*)")
        finally:
            db.close()
            self.duck = connect(duck_path)
            self.spark_con = connect(self.root / "spark.duckdb")

    def close(self) -> None:
        self.duck.disconnect()
        self.spark_con.disconnect()


def rows(db: duckdb.DuckDBPyConnection, source: str, cols: str = "COLUMNS(*)::VARCHAR") -> list:
    return db.execute(f"SELECT {cols} FROM {source} ORDER BY ALL").fetchall()


def summary(report: IngestReport) -> list[dict[str, Any]]:
    return [asdict(t) for t in report.tables.values()]


def test_bad_rows_duplicates_and_conflicts_give_the_same_lake_as_duckdb(
    spark: Any, tmp_path: Path
) -> None:
    engines = Engines(spark, tmp_path)
    # every bad-row class of the DuckDB tests in one batch, with collapsing copies, a
    # conflict in the batch, a row with several problems and a line that does not fit
    tables = {name: list(rows) for name, rows in GOOD.items()}
    for table, changes, _, _ in BAD_CASES:
        row = bad(table, **changes)
        tables[table].append({**row, TABLES[table].id_column: f"BAD-{len(tables[table])}"})
    o1, o2 = GOOD["orders"]
    tables["orders"] += [
        o1,
        o1,
        {**o2, "amount": "99"},
        bad("orders", amount="x", customer_id="C9"),
    ]
    first = {name: write(tmp_path / "a", name, rows) for name, rows in tables.items()}
    with first["interactions"].open("a") as fh:
        fh.write("I9,C1,2024-01-02,call\n")  # too few fields: an unreadable line
    report = engines.batch(first)
    assert report.quarantined > len(BAD_CASES)
    assert {k for t in report.tables.values() for k in t.quarantined_by_reason} >= {
        kind for _, _, kind, _ in BAD_CASES
    } | {"conflict", "unreadable line"}
    # the fast/exact-path batches: stored ids identical, changed, now bad; new ones
    customers = write(tmp_path / "b", "customers", PATH_CUSTOMERS)
    engines.batch({"customers": customers, "orders": write(tmp_path / "b", "orders", FIRST)})
    second = {"orders": write(tmp_path / "c", "orders", SECOND)}
    assert engines.batch(second).tables["orders"].quarantined_by_reason["conflict"] == 3
    again = engines.batch(second)  # idempotent on both
    assert again.newly_quarantined == 0 and again.tables["orders"].inserted == 0
    engines.close()


def test_demo_tables_exports_and_identifiers_give_the_same_lake_as_duckdb(
    spark: Any, tmp_path: Path
) -> None:
    engines = Engines(spark, tmp_path)
    # demo-like tables as Parquet (typed), with injected bad rows
    tables = random_tables(7, customers=40, events=300)
    orders = tables["orders"]
    broken = orders.iloc[:3].copy()
    broken["order_id"] = ["X1", "X2", "X3"]
    broken.loc[broken.index[0], "customer_id"] = "NOBODY"
    broken.loc[broken.index[1], "amount"] = float("nan")
    broken.loc[broken.index[2], "ordered_at"] = pd.Timestamp("2031-01-01", tz="UTC")
    tables["orders"] = pd.concat([orders, broken, orders.iloc[:2]])
    files = {}
    for name, frame in tables.items():
        path = tmp_path / "demo" / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
        files[name] = path
    report = engines.batch(files)
    assert report.tables["orders"].quarantined == 3 and report.tables["orders"].duplicates == 2
    # messy exports (BOM, tabs, cp1252, quoted line breaks, US dates, bad lines)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "customers.csv").write_text(
        "customer_id,signup_at\nC1,2023-01-01\nC2,2023-06-01\n"
    )
    for name, options in [
        ("windows_bom.csv", FileOptions()),
        ("tab_separated.csv", FileOptions()),
        ("cp1252.csv", FileOptions(encoding="cp1252")),
        ("quoted_newlines.csv", FileOptions()),
        ("us_dates.csv", FileOptions(date_format="%m/%d/%Y", thousands=",")),
        ("bad_lines.csv", FileOptions()),
        (
            "semicolon_decimal_comma.csv",
            FileOptions(decimal=",", thousands=".", date_format="%d/%m/%Y"),
        ),
    ]:
        customers = tmp_path / "x" / "customers.csv"
        engines.batch({"customers": customers, "orders": CORPUS / name}, options)
    engines.close()
    # orders and interactions naming their customer by an identifier, in a new workspace
    engines = Engines(spark, tmp_path / "named")
    folder = tmp_path / "ids"
    folder.mkdir()
    for name, text in [
        ("customers", ID_CUSTOMERS),
        ("orders", ID_ORDERS),
        ("interactions", ID_INTERACTIONS),
    ]:
        (folder / f"{name}.csv").write_text(text)
    named = engines.batch({n: folder / f"{n}.csv" for n in ("customers", "orders", "interactions")})
    assert named.tables["orders"].named_by_identifier == 2
    engines.close()


def test_a_bad_file_stops_spark_with_the_duckdb_error(spark: Any, tmp_path: Path) -> None:
    orders = write(tmp_path, "orders", [{"order_id": "O1", "amount": "1"}])
    files = {"orders": orders}
    errors = []
    for run in (
        lambda: ingest(connect(tmp_path / "d.duckdb"), files, NOW),
        lambda: spark_ingest.ingest(
            spark, connect(tmp_path / "s.duckdb"), files, NOW, str(tmp_path / "lake")
        ),
    ):
        with pytest.raises(IngestError) as caught:
            run()
        errors.append(str(caught.value))
    assert errors[0] == errors[1]
    assert "missing required column(s) customer_id, ordered_at of table orders" in errors[0]
    assert not (tmp_path / "lake" / "tables" / "orders").exists()
    quarantined = raw(connect(tmp_path / "s.duckdb")).execute("SELECT 1").fetchall()
    assert quarantined == [(1,)]
    assert json.dumps(errors)  # the message is plain text
