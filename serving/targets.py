"""``POST /targets``: a target list from the warehouse's latest batch scores.

The list is made by :func:`models.targeting.make_list`, the one path ``rapport targets``
takes too (``serving`` never imports ``training``), with the service's own ports: the
warehouse is read through :class:`features.tables.lists.WarehouseLists` given its path,
so it is opened **read-only** for the request's reads and closed before selection; the
finished list goes to :class:`Downloads`.

Lists longer than ``max_rows`` (or any list, when the request names a ``format``) are
written to ``<home>/exports/<list_id>.parquet|csv`` and the response carries a download
link, ``GET /targets/download?list_id=...&format=...`` (:func:`download_app`, mounted by
the service; the same key scope ``targets``). The route serves nothing but files named
after a list id (:data:`features.tables.lists.LIST_ID`), so no path can escape the folder.

While a writer holds the warehouse (``rapport score``, ``ingest``, ``cycle``: DuckDB lets no
other process read it meanwhile), the list is made from the last published scoring run
instead (:class:`features.tables.snapshots.SnapshotLists`: one complete run, its features
and suppressions as of that run; the response's ``features_as_of`` says so).

The service does not write the warehouse (single writer): before answering, it appends
the list's audit rows -- definition, totals and members, exactly what ``rapport targets``
records -- to ``<home>/outbox/target_lists`` in one durable segment, sealed at once
(:func:`list_outbox`), and ``rapport ingest --outbox`` records them in ``target_lists`` /
``target_list_members`` with :func:`features.tables.lists.record_lists`.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from features.online.events import Outbox
from features.spec import FeatureSpec
from features.tables.control import ControlFileError, read_control
from features.tables.lists import (
    LIST_ID,
    OUTBOX_LISTS,
    WarehouseLists,
    WarehouseUnavailableError,
    definition_texts,
    outbox_lines,
    write_members,
)
from features.tables.scores import NoScoresError
from features.tables.snapshots import NoSnapshotError, SnapshotLists
from models.expressions import ExpressionError
from models.targeting import (
    ListSource,
    TargetDefinition,
    TargetError,
    TargetList,
    lookup,
    make_list,
    saved_definitions,
)
from rapport.settings import Settings, get_settings

#: the download route (GET, key scope ``targets``)
DOWNLOAD_ROUTE = "/targets/download"
#: download formats and their media types (the first is the default)
FORMATS = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv; charset=utf-8"}


class TargetsUnavailableError(RuntimeError):
    """Not now (503): the warehouse cannot be read (missing, or locked by a writer) or the
    list cannot be recorded for audit."""


def definition_of(request: Any, settings: Settings) -> TargetDefinition:
    """The request's list: a saved one by name (the packaged examples, then the
    workspace's) with the request's options on top, or an ad-hoc one."""
    saved: dict[str, TargetDefinition] = {}
    if request.name is not None:
        texts = definition_texts(settings.target_lists_path, hide_paths=True)
        saved = saved_definitions(texts)
    options = {
        "filter": request.filter,
        "action": request.action,
        "top": request.top,
        "budget": request.budget,
        "sort": request.sort,
        "profitable_only": request.profitable_only,
    }
    return lookup(request.name, options, saved)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def export_path(settings: Settings, list_id: str, fmt: str) -> Path:
    """Where a list made over HTTP is kept for download (``fmt``: parquet or csv)."""
    if not LIST_ID.fullmatch(list_id) or fmt not in FORMATS:
        raise ValueError(f"not a list id / format: {list_id!r}, {fmt!r}")
    return Path(settings.exports_dir) / f"{list_id}.{fmt}"


def prune_exports(settings: Settings, now: float | None = None) -> int:
    """Delete downloadable lists older than ``RAPPORT_EXPORT_TTL_HOURS``; only files
    named after a list id (other files in the folder are the user's). Returns how many."""
    cutoff = (now if now is not None else time.time()) - settings.export_ttl_hours * 3600
    removed = 0
    folder = Path(settings.exports_dir)
    for fmt in FORMATS:
        for path in folder.glob(f"*.{fmt}"):
            if not LIST_ID.fullmatch(path.stem):
                continue
            with contextlib.suppress(FileNotFoundError):  # another worker was faster
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
    return removed


def download_url(list_id: str, fmt: str) -> str:
    return f"{DOWNLOAD_ROUTE}?list_id={list_id}&format={fmt}"


_OUTBOXES: dict[Path, Outbox] = {}
_OUTBOX_LOCK = threading.Lock()


def list_outbox(settings: Settings) -> Outbox:
    """This process's outbox for target lists: every append is its own segment, sealed
    at once (``seal_after=0``), so ``rapport ingest --outbox`` sees a list as soon as
    the service has answered."""
    root = Path(settings.outbox_dir)
    with _OUTBOX_LOCK:
        if root not in _OUTBOXES:
            _OUTBOXES[root] = Outbox(root, seal_after=0.0)
        return _OUTBOXES[root]


@dataclass
class Downloads:
    """Where a list made over HTTP goes (:class:`models.targeting.ListSink`): a file to
    download when it is longer than ``max_rows`` or a format was asked for, and its audit
    rows durably appended to ``outbox`` (when given) -- never the warehouse."""

    settings: Settings
    outbox: Outbox | None
    max_rows: int
    fmt: str | None = None

    def export(self, members: pd.DataFrame, list_id: str) -> Path | None:
        if len(members) <= self.max_rows and self.fmt is None:
            return None
        return write_members(members, export_path(self.settings, list_id, self.format))

    @property
    def format(self) -> str:
        return self.fmt or next(iter(FORMATS))

    def record(self, row: Mapping[str, Any], members: pd.DataFrame) -> None:
        if self.outbox is None:
            return
        try:
            self.outbox.append(OUTBOX_LISTS, outbox_lines(row, members))
        except OSError as exc:  # not recorded for audit: no list either
            raise TargetsUnavailableError(f"cannot record the list for audit: {exc}") from None


def build_targets(
    request: Any, settings: Settings, spec: FeatureSpec, outbox: Outbox | None = None
) -> dict[str, Any]:
    """The response fields (without ``meta``); raises TargetError / ExpressionError on a
    bad request, NoScoresError without scores, TargetsUnavailableError on I/O trouble.

    With ``outbox`` (the service passes :func:`list_outbox`), the list's audit rows are
    durably appended to it before this returns."""
    definition = definition_of(request, settings)
    sink = Downloads(settings, outbox, request.max_rows, request.format)
    try:
        control = read_control(settings.home).group
    except ControlFileError as exc:
        raise TargetsUnavailableError(str(exc)) from None

    def make(source: ListSource, as_of: datetime) -> TargetList:
        return make_list(
            source, definition, spec, as_of, control=control, suppress=request.suppress, sink=sink
        )

    try:
        target = make(WarehouseLists(settings.warehouse_path), datetime.now(UTC))
    except WarehouseUnavailableError as exc:
        # a writer holds the warehouse (rapport score, ingest, cycle): the last published
        # scoring run, with the features and suppressions it was scored with
        try:
            snapshot = SnapshotLists.latest(settings.score_snapshots_dir)
        except NoSnapshotError:
            raise TargetsUnavailableError(str(exc)) from None
        target = make(snapshot, snapshot.as_of)
    selection = target.selection
    members = None
    if selection.count <= request.max_rows:
        members = [
            {k: _plain(v) for k, v in row.items()}
            for row in selection.members.to_dict(orient="records")
        ]
    url = download_url(target.list_id, sink.format) if target.output is not None else None
    return {
        "list_id": target.list_id,
        "name": definition.name,
        "run_id": target.run.run_id,
        "scores_as_of": target.run.as_of,
        "features_as_of": target.as_of,
        "count": selection.count,
        "total_expected_value": selection.total_expected_value,
        "total_cost": selection.total_cost,
        "stats": selection.stats(),
        "members": members,
        "download_url": url,
    }


# --------------------------------------------------------------------------- download
def _refuse(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def download(request: Request) -> Response:
    """``GET /targets/download?list_id=...[&format=parquet|csv]``: a list made by
    ``POST /targets``; 422 for a malformed id or format, 404 for an unknown list."""
    list_id = request.query_params.get("list_id", "")
    fmt = request.query_params.get("format")
    if not LIST_ID.fullmatch(list_id):
        return _refuse(422, "list_id must look like tl-YYYYMMDDTHHMMSS-xxxxxx")
    if fmt is not None and fmt not in FORMATS:
        return _refuse(422, f"format must be one of {sorted(FORMATS)}")
    settings = get_settings()
    for kind in [fmt] if fmt else list(FORMATS):
        path = export_path(settings, list_id, kind)
        if path.is_file():
            return FileResponse(path, media_type=FORMATS[kind], filename=path.name)
    return _refuse(404, f"no downloadable list {list_id!r}" + (f" as {fmt}" if fmt else ""))


def download_app() -> Starlette:
    """The download route as a small ASGI app the service mounts at ``/``; it answers
    only :data:`DOWNLOAD_ROUTE` (the service's guard checks the key first)."""
    return Starlette(routes=[Route(DOWNLOAD_ROUTE, download, methods=["GET"])])


#: errors that are the caller's (422) and those that mean "not now" (503) / "no scores" (404)
REQUEST_ERRORS = (TargetError, ExpressionError)
NOT_FOUND = (NoScoresError,)
