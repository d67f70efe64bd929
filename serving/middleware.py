"""The ASGI layer in front of the scoring service's API, before BentoML parses anything.

:class:`Guard` checks ``Authorization: Bearer`` keys and their scopes (401 / 403), limits
the body size (413), reads every body as JSON whatever content type the client sent, adds
the service's version headers to every response and turns BentoML's validation 400s into
422s with one entry per field. :class:`QuietValidation` reduces BentoML's log of such a
failure to one line without values (logs carry ids and counts only).

Raw ASGI rather than a Starlette ``BaseHTTPMiddleware``: this runs on every request and a
wrapped request / response pair per call costs more than the whole guard.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import Headers

from rapport.settings import get_settings
from serving import contract
from serving.auth import KeyConfigError, KeyRing, key_file
from serving.outages import RETRY_AFTER_S

log = logging.getLogger("bentoml.rapport")  # under bentoml: its handlers and worker prefix

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
HeaderList = Sequence[tuple[bytes, bytes]]

#: API route -> the scope a key needs for it
API_SCOPES = {
    "/score": "score",
    "/score_batch": "score",
    "/events": "events",
    "/feedback": "feedback",
    "/targets": "targets",
}
#: GET routes that need a key too (no body): the download of long target lists
GET_SCOPES = {"/targets/download": "targets"}
#: where the guard leaves the caller's scopes in the ASGI scope's state
GRANTED = "rapport.scopes"
#: seconds between checks of the workspace key file (new keys work without a restart)
KEY_CHECK_S = 2.0


def no_headers() -> HeaderList:
    return ()


class Guard:
    """ASGI middleware in front of the API: keys, scopes, body size, JSON, error shape.

    Only the API routes need a key; health and the OpenAPI document are open (the
    document is :func:`serving.contract.document`, served here in place of BentoML's).
    A request body is read (up to ``RAPPORT_MAX_BODY_BYTES``) before BentoML sees it and
    always parsed as JSON, whatever content type the client sent. ``headers`` gives the
    headers added to every response, asked per request: the service knows its model
    versions only once loaded, after BentoML created this middleware.
    """

    def __init__(self, app: ASGIApp, headers: Callable[[], HeaderList] = no_headers) -> None:
        self.app = app
        self.headers = headers
        self.settings = settings = get_settings()
        self.keys = KeyRing.load(settings.api_keys, settings.home)
        self._key_stamp = _mtime(key_file(settings.home))
        self._keys_checked = time.monotonic()
        self.max_body = settings.max_body_bytes
        if not len(self.keys):
            log.error(
                "no API keys configured: every API call is refused with 401. Set "
                "RAPPORT_API_KEYS to 'sha256hex:scope+scope' entries or add a key to "
                "%s with serving.auth.add_key",
                settings.home / "api_keys",
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _stamped(send, self.headers())
        method = scope["method"]
        scopes = API_SCOPES if method == "POST" else GET_SCOPES if method in ("GET", "HEAD") else {}
        needed = scopes.get(scope["path"])
        if needed is None:
            if method == "GET" and scope["path"] == contract.DOC_ROUTE:
                await _reply(send, 200, contract.document())  # not BentoML's (see contract)
                return
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        self._reload_keys()
        verdict = self.keys.check(headers.get("authorization"), needed)
        if not verdict.allowed:
            extra = [(b"www-authenticate", b"Bearer")] if verdict.status == 401 else []
            await _reply(send, verdict.status, {"error": verdict.reason}, extra)
            return
        if method != "POST":
            await self.app(scope, receive, send)
            return
        declared = headers.get("content-length", "")
        body = None
        if not (declared.isdigit() and int(declared) > self.max_body):
            body = await _read_body(receive, self.max_body)
        if body is None:
            message = f"request body larger than {self.max_body:,} bytes"
            await _reply(send, 413, {"error": message})
            return
        kept = [
            (k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")
        ]
        scope["headers"] = [
            *kept,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        scope.setdefault("state", {})[GRANTED] = verdict.scopes
        await self.app(scope, _replay(body, receive), send)

    def _reload_keys(self) -> None:
        """Re-read the keys when the workspace key file changed (checked every few
        seconds); a broken file is logged and the previous keys stay in force."""
        now = time.monotonic()
        if now - self._keys_checked < KEY_CHECK_S:
            return
        self._keys_checked = now
        path = key_file(self.settings.home)
        stamp = _mtime(path)
        if stamp == self._key_stamp:
            return
        try:
            self.keys = KeyRing.load(self.settings.api_keys, self.settings.home)
        except KeyConfigError as exc:
            log.error("API keys not reloaded, keeping the previous ones: %s", exc)
            return
        self._key_stamp = stamp
        log.info("API keys reloaded from %s: %d keys", path, len(self.keys))


class QuietValidation(logging.Filter):
    """BentoML logs a traceback for every invalid request: keep one line, no values."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ValidationError):
            error = record.exc_info[1]
            record.msg = "invalid request on %s [%s]: " + "; ".join(
                f"{_field_name(list(e['loc']))}: {e['type']}" for e in error.errors()
            ).replace("%", "%%")
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


# --------------------------------------------------------------------------- helpers
async def _reply(send: Send, status: int, body: dict[str, Any], extra: HeaderList = ()) -> None:
    data = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it exceeds ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # only a disconnect can follow
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _field_name(loc: list[Any]) -> str:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def _as_unprocessable(body: bytes) -> bytes | None:
    """BentoML's 400 for a pydantic error -> our 422 body; None for any other 400."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    detail = data.get("detail") if isinstance(data, dict) else None
    if not isinstance(detail, list):
        return None
    fields = [
        {
            "field": _field_name(list(err.get("loc", []))),
            "message": str(err.get("msg", "")).removeprefix("Value error, "),
            "type": str(err.get("type", "")),
        }
        for err in detail
        if isinstance(err, dict)
    ]
    return json.dumps({"error": "invalid request", "fields": fields}).encode()


def _stamped(send: Send, stamp: HeaderList) -> Send:
    """Add ``stamp`` to the response headers (and ``Retry-After`` to 503s) and turn
    validation 400s into 422s."""
    held: Message | None = None
    chunks: list[bytes] = []

    async def wrapped(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *stamp]
            if message["status"] == 503 and not any(
                k.lower() == b"retry-after" for k, _ in message["headers"]
            ):  # every 503 says when to come back (the outages' own carry it already)
                message["headers"].append((b"retry-after", str(RETRY_AFTER_S).encode()))
            if message["status"] == 400:
                held = message
                return
        elif message["type"] == "http.response.body" and held is not None:
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            rewritten = _as_unprocessable(body)
            if rewritten is not None:
                body = rewritten
                held["status"] = 422
            held["headers"] = [
                (k, v) for k, v in held["headers"] if k.lower() != b"content-length"
            ] + [(b"content-length", str(len(body)).encode())]
            await send(held)
            await send({"type": "http.response.body", "body": body})
            return
        await send(message)

    return wrapped


def _mtime(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size
