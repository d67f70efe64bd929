"""The CLI: help everywhere, clean errors on bad input, demo data end to end."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from rapport.cli import main


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output and len(result.output.splitlines()) > 4


def test_missing_column_is_a_clean_error_naming_file_and_column(tmp_path: Path) -> None:
    (tmp_path / "customers.csv").write_text("customer_id,signup_at\nC1,2024-01-01\n")
    (tmp_path / "orders.csv").write_text("order_id,customer_id,ordered_at\nO1,C1,2024-02-01\n")
    result = CliRunner().invoke(main, ["ingest", str(tmp_path)])
    assert result.exit_code == 1
    assert "orders.csv" in result.output and "amount" in result.output
    assert "Traceback" not in result.output


def test_a_mostly_quarantined_file_fails_the_ingest(tmp_path: Path) -> None:
    """Exit 3 (not 0) when a whole file, or more than the allowed share of it, is
    quarantined, even without --strict (issue 22: 100 % quarantined exited 0)."""
    from rapport.cli import EXIT_QUARANTINED

    (tmp_path / "customers.csv").write_text("customer_id,signup_at\nC1,2024-01-01\n")
    orders = ["order_id,customer_id,ordered_at,amount"]
    orders += [f"O{i},NOBODY,2024-02-01,10" for i in range(4)]  # unknown customer
    (tmp_path / "orders.csv").write_text("\n".join(orders) + "\n")
    runner = CliRunner()
    result = runner.invoke(main, ["ingest", str(tmp_path)])
    assert result.exit_code == EXIT_QUARANTINED == 3, result.output
    assert "orders.csv): 4 of 4 rows quarantined" in result.output
    assert "Traceback" not in result.output
    # one bad row in five: 20 %, within the default share; over a stricter one
    orders = ["order_id,customer_id,ordered_at,amount", "B1,NOBODY,2024-02-01,10"]
    orders += [f"G{i},C1,2024-02-0{i + 1},10" for i in range(4)]
    (tmp_path / "orders.csv").write_text("\n".join(orders) + "\n")
    assert runner.invoke(main, ["ingest", str(tmp_path)]).exit_code == 0
    result = runner.invoke(main, ["ingest", str(tmp_path), "--max-quarantined", "0.1"])
    assert result.exit_code == 3 and "1 of 5 rows" in result.output, result.output
    bad = runner.invoke(main, ["ingest", str(tmp_path), "--max-quarantined", "2"])
    assert bad.exit_code == 2 and "--max-quarantined" in bad.output


def test_a_locked_warehouse_waits_then_fails_in_one_line(workspace: Path) -> None:
    """Another process holds the warehouse: the command waits (``--wait``) and then says
    so in one line, exit 1, instead of DuckDB's IOException traceback (issue 22)."""
    import threading
    import time

    with holding_the_warehouse(120) as holder:
        runner = CliRunner()
        for command in (["ingest", "--outbox"], ["score"]):  # the two the issue saw
            refused = runner.invoke(main, ["--wait", "0.5", *command])
            assert refused.exit_code == 1, (command, refused.output)
            assert "in use by another process" in refused.output and "--wait" in refused.output
            assert "Traceback" not in refused.output and "IOException" not in refused.output
            assert "PID" not in refused.output
        started = time.monotonic()
        threading.Timer(2.0, holder.kill).start()  # the other job ends while this one waits
        waited = runner.invoke(main, ["--wait", "60", "ingest", "--outbox"])
        assert waited.exit_code == 0, waited.output
        assert "waiting up to 60 s for the warehouse" in waited.output
        assert time.monotonic() - started < 30  # it went on as soon as the lock was free


def test_a_locked_warehouse_is_unavailable_to_the_service_without_paths(
    workspace: Path,
) -> None:
    """What POST /targets answers (503) while a job holds the warehouse names no path,
    host or process id (issue 22: the body showed DuckDB's message with the PID)."""
    from features.tables.lists import WarehouseLists, WarehouseUnavailableError
    from rapport.settings import get_settings

    path = get_settings().warehouse_path
    with holding_the_warehouse(30) as holder:
        with pytest.raises(WarehouseUnavailableError) as info, WarehouseLists(path):
            pass
        message = str(info.value)
        assert "locked" in message and str(path.parent) not in message
        assert "PID" not in message and str(holder.pid) not in message


#: a second process that opens the warehouse for writing and holds it for argv[2] seconds
HOLD_LOCK = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


@contextmanager
def holding_the_warehouse(seconds: int) -> Iterator[subprocess.Popen[str]]:
    """Another process (:data:`HOLD_LOCK`) holds the workspace's warehouse for at most
    ``seconds``, until the block ends; yields it once it has the lock."""
    from rapport.settings import get_settings

    path = get_settings().warehouse_path
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_demo_data_ingest_and_features(tmp_path: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "data"
    assert runner.invoke(main, ["demo-data", "-n", "300", "--out", str(data)]).exit_code == 0
    result = runner.invoke(main, ["ingest", str(data), "--strict"])
    assert result.exit_code == 0, result.output
    assert "no rows quarantined" in result.output
    out = tmp_path / "f.parquet"
    result = runner.invoke(main, ["features", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists() and "customers x 85 features" in result.output
    assert "stored segments " in result.output  # the snapshot's cut points, for the others


def test_parse_when_leaves_absent_options_to_the_library() -> None:
    """None (or empty) is "not given", so the library's default applies; never "now"."""
    import click

    from rapport.cli import parse_when

    assert parse_when(None) is None and parse_when("  ") is None
    assert parse_when("2025-03-01") == datetime(2025, 3, 1, tzinfo=UTC)
    assert parse_when("2025-03-01T14:00+02:00") == datetime(2025, 3, 1, 12, tzinfo=UTC)
    with pytest.raises(click.BadParameter, match="not a date"):
        parse_when("soon")


@pytest.mark.parametrize(
    ("args", "option", "message"),
    [
        (["features", "--as-of", "someday"], "--as-of", "'someday' is not a date"),
        (["train", "churn", "--horizon", "0d"], "--horizon", "'0d' is not a horizon"),
        (["demo-data", "--end", "2024-13-45"], "--end", "is not a date"),
        (["keys", "add", "app", "--scopes", "score,root"], "--scopes", "unknown scope(s) root"),
    ],
)
def test_bad_option_values_are_usage_errors_naming_the_option(
    args: list[str], option: str, message: str
) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.output and message in result.output


def test_library_errors_are_one_line_exit_1() -> None:
    result = CliRunner().invoke(main, ["demo-data", "-n", "0"])
    assert result.exit_code == 1, result.output
    assert result.output == "Error: customers must be >= 1, got 0\n"


def test_file_options_read_a_european_export(tmp_path: Path) -> None:
    corpus = Path(__file__).parents[1] / "features" / "files"
    (tmp_path / "customers.csv").write_text("customer_id;signup_at\nC1;2023-01-01\nC2;2023-06-01\n")
    args = ["validate", "--customers", str(tmp_path / "customers.csv")]
    args += ["--orders", str(corpus / "semicolon_decimal_comma.csv"), "--decimal", ","]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "--date-format" in result.output, result.output
    result = CliRunner().invoke(main, [*args, "--thousands", ".", "--date-format", "%d/%m/%Y"])
    assert result.exit_code == 2, result.output  # one row would be quarantined: '12.5'
    assert "read 3, inserted 2" in result.output and "invalid number 1" in result.output
    result = CliRunner().invoke(main, [*args, "--thousands", ","])
    assert result.exit_code == 2 and "thousands separator" in result.output


#: runs the CLI on argv[1:] in this process and prints its niceness before and after
NICENESS = """
import os, sys
from rapport.cli import main
before = os.nice(0)
try:
    main(sys.argv[1:], standalone_mode=False)
except BaseException:
    pass
print(before, os.nice(0))
"""


@pytest.mark.parametrize(
    ("args", "setting", "lowered"),
    [
        (["validate", "--help"], "15", True),
        (["score", "--help"], "15", True),
        (["score", "--help"], "0", False),
        (["serve", "--help"], "15", False),
        (["ui", "--help"], "15", False),
    ],
)
def test_batch_commands_run_at_a_lower_cpu_priority(
    args: list[str], setting: str, lowered: bool
) -> None:
    """Issue 22: ``/score`` p99 grew 4.75x while ``rapport score`` ran at the service's
    priority; batch commands lower theirs (RAPPORT_BATCH_NICE; 0 turns it off), the
    service and the web page keep theirs."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "RAPPORT_BATCH_NICE": setting}
    done = subprocess.run(
        [sys.executable, "-c", NICENESS, *args], env=env, capture_output=True, text=True
    )
    before, after = map(int, done.stdout.split()[-2:])
    assert after == (max(before, int(setting)) if lowered else before)
