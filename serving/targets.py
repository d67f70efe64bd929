"""``POST /targets``: a target list from the warehouse's latest batch scores.

The selection is :func:`models.targeting.select_targets`, the code ``rapport targets``
runs (``serving`` never imports ``training``). The warehouse is opened **read-only** for
the request and closed after it: the latest run of ``scores`` (:mod:`features.tables.scores`),
the features the list needs computed now (consent, contact counts, cool-downs, the
filter's fields) and the ``suppressions`` table.

Lists longer than ``max_rows`` (or any list, when the request names a ``format``) are
written to ``<home>/exports/<list_id>.parquet|csv`` and the response carries a download
link, ``GET /targets/download?list_id=...&format=...`` (:func:`download_app`, mounted by
the service; the same key scope ``targets``). The route serves nothing but files named
after a list id (:data:`features.tables.scores.LIST_ID`), so no path can escape the folder.

The service does not write the warehouse (single writer): before answering, it appends
the list's audit rows -- definition, totals and members, exactly what ``rapport targets``
records -- to ``<home>/outbox/target_lists`` in one durable segment, sealed at once
(:func:`list_outbox`), and ``rapport ingest --outbox`` records them in ``target_lists`` /
``target_list_members`` with :func:`features.tables.scores.record_lists`.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from features.batch import build
from features.online.events import Outbox
from features.spec import FeatureSpec
from features.tables.scores import (
    LIST_ID,
    OUTBOX_LISTS,
    NoScoresError,
    latest_run,
    load_scores,
    new_list_id,
    outbox_lines,
    suppressed_ids,
)
from features.warehouse import connect, raw
from models.catalog import Catalog
from models.expressions import ExpressionError
from models.targeting import (
    TargetDefinition,
    TargetError,
    check_filter,
    default_definitions,
    definition_from,
    feature_subset,
    needed_features,
    parse_definitions,
    select_targets,
)
from rapport.settings import Settings, get_settings

#: the download route (GET, key scope ``targets``)
DOWNLOAD_ROUTE = "/targets/download"
#: download formats and their media types (the first is the default)
FORMATS = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv; charset=utf-8"}


class TargetsUnavailableError(RuntimeError):
    """The warehouse cannot be read now (missing, or locked by a writer)."""


def saved_definitions(settings: Settings) -> dict[str, TargetDefinition]:
    """The packaged example lists, then the workspace's (as ``rapport targets`` reads them)."""
    found = default_definitions()
    path = settings.target_lists_path
    if path.exists():
        found.update(parse_definitions(path.read_text("utf-8"), source=path.name))
    return found


def definition_of(request: Any, settings: Settings) -> TargetDefinition:
    base = None
    if request.name is not None:
        saved = saved_definitions(settings)
        if request.name not in saved:
            raise TargetError(f"no saved list {request.name!r}; known lists: {sorted(saved)}")
        base = saved[request.name]
    options = {
        "filter": request.filter,
        "action": request.action,
        "top": request.top,
        "budget": request.budget,
        "sort": request.sort,
        "profitable_only": request.profitable_only,
    }
    return definition_from(options, base)


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


def build_targets(
    request: Any, settings: Settings, spec: FeatureSpec, outbox: Outbox | None = None
) -> dict[str, Any]:
    """The response fields (without ``meta``); raises TargetError / ExpressionError on a
    bad request, NoScoresError without scores, TargetsUnavailableError on I/O trouble.

    With ``outbox`` (the service passes :func:`list_outbox`), the list's audit rows are
    durably appended to it before this returns."""
    definition = definition_of(request, settings)
    if definition.expression is not None:
        check_filter(definition.expression, spec)
    path = settings.warehouse_path
    if not path.exists():
        raise TargetsUnavailableError(f"no warehouse at {path}")
    try:
        con = connect(path, read_only=True)
    except Exception as exc:  # duckdb: locked by a writer, unreadable file
        raise TargetsUnavailableError(f"cannot read the warehouse now: {exc}") from None
    features_as_of = datetime.now(UTC)
    try:
        db = raw(con)
        run = latest_run(db)
        catalog = Catalog.model_validate(run.catalog)
        names = needed_features(definition, catalog, spec)
        features = build(con, features_as_of, feature_subset(spec, names))
        features = features[["customer_id", *names]]
        features["customer_id"] = features["customer_id"].astype(str)
        scores = load_scores(db, run)
        scores["customer_id"] = scores["customer_id"].astype(str)
        frame = scores.merge(features, on="customer_id", how="left")
        blocked = suppressed_ids(db) | set(request.suppress)
    finally:
        con.disconnect()
    selection = select_targets(frame, catalog, definition, blocked, not run.has_uplift)
    list_id = new_list_id()
    members = None
    if selection.count <= request.max_rows:
        members = [
            {k: _plain(v) for k, v in row.items()}
            for row in selection.members.to_dict(orient="records")
        ]
    fmt = request.format
    out: Path | None = None
    if members is None or fmt is not None:
        fmt = fmt or next(iter(FORMATS))
        out = export_path(settings, list_id, fmt)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".{out.name}.part")  # never served half-written
        if fmt == "csv":
            selection.members.to_csv(partial, index=False)
        else:
            selection.members.to_parquet(partial, index=False)
        partial.replace(out)
    if outbox is not None:
        row, audit_members = selection.audit(
            list_id, run.run_id, run.as_of, features_as_of, str(out) if out else None
        )
        try:
            outbox.append(OUTBOX_LISTS, outbox_lines(row, audit_members))
        except OSError as exc:  # not recorded for audit: no list either
            raise TargetsUnavailableError(f"cannot record the list for audit: {exc}") from None
    return {
        "list_id": list_id,
        "name": definition.name,
        "run_id": run.run_id,
        "scores_as_of": run.as_of,
        "count": selection.count,
        "total_expected_value": selection.total_expected_value,
        "total_cost": selection.total_cost,
        "stats": selection.stats(),
        "members": members,
        "download_url": download_url(list_id, fmt) if out is not None and fmt else None,
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
