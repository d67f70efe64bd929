"""The guard in front of the API, called in-process over ASGI (no server, no BentoML).

The app behind it stands in for BentoML: it validates ``/score`` bodies with the real
request contract and answers a validation error the way BentoML does (400 with pydantic's
``detail`` list), so the guard's keys, limits, body replay and 422 reshaping are tested
on their own; ``test_service.py`` runs them in the real server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from rapport.settings import reset_settings
from serving import middleware
from serving.auth import add_key
from serving.middleware import GRANTED, Guard, QuietValidation
from serving.schemas import ScoreRequest

STAMP = ((b"x-rapport-models", b"churn=7,value=8"), (b"x-rapport-feature-set", b"fs-test"))
LIMIT = 2_000


class Inner:
    """The app behind the guard: records what reached it and answers like BentoML."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = dict(scope["headers"])
        self.calls.append(
            {
                "path": scope["path"],
                "body": body,
                "content_type": headers.get(b"content-type"),
                "granted": scope.get("state", {}).get(GRANTED),
            }
        )
        status, answer = 200, {"ok": True}
        if scope["path"] == "/score":
            try:
                ScoreRequest.model_validate_json(body)
            except ValidationError as exc:
                errors = exc.errors(include_url=False, include_context=False, include_input=False)
                status, answer = 400, {"detail": errors}
        elif scope["path"] == "/events":
            status, answer = 400, {"error": "not a validation error"}
        data = json.dumps(answer).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})


@pytest.fixture
def keys(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("RAPPORT_MAX_BODY_BYTES", str(LIMIT))
    reset_settings()
    return {scope: add_key(workspace, [scope]) for scope in ("score", "events", "admin")}


@pytest.fixture
def inner() -> Inner:
    return Inner()


@pytest.fixture
def guard(keys: dict[str, str], inner: Inner) -> Guard:
    return Guard(inner, headers=lambda: STAMP)


def call(
    guard: Guard, method: str, path: str, key: str | None = None, **kwargs: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(kwargs.pop("headers", {}))

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=guard)
        async with httpx.AsyncClient(transport=transport, base_url="http://guard") as client:
            return await client.request(method, path, headers=headers, **kwargs)

    return asyncio.run(send())


def test_open_routes_pass_without_a_key_and_every_response_is_stamped(
    guard: Guard, inner: Inner
) -> None:
    response = call(guard, "GET", "/livez")
    assert response.status_code == 200
    assert response.headers["x-rapport-models"] == "churn=7,value=8"
    assert response.headers["x-rapport-feature-set"] == "fs-test"
    refused = call(guard, "POST", "/score", json={"customer_id": "C1"})
    assert refused.status_code == 401 and refused.headers["x-rapport-models"] == "churn=7,value=8"
    assert [c["path"] for c in inner.calls] == ["/livez"]


@pytest.mark.parametrize(
    ("method", "path", "key", "status"),
    [
        ("POST", "/score", None, 401),
        ("POST", "/score", "not-a-key", 401),
        ("POST", "/score", "events", 403),
        ("POST", "/events", "score", 403),
        ("GET", "/targets/download", "score", 403),
        ("POST", "/score", "score", 200),
        ("POST", "/targets", "admin", 200),
    ],
)
def test_keys_and_scopes(
    guard: Guard,
    inner: Inner,
    keys: dict[str, str],
    method: str,
    path: str,
    key: str | None,
    status: int,
) -> None:
    body = {"customer_id": "C1"} if method == "POST" else None
    response = call(guard, method, path, keys.get(key or "", key), json=body)
    assert response.status_code == status, response.text
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
        assert "API key" in response.json()["error"]
    if status == 403:
        assert "scope" in response.json()["error"]
        assert inner.calls == []


def test_the_body_reaches_the_app_as_json_with_the_granted_scopes(
    guard: Guard, inner: Inner, keys: dict[str, str]
) -> None:
    body = b'{"customer_id": "C1"}'
    headers = {"Content-Type": "text/plain"}
    response = call(guard, "POST", "/score", keys["score"], content=body, headers=headers)
    assert response.status_code == 200, response.text
    (seen,) = inner.calls
    assert seen["body"] == body and seen["content_type"] == b"application/json"
    assert seen["granted"] == frozenset({"score"})
    call(guard, "POST", "/score", keys["admin"], content=body)
    assert "admin" in inner.calls[-1]["granted"] and "events" in inner.calls[-1]["granted"]


def test_bodies_over_the_limit_are_413_declared_or_streamed(
    guard: Guard, inner: Inner, keys: dict[str, str]
) -> None:
    big = json.dumps({"customer_id": "C1", "context": {"note": "x" * LIMIT}}).encode()
    declared = call(guard, "POST", "/score", keys["score"], content=big)
    assert declared.status_code == 413 and f"{LIMIT:,} bytes" in declared.json()["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: read until too much
        for start in range(0, len(big), 500):
            yield big[start : start + 500]

    streamed = call(guard, "POST", "/score", keys["score"], content=chunks())
    assert streamed.status_code == 413
    assert inner.calls == []


def test_validation_400s_become_422_per_field(guard: Guard, keys: dict[str, str]) -> None:
    body = {"customer_id": "", "top_k": 0, "colour": "red"}
    response = call(guard, "POST", "/score", keys["score"], json=body)
    assert response.status_code == 422
    assert int(response.headers["content-length"]) == len(response.content)
    data = response.json()
    assert data["error"] == "invalid request"
    fields = {f["field"]: f for f in data["fields"]}
    assert set(fields) == {"customer_id", "top_k", "colour"}
    assert fields["colour"]["type"] == "extra_forbidden"
    assert "greater than or equal to 1" in fields["top_k"]["message"]
    other = call(guard, "POST", "/events", keys["events"], json={"orders": []})
    assert other.status_code == 400 and other.json() == {"error": "not a validation error"}


def test_a_new_key_works_without_a_restart(
    guard: Guard, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(middleware, "KEY_CHECK_S", 0.0)
    late = add_key(workspace, ["score"])
    assert call(guard, "POST", "/score", late, json={"customer_id": "C1"}).status_code == 200


def test_a_broken_key_file_keeps_the_previous_keys(
    guard: Guard,
    keys: dict[str, str],
    workspace: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(middleware, "KEY_CHECK_S", 0.0)
    with (workspace / "api_keys").open("a") as handle:
        handle.write("not-an-entry\n")
    with caplog.at_level(logging.ERROR, logger="bentoml.rapport"):
        response = call(guard, "POST", "/score", keys["score"], json={"customer_id": "C1"})
    assert response.status_code == 200
    assert "API keys not reloaded, keeping the previous ones" in caplog.text


def test_validation_logs_keep_one_line_without_values() -> None:
    secret = "alice.martin@nowhere"  # an identifier the service takes, but not an address
    try:
        ScoreRequest.model_validate({"customer_id": "", "email": secret})
    except ValidationError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "bentoml", logging.ERROR, __file__, 1, "Traceback follows", ("/score", "id"), exc_info
    )
    assert QuietValidation().filter(record)
    line = record.getMessage()
    assert record.levelno == logging.INFO and record.exc_info is None
    assert line.startswith("invalid request on /score [id]: ")
    assert "customer_id: string_too_short" in line and "email: value_error" in line
    assert secret not in line
