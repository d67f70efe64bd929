"""Hot reload: the running service takes new champions and a refreshed online store by
itself, without a restart.

Every promotion and rollback (:func:`models.registry.set_champion`,
:func:`models.registry.rollback`, so ``rapport promote``, ``rapport rollback`` and
``rapport cycle`` alike) writes a new ``rapport-champions`` version into the BentoML store
(:mod:`models.bundle`); ``rapport materialize`` stamps the online store's metadata last.
Every ``RAPPORT_RELOAD_SECONDS`` each worker compares both markers with what it serves
(:meth:`Reloader.check`, in a thread) and, when one moved, loads the champions and builds
the new :class:`models.scorer.Scorer` there, off the request path. The service then swaps
one reference (:class:`Live`): a request sees the old models, segment thresholds, ``meta``
and version headers or the new ones, never a mix, and never waits for a load.

Each check also finishes a load of the online store killed before it replayed the events
acknowledged during it (:func:`features.online.events.recover_loads`), so they are live
again within one interval, not at the next load.

A new champion that fails to load or does not fit the service's feature set leaves the old
one serving; the reason is logged once per bad version (the next promotion is tried again).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from features.control import ControlGroup
from features.online.events import recover_loads
from features.online.materialize import (
    META_FEATURE_SET,
    META_MATERIALIZED_AT,
    META_SEGMENTS,
    META_SEGMENTS_VERSION,
)
from features.online.record import empty_record, evaluate
from features.online.store import OnlineStore, StoreUnavailableError
from features.segments import SegmentModel
from features.spec import FeatureSpec
from features.tables.control import ControlFileError, read_control
from models import registry
from models.bundle import latest_marker, load_for_serving, marker_of
from models.registry import Champions
from models.scorer import Scorer
from rapport.settings import Settings
from serving.middleware import HeaderList
from serving.outages import ONLINE_STORE, Outages
from serving.schemas import Meta

log = logging.getLogger("bentoml.rapport")


@dataclass(frozen=True)
class StoreState:
    """What the online store's metadata says about its last load."""

    materialized_at: str | None = None
    segments: str | None = None
    segments_version: str | None = None
    #: why the store cannot be served from (empty: it can)
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Live:
    """Everything a request reads about the models in use, swapped as one reference."""

    champions: Champions
    #: :func:`models.bundle.marker_of` the champions: compared with the store's latest
    marker: str
    scorer: Scorer | None
    #: the champions' problems with this feature set (empty: usable)
    problems: tuple[str, ...]
    store: StoreState
    meta: Meta
    #: added to every response by the guard
    version_headers: HeaderList = field(default=())
    #: the control group the scorer holds out of every action
    control: ControlGroup | None = None

    @property
    def ready(self) -> bool:
        return self.scorer is not None and not self.problems and not self.store.problems


def versions_header(versions: dict[str, str]) -> str:
    return ",".join(f"{kind}={version}" for kind, version in sorted(versions.items()))


class Reloader:
    """Builds :class:`Live` states: the first one at start, new ones when a marker moves."""

    def __init__(
        self,
        settings: Settings,
        spec: FeatureSpec,
        store: OnlineStore,
        outages: Outages | None = None,
    ) -> None:
        self.settings, self.spec, self.store = settings, spec, store
        self.outages = outages or Outages()
        self.interval = settings.reload_seconds
        #: the control group (``<home>/control.json``), followed on every check
        self.control: ControlGroup | None = None
        #: the champions marker that failed to load (not retried, not logged again)
        self._refused: str | None = None
        self._store_logged: tuple[str, ...] = ()
        #: why the last marker check failed (logged once until it works again)
        self._unchecked = ""
        #: why finishing a killed load failed (logged once until it works again)
        self._unfinished = ""

    def start(self, bundled: Any = None) -> Live:
        """The champions at start (``bundled``: the Bento's own copy, else the store's
        latest or the registry); raises when there are none, like a service without models
        should. Problems (another feature set, a store not loaded) make it not ready. The
        scorer is warmed up (:meth:`_warm`: the first request would otherwise build the
        prediction handles and load the TreeSHAP port's compiled code, ~1 s); a warm-up
        that fails is logged and the service starts anyway (its scores then fail alike)."""
        champions = load_for_serving(self.settings, bundled)
        problems = tuple(registry.check_compatible(champions, self.spec))
        live = self._build(champions, problems, self._read_state(), None)
        if live.scorer is not None:
            try:
                self._warm(live.scorer)
            except Exception as exc:
                log.error("the champions failed a warm-up score: %s", _first_line(exc))
        return live

    def check(self, live: Live) -> Live | None:
        """A new state when the champions or the online store changed, else None. Runs in
        a worker thread: loading models takes a while and must not hold up requests."""
        self._finish_loads()
        store = self._read_state()
        if store.problems:  # nothing to build new champions with: report, keep serving
            return None if store == live.store else replace(live, store=store)
        champions, problems = live.champions, live.problems
        marker, bundled = self._marker(live.marker)
        if marker not in (live.marker, self._refused):
            loaded = self._load(marker, live, bundled)
            if loaded is not None:
                champions, problems = loaded, ()
        if champions is live.champions and store == live.store and self.control == live.control:
            return None
        new = self._build(champions, problems, store, live)
        if new.scorer is not None and new.scorer is not live.scorer:
            try:
                self._warm(new.scorer)
            except Exception as exc:  # it would fail requests: keep the old models
                if champions is live.champions:
                    raise
                self._refuse(marker, live, exc, "scoring failed: ")
                return None
        return new

    def _warm(self, scorer: Scorer) -> None:
        """Score one made-up customer: the new models' lazily built prediction handles
        (:mod:`models.fastpredict`) are made here, not in the first requests after the
        swap, and models that cannot score are found before they serve."""
        now = datetime.now(UTC)
        signup = int((now - timedelta(days=400)).timestamp() * 1_000_000)
        record = empty_record({"customer_id": "reload-warm-up", "signup_at": signup}, self.spec)
        features = evaluate(record, now, self.spec)
        scorer.score_one({**features, "as_of": now}, {}, rng=np.random.default_rng(0))

    # ------------------------------------------------------------------ parts
    def _finish_loads(self) -> None:
        """A load of the online store killed before it replayed what was acknowledged
        during it (``rapport materialize``, the cycle) left its outbox watermark: the
        replay happens here, so the live view gets those events back now, not at the next
        load (:func:`features.online.events.recover_loads`)."""
        try:
            finished = recover_loads(self.store, self.settings.outbox_dir, self.spec)
        except StoreUnavailableError:  # reported by _read_store; tried again next time
            return
        except Exception as exc:
            reason = _first_line(exc)
            if reason != self._unfinished:
                log.error("cannot finish a killed online-store load: %s", reason)
                self._unfinished = reason
            return
        self._unfinished = ""
        for applied in finished:
            log.warning(
                "an online-store load died before its end: %d event(s) acknowledged during "
                "it replayed from the outbox",
                applied,
            )

    def _marker(self, current: str) -> tuple[str, Any]:
        """The champions marker now and the bundle it names (``current`` and None when the
        registry cannot be asked)."""
        try:
            marker, bundled = latest_marker(self.settings)
        except Exception as exc:  # the registry is down: keep serving what we have
            reason = _first_line(exc)
            if reason != self._unchecked:
                log.warning("cannot check for new champions: %s", reason)
                self._unchecked = reason
            return current, None
        self._unchecked = ""
        return marker, bundled

    def _load(self, marker: str, live: Live, bundled: Any = None) -> Champions | None:
        """The new champions (``bundled``: the bundle ``marker`` names, else looked up), or
        None (logged once) when they cannot replace the old."""
        try:
            champions = load_for_serving(self.settings, bundled)
            if problems := registry.check_compatible(champions, self.spec):
                raise ValueError("; ".join(problems))
        except Exception as exc:
            self._refuse(marker, live, exc)
            return None
        self._refused = None
        return champions

    def _refuse(self, marker: str, live: Live, exc: Exception, what: str = "") -> None:
        """Never try ``marker`` again (until another comes) and say why once: the old
        champions keep serving."""
        self._refused = marker
        log.error(
            "new champions %s not loaded, still serving %s: %s%s",
            marker,
            versions_header(live.champions.versions),
            what,
            f"{type(exc).__name__}: {_first_line(exc)}",
        )

    def _read_state(self) -> StoreState:
        """The store's state, made unservable by an unreadable control group file: scoring
        without knowing who is held out could act on a control customer."""
        store = self._read_store()
        try:
            control = read_control(self.settings.home).group
        except ControlFileError as exc:
            return replace(store, problems=(*store.problems, str(exc)))
        if control != self.control:
            log.info("control group: share %.2f%%, salt %s", 100 * control.share, control.salt)
            self.control = control
        return store

    def _read_store(self) -> StoreState:
        """The store's metadata, or why it cannot be served from (logged when it changes)."""
        try:
            stamp = self.store.get_meta(META_MATERIALIZED_AT)
            feature_set = self.store.get_meta(META_FEATURE_SET)
            segments = self.store.get_meta(META_SEGMENTS)
            segments_version = self.store.get_meta(META_SEGMENTS_VERSION)
        except StoreUnavailableError as exc:  # 503s with Retry-After, logged once by outages
            self.outages.down(ONLINE_STORE, exc)
            return StoreState(problems=(f"{ONLINE_STORE} unavailable",))
        except Exception as exc:
            return self._store_problem(f"online store unreachable: {_first_line(exc)}")
        self.outages.up(ONLINE_STORE)
        if feature_set is None or segments is None:
            return self._store_problem(
                "the online store is not materialized: run `rapport materialize`"
            )
        if feature_set != self.spec.version:
            return self._store_problem(
                f"the online store holds feature set {feature_set}, the service computes "
                f"{self.spec.version}: run `rapport materialize`"
            )
        self._store_logged = ()
        return StoreState(stamp, segments, segments_version)

    def _store_problem(self, problem: str) -> StoreState:
        if self._store_logged != (problem,):
            log.error("not ready: %s", problem)
            self._store_logged = (problem,)
        return StoreState(problems=(problem,))

    def _build(
        self,
        champions: Champions,
        problems: tuple[str, ...],
        store: StoreState,
        live: Live | None,
    ) -> Live:
        """The state over ``champions`` and ``store`` (the last scorer while the store
        cannot be read: the service reports not ready)."""
        scorer = live.scorer if live is not None else None
        segments_version = live.meta.segments if live is not None else None
        if store.segments is not None:
            scorer = registry.build_scorer(
                champions, SegmentModel.from_json(store.segments), self.spec, control=self.control
            )
            segments_version = store.segments_version
        meta = Meta(
            models=dict(champions.versions),
            feature_set=self.spec.version,
            catalog=scorer.catalog.version if scorer is not None else None,
            segments=segments_version,
        )
        headers: HeaderList = (
            (b"x-rapport-models", versions_header(champions.versions).encode()),
            (b"x-rapport-feature-set", self.spec.version.encode()),
        )
        new = Live(
            champions, marker_of(champions), scorer, problems, store, meta, headers, self.control
        )
        if live is None or (new.meta, store.materialized_at) != (
            live.meta,
            live.store.materialized_at,
        ):
            log.info(
                "serving %s from %s, segments %s (online store loaded %s); ready=%s",
                versions_header(champions.versions),
                champions.source,
                segments_version,
                store.materialized_at,
                new.ready,
            )
        return new


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
