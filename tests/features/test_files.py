"""Files as real exports come: a corpus of odd CSV files (tests/features/files) loads into
the contract exactly, or stops with an error naming the file, the line and the option."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from features.files import FileError, FileOptions
from features.ingest import BAD_LINE, IngestError, ingest
from features.warehouse import connect, raw

CORPUS = Path(__file__).parent / "files"
NOW = datetime(2025, 6, 1, tzinfo=UTC)
CUSTOMERS = "customer_id,signup_at\nC1,2023-01-01\nC2,2023-06-01\n"


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


#: file -> (options, the orders it must store: id -> (ordered_at, amount, category))
READABLE: dict[str, tuple[FileOptions, dict[str, tuple[pd.Timestamp, float, str]]]] = {
    "mixed_line_endings.csv": (
        FileOptions(),
        {
            "O1": (ts("2024-01-05"), 10.5, "a"),
            "O2": (ts("2024-02-01"), 20.0, "b"),
            "O3": (ts("2024-03-01"), 30.0, "c"),
            "O4": (ts("2024-03-02"), 40.0, "d"),
        },
    ),
    "windows_bom.csv": (
        FileOptions(),
        {"O1": (ts("2024-01-05"), 10.5, "café"), "O2": (ts("2024-02-01"), 20.0, "b")},
    ),
    "tab_separated.csv": (
        FileOptions(),
        {"O1": (ts("2024-01-05"), 10.5, "a, b"), "O2": (ts("2024-02-01"), 20.0, "b")},
    ),
    "cp1252.csv": (
        FileOptions(encoding="cp1252"),
        {"O1": (ts("2024-01-05"), 10.5, "café €"), "O2": (ts("2024-02-01"), 20.0, "b")},
    ),
    "latin1.csv": (
        FileOptions(encoding="latin-1"),
        {"O1": (ts("2024-01-05"), 10.5, "crème"), "O2": (ts("2024-02-01"), 20.0, "b")},
    ),
    "quoted_newlines.csv": (
        FileOptions(),
        {
            "O1": (ts("2024-01-05"), 10.5, "gift\nwrap, red"),
            "O2": (ts("2024-02-01"), 20.0, 'say "hi"'),
        },
    ),
    "us_dates.csv": (
        FileOptions(date_format="%m/%d/%Y", thousands=","),
        {"O1": (ts("2024-01-05"), 1010.5, "a"), "O2": (ts("2024-12-31 08:30"), 20.0, "b")},
    ),
}


@pytest.fixture
def con(tmp_path: Path) -> Any:
    return connect(tmp_path / "warehouse.duckdb")


def load(con: Any, tmp_path: Path, name: str, options: FileOptions | None = None) -> Any:
    customers = tmp_path / "customers.csv"
    customers.write_text(CUSTOMERS)
    return ingest(con, {"customers": customers, "orders": CORPUS / name}, NOW, options=options)


def stored_orders(con: Any) -> dict[str, tuple[pd.Timestamp, float, str]]:
    rows = raw(con).execute("SELECT order_id, ordered_at, amount, category FROM orders")
    return {
        order: (pd.Timestamp(at).tz_convert("UTC"), amount, category)
        for order, at, amount, category in rows.fetchall()
    }


def reasons(con: Any) -> list[str]:
    return [r for (r,) in raw(con).execute("SELECT reason FROM quarantine ORDER BY 1").fetchall()]


@pytest.mark.parametrize("name", sorted(READABLE))
def test_each_export_loads_every_row_exactly(tmp_path: Path, con: Any, name: str) -> None:
    options, expected = READABLE[name]
    report = load(con, tmp_path, name, options)
    assert report.tables["orders"].quarantined == 0, reasons(con)
    assert stored_orders(con) == expected


def test_decimal_commas_thousands_and_day_first_dates_by_option(tmp_path: Path, con: Any) -> None:
    with pytest.raises(IngestError, match="day and the month"):
        load(con, tmp_path, "semicolon_decimal_comma.csv", FileOptions(decimal=","))
    options = FileOptions(decimal=",", thousands=".", date_format="%d/%m/%Y")
    report = load(con, tmp_path, "semicolon_decimal_comma.csv", options)
    assert stored_orders(con) == {
        "O1": (ts("2024-01-05"), 10.5, "a"),
        "O2": (ts("2024-01-31 13:45"), 1234.5, "b"),
    }
    # '12.5' with '.' as thousands separator is not a grouping of three: never read as 125
    assert reasons(con) == ["amount '12.5' is not a number"]
    assert report.tables["orders"].quarantined_by_reason == {"invalid number": 1}


def test_ambiguous_dates_are_never_guessed(tmp_path: Path, con: Any) -> None:
    with pytest.raises(IngestError) as error:
        load(con, tmp_path, "us_dates.csv", FileOptions(thousands=","))
    message = str(error.value)
    assert "us_dates.csv" in message and "ordered_at '01/05/2024'" in message
    assert "order_id 'O1'" in message and "--date-format" in message
    assert raw(con).execute("SELECT count(*) FROM information_schema.tables").fetchone() == (0,)


def test_lines_that_do_not_fit_the_header_are_quarantined_with_their_line(
    tmp_path: Path, con: Any
) -> None:
    report = load(con, tmp_path, "bad_lines.csv")
    result = report.tables["orders"]
    assert (result.read, result.inserted) == (4, 2)
    assert result.quarantined_by_reason == {BAD_LINE: 2}
    assert set(stored_orders(con)) == {"O1", "O4"}
    rows = raw(con).execute("SELECT row_json, reason FROM quarantine ORDER BY reason").fetchall()
    assert [reason for _, reason in rows] == [
        "line 3: 7 fields where the header has 5 (check the delimiter and the quoting)",
        "line 4: 2 fields where the header has 5 (check the delimiter and the quoting)",
    ]
    assert json.loads(rows[1][0]) == {"line": 4, "fields": ["O3", "C1"]}
    again = load(con, tmp_path, "bad_lines.csv")
    assert again.newly_quarantined == 0 and again.tables["orders"].quarantined == 2


def test_bytes_not_in_the_encoding_stop_with_the_line_and_the_option(
    tmp_path: Path, con: Any
) -> None:
    with pytest.raises(IngestError) as error:
        load(con, tmp_path, "not_utf8.csv")
    message = str(error.value)
    assert "not_utf8.csv: line 3 is not valid utf-8" in message and "--encoding" in message
    assert raw(con).execute("SELECT count(*) FROM information_schema.tables").fetchone() == (0,)
    load(con, tmp_path, "not_utf8.csv", FileOptions(encoding="cp1252"))
    assert stored_orders(con)["O2"][2] == "café"


def test_a_delimiter_given_by_option_is_used_and_named_when_wrong(tmp_path: Path, con: Any) -> None:
    path = CORPUS / "tab_separated.csv"
    with pytest.raises(IngestError, match="reads as one column with --delimiter ';'"):
        ingest(con, {"orders": path}, NOW, options=FileOptions(delimiter=";"), commit=False)
    report = ingest(con, {"orders": path}, NOW, options=FileOptions(delimiter="\t"), commit=False)
    assert report.tables["orders"].read == 2  # split right: only the customers are unknown
    assert report.tables["orders"].quarantined_by_reason == {"unknown customer": 2}


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"delimiter": ";;"}, "one character"),
        ({"encoding": "klingon"}, "unknown encoding"),
        ({"decimal": ";"}, "decimal separator"),
        ({"decimal": ",", "thousands": ","}, "thousands separator"),
        ({"date_format": "dd/mm/yyyy"}, "% codes"),
    ],
)
def test_impossible_options_are_refused(options: dict[str, str], words: str) -> None:
    with pytest.raises(FileError, match=words):
        FileOptions(**options)  # type: ignore[arg-type]
