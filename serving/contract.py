"""The service's OpenAPI 3.1 document (``GET /docs.json``), built from the pydantic models.

BentoML's own document declares OpenAPI 3.0 but carries JSON Schema 2020 keywords (an
``exclusiveMinimum: 0`` that 3.0 forbids), drops ``null`` from optional fields, lists only
200/400/404/500 and a ``/metrics`` route that is switched off. This one is what the
service does: OpenAPI 3.1 (whose schemas *are* JSON Schema, so pydantic's schemas go in
unchanged, nullable where ``None`` is possible), every route the server answers, and for
each the statuses it returns with their bodies (:class:`serving.schemas.ErrorResponse`),
the ``Retry-After`` header of a 503 and the bearer key.

:data:`ROUTES` is the one table of what each API route returns; the guard
(:mod:`serving.middleware`) serves :func:`document` in place of BentoML's, and
``tests/serving/test_contract.py`` validates it and runs schemathesis against a live
server.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from features.tables.lists import LIST_ID
from serving.schemas import (
    ErrorResponse,
    EventsRequest,
    EventsResponse,
    FeedbackRequest,
    FeedbackResponse,
    ScoreBatchRequest,
    ScoreBatchResponse,
    ScoreRequest,
    ScoreResponse,
    TargetsRequest,
    TargetsResponse,
)

OPENAPI_VERSION = "3.1.0"
DOC_ROUTE = "/docs.json"

#: what every status means, one wording for the whole API (README "Guarantees")
STATUS_TEXT = {
    200: "Done; for writes: durable (see the README's Guarantees).",
    401: "No or unknown API key.",
    403: "The key lacks the route's scope (or as_of without the admin scope).",
    404: "Unknown customer (or no customer holds the identifiers), list or scores.",
    409: "An event id already recorded with different content, or identifiers that name "
    "more than one customer; nothing was written.",
    413: "Body larger than RAPPORT_MAX_BODY_BYTES or more items than RAPPORT_MAX_BATCH_SIZE.",
    422: "Invalid request (one entry per field in `fields`); nothing was written.",
    503: "A dependency (online store, warehouse, models) is unavailable or busy; nothing "
    "was written. Retry after `Retry-After` seconds with the same ids.",
}
#: statuses every keyed API route can return besides its own
COMMON = (401, 403, 413, 422, 503)


@dataclass(frozen=True)
class Route:
    path: str
    request: type[BaseModel]
    response: type[BaseModel]
    scope: str
    statuses: tuple[int, ...]
    summary: str


ROUTES = (
    Route(
        "/score",
        ScoreRequest,
        ScoreResponse,
        "score",
        (200, 404, 409, *COMMON),
        "Churn, value, segments and next best actions for one customer (by id or by "
        "identifier), now.",
    ),
    Route(
        "/score_batch",
        ScoreBatchRequest,
        ScoreBatchResponse,
        "score",
        (200, *COMMON),
        "Up to RAPPORT_MAX_BATCH_SIZE customers; unknown ones are listed in `errors`.",
    ),
    Route(
        "/events",
        EventsRequest,
        EventsResponse,
        "events",
        (200, 404, 409, *COMMON),
        "Orders and interactions (by customer id or by identifier): durable (outbox and "
        "online record) before the 200; the answer names each event's customer.",
    ),
    Route(
        "/feedback",
        FeedbackRequest,
        FeedbackResponse,
        "feedback",
        (200, *COMMON),
        "The outcome of a decision, durable before the 200.",
    ),
    Route(
        "/targets",
        TargetsRequest,
        TargetsResponse,
        "targets",
        (200, 404, *COMMON),
        "A target list from the latest batch scores (`rapport score`).",
    ),
)

_JSON = "application/json"
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 1},
    }
}


def _error(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": STATUS_TEXT[status],
        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    if status == 503:
        response["headers"] = _RETRY_AFTER
    return response


def _plain(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document (built once per process; it depends on code only)."""
    models: list[tuple[type[BaseModel], Any]] = [(ErrorResponse, "serialization")]
    for route in ROUTES:
        models += [(route.request, "validation"), (route.response, "serialization")]
    refs, schemas = models_json_schema(models, ref_template="#/components/schemas/{model}")
    paths: dict[str, Any] = {}
    for route in ROUTES:
        responses: dict[str, Any] = {}
        for status in route.statuses:
            if status == 200:
                content = {_JSON: {"schema": refs[(route.response, "serialization")]}}
                responses["200"] = {"description": STATUS_TEXT[200], "content": content}
            else:
                responses[str(status)] = _error(status)
        body = {_JSON: {"schema": refs[(route.request, "validation")]}}
        paths[route.path] = {
            "post": {
                "operationId": route.path.strip("/"),
                "summary": route.summary,
                "description": f"Needs a key with the `{route.scope}` scope.",
                "security": [{"bearer": []}],
                "requestBody": {"required": True, "content": body},
                "responses": responses,
            }
        }
    paths["/targets/download"] = {
        "get": {
            "operationId": "targets_download",
            "summary": "A list made by POST /targets, as a file (the `download_url`).",
            "description": "Needs a key with the `targets` scope.",
            "security": [{"bearer": []}],
            "parameters": [
                {
                    "name": "list_id",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "string", "pattern": f"^{LIST_ID.pattern}$"},
                },
                {
                    "name": "format",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": ["parquet", "csv"]},
                },
            ],
            "responses": {
                "200": {
                    "description": "The list's file.",
                    "content": {
                        "application/vnd.apache.parquet": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                        "text/csv": {"schema": {"type": "string"}},
                    },
                },
                **{str(s): _error(s) for s in (401, 403, 404, 422)},
            },
        }
    }
    paths["/livez"] = {"get": {"summary": "Liveness.", "responses": {"200": _plain("Alive.")}}}
    paths["/healthz"] = {"get": {"summary": "Liveness.", "responses": {"200": _plain("Alive.")}}}
    paths["/readyz"] = {
        "get": {
            "summary": "Readiness: models loaded, online store reachable and materialized.",
            "responses": {"200": _plain("Ready."), "503": _plain("Not ready.")},
        }
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Rapport",
            "version": "1",
            "description": "Churn, value (CLV) and next best action, live. Errors are "
            '`{"error": "...", "fields": [...]}`; every response carries the headers '
            "X-Rapport-Models and X-Rapport-Feature-Set.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
