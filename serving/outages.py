"""A dependency down (the online store, the warehouse) is a 503 with ``Retry-After``, not a
500 and a traceback per request.

:func:`answers_503` wraps an endpoint: a :class:`features.online.store.StoreUnavailableError`
(or a warehouse that cannot be read) becomes a 503 whose body names the dependency and
nothing internal (no host, port, path or process id), and :class:`Outages` writes one log
line when a dependency goes down and one when it is back, whatever the number of
requests in between. The service marks the store back up as soon as a request or its
periodic check reaches it again (recovery by itself); while it is down, readiness is off.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import JSONResponse

from features.online.store import StoreUnavailableError
from features.tables.lists import WarehouseUnavailableError

log = logging.getLogger("bentoml.rapport")  # under bentoml: its handlers and worker prefix

#: seconds a client should wait before retrying a 503
RETRY_AFTER_S = 2
ONLINE_STORE = "online store"
WAREHOUSE = "warehouse"


class Outages:
    """Which dependencies are down now; logs each change of state once."""

    def __init__(self) -> None:
        self._down: dict[str, str] = {}
        self._lock = threading.Lock()

    def down(self, name: str, exc: BaseException | None = None) -> None:
        with self._lock:
            if name in self._down:
                return
            cause = exc.__cause__ if exc is not None and exc.__cause__ is not None else exc
            self._down[name] = type(cause).__name__ if cause is not None else "unknown"
        log.error("%s unavailable (%s): answering 503 until it is back", name, self._down[name])

    def up(self, name: str) -> None:
        with self._lock:
            if self._down.pop(name, None) is None:
                return
        log.warning("%s available again", name)

    def is_down(self, name: str) -> bool:
        return name in self._down

    @property
    def problems(self) -> list[str]:
        return [f"{name} unavailable" for name in sorted(self._down)]


def unavailable(message: str) -> JSONResponse:
    """A 503 the client can act on: retry after a few seconds with the same ids."""
    return JSONResponse(
        {"error": message}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)}
    )


Endpoint = Callable[..., Awaitable[Any]]


def answers_503(endpoint: Endpoint) -> Endpoint:
    """Turn an unreachable dependency inside ``endpoint`` into a 503 (see the module doc);
    the service instance keeps its :class:`Outages` in ``outages`` (its readiness too)."""

    @functools.wraps(endpoint)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await endpoint(self, *args, **kwargs)
        except StoreUnavailableError as exc:
            name = ONLINE_STORE
            self.outages.down(name, exc)
        except WarehouseUnavailableError as exc:
            name = WAREHOUSE
            self.outages.down(name, exc)
        ctx = kwargs.get("ctx")
        if ctx is not None:
            ctx.response.status_code = 503
        return unavailable(f"the {name} is unavailable; nothing was written, retry later")

    return wrapper
