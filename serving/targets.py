"""``POST /targets``: a target list from the warehouse's latest batch scores.

The selection is :func:`models.targeting.select_targets`, the code ``rapport targets``
runs (``serving`` never imports ``training``). The warehouse is opened **read-only** for
the request and closed after it: the latest run of ``scores`` (:mod:`features.scores`),
the features the list needs computed now (consent, contact counts, cool-downs, the
filter's fields) and the ``suppressions`` table. Lists longer than ``max_rows`` are
written to ``<home>/exports/<list_id>.parquet`` and the response carries its path.
The service does not write the audit tables (the warehouse has a single writer); its log
line names the list id, definition and size, and ``rapport targets`` records lists.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from features.batch import build
from features.expressions import ExpressionError
from features.scores import NoScoresError, latest_run, load_scores, suppressed_ids
from features.spec import FeatureSpec
from features.warehouse import connect, raw
from models.catalog import Catalog
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
from rapport.settings import Settings

#: the workspace's saved lists (as ``rapport targets`` reads them)
LISTS_FILE = "target_lists.yaml"


class TargetsUnavailableError(RuntimeError):
    """The warehouse cannot be read now (missing, or locked by a writer)."""


def saved_definitions(settings: Settings) -> dict[str, TargetDefinition]:
    found = default_definitions()
    path = settings.home / LISTS_FILE
    if path.exists():
        found.update(parse_definitions(path.read_text("utf-8"), source=LISTS_FILE))
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
    }
    return definition_from(options, base)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def build_targets(request: Any, settings: Settings, spec: FeatureSpec) -> dict[str, Any]:
    """The response fields (without ``meta``); raises TargetError / ExpressionError on a
    bad request, NoScoresError without scores, TargetsUnavailableError on I/O trouble."""
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
    try:
        db = raw(con)
        run = latest_run(db)
        catalog = Catalog.model_validate(run.catalog)
        names = needed_features(definition, catalog, spec)
        features = build(con, datetime.now(UTC), feature_subset(spec, names))
        features = features[["customer_id", *names]]
        features["customer_id"] = features["customer_id"].astype(str)
        scores = load_scores(db, run)
        scores["customer_id"] = scores["customer_id"].astype(str)
        frame = scores.merge(features, on="customer_id", how="left")
        blocked = suppressed_ids(db) | set(request.suppress)
    finally:
        con.disconnect()
    selection = select_targets(frame, catalog, definition, blocked, not run.has_uplift)
    list_id = datetime.now(UTC).strftime("tl-%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6]
    members = None
    download = None
    if selection.count <= request.max_rows:
        members = [
            {k: _plain(v) for k, v in row.items()}
            for row in selection.members.to_dict(orient="records")
        ]
    else:
        out = Path(settings.exports_dir) / f"{list_id}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        selection.members.to_parquet(out, index=False)
        download = str(out)
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
        "download_path": download,
    }


#: errors that are the caller's (422) and those that mean "not now" (503) / "no scores" (404)
REQUEST_ERRORS = (TargetError, ExpressionError)
NOT_FOUND = (NoScoresError,)
