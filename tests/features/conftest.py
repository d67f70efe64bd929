"""A ``redis-server`` per test module, for the Redis tests of the feature layer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis_harness import RedisServer


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Started once per module (a test may kill and restart it), killed at the end."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()
