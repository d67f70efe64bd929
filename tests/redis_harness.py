"""A throw-away ``redis-server`` for the tests (AOF on, fsync always) on a free port in a
temporary folder; it can be stopped and started again on the same port with its data."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A throw-away redis-server whose data lives (as AOF) in ``folder``."""

    def __init__(self, folder: Path) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail(
                "redis-server is not on PATH: the Redis tests need it; "
                "install it with `apt-get install redis-server`"
            )
        self.folder, self.port = folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.folder)]
        log = (self.folder / "redis.log").open("ab")
        self.proc = subprocess.Popen(["redis-server", *args], stdout=log, stderr=log)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"redis-server did not start: {(self.folder / 'redis.log').read_text()}"
                    )
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        """SIGTERM: a clean shutdown (the AOF holds every acknowledged write)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL: no shutdown save, only what the AOF already holds survives."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)
