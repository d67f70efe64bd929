"""Share new connections between the service's worker processes.

BentoML's workers all accept from one listening socket, and asyncio accepts every pending
connection in one go (up to the backlog, 2048). When a client opens its keep-alive pool
(the benchmark's 16 connections, a contact-center app's pool) the first worker to wake
takes all of them and the others idle for the life of the pool: with 2 workers one did
all the work and throughput was that of one worker.

:func:`install` makes each worker accept one connection at a time and then leave the
socket to its siblings for :data:`PAUSE_S` (at least until its loop turns again: a worker
inside a request does not accept), the cure libuv (``UV_TCP_SINGLE_ACCEPT``) and gevent
(``max_accept = 1`` for multi-process servers) apply to the same problem. Yielding the CPU
alone was not enough here: on this 2-vCPU machine the first worker still took the whole
burst in 2 of 3 runs before the other one woke up; with the pause the two workers shared
the closed-loop load evenly in every run. The price: a burst of new connections is
accepted at about one per millisecond per idle worker (a 32-connection pool in ~16 ms with
2 workers), far above the rate either worker can score.

This replaces a private method of asyncio's selector loop (the one uvicorn runs without
uvloop; Python 3.11, which the project pins). Under uvloop it changes nothing and says so.
"""

from __future__ import annotations

import importlib.util
from asyncio import selector_events
from typing import Any

#: seconds a worker leaves new connections to its siblings after taking one
PAUSE_S = 0.001
_ORIGINAL = selector_events.BaseSelectorEventLoop._accept_connection  # type: ignore[attr-defined]


def _accept_one(
    self: Any,
    protocol_factory: Any,
    sock: Any,
    sslcontext: Any = None,
    server: Any = None,
    backlog: int = 100,
    *args: Any,
    **kwargs: Any,
) -> None:
    _ORIGINAL(self, protocol_factory, sock, sslcontext, server, 1, *args, **kwargs)
    fd = sock.fileno()
    if fd == -1 or not self._remove_reader(fd):  # closed, or the original stopped reading
        return

    def resume() -> None:
        if sock.fileno() == fd and (server is None or server.is_serving()):
            self._add_reader(
                fd,
                self._accept_connection,
                protocol_factory,
                sock,
                sslcontext,
                server,
                backlog,
                *args,
                **kwargs,
            )

    self.call_later(PAUSE_S, resume)


def install() -> bool:
    """Accept one connection at a time in this process from now on (idempotent).

    False when uvloop is installed: uvicorn then runs uvloop, which this cannot change."""
    selector_events.BaseSelectorEventLoop._accept_connection = _accept_one  # type: ignore[attr-defined]
    return importlib.util.find_spec("uvloop") is None


def uninstall() -> None:
    """Back to asyncio's own accept loop (for tests)."""
    selector_events.BaseSelectorEventLoop._accept_connection = _ORIGINAL  # type: ignore[attr-defined]
