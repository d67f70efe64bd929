"""Synthetic logged decisions with a known policy effect, for the policy health tests
(``tests/training/test_policy_health.py``, ``tests/training/test_monitor.py``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from features.control import ControlGroup
from models.catalog import default_catalog

START = datetime(2026, 9, 1, tzinfo=UTC)
SHARE = 0.05
ACTIONS = [a.id for a in default_catalog().actions if a.id != "no_action"]


def decisions(seed: int, effect: float, collapse: bool = False, n: int = 4000) -> pd.DataFrame:
    """Two months of decisions for n customers (5% control by the hash). Treated revenue
    gains ``effect`` on average (negative: the policy hurts). ``collapse``: in the second
    month the policy sends every treated customer the same action with propensity ~1."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"C{i:05d}" for i in range(n)])
    held = ControlGroup(SHARE, f"salt{seed}").mask(ids)
    parts = []
    for month in (0, 1):
        at = pd.Timestamp(START + timedelta(days=30 * month + 2))
        one = collapse and month == 1
        chosen = np.full(n, ACTIONS[0]) if one else rng.choice(ACTIONS, n)
        p_treated = (1 - SHARE) * (1.0 if one else 1 / len(ACTIONS))
        base = rng.gamma(0.6, 70.0, n)
        revenue = np.maximum(base + np.where(held, 0.0, effect + rng.normal(0, 10, n)), 0.0)
        parts.append(
            pd.DataFrame(
                {
                    "decision_id": [f"d{month}-{c}" for c in ids],
                    "customer_id": ids,
                    "decided_at": at + pd.to_timedelta(rng.integers(0, 20, n), "D"),
                    "action": np.where(held, "no_action", chosen),
                    "channel": "email",
                    "propensity": np.where(held, SHARE, p_treated),
                    "group": np.where(held, "control", "treated"),
                    "outcome": revenue > 0,
                    "revenue": revenue,
                    "responded_at": pd.NaT,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)
