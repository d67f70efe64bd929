"""The engine settings: RAPPORT_ENGINE, the Spark master and options, the lake."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from rapport.cli import main
from rapport.settings import Settings, get_settings, parse_spark_conf


def test_defaults_are_duckdb_local_spark_and_a_lake_in_home(workspace: Path) -> None:
    settings = get_settings()
    assert settings.engine == "duckdb" and settings.spark_master == "local[*]"
    assert settings.spark_options == {}
    assert settings.lake == str(workspace / "lake")


def test_engine_master_conf_and_lake_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RAPPORT_ENGINE", " Spark ")
    monkeypatch.setenv("RAPPORT_SPARK_MASTER", "spark://head:7077")
    monkeypatch.setenv(
        "RAPPORT_SPARK_CONF", "spark.executor.memory=4g, spark.sql.shuffle.partitions=8"
    )
    monkeypatch.setenv("RAPPORT_LAKE_URI", "s3a://bucket/rapport/")
    settings = Settings()
    assert settings.engine == "spark" and settings.spark_master == "spark://head:7077"
    assert settings.spark_options == {
        "spark.executor.memory": "4g",
        "spark.sql.shuffle.partitions": "8",
    }
    assert settings.lake == "s3a://bucket/rapport"
    monkeypatch.setenv("RAPPORT_LAKE_URI", str(tmp_path / "a" / ".." / "lake"))
    assert Settings().lake == str((tmp_path / "a" / ".." / "lake").absolute())


def test_spark_conf_as_json() -> None:
    assert parse_spark_conf('{"spark.driver.memory": "2g", "spark.a.b": 3}') == {
        "spark.driver.memory": "2g",
        "spark.a.b": "3",
    }


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("RAPPORT_ENGINE", "sparkle", "Input should be 'duckdb' or 'spark'"),
        ("RAPPORT_SPARK_MASTER", "", "at least 1 character"),
        ("RAPPORT_SPARK_CONF", "spark.a=1,oops", "entry 'oops' is not key=value"),
        ("RAPPORT_SPARK_CONF", "executor.memory=4g", "must start with 'spark.': executor.memory"),
        ("RAPPORT_SPARK_CONF", '{"spark.a": ', "is not valid JSON"),
        ("RAPPORT_SPARK_CONF", '["spark.a"]', "must be an object"),
    ],
)
def test_invalid_values_are_refused_clearly(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, message: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError, match=re.escape(message)):
        Settings()


def test_the_cli_reports_a_bad_engine_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPPORT_ENGINE", "sparkle")
    result = CliRunner().invoke(main, ["score"])
    assert result.exit_code == 1
    assert "Error:" in result.output and "engine" in result.output
    assert "Traceback" not in result.output
