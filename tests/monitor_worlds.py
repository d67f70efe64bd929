"""Simulated worlds for the monitor's quality tests and bench: one model trained before a
change, then monthly scoring + monitoring in the unchanged world and in each scenario.

Every world shares the seed, so its history before the change equals the stable world's
and the one trained model (in the stable world's MLflow store) serves them all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
from sample_data import FAST_PARAMS

if TYPE_CHECKING:
    from models.alerts import Alerts
    from rapport.scenarios import Scenario

#: the world ends here; the champions' holdout cutoff is TEST_CUTOFF (their labels end 90
#: days later) and the world changes at CHANGE
END = datetime(2026, 6, 1, tzinfo=UTC)
TEST_CUTOFF = datetime(2025, 6, 6, tzinfo=UTC)
CHANGE = datetime(2025, 9, 10, tzinfo=UTC)
HORIZON = 90
#: scoring and monitoring monthly, on the day of the month of the training cutoffs (the
#: demo's campaign waves are monthly: another day would see another phase of them)
MONITOR_AT = [(TEST_CUTOFF + pd.DateOffset(months=k)).to_pydatetime() for k in range(3, 9)]
PERIOD = 31
#: customers of the world the champions of a large world are trained on (a model trained
#: on a sample scores any size; training on the large world itself would take long)
TRAIN_CUSTOMERS = 20_000


def train_world(
    home: Path, seed: int, customers: int = TRAIN_CUSTOMERS, scenario: Scenario | None = None
) -> None:
    """A stable world in ``home`` (or one with a ``scenario`` from the start, such as
    :func:`rapport.scenarios.standing_complaints`) with churn and value trained before the
    change: its MLflow store serves a large world (``world_home(big, home)``)."""
    with world_home(home):
        load_world(home, customers, seed, scenario)
        train_before_change()


@contextmanager
def world_home(home: Path, mlruns: Path | None = None) -> Iterator[None]:
    """RAPPORT_HOME = ``home`` (and the MLflow store of ``mlruns``' workspace if given)."""
    from rapport.settings import reset_settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAPPORT_HOME", str(home))
        patch.delenv("RAPPORT_WAREHOUSE_URL", raising=False)
        if mlruns is None:
            patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        else:
            patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{mlruns / 'mlruns' / 'mlflow.db'}")
        reset_settings()
        try:
            yield
        finally:
            reset_settings()
    reset_settings()


def change_date() -> datetime:
    return CHANGE


def load_world(
    home: Path,
    customers: int,
    seed: int,
    scenario: str | Scenario | None,
    end: datetime = END,
) -> None:
    """Simulate the world (with ``scenario``, a shipped one by name or any, from
    :func:`change_date`) up to ``end`` into ``home``."""
    from features.ingest import discover_files, ingest
    from features.warehouse import connect
    from rapport.demo_data import generate, write
    from rapport.scenarios import scenarios
    from rapport.settings import get_settings

    chosen = scenarios(change_date())[scenario] if isinstance(scenario, str) else scenario
    settings = get_settings()
    settings.ensure_home()
    data = generate(customers, seed=seed, end=end, horizon_days=HORIZON, scenario=chosen)
    folder = write(data, home / "data", "parquet")
    con = connect(settings.warehouse_path)
    try:
        ingest(con, discover_files(folder["customers"].parent), now=end)
    finally:
        con.disconnect()


def train_before_change() -> None:
    """Churn and value trained on labels that end before the change, then promoted."""
    from features.warehouse import connect
    from rapport.settings import get_settings
    from training import jobs
    from training.datasets import Window, build_training_set

    con = connect(get_settings().warehouse_path)
    try:
        data = build_training_set(con, Window(TEST_CUTOFF, HORIZON, train_cutoffs=2))
        for kind in ("churn", "value"):
            jobs.train(kind, con, params=FAST_PARAMS, data=data)
            jobs.promote(kind)
    finally:
        con.disconnect()


@dataclass
class Timeline:
    """What monthly monitoring of one world found."""

    scenario: str | None
    #: monitoring date -> checks at level alert
    alerts: dict[datetime, pd.DataFrame] = field(default_factory=dict)
    #: monitoring date -> every check
    checks: dict[datetime, pd.DataFrame] = field(default_factory=dict)
    #: monitoring date -> every check of the same run judged with ``monitor_monthly``'s
    #: ``compare`` thresholds (empty without them)
    compared: dict[datetime, pd.DataFrame] = field(default_factory=dict)

    def first_alert(self, kind: str, check: str | None = None) -> datetime | None:
        for when, found in sorted(self.alerts.items()):
            hit = found[found["kind"] == kind]
            if check is not None:
                hit = hit[hit["check"] == check]
            if len(hit) and when >= change_date():
                return when
        return None


def monitor_monthly(
    scenario: str | None,
    dates: list[datetime] = MONITOR_AT,
    score_only: int = 0,
    compare: Alerts | None = None,
    thresholds: Alerts | None = None,
) -> Timeline:
    """Score as of each date, then monitor as of it (so the run of ``HORIZON`` days ago
    has just matured); the first ``score_only`` dates are scored, not monitored (a large
    world's runs before the change only serve as the partly matured run of the next).
    ``compare``: other thresholds each date is also monitored with, first (the same
    scoring runs; ``Timeline.compared``); ``thresholds``: the ones judged with (default:
    the shipped ones)."""
    from features.warehouse import connect
    from rapport.settings import get_settings
    from training import monitor
    from training.scoring import score_all

    timeline = Timeline(scenario)
    con = connect(get_settings().warehouse_path)
    try:
        for k, when in enumerate(dates):
            score_all(con, when)
            if k < score_only:
                continue
            if compare is not None:
                other = monitor.run(when, con=con, thresholds=compare, log_to_mlflow=False)
                timeline.compared[when] = other.checks
            result = monitor.run(when, con=con, thresholds=thresholds, log_to_mlflow=False)
            timeline.alerts[when] = result.alerts
            timeline.checks[when] = result.checks
    finally:
        con.disconnect()
    return timeline
