"""A demo workspace with churn, value *and* NBA champions, shared by the serving tests
that need real next best actions (built once per session: about half a minute)."""

from __future__ import annotations

import pytest
from serving_harness import Workspace, prepare_workspace


@pytest.fixture(scope="session")
def nba_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return prepare_workspace(tmp_path_factory.mktemp("nba"), customers=1500, seed=5, nba=True)
