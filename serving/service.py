"""The real-time scoring service (BentoML 1.4): scores, reasons and next best actions.

Start it with ``rapport serve`` (or ``bentoml serve serving.service:Rapport`` inside the
workspace environment, see :func:`serving.runtime.serve`). Endpoints (JSON, OpenAPI at
``/docs.json``):

* ``POST /score`` -- one customer: churn probability and reasons, value interval, ABC tier,
  RFM segment, the top-k next best actions and the chosen one with its propensity; the
  decision is logged (outbox campaign log + the customer's online record) right behind the
  answer, in groups (:class:`features.online.events.DecisionBuffer`; the customer's next score
  waits for it);
* ``POST /score_batch`` -- up to ``RAPPORT_MAX_BATCH_SIZE`` customers;
* ``POST /events`` -- orders and interactions, durable before 200, seen by the next score;
* ``POST /feedback`` -- the outcome of a decision, for the next NBA training;
* ``GET /livez``, ``GET /readyz`` -- liveness and readiness (models loaded, online store
  reachable and materialized with this feature set).

Features are computed per request from the customer's online record with the same code as
the batch build (:func:`features.online.record.evaluate`, ``as_of`` = now). Every response body
carries ``meta`` (model versions, feature set) and every response the headers
``X-Rapport-Models`` and ``X-Rapport-Feature-Set``.

Safety (:class:`Guard`, before BentoML parses anything): ``Authorization: Bearer`` keys
with scopes (401 / 403), a body-size limit (413), JSON only; validation errors are 422
with one entry per field. Logs carry ids and counts only: no access log, no bodies, and
BentoML's validation tracebacks are reduced to one line.

Performance notes (bench/serving.py measures them): endpoints are ``async`` and do their
short blocking work inline (a thread hop per request cost more than the work), the
access log and BentoML's per-request Prometheus metrics are off, ``gc.freeze()`` after
loading keeps the large heap of the mlflow / bentoml imports out of every full
collection, workers take new connections in turns (:mod:`serving.accept`), OpenMP runs
one thread per worker (one-row LightGBM predictions, 40 us instead of milliseconds of
thread wake-ups on a busy machine), and a live score takes the pandas-free one-customer
path of the same :class:`models.scorer.Scorer` functions the batch uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

import bentoml
import numpy as np
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from threadpoolctl import threadpool_limits

from features.batch import micros
from features.online.events import (
    ConflictError,
    DecisionBuffer,
    Outbox,
    UnknownCustomerError,
    apply_events,
    decision_row,
    new_decision_id,
    record_feedback,
    recover_segments,
)
from features.online.materialize import (
    META_FEATURE_SET,
    META_MATERIALIZED_AT,
    META_SEGMENTS,
    META_SEGMENTS_VERSION,
)
from features.online.record import Record, empty_record, evaluate
from features.online.store import open_store, redact_url
from features.segments import SegmentModel
from features.spec import default_spec
from models import registry
from models.bundle import bundled_ref, load_for_serving
from rapport.settings import get_settings
from serving import accept, runtime
from serving.auth import ADMIN, KeyConfigError, KeyRing, key_file
from serving.schemas import (
    BatchError,
    Chosen,
    EventsRequest,
    EventsResponse,
    FeedbackRequest,
    FeedbackResponse,
    Meta,
    Score,
    ScoreBatchRequest,
    ScoreBatchResponse,
    ScoreRequest,
    ScoreResponse,
    TargetsRequest,
    TargetsResponse,
)
from serving.targets import download_app as target_downloads
from serving.targets import prune_exports

log = logging.getLogger("bentoml.rapport")  # under bentoml: its handlers and worker prefix

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

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
#: seconds between outbox sealing / online-store metadata checks
TICK_S = 5.0
#: seconds between checks of the workspace key file (new keys work without a restart)
KEY_CHECK_S = 2.0
#: headers added to every response, set once the service has loaded
_STAMP: list[tuple[bytes, bytes]] = []


# --------------------------------------------------------------------------- guard
async def _reply(
    send: Send,
    status: int,
    body: dict[str, Any],
    extra: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
) -> None:
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


def _stamped(send: Send) -> Send:
    """Add the model / feature-set headers and turn validation 400s into 422s."""
    held: Message | None = None
    chunks: list[bytes] = []

    async def wrapped(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *_STAMP]
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


class Guard:
    """ASGI middleware in front of the API: keys, scopes, body size, JSON, error shape.

    Only the API routes need a key; health, metrics and the OpenAPI document are open.
    A request body is read (up to ``RAPPORT_MAX_BODY_BYTES``) before BentoML sees it and
    always parsed as JSON, whatever content type the client sent.
    """

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app
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
        send = _stamped(send)
        method = scope["method"]
        scopes = API_SCOPES if method == "POST" else GET_SCOPES if method in ("GET", "HEAD") else {}
        needed = scopes.get(scope["path"])
        if needed is None:
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


def _mtime(path: Any) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


class _QuietValidation(logging.Filter):
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


# --------------------------------------------------------------------------- service
def _error(ctx: bentoml.Context, status: int, message: str) -> JSONResponse:
    ctx.response.status_code = status
    return JSONResponse({"error": message}, status_code=status)


def _plain(value: Any) -> float | str | None:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value if isinstance(value, str) else float(value)


@bentoml.service(name="rapport", **runtime.SERVICE_OPTIONS)
class Rapport:
    """Champion models + online store + outbox; one instance per worker process."""

    bundle = bundled_ref()

    def __init__(self) -> None:
        logging.getLogger("bentoml._internal.server.http_app").addFilter(_QuietValidation())
        if not accept.install():  # before uvicorn starts accepting (after this startup)
            log.warning("uvloop is installed: new connections may all go to one worker")
        self.settings = settings = get_settings()
        settings.ensure_home()
        self.spec = default_spec()
        self.champions = load_for_serving(settings, self.bundle)
        # one request = a few one-row predictions: OpenMP threads only add wake-ups (a
        # LightGBM row took 6 ms instead of 40 us on a busy machine); workers give the
        # parallelism. Applies to the libraries loaded with the models (LightGBM's OpenMP).
        self._threads = threadpool_limits(limits=1)
        self.store = open_store(settings.online_store_url)
        recover_segments(settings.outbox_dir)
        self.outbox = Outbox(settings.outbox_dir)
        self.decisions = DecisionBuffer(self.store, self.outbox, self.spec)
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self.rng = np.random.default_rng()
        self.problems: list[str] = registry.check_compatible(self.champions, self.spec)
        self.scorer: Any = None
        self.loaded_at: str | None = None
        #: the warehouse's segment model version the online store was loaded with
        self.segments_version: str | None = None
        self._refresh()
        self.meta = Meta(
            models=dict(self.champions.versions),
            feature_set=self.spec.version,
            catalog=getattr(getattr(self.scorer, "catalog", None), "version", None),
        )
        _STAMP[:] = [
            (b"x-rapport-models", _versions_header(self.champions.versions).encode()),
            (b"x-rapport-feature-set", self.spec.version.encode()),
        ]
        log.info(
            "loaded %s from %s; online store %s; ready=%s",
            _versions_header(self.champions.versions),
            self.champions.source,
            redact_url(self.store.url),
            self.ready,
        )
        for problem in self.problems + self.store_problems:
            log.error("not ready: %s", problem)
        self._ticker: asyncio.Task[None] | None = None
        gc.collect()
        gc.freeze()  # the imports' heap never changes: keep it out of full collections

    # ----------------------------------------------------------------- lifecycle
    def _refresh(self) -> None:
        """(Re)build the scorer when the online store was (re)materialized."""
        self.store_problems: list[str] = []
        try:
            stamp = self.store.get_meta(META_MATERIALIZED_AT)
            feature_set = self.store.get_meta(META_FEATURE_SET)
            segments = self.store.get_meta(META_SEGMENTS)
            segments_version = self.store.get_meta(META_SEGMENTS_VERSION)
        except Exception as exc:  # the store is down: report, keep the last scorer
            self.store_problems.append(f"online store unreachable: {exc}")
            return
        if feature_set is None or segments is None:
            self.store_problems.append(
                "the online store is not materialized: run `rapport materialize`"
            )
            return
        if feature_set != self.spec.version:
            self.store_problems.append(
                f"the online store holds feature set {feature_set}, the service computes "
                f"{self.spec.version}: run `rapport materialize`"
            )
            return
        if stamp != self.loaded_at or self.scorer is None:
            self.scorer = registry.build_scorer(
                self.champions, SegmentModel.from_json(segments), self.spec
            )
            self.loaded_at = stamp
            self.segments_version = segments_version
            log.info("scoring with segments %s (online store loaded %s)", segments_version, stamp)

    @property
    def ready(self) -> bool:
        return self.scorer is not None and not self.problems and not self.store_problems

    def __is_ready__(self) -> bool:
        return self.ready

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.outbox.seal()
                self._refresh()
                if removed := prune_exports(self.settings):
                    log.info("removed %d expired target list download(s)", removed)
            except Exception:
                log.exception("periodic outbox / store / exports check failed")

    async def _write_decisions(self) -> None:
        """Group commit: write whatever decisions arrived while the last write ran, and
        collect for a few milliseconds first (one transaction, fsync and thread hop per
        group instead of per request; a score of a customer with a pending decision
        writes it first, see :meth:`_settle`)."""
        assert self._wake is not None
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.settings.decision_group_seconds)
            self._wake.clear()
            try:
                await asyncio.to_thread(self.decisions.flush)
            except Exception:
                log.exception("writing decisions failed; retrying")
                await asyncio.sleep(1.0)
                self._wake.set()

    @bentoml.on_startup
    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ticker = loop.create_task(self._tick())
        self._wake = asyncio.Event()
        self._writer = loop.create_task(self._write_decisions())

    @bentoml.on_shutdown
    async def _stop(self) -> None:
        for task in (self._ticker, self._writer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            self.decisions.flush()
        except Exception:
            log.exception("decisions not written at shutdown")
        self.outbox.close()
        self.store.close()

    def _unavailable(self, ctx: bentoml.Context) -> JSONResponse | None:
        if self.ready:
            return None
        return _error(ctx, 503, "not ready: " + "; ".join(self.problems + self.store_problems))

    # ----------------------------------------------------------------- scoring
    def _record(
        self, customer_id: str, cold_start: Any, as_of: datetime
    ) -> tuple[Record | None, bool]:
        record = self.store.get(customer_id)
        if record is not None or cold_start is None:
            return record, False
        attributes = cold_start.attributes.model_dump()
        attributes["signup_at"] = int(micros(attributes["signup_at"] or as_of))
        return empty_record({**attributes, "customer_id": customer_id}, self.spec), True

    def _score(
        self,
        customer_id: str,
        record: Record,
        context: dict[str, Any],
        options: Any,
        as_of: datetime,
        cold: bool,
    ) -> Score:
        features = evaluate(record, as_of, self.spec)
        result = self.scorer.score_one(
            {**features, "as_of": as_of},
            context,
            top_k=options.top_k,
            explain=options.explain,
            rng=self.rng,
        )
        chosen = result.get("chosen")
        shown = None
        if options.include_features:
            shown = {k: _plain(v) for k, v in features.items() if k != "customer_id"}
        return Score(
            customer_id=customer_id,
            decision_id=new_decision_id() if chosen else None,
            as_of=as_of,
            cold_start=cold,
            churn=result["churn"],
            value=result["value"],
            abc_tier=result["abc_tier"],
            rfm_segment=result["rfm_segment"],
            actions=result["actions"],
            chosen=Chosen(
                action=chosen["action"],
                channel=chosen.get("channel") or self._channel(chosen["action"], result),
                propensity=chosen["propensity"],
            )
            if chosen
            else None,
            excluded=result.get("excluded", []),
            features=shown,
        )

    def _channel(self, action: str, result: dict[str, Any]) -> str:
        for ranked in result.get("actions", []):
            if ranked["action"] == action:
                return str(ranked["channel"])
        try:
            return str(self.scorer.catalog.action(action).channel)
        except (AttributeError, KeyError):
            return "none"

    def _log(self, scores: list[Score], decided_at: datetime, with_record: set[str]) -> None:
        rows = [
            decision_row(
                s.decision_id,
                s.customer_id,
                decided_at,
                s.chosen.action,
                s.chosen.channel or "none",
                s.chosen.propensity,
            )
            for s in scores
            if s.decision_id and s.chosen
        ]
        if not rows:
            return
        self.decisions.add(rows, with_record)
        if self._wake is not None:
            self._wake.set()  # written behind the answer (serving/events.py DecisionBuffer)
        else:
            self.decisions.flush()

    def _settle(self, customer_ids: list[str]) -> None:
        """Write pending decisions of these customers first: their contact history counts."""
        if any(self.decisions.pending(c) for c in customer_ids):
            self.decisions.flush()

    def _as_of(self, ctx: bentoml.Context, wanted: datetime | None, now: datetime) -> Any:
        if wanted is None:
            return now
        if ADMIN not in ctx.request.scope.get("state", {}).get(GRANTED, frozenset()):
            return _error(ctx, 403, "as_of may only be set with the 'admin' scope")
        return wanted

    @bentoml.api(route="/score", input_spec=ScoreRequest, output_spec=ScoreResponse)
    async def score(self, ctx: bentoml.Context, **fields: Any) -> Any:
        """Churn, value, segments and next best actions for one customer, now."""
        request = ScoreRequest.model_construct(**fields)
        now = datetime.now(UTC)
        as_of = self._as_of(ctx, request.as_of, now)
        if isinstance(as_of, JSONResponse):
            return as_of
        if (unavailable := self._unavailable(ctx)) is not None:
            return unavailable
        self._settle([request.customer_id])
        record, cold = self._record(request.customer_id, request.cold_start, as_of)
        if record is None:
            return _error(
                ctx,
                404,
                f"unknown customer {request.customer_id!r}; send 'cold_start': "
                "{'attributes': {...}} to score from attributes",
            )
        context = request.context.model_dump(exclude_none=True)
        score = self._score(request.customer_id, record, context, request, as_of, cold)
        self._log([score], now, set() if cold else {request.customer_id})
        return ScoreResponse(**dict(score), meta=self.meta)

    @bentoml.api(route="/score_batch", input_spec=ScoreBatchRequest, output_spec=ScoreBatchResponse)
    async def score_batch(self, ctx: bentoml.Context, **fields: Any) -> Any:
        """Up to RAPPORT_MAX_BATCH_SIZE customers; unknown ones are listed in ``errors``."""
        request = ScoreBatchRequest.model_construct(**fields)
        limit = self.settings.max_batch_size
        if len(request.customers) > limit:
            return _error(
                ctx, 413, f"{len(request.customers)} customers exceed the batch limit of {limit}"
            )
        now = datetime.now(UTC)
        as_of = self._as_of(ctx, request.as_of, now)
        if isinstance(as_of, JSONResponse):
            return as_of
        if (unavailable := self._unavailable(ctx)) is not None:
            return unavailable
        ids = [item.customer_id for item in request.customers]
        self._settle(ids)
        records = self.store.get_many(ids)
        results, errors = [], []
        for item in request.customers:
            record = records.get(item.customer_id)
            if record is None:
                errors.append(
                    BatchError(customer_id=item.customer_id, status=404, error="unknown customer")
                )
                continue
            context = item.context.model_dump(exclude_none=True)
            results.append(self._score(item.customer_id, record, context, request, as_of, False))
        self._log(results, now, set(records))
        return ScoreBatchResponse(results=results, errors=errors, meta=self.meta)

    # ----------------------------------------------------------------- writes
    @bentoml.api(route="/events", input_spec=EventsRequest, output_spec=EventsResponse)
    async def events(self, ctx: bentoml.Context, **fields: Any) -> Any:
        """Orders and interactions: durable (outbox + online record) before the 200."""
        request = EventsRequest.model_construct(**fields)
        count = len(request.orders) + len(request.interactions)
        limit = self.settings.max_batch_size
        if count > limit:
            return _error(ctx, 413, f"{count} events exceed the batch limit of {limit}")
        try:
            result = apply_events(self.store, self.outbox, request.rows(), self.spec)
        except UnknownCustomerError as exc:
            return _error(ctx, 404, str(exc))
        except ConflictError as exc:
            return _error(ctx, 409, str(exc))
        log.info(
            "events: %d accepted (%d new) for %d customers",
            result.accepted,
            result.new,
            len(result.customers),
        )
        return EventsResponse(
            accepted=result.accepted,
            new=result.new,
            duplicates=result.duplicates,
            customers=result.customers,
            meta=self.meta,
        )

    @bentoml.api(route="/feedback", input_spec=FeedbackRequest, output_spec=FeedbackResponse)
    async def feedback(self, ctx: bentoml.Context, **fields: Any) -> Any:
        """The outcome of a decision, durable before the 200 (``outbox/feedback``)."""
        request = FeedbackRequest.model_construct(**fields)
        now = datetime.now(UTC)
        record_feedback(
            self.outbox,
            request.decision_id,
            request.outcome,
            request.revenue,
            request.responded_at or now,
            now,
        )
        return FeedbackResponse(decision_id=request.decision_id, recorded_at=now, meta=self.meta)

    # ----------------------------------------------------------------- target lists
    @bentoml.api(route="/targets", input_spec=TargetsRequest, output_spec=TargetsResponse)
    async def targets(self, ctx: bentoml.Context, **fields: Any) -> Any:
        """A target list from the latest batch scores (serving/targets.py); a thread runs
        it, it reads the warehouse for seconds."""
        from serving import targets as lists

        request = TargetsRequest.model_construct(**fields)
        try:
            outbox = lists.list_outbox(self.settings)  # the audit rows, durable before 200
            body = await asyncio.to_thread(
                lists.build_targets, request, self.settings, self.spec, outbox
            )
        except lists.REQUEST_ERRORS as exc:
            return _error(ctx, 422, str(exc))
        except lists.NOT_FOUND as exc:
            return _error(ctx, 404, str(exc))
        except lists.TargetsUnavailableError as exc:
            return _error(ctx, 503, str(exc))
        log.info("target list %s: %d customers", body["list_id"], body["count"])
        return TargetsResponse(**body, meta=self.meta)


def _versions_header(versions: dict[str, str]) -> str:
    return ",".join(f"{kind}={version}" for kind, version in sorted(versions.items()))


Rapport.add_asgi_middleware(Guard)  # type: ignore[attr-defined]
Rapport.mount_asgi_app(target_downloads(), path="/")  # type: ignore[attr-defined]
