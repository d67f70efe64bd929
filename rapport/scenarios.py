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
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import pandas as pd

from features.timeutil import as_utc

if TYPE_CHECKING:
    from rapport.demo_data import _Population

US_PER_SECOND = 1_000_000


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

    def lose(self, interactions: pd.DataFrame) -> pd.DataFrame:
        """The interactions that still arrive (all unless a channel broke)."""
        if self.lost_channel is None:
            return interactions
        lost = (interactions["channel"] == self.lost_channel) & (
            interactions["occurred_at"] >= pd.Timestamp(as_utc(self.start))
        )
        return interactions[~lost.fillna(False)].reset_index(drop=True)


def scenarios(start: datetime) -> dict[str, Scenario]:
    """The shipped scenarios, all starting at ``start``."""
    return {
        "hazard": Scenario("hazard", start, hazard_factor=3.0),
        "region_hazard": Scenario("region_hazard", start, hazard_factor=2.0, region="north"),
        "spend": Scenario("spend", start, spend_factor=0.6),
        "channel": Scenario("channel", start, lost_channel="web"),
    }
