"""Durability on disk: what an acknowledged write needs before it is acknowledged.

One home for fsync: a file's data, and the folder entry of a file that was created or
renamed (a rename is durable only once its folder is flushed).
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_paths(*paths: str | Path) -> None:
    """Flush files or folders to disk (fsync works on the file, whichever descriptor
    asks); paths that do not exist are skipped."""
    for path in paths:
        if not os.path.exists(path):
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably: a temporary file beside it,
    fsynced, renamed over it, then the folder fsynced."""
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    partial.replace(path)
    fsync_paths(path.parent)
