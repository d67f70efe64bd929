"""The next-best-action model: uplift estimates, the catalog they serve and the exploration.

One object is what MLflow registers as ``nba`` and what the service and batch scoring load:
the catalog travels with the uplift models, so a policy is always evaluated, promoted and
served with the rules it was trained for.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from models.catalog import Catalog
from models.policy import Arbitration, Policy, arbitrate
from models.uplift import UpliftModel, UpliftPrediction

#: up to this many customers :meth:`NbaModel.predict_rows` predicts one by one: the
#: one-customer path walks only the allowed actions' boosters, together, which beat one
#: LightGBM call per booster for all rows (a micro-batch of 8: 409 -> 382 us a request,
#: of 16: 354 -> 316; ``bench/score_steps.py --batch``); the service's micro-batches hold
#: at most 64 (``RAPPORT_SCORE_MICROBATCH``)
ROW_BY_ROW = 64


@dataclass
class NbaModel:
    """Uplift models + catalog + exploration rate (epsilon-greedy over allowed actions)."""

    uplift: UpliftModel
    catalog: Catalog
    epsilon: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")

    @property
    def feature_names(self) -> list[str]:
        """Columns the uplift models read (features, optionally churn/value scores)."""
        return list(self.uplift.feature_names_)

    def predict(
        self, frame: pd.DataFrame | Mapping[str, Any], actions: Collection[str] | None = None
    ) -> UpliftPrediction:
        """Incremental conversion and revenue per action for the rows of ``frame`` (or for
        one customer's ``{column: value}`` dict: the live path, without pandas); with
        ``actions``, only those (the others NaN, see :meth:`UpliftModel.predict`)."""
        if isinstance(frame, pd.DataFrame):
            self._check_columns(frame.columns)
            return self.uplift.predict(frame[self.feature_names], actions)
        return self._predict_dicts(frame, actions, [frame])

    def predict_rows(
        self, rows: Sequence[Mapping[str, Any]], allowed: Sequence[Collection[str]]
    ) -> UpliftPrediction:
        """:meth:`predict` for several customers' dicts at once (the live micro-batch), each
        row with its own ``allowed`` actions, so row ``i`` equals ``predict(rows[i],
        allowed[i])`` exactly. Up to :data:`ROW_BY_ROW` rows each takes the one-customer
        path (its allowed actions' boosters walked together:
        :class:`models.forest.Forest`); more, and each booster predicts all rows in one
        call, the union of the allowed actions predicted and a row's others set to NaN."""
        if len(allowed) != len(rows):
            raise ValueError(f"{len(allowed)} sets of allowed actions for {len(rows)} rows")
        if len(rows) == 1:  # one customer: its allowed actions are all that is predicted
            return self._predict_dicts(rows[0], allowed[0], rows)
        if len(rows) <= ROW_BY_ROW:
            parts = [self._predict_dicts(r, a, [r]) for r, a in zip(rows, allowed, strict=True)]
            return UpliftPrediction(
                parts[0].actions,
                np.vstack([p.incremental_conversion for p in parts]),
                np.vstack([p.incremental_revenue for p in parts]),
                lambda: np.concatenate([p.baseline_conversion for p in parts]),
                lambda: np.concatenate([p.baseline_revenue for p in parts]),
            )
        wanted = set().union(*allowed) if allowed else set()
        prediction = self._predict_dicts(rows, wanted, rows)
        for j, action in enumerate(prediction.actions):
            if action not in wanted:
                continue  # NaN for every row already
            for i, row_allowed in enumerate(allowed):
                if action not in row_allowed:
                    prediction.incremental_conversion[i, j] = np.nan
                    prediction.incremental_revenue[i, j] = np.nan
        return prediction

    def _predict_dicts(
        self,
        data: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        actions: Collection[str] | None,
        rows: Sequence[Mapping[str, Any]],
    ) -> UpliftPrediction:
        """The uplift of customers' dicts (``data``: one of ``rows`` or all), a missing
        column named as the frame path names it. The encoder reads every column anyway:
        the dicts are checked only when it fails (a set comparison per customer cost a
        few us of each live score)."""
        try:
            return self.uplift.predict(data, actions)
        except ValueError:
            for row in rows:
                self._check_columns(row)
            raise

    def _check_columns(self, columns: Any) -> None:
        missing = [c for c in self.feature_names if c not in columns]
        if missing:
            raise KeyError(f"the NBA model needs columns the frame lacks: {missing[:5]}")

    def arbitrate(self, frame: pd.DataFrame) -> Arbitration:
        """Every catalog action scored and screened for every row (greedy ranking)."""
        return arbitrate(frame, self.catalog, self.predict(frame))

    def policy(
        self, epsilon: float | None = None, seed: int | np.random.Generator | None = None
    ) -> Policy:
        """The exploring policy (``epsilon=0``: the greedy policy OPE and promotion judge)."""
        return Policy(self.catalog, epsilon=self.epsilon if epsilon is None else epsilon, seed=seed)
