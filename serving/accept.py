"""Share new connections between the service's worker processes.

BentoML's workers all accept from one listening socket, and asyncio accepts every pending
connection in one go (up to the backlog, 2048). When a client opens its keep-alive pool
(the benchmark's 16 connections, a contact-center app's pool) the first worker to wake
takes all of them and the others idle for the life of the pool: with 2 workers one did
all the work and throughput was that of one worker.

:func:`install` makes each worker accept one connection per event-loop turn and then
yield the CPU, so an idle sibling takes the next one: the cure libuv
(``UV_TCP_SINGLE_ACCEPT``) and gevent (``max_accept = 1`` for multi-process servers) apply
to the same problem. A busy worker (inside a request) does not accept at all until its
loop turns, so connections go to the workers that are free.

This replaces a private method of asyncio's selector loop (the one uvicorn runs without
uvloop; Python 3.11, which the project pins). Under uvloop it changes nothing and says so.
"""

from __future__ import annotations

import importlib.util
import os
from asyncio import selector_events
from typing import Any

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
    os.sched_yield()


def install() -> bool:
    """Accept one connection per loop turn in this process from now on (idempotent).

    False when uvloop is installed: uvicorn then runs uvloop, which this cannot change."""
    selector_events.BaseSelectorEventLoop._accept_connection = _accept_one  # type: ignore[attr-defined]
    return importlib.util.find_spec("uvloop") is None


def uninstall() -> None:
    """Back to asyncio's own accept loop (for tests)."""
    selector_events.BaseSelectorEventLoop._accept_connection = _ORIGINAL  # type: ignore[attr-defined]
