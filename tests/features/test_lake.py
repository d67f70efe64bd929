"""``rapport ingest`` with the Spark engine: the validated tables and the quarantine
written to the lake as Parquet, the very rows and reasons of the warehouse it keeps level
(``tests/features/test_spark_ingest.py`` compares them with a DuckDB-only ingest)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from sample_data import random_tables
from sample_data import warehouse_query as query

from features.contract import TABLES
from features.lake import QUARANTINE, table_uri
from rapport.cli import main


def contract_files(folder: Path) -> Path:
    """Valid random tables as CSV, plus bad rows: an unknown customer, a broken date."""
    folder.mkdir()
    tables = random_tables(5, customers=30, events=200)
    orders = tables["orders"].astype(object)
    bad = orders.iloc[:2].copy()
    bad["order_id"] = ["BAD1", "BAD2"]
    bad.loc[bad.index[0], "customer_id"] = "NOBODY"
    bad["ordered_at"] = bad["ordered_at"].astype(str)
    bad.loc[bad.index[1], "ordered_at"] = "not a date"
    tables["orders"] = pd.concat([orders.assign(ordered_at=orders.ordered_at.astype(str)), bad])
    for name, frame in tables.items():
        frame.to_csv(folder / f"{name}.csv", index=False)
    return folder


def lake_table(lake: Path, name: str) -> pd.DataFrame:
    return pq.read_table(table_uri(str(lake), name)).to_pandas()


def same_rows(left: pd.DataFrame, right: pd.DataFrame, key: list[str]) -> None:
    left = left.sort_values(key, ignore_index=True)
    right = right.sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(left, right, check_dtype=False)


@pytest.mark.spark
@pytest.mark.slow  # Spark checks four tables, twice: ~1-2 min on two shared cores
def test_spark_ingest_writes_tables_and_quarantine_into_the_lake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workspace: Path
) -> None:
    monkeypatch.setenv("RAPPORT_ENGINE", "spark")
    folder = contract_files(tmp_path / "in")
    result = CliRunner().invoke(main, ["ingest", str(folder)])
    assert result.exit_code == 0, result.output
    lake = workspace / "lake"
    assert f"as Parquet under {lake}/tables" in result.output
    for name, table in TABLES.items():
        key = table.columns[0].name
        same_rows(lake_table(lake, name), query(f'SELECT * FROM "{name}"'), [key])
    quarantine = lake_table(lake, QUARANTINE)
    same_rows(quarantine, query(f"SELECT * FROM {QUARANTINE}"), ["row_json", "reason"])
    assert len(quarantine) == 2 and "orders 200," in result.output  # the good ones only
    reasons = " ".join(quarantine.reason)
    assert "is not a known customer" in reasons and "is not a valid timestamp" in reasons
    # again: idempotent, one folder per table, nothing left behind by the swap
    again = CliRunner().invoke(main, ["ingest", str(folder)])
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in (lake / "tables").iterdir()) == sorted([*TABLES, QUARANTINE])
    assert len(lake_table(lake, QUARANTINE)) == 2
    assert len(lake_table(lake, "orders")) == len(query("SELECT * FROM orders"))


def test_the_duckdb_engine_writes_no_lake(tmp_path: Path, workspace: Path) -> None:
    result = CliRunner().invoke(main, ["ingest", str(contract_files(tmp_path / "in"))])
    assert result.exit_code == 0, result.output
    assert not (workspace / "lake").exists() and "lake" not in result.output


def test_an_object_store_lake_is_refused_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAPPORT_ENGINE", "spark")
    monkeypatch.setenv("RAPPORT_LAKE_URI", "s3a://bucket/lake")
    result = CliRunner().invoke(main, ["ingest", str(contract_files(tmp_path / "in"))])
    assert result.exit_code == 1
    assert "Error:" in result.output and "s3a://bucket/lake is an object store" in result.output
