"""Running the page: uvicorn in this process, one worker (sessions live in memory), at a
lower CPU priority than the scoring service: a large list preview or save runs in this
process, and when both want the cores the scheduler serves ``/score`` first."""

from __future__ import annotations

import os

from rapport.settings import Settings, get_settings

#: added to the process's nice value (POSIX): previews yield the CPU to live scoring
NICENESS = 10


def serve(host: str = "127.0.0.1", port: int = 3001, settings: Settings | None = None) -> None:
    """Serve the page on ``host:port`` until interrupted."""
    import uvicorn

    from ui.app import create_app

    if hasattr(os, "nice"):
        os.nice(NICENESS)

    uvicorn.run(create_app(settings or get_settings()), host=host, port=port, log_level="warning")
