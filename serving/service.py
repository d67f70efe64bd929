"""The real-time scoring service (BentoML 1.4): scores, reasons and next best actions.

Start it with ``rapport serve`` (or ``bentoml serve serving.service:Rapport`` inside the
workspace environment, see :func:`serving.runtime.serve`). Endpoints (JSON, OpenAPI at
``/docs.json``):

* ``POST /score`` -- one customer: churn probability and reasons, value interval, ABC tier,
  RFM segment, the top-k next best actions and the chosen one with its propensity; the
  decision is logged (outbox campaign log + the customer's online record) right behind the
  answer, in groups (:class:`features.online.events.DecisionBuffer`; the customer's next score
  waits for it);
* ``POST /score_batch`` -- up to ``RAPPORT_MAX_BATCH_SIZE`` customers, each by
  ``customer_id`` or identifiers as ``/score``;
* ``POST /events`` -- orders and interactions, durable before 200, seen by the next score;
  an event may name its customer by identifiers (e-mail, phone, card, cookie) instead of
  ``customer_id`` (:mod:`features.online.identifiers`; ``/score`` too);
* ``POST /feedback`` -- the outcome of a decision, for the next NBA training;
* ``GET /livez``, ``GET /readyz`` -- liveness and readiness (models loaded, online store
  reachable and materialized with this feature set).

Features are computed per request from the customer's online record with the same code as
the batch build (:func:`features.online.record.evaluate`, ``as_of`` = now). Every response body
carries ``meta`` (model versions, feature set, segment version) and every response the
headers ``X-Rapport-Models`` and ``X-Rapport-Feature-Set``.

New champions and a reloaded online store are taken without a restart
(:mod:`serving.reload`): built in a thread, swapped in as one reference (``self.live``).

Safety (:class:`serving.middleware.Guard`, before BentoML parses anything):
``Authorization: Bearer`` keys with scopes (401 / 403), a body-size limit (413), JSON
only; validation errors are 422 with one entry per field. Logs carry ids and counts only:
no access log, no bodies, and BentoML's validation tracebacks are reduced to one line.

Each endpoint takes its request model whole (BentoML's root input: a positional-only
parameter), validated by BentoML against the :mod:`serving.schemas` contract before the
endpoint runs, and returns the response model or a JSON error.

Performance notes (bench/serving.py measures them): endpoints are ``async`` and do their
short blocking work inline (a thread hop per request cost more than the work), the
access log and BentoML's per-request Prometheus metrics are off, ``gc.freeze()`` after
loading keeps the large heap of the mlflow / bentoml imports out of every full
collection and full collections run a tenth as often (:func:`serving.runtime.settle_heap`),
workers take new connections in turns (:mod:`serving.accept`), OpenMP runs one thread per
worker (one-row LightGBM predictions, 40 us instead of milliseconds of
thread wake-ups on a busy machine), and a live score takes the pandas-free one-customer
path of the same :class:`models.scorer.Scorer` functions the batch uses. Concurrent
``/score`` requests of a worker share one pass of the models (:mod:`serving.batching`:
each booster predicts their rows in one call; a request alone is scored at once), every
answer the one it gets alone. A repeat score of a customer reuses what cannot have changed
since the last one, with the same answer bit for bit: the record's raw aggregates while no
event crossed a window's edge (:mod:`features.online.kept`, kept per customer with a
digest of the stored record, so a posted event or a counted decision is recomputed) and
the churn reasons'
TreeSHAP contributions while the features stay inside the model's splits
(:meth:`models.fastpredict.FastPredictor.contributions`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import bentoml
import numpy as np
from bentoml import get_current_service
from bentoml.exceptions import BentoMLException
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
from features.online.identifiers import (
    AmbiguousIdentifierError,
    IdentityIndex,
    UnusableIdentifierError,
    lookup,
    route_events,
    undo,
)
from features.online.kept import KeptAggregates
from features.online.record import empty_record, evaluate
from features.online.store import StoreUnavailableError, open_store, redact_url
from features.spec import default_spec
from features.tables.feature_samples import sample_row, sampled
from models.bundle import bundled_ref
from models.scorer import Scorer
from rapport.settings import get_settings
from serving import accept, runtime
from serving.auth import ADMIN
from serving.batching import Batcher
from serving.middleware import GRANTED, Guard, HeaderList, QuietValidation
from serving.outages import ONLINE_STORE, Outages, answers_503
from serving.reload import Live, Reloader
from serving.schemas import (
    BatchError,
    BatchItem,
    ColdStart,
    EventRoute,
    EventsRequest,
    EventsResponse,
    FeedbackRequest,
    FeedbackResponse,
    Meta,
    Score,
    ScoreBatchRequest,
    ScoreBatchResponse,
    ScoreOptions,
    ScoreRequest,
    ScoreResponse,
    TargetsRequest,
    TargetsResponse,
)
from serving.targets import download_app as target_downloads
from serving.targets import prune_exports

log = logging.getLogger("bentoml.rapport")  # under bentoml: its handlers and worker prefix

#: seconds between outbox sealing / expired download checks
TICK_S = 5.0
#: the 404 of identifiers nobody holds (``/score``, an item of ``/score_batch``)
NO_HOLDER = "no customer holds these identifiers"


@bentoml.service(name="rapport", **runtime.SERVICE_OPTIONS)
class Rapport:
    """Champion models + online store + outbox; one instance per worker process."""

    bundle = bundled_ref()

    def __init__(self) -> None:
        logging.getLogger("bentoml._internal.server.http_app").addFilter(QuietValidation())
        if not accept.install():  # before uvicorn starts accepting (after this startup)
            log.warning("uvloop is installed: new connections may all go to one worker")
        self.settings = settings = get_settings()
        settings.ensure_home()
        self.spec = default_spec()
        self.store = open_store(settings.online_store_url)
        self.identity = IdentityIndex.of(settings)  # identifiers -> customers, hashed
        #: each record's raw aggregates, kept between its scores while they hold
        self.kept = KeptAggregates(self.spec)
        #: champions, scorer, meta and version headers in use: one reference, swapped whole
        #: when new champions or a reloaded online store appear (serving/reload.py)
        self.outages = Outages()  # dependencies down now: 503s, one log line per change
        self.reloader = Reloader(settings, self.spec, self.store, self.outages)
        self.live: Live = self.reloader.start(self.bundle)
        # one request = a few one-row predictions: OpenMP threads only add wake-ups (a
        # LightGBM row took 6 ms instead of 40 us on a busy machine); workers give the
        # parallelism. Applies to the libraries loaded with the models (LightGBM's OpenMP).
        self._threads = threadpool_limits(limits=1)
        recover_segments(settings.outbox_dir)
        self.outbox = Outbox(settings.outbox_dir)
        self.decisions = DecisionBuffer(self.store, self.outbox, self.spec)
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.rng = np.random.default_rng()
        #: concurrent /score requests scored together (serving/batching.py)
        self.batcher: Batcher[tuple[dict[str, Any], Live]] = Batcher(
            self._score_many, settings.score_microbatch
        )
        #: customer -> set once its /score in flight has queued its decision
        self._scoring: dict[str, asyncio.Event] = {}
        log.info("online store %s", redact_url(self.store.url))
        for problem in self.live.problems:
            log.error("not ready: %s", problem)
        runtime.settle_heap()  # the imports' heap out of full collections, and fewer of them

    # ----------------------------------------------------------------- what is served
    @property
    def scorer(self) -> Scorer | None:
        return self.live.scorer

    @property
    def meta(self) -> Meta:
        return self.live.meta

    @property
    def version_headers(self) -> HeaderList:
        return self.live.version_headers

    @property
    def problems(self) -> list[str]:
        found = [*self.live.problems, *self.live.store.problems, *self.outages.problems]
        return list(dict.fromkeys(found))

    @property
    def ready(self) -> bool:
        return self.live.ready and not self.outages.problems

    def __is_ready__(self) -> bool:
        return self.ready

    def _unavailable(self, ctx: bentoml.Context) -> JSONResponse | None:
        if self.ready:
            return None
        return _error(ctx, 503, "not ready: " + "; ".join(self.problems))

    def _refresh(self) -> None:
        """Take new champions / a reloaded online store now (the watcher does it in a
        thread every ``RAPPORT_RELOAD_SECONDS``)."""
        self._swap(self.reloader.check(self.live))

    def _swap(self, new: Live | None) -> list[Live]:
        """Serve ``new`` (if any); returns the old state for the caller to drop."""
        if new is None:
            return []
        old, self.live = self.live, new  # one reference: a request sees all old or all new
        gc.freeze()  # the new models join the heap full collections skip
        return [old]

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.reloader.interval)
            try:
                retired = self._swap(await asyncio.to_thread(self.reloader.check, self.live))
                # the old models are freed in a thread, not between two requests
                await asyncio.to_thread(retired.clear)
            except Exception:
                log.exception("checking for new champions / online store failed")

    # ----------------------------------------------------------------- background
    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S if not self.outages.problems else 1.0)  # back soon
            try:
                self.outbox.seal()
                if removed := prune_exports(self.settings):
                    log.info("removed %d expired target list download(s)", removed)
            except Exception:
                log.exception("periodic outbox / exports check failed")

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
            except StoreUnavailableError as exc:  # kept in order; one log line per outage
                self.outages.down(ONLINE_STORE, exc)
                await asyncio.sleep(1.0)
                self._wake.set()
            except Exception:
                log.exception("writing decisions failed; retrying")
                await asyncio.sleep(1.0)
                self._wake.set()

    @bentoml.on_startup
    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ticker = loop.create_task(self._tick())
        self._watcher = loop.create_task(self._watch())
        self._wake = asyncio.Event()
        self._writer = loop.create_task(self._write_decisions())

    @bentoml.on_shutdown
    async def _stop(self) -> None:
        for task in (self._ticker, self._writer, self._watcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.batcher.batches:
            log.info(
                "scored %d /score requests in %d batches (%.2f per batch)",
                self.batcher.scored,
                self.batcher.batches,
                self.batcher.scored / self.batcher.batches,
            )
        try:
            self.decisions.flush()
        except Exception:
            log.exception("decisions not written at shutdown")
        self.outbox.close()
        self.store.close()

    # ----------------------------------------------------------------- scoring
    @bentoml.api(route="/score", output_spec=ScoreResponse)
    @answers_503
    async def score(
        self, request: ScoreRequest, /, ctx: bentoml.Context
    ) -> ScoreResponse | JSONResponse:
        """Churn, value, segments and next best actions for one customer, now."""
        now = datetime.now(UTC)
        as_of = self._as_of(ctx, request.as_of, now)
        if isinstance(as_of, JSONResponse):
            return as_of
        customer_id = self._identify(ctx, request)
        if isinstance(customer_id, JSONResponse):
            return customer_id
        await self._after_scores([customer_id])
        self._settle([customer_id])
        features, cold = self._features(customer_id, request.cold_start, as_of)
        if features is None:
            return _error(
                ctx,
                404,
                f"unknown customer {customer_id!r}; send 'cold_start': "
                "{'attributes': {...}} to score from attributes",
            )
        done = self._scoring[customer_id] = asyncio.Event()
        try:
            # the models run once for the requests in flight (serving/batching.py)
            result, live = await self.batcher.score(
                {**features, "as_of": as_of}, request.top_k, request.explain
            )
            score = self._answer(
                customer_id, features, result, request, as_of, cold, live, live.meta
            )
            self._log([score], now, set() if cold else {customer_id})
        finally:
            del self._scoring[customer_id]
            done.set()
        assert isinstance(score, ScoreResponse)
        return score

    @bentoml.api(route="/score_batch", output_spec=ScoreBatchResponse)
    @answers_503
    async def score_batch(
        self, request: ScoreBatchRequest, /, ctx: bentoml.Context
    ) -> ScoreBatchResponse | JSONResponse:
        """Up to RAPPORT_MAX_BATCH_SIZE customers, each by ``customer_id`` or identifiers;
        unknown, ambiguous (409) or unusable (422) ones are listed in ``errors`` with their
        position (``item``), never an identifier."""
        limit = self.settings.max_batch_size
        if len(request.customers) > limit:
            return _error(
                ctx, 413, f"{len(request.customers)} customers exceed the batch limit of {limit}"
            )
        now = datetime.now(UTC)
        as_of = self._as_of(ctx, request.as_of, now)
        if isinstance(as_of, JSONResponse):
            return as_of
        errors, named = [], []  # (customer, item, position) of the items naming one
        for i, item in enumerate(request.customers):
            found = self._identify_one(item)
            if isinstance(found, BatchError):
                errors.append(found.model_copy(update={"item": i}))
            else:
                named.append((found, item, i))
        ids = [customer for customer, _, _ in named]
        await self._after_scores(ids)
        self._settle(ids)
        records = self.store.get_many(ids)
        scored = []  # (customer, features)
        for customer, _, i in named:
            record = records.get(customer)
            if record is None:
                errors.append(
                    BatchError(customer_id=customer, status=404, error="unknown customer", item=i)
                )
                continue
            scored.append((customer, evaluate(record, as_of, self.spec)))
        live = self.live
        scores = self._score_many(
            [{**features, "as_of": as_of} for _, features in scored],
            [request.top_k] * len(scored),
            [request.explain] * len(scored),
        )
        results = [
            self._answer(customer, features, result, request, as_of, False, live)
            for (customer, features), (result, _) in zip(scored, scores, strict=True)
        ]
        errors.sort(key=lambda e: e.item if e.item is not None else -1)
        self._log(results, now, set(records))
        return ScoreBatchResponse(results=results, errors=errors, meta=live.meta)

    def _identify(self, ctx: bentoml.Context, request: ScoreRequest) -> str | JSONResponse:
        """The customer id given, or the one the identifiers name (404, 409 otherwise;
        no identifier is quoted)."""
        if request.customer_id is not None:
            return request.customer_id
        try:
            found = lookup(self.store, self.identity, request.identifiers())
        except AmbiguousIdentifierError as exc:
            return _error(ctx, 409, str(exc))
        except UnusableIdentifierError as exc:
            return _error(ctx, 422, str(exc))
        if found is None:
            return _error(ctx, 404, NO_HOLDER)
        return found

    def _identify_one(self, item: BatchItem) -> str | BatchError:
        """A batch item's customer id, or its error (as :meth:`_identify` answers)."""
        if item.customer_id is not None:
            return item.customer_id
        try:
            found = lookup(self.store, self.identity, item.identifiers())
        except AmbiguousIdentifierError as exc:
            return BatchError(customer_id=None, status=409, error=str(exc))
        except UnusableIdentifierError as exc:
            return BatchError(customer_id=None, status=422, error=str(exc))
        if found is None:
            return BatchError(customer_id=None, status=404, error=NO_HOLDER)
        return found

    def _as_of(
        self, ctx: bentoml.Context, wanted: datetime | None, now: datetime
    ) -> datetime | JSONResponse:
        """Now, or the instant asked for when the key has the admin scope; else a 403, or
        a 503 while the service is not ready (what every scoring endpoint checks first)."""
        if wanted is None:
            wanted = now
        elif ADMIN not in ctx.request.scope.get("state", {}).get(GRANTED, frozenset()):
            return _error(ctx, 403, "as_of may only be set with the 'admin' scope")
        unavailable = self._unavailable(ctx)
        return wanted if unavailable is None else unavailable

    async def _after_scores(self, customer_ids: list[str]) -> None:
        """Wait for the scores of these customers still in flight (in a batch) to queue
        their decisions: a score reads the contact history the one before it logged, as
        when each request ran alone."""
        # until one pass finds none busy: while it waits on one, another may start again
        while (
            busy := next((self._scoring[c] for c in customer_ids if c in self._scoring), None)
        ) is not None:
            await busy.wait()

    def _settle(self, customer_ids: list[str]) -> None:
        """Write pending decisions of these customers first: their contact history counts."""
        if any(self.decisions.pending(c) for c in customer_ids):
            self.decisions.flush()

    def _features(
        self, customer_id: str, cold_start: ColdStart | None, as_of: datetime
    ) -> tuple[dict[str, Any] | None, bool]:
        """The customer's features as of ``as_of`` from the online record (its raw
        aggregates kept between scores while they hold: :mod:`features.online.kept`), or
        from an empty record with the cold-start attributes (True); None when neither."""
        encoded = self.store.get_encoded(customer_id)
        if encoded is not None:
            return self.kept.evaluate(customer_id, encoded, as_of), False
        self.kept.drop(customer_id)  # no record (any more): nothing of it stays kept
        if cold_start is None:
            return None, False
        attributes = cold_start.attributes.model_dump()
        attributes["signup_at"] = int(micros(attributes["signup_at"] or as_of))
        record = empty_record({**attributes, "customer_id": customer_id}, self.spec)
        return evaluate(record, as_of, self.spec), True

    def _score_many(
        self,
        features: Sequence[Mapping[str, Any]],
        top_k: Sequence[int],
        explain: Sequence[bool],
    ) -> list[tuple[dict[str, Any], Live]]:
        """Several customers' scores by the models in use (one :class:`Live`: the answers
        carry its versions), the chosen actions drawn in order; plain values, validated
        once into each answer (:meth:`_answer`)."""
        live = self.live
        assert live.scorer is not None  # callers check readiness first; never unset again
        state = self.rng.bit_generator.state
        try:
            results = live.scorer.score_plain(features, top_k, explain, rng=self.rng)
        except Exception:  # the batch is scored again one by one: the same draws, in order
            self.rng.bit_generator.state = state
            raise
        return [(result, live) for result in results]

    def _answer(
        self,
        customer_id: str,
        features: dict[str, Any],
        result: Mapping[str, Any],
        options: ScoreOptions,
        as_of: datetime,
        cold: bool,
        live: Live,
        meta: Meta | None = None,
    ) -> Score:
        """One customer's answer from its score (:meth:`models.scorer.Scorer.score_plain`'s
        values): the decision id, the sampled feature vector (behind the answer) and the
        features when asked for; with ``meta``, the whole ``/score`` response (validated
        at once: one validation, not a score and then a response)."""
        decision_id = new_decision_id()
        if not cold and sampled(decision_id, self.settings.feature_sample_share):
            # for the monitor's live/batch skew check; written behind the answer
            self.decisions.sample(
                sample_row(decision_id, customer_id, as_of, live.meta.feature_set, features)
            )
        shown = None
        if options.include_features:
            shown = {k: _plain(v) for k, v in features.items() if k != "customer_id"}
        fields = {
            **result,
            "customer_id": customer_id,
            "decision_id": decision_id,
            "as_of": as_of,
            "cold_start": cold,
            "features": shown,
        }
        if meta is None:
            return Score.model_validate(fields)
        return ScoreResponse.model_validate({**fields, "meta": meta})

    def _log(self, scores: list[Score], decided_at: datetime, with_record: set[str]) -> None:
        """Queue the decisions; they are written behind the answer (:meth:`_write_decisions`)."""
        if not scores:
            return
        rows = [
            decision_row(
                s.decision_id,
                s.customer_id,
                decided_at,
                s.chosen.action,
                s.chosen.channel,
                s.chosen.propensity,
                s.group,
            )
            for s in scores
        ]
        self.decisions.add(rows, with_record)
        if self._wake is not None:
            self._wake.set()
        else:
            self.decisions.flush()

    # ----------------------------------------------------------------- writes
    @bentoml.api(route="/events", output_spec=EventsResponse)
    @answers_503
    async def events(
        self, request: EventsRequest, /, ctx: bentoml.Context
    ) -> EventsResponse | JSONResponse:
        """Orders and interactions: durable (outbox + online record) before the 200."""
        count = len(request.orders) + len(request.interactions)
        limit = self.settings.max_batch_size
        if count > limit:
            return _error(ctx, 413, f"{count} events exceed the batch limit of {limit}")
        try:
            routed = route_events(self.store, self.identity, request.rows(), spec=self.spec)
        except AmbiguousIdentifierError as exc:
            return _error(ctx, 409, str(exc))
        except UnusableIdentifierError as exc:
            return _error(ctx, 422, str(exc))
        try:
            result = apply_events(
                self.store, self.outbox, routed.rows, self.spec, customers=routed.customers
            )
        except BaseException as exc:
            with contextlib.suppress(Exception):  # refused: no provisional customer left
                undo(self.store, routed, self.spec)
            if isinstance(exc, UnknownCustomerError):
                return _error(ctx, 404, str(exc))
            if isinstance(exc, ConflictError):
                return _error(ctx, 409, str(exc))
            raise
        log.info(
            "events: %d accepted (%d new) for %d customers, %d provisional created",
            result.accepted,
            result.new,
            len(result.customers),
            len(routed.created),
        )
        return EventsResponse(
            accepted=result.accepted,
            new=result.new,
            duplicates=result.duplicates,
            customers=result.customers,
            routes=[EventRoute(**vars(route)) for route in routed.routes],
            meta=self.meta,
        )

    @bentoml.api(route="/feedback", output_spec=FeedbackResponse)
    async def feedback(self, request: FeedbackRequest, /, ctx: bentoml.Context) -> FeedbackResponse:
        """The outcome of a decision, durable before the 200 (``outbox/feedback``).

        The service cannot tell whether the decision exists (decisions are written behind
        the answer): it accepts any id; ``rapport ingest --outbox`` matches it, and keeps
        an unknown one pending (quarantined with a reason, retried on every ingest)."""
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
    @bentoml.api(route="/targets", output_spec=TargetsResponse)
    @answers_503
    async def targets(
        self, request: TargetsRequest, /, ctx: bentoml.Context
    ) -> TargetsResponse | JSONResponse:
        """A target list from the latest batch scores (serving/targets.py); a thread runs
        it, it reads the warehouse for seconds."""
        from serving import targets as lists

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


# --------------------------------------------------------------------------- helpers
def _error(ctx: bentoml.Context, status: int, message: str) -> JSONResponse:
    ctx.response.status_code = status
    return JSONResponse({"error": message}, status_code=status)


def _plain(value: Any) -> float | str | None:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value if isinstance(value, str) else float(value)


def _version_headers() -> HeaderList:
    """The loaded instance's version headers, for the guard; none while BentoML is still
    creating the instance (it builds the middleware first)."""
    try:
        service = get_current_service()
    except BentoMLException:
        return ()
    return service.version_headers


Rapport.add_asgi_middleware(Guard, headers=_version_headers)  # type: ignore[attr-defined]
Rapport.mount_asgi_app(target_downloads(), path="/")  # type: ignore[attr-defined]
