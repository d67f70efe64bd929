"""The Customer page's live score: the customer as the service sees them right now.

The same path as ``POST /score``: the champions the service loads
(:func:`models.bundle.load_for_serving`), the segment model the online store was loaded
with, the customer's online record evaluated as of now
(:func:`features.online.record.evaluate`) and :meth:`models.scorer.Scorer.score_one` with
reasons -- in the page's process, never the scoring workers'. Nothing is logged: looking
at a customer is not a decision. The models load once, in the background from the start
of the page's process, so the first Customer page does not wait for them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import closing
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from features.online.materialize import META_SEGMENTS
from features.online.record import evaluate
from features.online.store import open_store
from features.segments import SegmentModel
from features.spec import FeatureSpec
from features.tables.control import read_control
from models.reasons import common_reasons
from models.results import CustomerScore
from rapport.settings import Settings


class LiveScorer:
    """Champions + online store, loaded once; :meth:`score` one customer with reasons."""

    def __init__(self, settings: Settings, spec: FeatureSpec) -> None:
        self.settings = settings
        self.spec = spec
        self.problem: str | None = None
        self._scorer: Any = None
        self._loaded = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self._load, name="ui-live-scorer", daemon=True).start()

    def wait(self, timeout: float) -> bool:
        """Wait until the models have loaded or failed to (False after ``timeout``)."""
        return self._loaded.wait(timeout)

    @property
    def ready(self) -> bool:
        """The models have loaded (live scores can be made)."""
        return self._loaded.is_set() and self._scorer is not None

    def _load(self) -> None:
        try:
            from models import registry
            from models.bundle import load_for_serving

            champions = load_for_serving(self.settings)
            with closing(open_store(self.settings.online_store_url)) as store:
                segments = store.get_meta(META_SEGMENTS)
            if segments is None:
                raise LookupError("the online store is not materialized: run `rapport materialize`")
            self._scorer = registry.build_scorer(
                champions,
                SegmentModel.from_json(segments),
                self.spec,
                control=read_control(self.settings.home).group,
            )
        except Exception as exc:  # no champions yet, no store: the page says so
            self.problem = f"live scores unavailable: {exc}"
        finally:
            self._loaded.set()

    def score(self, customer_id: str, timeout: float = 60.0) -> CustomerScore | None:
        """The customer's live score with reasons and every allowed action ranked; None
        when the online store has no record (``problem`` says why when it is not ready)."""
        if not self._loaded.wait(timeout) or self._scorer is None:
            self.problem = self.problem or "live scores are still loading: reload in a moment"
            return None
        now = datetime.now(UTC)
        with closing(open_store(self.settings.online_store_url)) as store:
            record = store.get(customer_id)
        if record is None:
            return None
        features = evaluate(record, now, self.spec)
        with self._lock:  # one explanation at a time (the models are not re-entrant)
            scorer = self._scorer
            return scorer.score_one(  # type: ignore[no-any-return]
                {**features, "as_of": now}, {}, top_k=len(scorer.catalog.actions), explain=True
            )

    def common_reasons(self, customer_ids: Sequence[str], top: int = 5) -> dict[str, Any] | None:
        """The churn drivers most common among ``customer_ids`` (a segment's sample), each
        customer explained now as on the Customer page: ``{"up": [...], "down": [...],
        "customers": n}`` (:func:`models.reasons.common_reasons`); None when live scores are
        unavailable (``problem`` says why) or no customer has an online record."""
        if not self._loaded.wait(60.0) or self._scorer is None:
            self.problem = self.problem or "live scores are still loading: reload in a moment"
            return None
        now = datetime.now(UTC)
        store = open_store(self.settings.online_store_url)
        try:
            records = store.get_many(list(customer_ids))
        finally:
            store.close()
        if not records:
            return None
        frame = pd.DataFrame([evaluate(r, now, self.spec) for r in records.values()])
        with self._lock:
            explanations = self._scorer.churn.explain(frame, top=3, spec=self.spec)
        return {
            "customers": len(explanations),
            **{d: common_reasons(explanations, d, top, spec=self.spec) for d in ("up", "down")},
        }
