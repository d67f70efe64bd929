"""Scenarios for the demo simulator: the world changes from a date, as real ones do.

A :class:`Scenario` passed to :func:`rapport.demo_data.generate` changes the simulated
customers' behaviour from ``start`` on (the data before it is the unchanged world's, draw
for draw), so the monitor's quality tests can ask whether, and how fast, each change is
caught:

* ``hazard``: every customer's dropout hazard is tripled (churn rises everywhere; a
  churn model trained before it under-predicts);
* ``region_hazard``: the dropout hazard doubles in one region (north, the largest: a
  quarter of the customers), the issue's worded example;
* ``spend``: every order's expected amount is multiplied (value models over-predict);
* ``channel``: a data pipeline breaks and the interactions of one channel stop arriving
  (the features counting them collapse to zero: feature drift, not a change in people).

:func:`standing_complaints` is no change: from the start of the data one region's
customers are recorded complaining ``complaint_factor`` times as often as the same
customers elsewhere would (a service centre of its own that logs every contact as a
complaint), with nothing else different; the region peer checks must learn it as that
region's own level, not page on it every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.contract import INTERACTIONS
from features.timeutil import as_utc

if TYPE_CHECKING:
    from rapport.demo_data import _Population

US_PER_SECOND = 1_000_000
#: the seed of the repeated complaints' draws (a scenario's world is reproducible)
COPY_SEED = 7
#: a date before any simulated history: a scenario from it holds from the start
FROM_THE_START = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Scenario:
    """One change of the simulated world from ``start``."""

    name: str
    start: datetime
    #: multiply the dropout hazard of the customers of ``region`` (all when None)
    hazard_factor: float = 1.0
    region: str | None = None
    #: multiply the mean order value of every customer
    spend_factor: float = 1.0
    #: interactions of this channel on or after ``start`` are lost
    lost_channel: str | None = None
    #: complaints of the customers of ``region`` on or after ``start`` are recorded this
    #: many times as often (each gets ``factor - 1`` copies in expectation, an hour or
    #: less apart; behaviour unchanged)
    complaint_factor: float = 1.0

    @property
    def start_us(self) -> int:
        return int(as_utc(self.start).timestamp() * US_PER_SECOND)

    def starts_in(self, lo_us: int, hi_us: int) -> bool:
        """Does the change happen in the simulated week ``[lo, hi)``?"""
        return lo_us <= self.start_us < hi_us

    def change(self, pop: _Population) -> None:
        """Apply the behavioural change to the latent parameters (once, at ``start``)."""
        from rapport.demo_data import REGIONS

        if self.hazard_factor != 1.0:
            who = slice(None) if self.region is None else pop.region == REGIONS.index(self.region)
            pop.h0[who] *= self.hazard_factor
        if self.spend_factor != 1.0:
            pop.mu[:] *= self.spend_factor

    def recorded(self, interactions: pd.DataFrame, customers: pd.DataFrame) -> pd.DataFrame:
        """The interactions as recorded: all unless a channel broke (its lost from
        ``start``), and a region's complaints repeated by ``complaint_factor``."""
        if self.lost_channel is not None:
            lost = (interactions["channel"] == self.lost_channel) & (
                interactions["occurred_at"] >= pd.Timestamp(as_utc(self.start))
            )
            interactions = interactions[~lost.fillna(False)].reset_index(drop=True)
        if self.complaint_factor != 1.0:
            interactions = self._repeat_complaints(interactions, customers)
        return interactions

    def _repeat_complaints(
        self, interactions: pd.DataFrame, customers: pd.DataFrame
    ) -> pd.DataFrame:
        if self.complaint_factor < 1.0:
            raise ValueError(f"complaint_factor must be >= 1, got {self.complaint_factor}")
        who = customers["customer_id"]
        if self.region is not None:
            who = who[customers["region"] == self.region]
        hit = (
            (interactions["kind"] == "complaint")
            & interactions["customer_id"].isin(set(who))
            & (interactions["occurred_at"] >= pd.Timestamp(as_utc(self.start)))
        ).fillna(False)
        source = interactions[hit.to_numpy()]
        rng = np.random.default_rng(COPY_SEED)
        extra = self.complaint_factor - 1.0
        copies = np.floor(extra) + (rng.random(len(source)) < extra - np.floor(extra))
        repeated = source.loc[source.index.repeat(copies.astype("int64"))].copy()
        nth = repeated.groupby(level=0).cumcount() + 1
        repeated[INTERACTIONS.id_column] = (
            repeated[INTERACTIONS.id_column].astype("str") + "-r" + nth.astype("str")
        )
        seconds = rng.integers(1, 3600, len(repeated))
        repeated["occurred_at"] = repeated["occurred_at"] + pd.to_timedelta(seconds, unit="s")
        out = pd.concat([interactions, repeated], ignore_index=True)
        return out.sort_values("occurred_at", kind="stable", ignore_index=True)


def scenarios(start: datetime) -> dict[str, Scenario]:
    """The shipped scenarios, all starting at ``start``."""
    return {
        "hazard": Scenario("hazard", start, hazard_factor=3.0),
        "region_hazard": Scenario("region_hazard", start, hazard_factor=2.0, region="north"),
        "spend": Scenario("spend", start, spend_factor=0.6),
        "channel": Scenario("channel", start, lost_channel="web"),
    }


def standing_complaints(factor: float = 1.5, region: str = "north") -> Scenario:
    """``region``'s complaints recorded ``factor`` times as often from the start of the
    data (a standing difference, not a change: see the module docstring)."""
    return Scenario("standing_complaints", FROM_THE_START, complaint_factor=factor, region=region)
