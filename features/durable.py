"""Durability on disk: what an acknowledged write needs before it is acknowledged.

One home for fsync: a file's data, and the folder entry of a file that was created or
renamed (a rename is durable only once its folder is flushed); and for telling whether the
writer that left a half-written file behind is still running (:func:`pid_alive`).
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


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped by its parent, does not):
    a writer's leftovers (an open outbox segment, a half-published snapshot) are taken
    over only when it is gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (not Linux): the signal check is all there is
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
