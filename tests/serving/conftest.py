"""A demo workspace with churn, value *and* NBA champions, shared by the serving tests
that need real next best actions (built once per session: about half a minute), and an
HTTP client on the module's own ``server`` fixture."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from serving_harness import Server, workspace_fixture

nba_ws = workspace_fixture("nba", customers=1500, seed=5, nba=True, scope="session")


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    """A client of the module's ``server`` (a module defines that fixture to use this)."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client
