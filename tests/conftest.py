"""Shared fixtures: every test runs in an isolated workspace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rapport.settings import reset_settings


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
