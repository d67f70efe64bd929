"""Shared fixtures: every test runs in an isolated workspace."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_harness import RedisServer

from rapport.settings import reset_settings


@pytest.fixture(autouse=True, scope="module")
def no_leaked_tracking_uri() -> Iterator[None]:
    """``mlflow.set_tracking_uri`` also sets MLFLOW_TRACKING_URI for the whole process: a
    test that calls it must not send the next module's fixtures (built before the
    per-test ``workspace``) to its registry."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(autouse=True)
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own RAPPORT_HOME (warehouse, online store, mlruns)."""
    home = tmp_path / "rapport-home"
    monkeypatch.setenv("RAPPORT_HOME", str(home))
    for var in ("RAPPORT_WAREHOUSE_URL", "RAPPORT_ONLINE_STORE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    reset_settings()
    yield home
    reset_settings()


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """One small local Spark session for the whole test process (tests marked ``spark``):
    two cores, two shuffle partitions, no web UI; built by :func:`features.spark.session`
    from settings, as the jobs build theirs."""
    import shutil

    if shutil.which("java") is None:
        pytest.fail(
            "Java is not installed: the Spark tests cannot run. "
            "Install it with `apt-get install -y openjdk-17-jre-headless` (.ci/run does)."
        )
    from features.spark import session
    from rapport.settings import Settings

    settings = Settings(
        spark_master="local[2]",
        spark_conf="spark.sql.shuffle.partitions=2,spark.ui.enabled=false,"
        "spark.default.parallelism=2",
    )
    active = session(settings, app="rapport-tests")
    yield active
    active.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A ``redis-server`` per test module that asks for one: started once (a test may kill
    and restart it), killed at the end."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()
