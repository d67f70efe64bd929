"""Running the page: uvicorn in this process, one worker (sessions live in memory)."""

from __future__ import annotations

from rapport.settings import Settings, get_settings


def serve(host: str = "127.0.0.1", port: int = 3001, settings: Settings | None = None) -> None:
    """Serve the page on ``host:port`` until interrupted."""
    import uvicorn

    from ui.app import create_app

    uvicorn.run(create_app(settings or get_settings()), host=host, port=port, log_level="warning")
