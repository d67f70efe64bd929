"""Scores for customers: churn with reasons, value with interval, segments, next best action.

One scorer for the live service (:meth:`Scorer.score_one`, one customer's feature dict)
and batch scoring (:meth:`Scorer.score_frame`, a feature frame of any size). The live path
runs the batch arithmetic on plain values where numpy's per-call cost would dominate one
customer (encodings, arbitration); tests hold both paths bit-identical, so a customer
scored live and in the nightly batch gets the same numbers.
No I/O: the caller loads the models and supplies features as of the scoring instant.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from features.contract import CONTROL, TREATED
from features.control import NO_CONTROL, ControlGroup, decision_group
from features.segments import SegmentModel, assign_segments
from features.spec import FeatureSpec, default_spec
from models.catalog import CHURN_FIELD, Catalog
from models.churn import ChurnModel, FeatureEncoder
from models.nba import NbaModel
from models.policy import Arbitration, Exclusion, Policy, arbitrate, draw, screen
from models.results import CustomerScore
from models.value import OUTPUT_COLUMNS, ValueModel

#: columns :meth:`Scorer.scores` adds to the features (NBA models and rules may read them)
ENRICHED_COLUMNS = (
    CHURN_FIELD,
    *OUTPUT_COLUMNS,
    "r_score",
    "f_score",
    "m_score",
    "rfm_segment",
    "abc_tier",
)
#: columns :meth:`Scorer.score_frame` gives after ``customer_id`` (uplift columns follow)
SCORE_COLUMNS = (
    *ENRICHED_COLUMNS,
    "best_action",
    "best_channel",
    "expected_value",
    "action_cost",
    "action_score",
    "group",
)
#: the reason a control customer's actions are excluded (``/score``'s ``excluded``)
CONTROL_REASON = "control group: no policy action"


class Scorer:
    """The champion models behind one scoring call; ``versions`` travel with every score."""

    def __init__(
        self,
        churn: ChurnModel,
        value: ValueModel,
        nba: NbaModel | None,
        catalog: Catalog,
        segments: SegmentModel,
        spec: FeatureSpec | None = None,
        versions: Mapping[str, str] | None = None,
        control: ControlGroup | None = None,
    ) -> None:
        if churn is None or value is None:
            raise ValueError("scoring needs a churn and a value model")
        self.churn = churn
        self.value = value
        self.nba = nba
        self.catalog = catalog
        self.segments = segments
        self.spec = spec or default_spec()
        self.versions = dict(versions or {})
        #: customers held out of every action (:mod:`features.control`); none by default
        self.control = control or NO_CONTROL
        self.policy = Policy(catalog, epsilon=nba.epsilon if nba is not None else 0.0)
        self._channels = np.array([a.channel for a in catalog.actions], dtype=object)
        #: churn and value read one encoding when their encoders agree (the demo's
        #: champions, trained on one feature set): one encoding per score, not two
        churn_encoder = getattr(churn, "encoder_", None)
        value_encoder = getattr(value, "encoder_", None)
        self.shares_encoding = (
            isinstance(churn_encoder, FeatureEncoder)
            and isinstance(value_encoder, FeatureEncoder)
            and churn_encoder.columns == value_encoder.columns
            and churn_encoder.categories == value_encoder.categories
        )

    # ---- shared by batch and live -------------------------------------------------------
    def scores(
        self, features: pd.DataFrame | Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Churn, value and segment columns for a feature frame, one customer's
        ``{feature: value}`` dict or a list of them (the live paths: no pandas; a list is
        a micro-batch, each booster predicting all its rows in one call), plus the encoded
        churn matrix (for reasons). An ``as_of`` column / key gives the value model its
        season (in a list: every row's, or none)."""
        X = self.churn.encode(features)
        columns = {CHURN_FIELD: self.churn.predict_proba_array(X)}
        segment_input: Any = features
        if isinstance(features, pd.DataFrame):
            cutoffs = features["as_of"] if "as_of" in features.columns else None
        elif isinstance(features, Mapping):
            cutoffs = features.get("as_of")
        else:
            cutoffs = _row_cutoffs(features)
            segment_input = _Columns(features)
        X_value = X if self.shares_encoding else self.value.encode(features)
        values = self.value.predict_array(X_value, cutoffs)
        for j, name in enumerate(OUTPUT_COLUMNS):
            columns[name] = values[:, j]
        columns.update(assign_segments(segment_input, self.segments))
        return columns, X

    def arbitrate(self, enriched: pd.DataFrame | Mapping[str, Any]) -> Arbitration:
        """All actions scored and screened; without an NBA model only ``no_action`` is allowed.

        ``enriched``: features plus the :meth:`scores` columns, as a frame or one
        customer's dict (the live path: the batch arithmetic on plain values, tested
        bit-identical to the frame path).
        """
        if isinstance(enriched, pd.DataFrame):  # every uplift: target lists re-arbitrate
            uplift = self.nba.predict(enriched) if self.nba is not None else None
            return arbitrate(enriched, self.catalog, uplift)
        return self.arbitrate_rows([enriched])[0]

    def arbitrate_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[Arbitration]:
        """:meth:`arbitrate` for each of several customers' dicts (the live path). The
        catalog's rules come first, then uplift only for the actions they allow (an
        excluded action's uplift is in no answer; 2 boosters fewer each), predicted for
        all rows at once (:meth:`models.nba.NbaModel.predict_rows`)."""
        if self.nba is None:
            return [arbitrate(row, self.catalog, None) for row in rows]
        screened = [screen(row, self.catalog) for row in rows]
        actions = self.catalog.actions
        allowed = [
            {a.id for a, code in zip(actions, codes[0].tolist(), strict=True) if not code}
            for codes in screened
        ]
        uplift = self.nba.predict_rows(rows, allowed)
        if len(rows) == 1:  # one customer: the prediction is its row already
            return [arbitrate(rows[0], self.catalog, uplift, screened[0])]
        return [
            arbitrate(row, self.catalog, uplift.row(i), screened[i]) for i, row in enumerate(rows)
        ]

    # ---- batch -------------------------------------------------------------------------
    def enrich(self, features: pd.DataFrame, as_of: datetime | None = None) -> pd.DataFrame:
        """Features plus churn, value and segment columns (what rules and uplift read)."""
        frame = features.copy()
        if as_of is not None:
            frame["as_of"] = as_of
        for name, column in self.scores(frame)[0].items():
            frame[name] = column
        return frame

    def score_frame(self, features: pd.DataFrame, as_of: datetime | None = None) -> pd.DataFrame:
        """One row per customer: ``customer_id``, :data:`SCORE_COLUMNS` with the greedy best
        action, then per catalog action (the control aside) the uplift that made its
        expected value -- ``uplift_conversion_<action>`` for retention actions (capped at
        the churn probability), ``uplift_revenue_<action>`` for growth actions, null when
        there is no estimate -- so target lists can re-run arbitration later. ``group`` is
        ``control`` for the control group (:attr:`control`), whose best action is
        ``no_action`` whatever the policy would do (their uplift columns stay, for
        analysis), else ``treated``."""
        enriched = self.enrich(features, as_of)
        result = self.arbitrate(enriched)
        ids = enriched["customer_id"].astype(str).to_numpy()
        held_out = self.control.mask(ids)
        best = np.where(held_out, 0, result.ranking()[:, 0])  # 0: no_action, the control
        rows = np.arange(len(enriched))
        out: dict[str, Any] = {"customer_id": ids}
        for name in (CHURN_FIELD, *OUTPUT_COLUMNS, "r_score", "f_score", "m_score"):
            out[name] = enriched[name].to_numpy(dtype="float64")
        for name in ("rfm_segment", "abc_tier"):
            out[name] = enriched[name].astype(str).to_numpy()
        out["best_action"] = np.asarray(result.actions, dtype=object)[best]
        out["best_channel"] = self._channels[best]
        out["expected_value"] = result.expected_value[rows, best]
        out["action_cost"] = result.cost[best]
        out["action_score"] = result.score[rows, best]
        out["group"] = np.where(held_out, CONTROL, TREATED).astype(object)
        missing = np.full(len(rows), np.nan)
        for j, action in enumerate(self.catalog.actions):
            if j == 0:
                continue  # no_action, the control
            known = not (result.reason[:, j] == Exclusion.NO_UPLIFT).all()
            up = result.uplift[:, j] if known else missing
            retained = action.value_kind == "retained_value"
            out[f"uplift_conversion_{action.id}"] = up if retained else missing
            out[f"uplift_revenue_{action.id}"] = missing if retained else up
        return pd.DataFrame(out)

    # ---- live: one customer, or a micro-batch of them ------------------------------------
    def score_one(
        self,
        features: Mapping[str, Any],
        context: Mapping[str, Any] | None = None,
        top_k: int = 3,
        explain: bool = True,
        rng: np.random.Generator | None = None,
    ) -> CustomerScore:
        """Churn (+ reasons), value, segments, the top-k actions and one chosen action.

        ``features``: the spec's features of one customer (``as_of`` included for the
        value model's season). The chosen action is drawn epsilon-greedily; its
        ``propensity`` is the probability it had, for logging and off-policy evaluation.
        ``context`` (channel, reason of the contact) is accepted for logging; the current
        models do not read it. A customer of the control group (by ``features``'
        ``customer_id``) keeps churn, value and reasons but gets ``no_action``, no ranked
        actions and ``group`` ``control``; propensities follow
        :meth:`features.control.ControlGroup.logging_probabilities` (the module doc says why).
        """
        return self.score_many([features], [top_k], [explain], rng)[0]

    def score_many(
        self,
        features: Sequence[Mapping[str, Any]],
        top_k: Sequence[int],
        explain: Sequence[bool],
        rng: np.random.Generator | None = None,
    ) -> list[CustomerScore]:
        """:meth:`score_one` for several customers at once, row ``i`` with ``top_k[i]`` and
        ``explain[i]`` (the live service's micro-batch of concurrent requests): each
        booster predicts all rows in one call, the arithmetic runs over all rows, and
        every result is the one :meth:`score_one` gives for that row -- the chosen actions
        drawn from ``rng`` in row order, as one score after another would
        (``tests/serving/test_batching.py`` holds them equal)."""
        found = self.score_plain(features, top_k, explain, rng)
        return [CustomerScore.model_validate(result) for result in found]

    def score_plain(
        self,
        features: Sequence[Mapping[str, Any]],
        top_k: Sequence[int],
        explain: Sequence[bool],
        rng: np.random.Generator | None = None,
    ) -> list[dict[str, Any]]:
        """:meth:`score_many`'s results as the plain values a :class:`CustomerScore`
        validates from, not validated: the live service validates them once, into its
        response with the customer's id and decision (a typed result first, then the
        response built from it, cost ~7 us more per score)."""
        if not len(top_k) == len(explain) == len(features):
            raise ValueError(
                f"{len(features)} customers need as many top_k ({len(top_k)}) and explain "
                f"({len(explain)}) values"
            )
        if not features:
            return []
        columns, X = self.scores(features)
        rows = [
            {**row, **{name: values[i] for name, values in columns.items()}}
            for i, row in enumerate(features)
        ]
        explained = [i for i, wanted in enumerate(explain) if wanted]
        drivers: dict[int, dict[str, list[dict[str, Any]]]] = {}
        if explained:
            wanted_rows = X if len(explained) == len(rows) else X[explained]
            ids = [features[i].get("customer_id") for i in explained]
            owners = None if None in ids else ids  # a repeat score reads its reasons back
            found = self.churn.explain_array(wanted_rows, spec=self.spec, owners=owners)
            drivers = dict(zip(explained, found, strict=True))
        generator = rng
        out = []
        for i, (row, result) in enumerate(zip(rows, self.arbitrate_rows(rows), strict=True)):
            reasons = drivers[i]["up"] + drivers[i]["down"] if i in drivers else []
            if generator is None and not self.control.contains(str(row.get("customer_id"))):
                generator = np.random.default_rng()
            out.append(self._result(row, result, reasons, top_k[i], generator))
        return out

    def _result(
        self,
        row: Mapping[str, Any],
        result: Arbitration,
        reasons: list[dict[str, Any]],
        top_k: int,
        rng: np.random.Generator | None,
    ) -> dict[str, Any]:
        """One customer's score from its enriched row and arbitration, as the plain values
        a :class:`CustomerScore` validates from: the policy's probabilities, the control
        group, the draw (from ``rng``) and the answer."""
        policy = self.policy.probabilities_one(result)
        probs = self.control.logging_probabilities(policy)
        ranking = result.ranking()[0]
        held_out = self.control.contains(str(row.get("customer_id")))
        actions = [] if held_out else result.offers(probs, top_k)
        if held_out:
            chosen = 0  # no_action
            excluded = {a: CONTROL_REASON for a in result.actions[1:]}
        else:
            assert rng is not None
            chosen = draw(rng, policy)
            excluded = result.exclusions(0)
        # validated by the caller in one pass from plain values: constructing its ~25
        # nested models one by one cost ~30 us more per live score
        return {
            "churn": {"probability": float(row[CHURN_FIELD]), "reasons": reasons},
            "value": {
                "mean": float(row["value_mean"]),
                "p10": float(row["value_p10"]),
                "p50": float(row["value_p50"]),
                "p90": float(row["value_p90"]),
            },
            "abc_tier": str(row["abc_tier"]),
            "rfm_segment": str(row["rfm_segment"]),
            "actions": actions,
            "chosen": {
                "action": result.actions[chosen],
                "channel": str(self._channels[chosen]),
                "propensity": float(probs[chosen]),
            },
            "excluded": [
                {"action": action, "reason": reason} for action, reason in excluded.items()
            ],
            "group": decision_group(held_out, chosen != int(ranking[0])),
        }


def _row_cutoffs(rows: Sequence[Mapping[str, Any]]) -> list[Any] | None:
    """The rows' ``as_of`` (the value model's season): every row's, or None for none."""
    cutoffs = [row.get("as_of") for row in rows]
    given = sum(cutoff is not None for cutoff in cutoffs)
    if given == 0:
        return None
    if given < len(cutoffs):
        raise ValueError("as_of must be given for every customer of a batch or for none")
    return cutoffs


class _Columns(Mapping[str, list[Any]]):
    """Customers' dicts seen as columns (``view[name]``: every row's value), what
    :func:`features.segments.assign_segments` reads from a frame."""

    def __init__(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._rows = rows

    def __getitem__(self, name: str) -> list[Any]:
        return [row[name] for row in self._rows]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows[0] if self._rows else ())

    def __len__(self) -> int:
        return len(self._rows[0]) if self._rows else 0
